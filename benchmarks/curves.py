"""Efficiency–accuracy curves: Recall@k against users per second as the beam varies (issue 7.2).

    python -m benchmarks.curves                                   # ml-1m-subset, tdm + two-tower
    python -m benchmarks.curves --dataset ml-latest-small --methods tdm jtm dr
    python -m benchmarks.curves --quick                           # a minute; numbers meaningless

    # train apart (here two processes, one core each), then time everything side by side:
    python -m benchmarks.curves --methods tdm jtm --train-only --store /tmp/a.duckdb --threads 1 &
    python -m benchmarks.curves --methods dr recforest --train-only --store /tmp/b.duckdb --threads 1
    python -m benchmarks.curves --from-store /tmp/a.duckdb /tmp/b.duckdb

For each method in ``--methods``: its lifecycle up to one trained index, run through the flows'
steps (`grove.flows.steps`) into a DuckDB store as versions of the index ``curves-<method>`` (TDM/JTM/
DeFoRec/DR: construct -> train -> relearn -> train, i.e. category tree -> train -> one tree
learning round -> train, a DeFoRec forest of 2 trees, DR random codes -> train -> one EM round
-> train; RecForest: construct -> train). The newest version of each index is then loaded the way
a server loads it (`grove.models.retriever.Retriever.load`) and its beam search run on the test users
for every beam in ``--beams``: users/s at batch 256 (the test users' histories repeated to fill
whole batches; ``--threads`` CPU threads; median of ``--repeats`` timed passes after a warm-up)
and Recall@k of the test users (seen items kept). Beside them, over the SAME two-tower embeddings
(user tower = query, item matrix = base): exact search (a matrix product + topk, the two-tower
brute force), FAISS HNSW (M=32, efSearch swept) and FAISS IVF-Flat (nlist = 4 sqrt(N), nprobe
swept), inner product. FAISS is an optional benchmark dependency (``pip install faiss-cpu``);
without it those curves are skipped and the JSON says so.

Training is what costs (a tree scorer's epoch is minutes to an hour on a CPU thread); timing is
cheap but must not share the cores. ``--train-only`` trains into ``--store`` and measures
nothing; ``--from-store FILE ...`` trains no index and measures the ``curves-*`` indexes of those
stores in one process (each store must hold the same split: checked; the two-tower baselines are
trained in that process). Without ``--store`` a temporary store is used and dropped.

Training configs are benchmarks.quality's (or its QUICK caps with ``--quick``), with
``--max-samples`` capping the training windows of TDM/JTM/DeFoRec and ``--set METHOD.FIELD=VALUE``
overriding any field (as in benchmarks.quality). In ``--from-store`` mode the configs recorded
are the versions' own.

Writes ``benchmarks/results/curves_<dataset>[_<tag>].json``, ``.md`` (a row per point) and ``.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from benchmarks.curves_report import markdown, plot
from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from benchmarks.quality import CONFIGS, LIFECYCLE, METHODS, QUICK, RESULTS, apply_override, find_data_dir, load_data
from grove.models.evaluation import recall_of
from grove.models.method import config_from_dict

TREE_METHODS = ("tdm", "jtm", "deforec")
INDEX_PREFIX = "curves-"
BATCH = 256


def split_name(seed: int = 0) -> str:
    return f"seed{seed}"


def batch_rows(hist: torch.Tensor, batch: int = BATCH) -> torch.Tensor:
    """The (U, L) histories repeated to whole batches of ``batch`` rows (U=58 -> 256 rows), so that
    users/s is measured at the batch size the curve states whatever the number of test users."""
    n = math.ceil(hist.shape[0] / batch) * batch
    return torch.cat([hist] * math.ceil(n / hist.shape[0]))[:n]


def timed(search, hist: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Median users/s of ``search`` over whole batches of 256 (see `batch_rows`), and the items of
    one untimed pass over ``hist`` itself (what recall is computed from)."""
    rows = batch_rows(hist)

    def one_pass(h):
        return torch.cat([search(h[i : i + BATCH]) for i in range(0, h.shape[0], BATCH)])

    items = one_pass(hist)  # warm-up (and the results)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        one_pass(rows)
        times.append(time.perf_counter() - start)
    return rows.shape[0] / statistics.median(times), items


def split_fingerprint(data) -> str:
    """sha256 over the item count and the test users' histories and truth: equal splits, equal print."""
    h = hashlib.sha256(str(data.n_items).encode())
    for arr in (data.test.histories, data.test.truth_offsets, data.test.truth_items):
        h.update(np.ascontiguousarray(np.asarray(arr, dtype=np.int64)).tobytes())
    return h.hexdigest()


def train_into_store(url: str, name: str, dataset: str, cfg: dict) -> int:
    """``name``'s lifecycle through the flows' steps, each step a new version of ``curves-<name>``;
    returns the id of the last (trained) version."""
    from grove.flows import steps
    from grove.models.registry import get_method

    index = INDEX_PREFIX + name
    vid = steps.construct(url, index, name, cfg, dataset, split_name()).version_id
    vid = steps.train(url, vid).version_id
    if get_method(name).relearns:  # the relearnt index is the one the papers report
        vid = steps.train(url, steps.relearn(url, vid).version_id).version_id
    return vid


