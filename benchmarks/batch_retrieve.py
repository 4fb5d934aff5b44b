"""Batch retrieval as a job (issue 26): users/s of `grove retrieve --users-file FILE --out FILE` at a
catalogue of 10^6 items, in process and on 1 and 2 Ray actors (one torch thread each); on a
CUDA machine also in process on the GPU and on one GPU Ray actor.

    python -m benchmarks.batch_retrieve [--items 1000000] [--users 20000] [--runs 5]
    python -m benchmarks.batch_retrieve --items 10000 --dataset-users 3000 --users 1000 --runs 2 --out /tmp/br

1. A store in ``--work`` (kept for reuse): a synthetic planted-hierarchy dataset
   (`grove.flows.datasets.synth_dataset`) and its split, a TDM version of INDEX (construct, then train
   on 256 windows: a beam search costs the same whatever the weights).
2. The users file: the first ``--users`` held-out test users of the split (raw ids, histories =
   the first half of their positives, as ``grove retrieve --split`` reads them), cycled if the
   split has fewer.
3. Per mode, the job (`grove.flows.batch_retrieve.retrieve_to_file`, k, beam, batch as given) once
   untimed, then ``--runs`` times: the median seconds and users/s of the whole job (Ray: the
   actors start and load the version in every job), and the fixed cost: the median of 3 jobs
   of one chunk; "search users/s" = users / (median - fixed). Ray runs on one local Ray
   started here (``ray.init`` with every core and GPU), reused by every job.
4. The 2-actor / 1-actor ratio of the job's users/s (target >= 1.8), and whether each CPU
   mode wrote the in-process file, row for row.

Results: ``benchmarks/results/batch_retrieve.{json,md}`` (or ``--out STEM``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from benchmarks.timing import at_least

ROOT = pathlib.Path(__file__).resolve().parent
INDEX = "bench-batch-tdm"
TRAIN = {"max_samples": 256, "epochs": 1, "device": "cpu"}
TARGET = 1.8


def build_store(path: pathlib.Path, items: int, users: int, seed: int) -> str:
    """The benchmark's store (module docstring, 1); reused when it already holds the version."""
    from grove.flows import steps
    from grove.flows.datasets import split_dataset, synth_dataset
    from grove.indexstore.errors import GroveError
    from grove.indexstore.store import Store

    url = f"duckdb:///{path}"
    try:
        Store.open(url).resolve(INDEX)
        return url
    except GroveError:
        path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    Store.init(url)
    start = time.perf_counter()
    synth_dataset(Store.open(url), "bench", items, users, seed)
    split_dataset(Store.open(url), "bench", "default", seed=seed)
    vid = steps.construct(url, INDEX, "tdm", {**TRAIN, "seed": seed}, "bench").version_id
    steps.train(url, vid)
    print(f"store built in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return url


def users_file(url: str, path: pathlib.Path, n: int) -> pathlib.Path:
    """The first ``n`` test users of the split as a users file (cycled when there are fewer)."""
    from grove.flows.batch_retrieve import split_users
    from grove.indexstore.store import Store

    store = Store.open(url)
    table = split_users(store, store.resolve(INDEX), "default", "test")
    reps = -(-n // table.num_rows)
    table = pa.concat_tables([table] * reps).slice(0, n)
    pq.write_table(table, path)
    return path


def timed_job(url: str, users: pathlib.Path, out: pathlib.Path, mode: dict, args) -> float:
    """Seconds of one job in ``mode`` (device, actors: None in process)."""
    from grove.flows.batch_retrieve import retrieve_to_file
    from grove.flows.ray_pool import RayOptions
    from grove.indexstore.store import Store
    from grove.models.batch_retrieval import Query

    ray = RayOptions(None, mode["actors"], 1) if mode["actors"] else None
    start = time.perf_counter()
    retrieve_to_file(
        Store.open(url),
        INDEX,
        str(out),
        users=str(users),
        query=Query(args.k, args.beam),
        batch_size=args.batch,
        device=mode["device"],
        threads=None if ray else 1,
        ray=ray,
    )
    return time.perf_counter() - start


def modes(gpu: bool, cpu_only: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"mode": "in process", "actors": None, "device": "cpu"},
        {"mode": "Ray, 1 actor", "actors": 1, "device": "cpu"},
        {"mode": "Ray, 2 actors", "actors": 2, "device": "cpu"},
    ]
    if gpu and not cpu_only:
        out += [
            {"mode": "in process, GPU", "actors": None, "device": "cuda"},
            {"mode": "Ray, 1 GPU actor", "actors": 1, "device": "cuda"},
        ]
    return out


def measure(url: str, users: pathlib.Path, one_chunk: pathlib.Path, tmp: pathlib.Path, mode: dict, args) -> dict:
    out = tmp / f"recs_{mode['mode'].replace(' ', '_').replace(',', '')}.parquet"
    timed_job(url, users, out, mode, args)  # warm-up
    runs = [timed_job(url, users, out, mode, args) for _ in range(args.runs)]
    fixed = [timed_job(url, one_chunk, tmp / "one.parquet", mode, args) for _ in range(3)]
    med, fix = statistics.median(runs), statistics.median(fixed)
    row = {
        **mode,
        "seconds": runs,
        "median_s": med,
        "users_per_s": args.users / med,
        "fixed_s": fix,
        "search_users_per_s": args.users / max(med - fix, 1e-9),
        "out": str(out),
    }
    print(
        f"{mode['mode']}: {row['users_per_s']:,.1f} users/s (median {med:.2f} s; fixed {fix:.2f} s; "
        f"search {row['search_users_per_s']:,.1f} users/s)",
        file=sys.stderr,
        flush=True,
    )
    return row


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# Batch retrieval job ({res['items']:,} items, {res['users']:,} users, k {res['k']}, beam {res['beam']}, "
        f"batch {res['batch']})",
        "",
        f"Machine: {m['cpu_count']} CPU cores ({m['cpu_model']}), GPU: {m['gpu'] or 'none'}; torch {m['torch']}, "
        f"ray {res['ray']}; load average before {tuple(m['load_average_before'])}. TDM version of the "
        f"synthetic catalogue (construct + 256 training windows), one torch thread per actor and in process. "
        f"Median of {res['runs']} jobs after a warm-up; fixed = median of 3 jobs of one chunk (Ray: actors "
        f"start and load the version). Command: `{res['command']}`.",
        "",
        "| mode | users/s (job) | median s | fixed s | users/s (search) | runs (s) | same rows as in process |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        runs = ", ".join(f"{s:.2f}" for s in r["seconds"])
        same = {True: "yes", False: "NO", None: "–"}[r.get("same_rows")]
        lines.append(
            f"| {r['mode']} | {r['users_per_s']:,.1f} | {r['median_s']:.2f} | {r['fixed_s']:.2f} | "
            f"{r['search_users_per_s']:,.1f} | {runs} | {same} |"
        )
    ratio = res.get("speedup_2_over_1")
    if ratio is not None:
        verdict = "meets" if ratio >= TARGET else "misses"
        lines.append(
            f"\n2 Ray actors serve {ratio:.2f}x the users/s of 1 over the whole job ({verdict} the target of "
            f"{TARGET}x), {res['speedup_2_over_1_search']:.2f}x once the fixed cost is set aside."
        )
    return "\n".join(lines) + "\n"


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=at_least(100), default=1_000_000)
    ap.add_argument("--dataset-users", type=at_least(100), default=100_000, help="users of the synthetic dataset")
    ap.add_argument("--users", type=at_least(1), default=20_000, help="users of the batch job")
    ap.add_argument("--k", type=at_least(1), default=50)
    ap.add_argument("--beam", type=at_least(1), default=50)
    ap.add_argument("--batch", type=at_least(1), default=256)
    ap.add_argument("--runs", type=at_least(1), default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cpu-only", action="store_true", help="skip the GPU modes on a CUDA machine")
    ap.add_argument("--work", default=str(ROOT / "work"), help="folder of the benchmark's store")
    ap.add_argument("--out", default=str(ROOT / "results" / "batch_retrieve"), help="results stem")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    import ray
    import torch

    args = parse(argv)
    work = pathlib.Path(args.work)
    url = build_store(work / f"batch_retrieve_{args.items}_{args.dataset_users}_{args.seed}.duckdb", args.items,
                      args.dataset_users, args.seed)  # fmt: skip
    result = {
        "command": "python -m benchmarks.batch_retrieve " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "ray": ray.__version__,
        "items": args.items,
        "users": args.users,
        "k": args.k,
        "beam": args.beam,
        "batch": args.batch,
        "runs": args.runs,
        "rows": [],
    }
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="batch_retrieve_") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        users = users_file(url, tmp / "users.parquet", args.users)
        one_chunk = users_file(url, tmp / "one_chunk.parquet", min(args.batch, args.users))
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            for mode in modes(gpu, args.cpu_only):
                result["rows"].append(measure(url, users, one_chunk, tmp, mode, args))
        finally:
            ray.shutdown()
        base = pq.read_table(result["rows"][0]["out"])  # the in-process file
        for row in result["rows"]:
            row["same_rows"] = pq.read_table(row.pop("out")).equals(base) if row["device"] == "cpu" else None
    rows = {r["mode"]: r for r in result["rows"]}
    one, two = rows["Ray, 1 actor"], rows["Ray, 2 actors"]
    result["speedup_2_over_1"] = two["users_per_s"] / one["users_per_s"]
    result["speedup_2_over_1_search"] = two["search_users_per_s"] / one["search_users_per_s"]
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_json_and_markdown(args.out, result, markdown)
    print(markdown(result))
    return result


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
