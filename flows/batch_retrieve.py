"""Batch retrieval and evaluation as a job: in this process, or on a Ray actor pool.

`retrieve_to_file` (``grove retrieve INDEX --users FILE | --split NAME --out FILE``): the users'
histories (`grove.flows.batch_io`) cut into chunks of ``batch_size`` users, each chunk searched by a
`grove.models.batch_retrieval.BatchSearcher` and its rows written, in input order, to one parquet
file. `evaluate_on_ray` (``grove eval --ray``): the searches of `grove.models.evaluation_passes.evaluate_searches`
run the same way, chunk by chunk (`grove.models.evaluation.search_chunk`); the metric rows are those
of the in-process evaluation, value for value, and are recorded the same way.

With ``ray`` (`grove.flows.ray_pool.RayOptions`) the chunks' parts go to Ray Data ``map_batches`` over
a pool of actors, each loading the version ONCE in its constructor (one GPU per actor when the
cluster has them, or with ``device='cuda'``). Without, the same function runs here on the same
chunks: the two runs write the same file, row for row.

The actors read the store themselves (its URL is made absolute), and the users file: both must be
reachable from every node under the same name (a DuckDB file on a shared filesystem, or
PostgreSQL). The users of a split travel in the parts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from grove.flows.batch_io import (
    USER,
    Part,
    RowsWriter,
    check_out,
    chunk_histories,
    file_parts,
    held_out_table,
    open_users,
    output_schema,
    read_chunks,
    table_parts,
)
from grove.flows.ray_pool import RayOptions, check_resources, cluster_has_gpu, map_on_actors, ray_session
from grove.flows.runners import absolute_url
from grove.indexstore.errors import GroveError, InputError, StateError
from grove.indexstore.samples import HeldOutUsers
from grove.indexstore.store import Store
from grove.models import lifecycle
from grove.models.batch_retrieval import BatchSearcher, Query, SearcherSpec, TopK
from grove.models.evaluation import Lists, ListsBuilder
from grove.models.evaluation_passes import SearchPass, evaluate_searches
from grove.models.progress import Progress

PARTS_PER_ACTOR = 8  # parts of a Ray job per actor: balance against re-reading a row group
ACTOR_STORE_WAIT = "600"  # seconds an actor waits for the DuckDB lock (the others are loading)


@dataclass(frozen=True)
class Summary:
    """What a retrieval job did: version, users, rows written, unknown raw ids, seconds."""

    version: int
    users: int
    rows: int
    unknown: int
    seconds: float
    out: str

    @property
    def users_per_second(self) -> float:
        return self.users / max(self.seconds, 1e-9)


# ------------------------------------------------------------------------------- one chunk
def search_part(searcher: BatchSearcher, part: Part, query: Query, batch_size: int, source: str) -> Iterator[pa.Table]:
    """The output rows of every chunk of ``part`` (plus the bookkeeping columns ``_users`` and
    ``_unknown``, non-zero in a chunk's first row; a chunk with nothing found gives one row of
    rank 0 that carries them)."""
    for first, chunk in read_chunks(part, batch_size):
        users, offsets, raw = chunk_histories(chunk, source, first)
        yield _chunk_rows(users, searcher.retrieve(offsets, raw, query))


def _chunk_rows(users: pa.Array, top: TopK) -> pa.Table:
    user, rank, item, score = top.rows()
    if user.size == 0:  # keep the chunk's counts in a placeholder row
        user, rank, item, score = np.zeros(1, np.int64), np.zeros(1, np.int32), np.array([""]), np.zeros(1, np.float32)
    stats = np.zeros((2, user.size), dtype=np.int32)
    stats[:, 0] = len(users), top.unknown
    return pa.table(
        {
            USER: users.take(pa.array(user)),
            "rank": pa.array(rank, pa.int32()),
            "item": pa.array(item, pa.string()),
            "score": pa.array(score, pa.float32()),
            "_users": stats[0],
            "_unknown": stats[1],
        }
    )


class _RetrieveActor:
    """One Ray actor: the version loaded once; a call searches one part (one-row table)."""

    def __init__(self, spec: SearcherSpec, query: Query, batch_size: int, source: str):
        os.environ.setdefault("GROVE_STORE_WAIT", ACTOR_STORE_WAIT)
        self.query, self.batch_size, self.source = query, batch_size, source
        self.error: GroveError | None = None
        try:  # a GroveError here would die as Ray's ActorDiedError: raise it on the first call
            self.searcher = BatchSearcher(spec)
        except GroveError as exc:
            self.error = exc

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        if self.error is not None:
            raise self.error
        for row in batch.to_pylist():
            yield from search_part(self.searcher, Part.from_row(row), self.query, self.batch_size, self.source)


# ---------------------------------------------------------------------------- the job
def retrieve_to_file(
    store: Store,
    index: str,
    out: str,
    *,
    users: str | None = None,
    split: str | None = None,
    role: str = "valid",
    version: int | None = None,
    alias: str | None = None,
    query: Query | None = None,
    batch_size: int = 256,
    device: str = "auto",
    threads: int | None = None,
    ray: RayOptions | None = None,
) -> Summary:
    """Top-k of every user of ``users`` (a parquet file) or of the held-out ``role`` users of
    ``split`` (of the version's dataset) -> the parquet file ``out`` (module docstring)."""
    query = query or Query()
    if (users is None) == (split is None):
        raise GroveError("give the users as a parquet file or as a split, one of the two")
    info = store.resolve(index, version=version, alias=alias)
    if info.dataset is None or info.split is None:
        raise StateError(f"version {info.id} names no dataset: it was not made by a lifecycle")
    query.check(store.dataset(info.dataset).n_items, batch_size)
    check_out(out)
    if users is not None:
        source = open_users(users)
        if os.path.abspath(users) == os.path.abspath(out):
            raise InputError(f"{out}: the output would overwrite the users file")
        n_users, user_type, name = source.rows, source.user_type, users
    else:
        assert split is not None
        table = split_users(store, info, split, role)
        n_users, user_type, name = table.num_rows, pa.string(), f"split {split!r} ({role} users)"

    def parts(n: int) -> list[Part]:
        return file_parts(source, batch_size, n) if users is not None else table_parts(table, batch_size, n)

    spec = SearcherSpec(absolute_url(store.url), index, info.id, device, threads)
    counts, start = [0, 0], time.perf_counter()
    label = "retrieve" + (f" on {ray.describe()}" if ray else "")
    if ray is None:
        found = _local(spec, parts(1), query, batch_size, name)
    else:
        found = _on_ray(spec, ray, parts(ray.actors * PARTS_PER_ACTOR), query, batch_size, name)
    with RowsWriter(out, output_schema(user_type)) as writer, Progress(label, n_users, "user") as progress:
        with closing(found) as tables:  # an error here stops the actors (and a Ray started for them)
            for table in tables:
                progress.update(_write(table, writer, counts))
    return Summary(info.id, counts[0], writer.rows, counts[1], time.perf_counter() - start, out)


def split_users(store: Store, info, split: str, role: str) -> pa.Table:
    """The held-out ``role`` users of ``split`` as an input table (raw ids; histories = the
    first half of their positives, what an evaluation feeds the model)."""
    store.split(info.dataset, split)  # NotFoundError naming the split
    config = lifecycle.Recipe.from_json(info.config).config
    held: HeldOutUsers = lifecycle.split_data(store, info.dataset, split, config).held_out(role)
    users = store.user_raw_ids(info.dataset)[held.users]
    items = store.item_raw_ids(info.dataset)[held.seen_items]
    return held_out_table(users, held.seen_offsets, items)


def _write(table: pa.Table, writer: RowsWriter, counts: list[int]) -> int:
    """Write a block of chunk rows; add its users and unknown ids to ``counts``; returns users."""
    users, unknown = int(pc.sum(table["_users"]).as_py() or 0), int(pc.sum(table["_unknown"]).as_py() or 0)
    counts[0] += users
    counts[1] += unknown
    if pc.any(pc.equal(table["rank"], 0)).as_py():
        table = table.filter(pc.greater(table["rank"], 0))
    writer.write(table)
    return users


def _local(
    spec: SearcherSpec, parts: list[Part], query: Query, batch_size: int, source: str
) -> Generator[pa.Table, None, None]:
    searcher = BatchSearcher(spec)
    for part in parts:
        yield from search_part(searcher, part, query, batch_size, source)


def _on_ray(
    spec: SearcherSpec, opts: RayOptions, parts: list[Part], query: Query, batch_size: int, source: str
) -> Generator[pa.Table, None, None]:
    with ray_session(opts.address) as ray:
        spec, gpus = _placed(ray, spec, opts)
        kwargs = {"spec": spec, "query": query, "batch_size": batch_size, "source": source}
        yield from map_on_actors(ray, _RetrieveActor, kwargs, [p.to_row() for p in parts], opts, gpus)


def _placed(ray, spec: SearcherSpec, opts: RayOptions) -> tuple[SearcherSpec, bool]:
    """The actors' spec (device cuda on GPU actors, cpu otherwise; ``opts.threads``) and whether
    they take a GPU each: asked for (device cuda), or 'auto' on a cluster with GPUs."""
    if spec.device not in ("auto", "cpu") and not spec.device.startswith("cuda"):
        raise GroveError(f"unknown device {spec.device!r} for Ray actors: use auto, cpu or cuda")
    gpus = spec.device.startswith("cuda") or (spec.device == "auto" and cluster_has_gpu(ray))
    check_resources(ray, opts, gpus)
    return SearcherSpec(spec.url, spec.index, spec.version, "cuda" if gpus else "cpu", opts.threads), gpus


# ---------------------------------------------------------------------- evaluation on Ray
class _EvalActor:
    """One Ray actor of a distributed evaluation: the version loaded once, the held-out users
    (from the object store); a call runs one part of one search pass, batch by batch."""

    def __init__(self, spec: SearcherSpec, held_out: HeldOutUsers, k: int, batch_size: int):
        os.environ.setdefault("GROVE_STORE_WAIT", ACTOR_STORE_WAIT)
        self.held_out, self.k, self.batch_size = held_out, k, batch_size
        self.error: GroveError | None = None
        try:
            self.searcher = BatchSearcher(spec)
        except GroveError as exc:
            self.error = exc

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.error is not None:
            raise self.error
        out: dict[str, list] = {"pass": [], "lo": [], "kept": [], "filtered": [], "seconds": [], "candidates": []}
        for row in batch.to_pylist():
            beam = None if row["beam"] < 0 else int(row["beam"])
            for lo in range(row["lo"], row["hi"], self.batch_size):
                hi = min(lo + self.batch_size, row["hi"])
                lists = self.searcher.lists(self.held_out, lo, hi, self.k, beam)
                assert lists.filtered is not None
                out["pass"].append(row["pass"])
                out["lo"].append(lo)
                out["kept"].append(lists.kept.reshape(-1))
                out["filtered"].append(lists.filtered.reshape(-1))
                out["seconds"].append(lists.seconds)
                out["candidates"].append(lists.mean_candidates)
        return pa.table(
            {
                "pass": pa.array(out["pass"], pa.int32()),
                "lo": pa.array(out["lo"], pa.int64()),
                "kept": pa.array(out["kept"], pa.list_(pa.int64())),
                "filtered": pa.array(out["filtered"], pa.list_(pa.int64())),
                "seconds": pa.array(out["seconds"], pa.float64()),
                "candidates": pa.array(out["candidates"], pa.float64()),
            }
        )


@dataclass(frozen=True)
class RaySearches:
    """`grove.models.evaluation.Searches` on a Ray actor pool: every pass of an evaluation in ONE Ray
    Data job (the actors load the version once for all of them), cut into the batches of
    `grove.models.evaluation.search_lists`. The time of a pass is its searcher seconds summed over the
    actors divided by their number: users/s is the pool's rate."""

    spec: SearcherSpec
    opts: RayOptions
    batch_size: int = 256

    def __call__(self, held_out: HeldOutUsers, k: int, passes: Sequence[SearchPass]) -> list[Lists]:
        from grove.flows.batch_io import spans

        items = [
            {"pass": i, "beam": -1 if p.beam is None else p.beam, "lo": lo, "hi": hi}
            for i, p in enumerate(passes)
            for lo, hi in spans(p.users, self.batch_size, self.opts.actors * PARTS_PER_ACTOR)
        ]
        built = [ListsBuilder(p.users, k, True) for p in passes]
        with (
            ray_session(self.opts.address) as ray,
            Progress(f"evaluate on {self.opts.describe()}", sum(p.users for p in passes), "user") as progress,
        ):
            spec, gpus = _placed(ray, self.spec, self.opts)
            kwargs = {"spec": spec, "held_out": held_out, "k": k, "batch_size": self.batch_size}
            for table in map_on_actors(ray, _EvalActor, kwargs, items, self.opts, gpus):
                for row in range(table.num_rows):
                    kept = np.asarray(table["kept"][row].values, dtype=np.int64).reshape(-1, k)
                    filtered = np.asarray(table["filtered"][row].values, dtype=np.int64).reshape(-1, k)
                    cand = table["candidates"][row].as_py()
                    lists = Lists(kept, filtered, float(table["seconds"][row].as_py()), cand)
                    built[table["pass"][row].as_py()].add(int(table["lo"][row].as_py()), lists)
                    progress.update(kept.shape[0])
        return [b.result(seconds=b.seconds / self.opts.actors) for b in built]


def evaluate_on_ray(
    store: Store,
    version_id: int,
    ray: RayOptions,
    role: str = "valid",
    ks: tuple[int, ...] = (10, 50),
    beams: tuple[int, ...] = (50,),
    max_users: int | None = None,
    exhaustive: bool | None = None,
    exhaustive_users: int | None = None,
    device: str = "auto",
) -> list[dict]:
    """`grove.models.lifecycle.evaluate` with the searches on a Ray actor pool: the same metric rows,
    appended to the store; returned as dicts (as `grove.flows.steps.evaluate` returns them)."""
    info = store.version(version_id)
    if info.dataset is None or info.split is None:
        raise StateError(f"version {version_id} names no dataset and split: it was not made by a lifecycle")
    config = lifecycle.Recipe.from_json(info.config).config
    data = lifecycle.split_data(store, info.dataset, info.split, config)
    held_out = data.held_out(role)
    if max_users:
        held_out = held_out.subset(max_users)
    spec = SearcherSpec(absolute_url(store.url), info.index_name, info.id, device)
    rows = evaluate_searches(
        RaySearches(spec, ray), data.n_items, held_out, role, ks, beams, exhaustive, exhaustive_users
    )
    store.record_metrics(version_id, rows)
    return [asdict(r) for r in rows]