def measure_index(store, file: str, name: str, data, beams, k: int, repeats: int) -> dict:
    """Load the newest ``curves-<name>`` version as a server would and time/score each beam."""
    from grove.models.retriever import Retriever

    retriever = Retriever.load(store, INDEX_PREFIX + name, device="cpu")
    searcher = retriever.searcher
    hist = torch.as_tensor(np.asarray(data.test.histories)).long()
    points = []
    for beam in beams:
        ups, items = timed(lambda h, b=beam: searcher.search(h, k, b)[1], hist, repeats)
        points.append(
            {
                "beam": beam,
                "users_per_s": ups,
                "recall": recall_of(items.numpy(), data.test, k),
                "candidates": searcher.last_candidates(),
            }
        )
        print(f"  {name} beam {beam}: recall@{k} {points[-1]['recall']:.4f}, {ups:,.0f} users/s", flush=True)
    info = retriever.version
    return {"store": file, "version": info.id, "config": info.config.get("config", {}), "points": points}


def two_tower_curves(data, k: int, cfg: dict, repeats: int, faiss_params) -> dict:
    """Exact search and FAISS HNSW / IVF over the two-tower embeddings."""
    from grove.models.baselines.two_tower import TwoTowerConfig, train_two_tower

    config = config_from_dict(TwoTowerConfig, cfg)
    model, _ = train_two_tower(data, config, torch.device("cpu"))
    model.eval()
    hist = torch.as_tensor(data.test.histories).long()
    with torch.inference_mode():
        item_mat = model.item_matrix().detach().float().contiguous()  # (N, d)

    def exact(h):
        with torch.inference_mode():
            return (model.user(h) @ item_mat.T).topk(k, dim=1).indices

    ups, items = timed(exact, hist, repeats)
    out = {"exact": [{"param": None, "users_per_s": ups, "recall": recall_of(items.numpy(), data.test, k)}]}
    try:
        import faiss
    except ImportError:
        out["faiss"] = "not installed (pip install faiss-cpu)"
        return out
    base = item_mat.numpy().astype(np.float32)
    n, d = base.shape
    hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(base)
    nlist = max(1, int(4 * math.sqrt(n)))
    quant = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(base)
    ivf.add(base)
    for label, index, knob, values in (
        ("hnsw", hnsw, "efSearch", faiss_params["ef"]),
        ("ivf", ivf, "nprobe", [p for p in faiss_params["nprobe"] if p <= nlist]),
    ):
        pts = []
        for v in values:
            setattr(index, knob, v) if label == "ivf" else setattr(index.hnsw, knob, v)

            def search(h, _index=index):
                with torch.inference_mode():
                    q = model.user(h).numpy().astype(np.float32)
                return torch.as_tensor(_index.search(q, k)[1])

            ups, items = timed(search, hist, repeats)
            pts.append({"param": v, "users_per_s": ups, "recall": recall_of(items.numpy(), data.test, k)})
            print(f"  two-tower {label} {knob}={v}: recall@{k} {pts[-1]['recall']:.4f}, {ups:,.0f} users/s", flush=True)
        out[label] = pts
    return out


def store_url(file: str) -> str:
    return file if file.startswith("duckdb:") else f"duckdb:///{os.path.abspath(file)}"


def method_configs(methods, quick: bool, max_samples: int, overrides=()) -> dict:
    """quality's configs (QUICK caps with --quick), --max-samples, then the --set overrides."""
    configs = {}
    for name in methods:
        cfg = {**CONFIGS[name], **(QUICK[name] if quick else {}), "device": "cpu"}
        if name in TREE_METHODS and not quick:
            cfg["max_samples"] = max_samples
        configs[name] = cfg
    for item in overrides:
        if item.partition(".")[0] in configs:
            apply_override(configs, dict(LIFECYCLE), item)
        else:
            raise SystemExit(
                f"--set {item!r}: {item.partition('.')[0]!r} is not among the methods of this run "
                f"({', '.join(configs)})"
            )
    return configs


def stored_indexes(files, dataset: str, methods) -> tuple[object, dict]:
    """The split of ``dataset`` (the same in every store: checked) and {method: (store, file)} of
    the ``curves-*`` indexes found (one store per method: checked)."""
    from grove.indexstore.errors import GroveError
    from grove.indexstore.store import Store

    data, found, first = None, {}, None
    for file in files:
        if not file.startswith("duckdb:") and not os.path.exists(file):
            raise SystemExit(f"--from-store {file}: no such file")
        store = Store.open(store_url(file))
        try:
            split = store.load_split(dataset, split_name())
        except GroveError as exc:
            raise SystemExit(f"--from-store {file}: {exc}") from exc
        if data is None:
            data, first = split, file
        elif split_fingerprint(split) != split_fingerprint(data):
            raise SystemExit(
                f"--from-store {file}: its {dataset} split {split_name()} differs from {first}'s "
                "(other items or test users): curves must share one split"
            )
        for index, *_ in store.list_indexes():
            if index.startswith(INDEX_PREFIX):
                name = index[len(INDEX_PREFIX) :]
                if name in found:
                    raise SystemExit(f"--from-store: {index} is in both {found[name][1]} and {file}")
                found[name] = (store, file)
    wanted = methods or [m for m in METHODS if m in found]
    missing = [m for m in wanted if m not in found]
    if missing or not wanted:
        raise SystemExit(
            f"--from-store: no {INDEX_PREFIX}{missing[0] if missing else '*'} index in "
            f"{', '.join(files)} (found: {', '.join(sorted(found)) or 'none'})"
        )
    return data, {m: found[m] for m in wanted}


def write_result(result: dict, out: str, with_plot: bool) -> None:
    write_json_and_markdown(out, result, markdown)
    if with_plot:
        plot(result, out + ".png")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-1m-subset")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=[m for m in METHODS if m not in ("two_tower", "itemcf")],
        help="default: tdm (with --from-store: every curves-* index of the stores)",
    )
    p.add_argument("--beams", nargs="+", type=int, default=[1, 2, 5, 10, 20, 50, 100])
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--max-samples", type=int, default=30000)
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="override a training config field, as in benchmarks.quality (tdm.epochs=1)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads of training and timing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--store",
        default=None,
        help="DuckDB file the trained indexes are written to "
        "(versions of curves-<method>; kept); default: a temporary one",
    )
    p.add_argument("--train-only", action="store_true", help="train into --store and measure nothing")
    p.add_argument(
        "--from-store",
        nargs="+",
        default=None,
        metavar="FILE",
        help="measure the curves-* indexes of these stores (written by --train-only runs); train none",
    )
    p.add_argument("--tag", default="", help="results go to curves_<dataset>_<tag>.*")
    p.add_argument("--out-dir", default=str(RESULTS))
    a = p.parse_args(argv)
    if a.train_only and not a.store:
        raise SystemExit("--train-only needs --store (where the trained indexes are kept)")
    if a.from_store and (a.store or a.train_only or a.set):
        raise SystemExit("--from-store measures stored indexes: it takes no --store, --train-only or --set")
    torch.set_num_threads(a.threads)
    if a.quick:
        os.environ.setdefault("GROVE_QUIET", "1")
    repeats = 1 if a.quick else a.repeats
    tag = "_".join(t for t in (a.tag, "quick" if a.quick else "") if t)
    out = os.path.join(a.out_dir, f"curves_{a.dataset}{'_' + tag if tag else ''}")
    os.makedirs(a.out_dir, exist_ok=True)
    two_tower_cfg = method_configs(["two_tower"], a.quick, a.max_samples)["two_tower"]
    with tempfile.TemporaryDirectory() as work:
        if a.from_store:
            data, indexes = stored_indexes(a.from_store, a.dataset, a.methods)
            meta = {"data_path": f"stores {', '.join(a.from_store)}"}
            methods, configs = list(indexes), {}
        else:
            methods = a.methods or ["tdm"]
            configs = method_configs(methods, a.quick, a.max_samples, a.set)
            url = store_url(a.store) if a.store else f"duckdb:///{work}/curves_{a.dataset}.duckdb"
            data, meta = load_data(a.dataset, find_data_dir(a.dataset, a.data_dir), 0, work, url=url)
        result = {
            "dataset": a.dataset,
            "split": split_name(),
            "split_fingerprint": split_fingerprint(data),
            "k": a.k,
            "beams": a.beams,
            "batch": BATCH,
            "threads": a.threads,
            "repeats": repeats,
            "quick": a.quick,
            "configs": {**configs, "two_tower": two_tower_cfg},
            "machine": machine_info(),
            "n_items": data.n_items,
            "test_users": len(data.test),
            **meta,
            "methods": {},
        }
        if not a.from_store:
            from grove.indexstore.store import Store

            for name in methods:
                print(f"{name}: training", flush=True)
                start = time.perf_counter()
                vid = train_into_store(url, name, a.dataset, configs[name])
                print(
                    f"{name}: trained in {time.perf_counter() - start:,.0f} s -> version {vid} of "
                    f"{INDEX_PREFIX}{name} in {a.store or 'a temporary store'}",
                    flush=True,
                )
                if not a.train_only:
                    result["methods"][name] = measure_index(
                        Store.open(url), a.store or "(temporary)", name, data, a.beams, a.k, repeats
                    )
                    write_result(result, out, with_plot=False)  # a long run keeps what it measured
            if a.train_only:
                return result
        else:
            for name, (store, file) in indexes.items():
                print(f"{name}: measuring", flush=True)
                result["methods"][name] = measure_index(store, file, name, data, a.beams, a.k, repeats)
                result["configs"][name] = result["methods"][name]["config"]
        print("two-tower: training", flush=True)
        result["two_tower"] = two_tower_curves(
            data, a.k, two_tower_cfg, repeats, {"ef": [16, 32, 64, 128, 256], "nprobe": [1, 2, 4, 8, 16, 32, 64]}
        )
    result["load_after"] = os.getloadavg()
    write_result(result, out, with_plot=True)
    print(f"wrote {out}.json, .md and .png")
    return result


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
