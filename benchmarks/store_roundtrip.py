"""Write and read back large index versions in one or more stores, side by side.

Cases (10^6 items by default): one tree with K=2 and one with K=18 (balanced layout: leaf i has
the base-K digits of i as its path, depth = ceil(log_K n)), a forest of 4 K=18 trees (each a
different random permutation of the items over the same layout), and Deep Retrieval codes with
J=3, D=3, K=100. For each: median (and all runs) of the time to write the version (one
transaction, including the derived item paths) and to read it back into validated structures,
after a warm-up that writes and reads a 1,000-item version of the same kind in the same store.

    python -m benchmarks.store_roundtrip [--items 1000000] [--runs 5] \
        [--store duckdb] [--store postgresql+psycopg://USER@HOST/EMPTY_DB]

``--store`` (repeatable; default ``duckdb``): ``duckdb`` is a fresh file in a temporary folder,
anything else a store URL of an EMPTY database (initialised here; PostgreSQL: issue 27's COPY
paths). Every store runs the same cases in the same run.

Writes ``benchmarks/results/store_roundtrip.json`` with machine information: ``results`` of the
first store (as before) and ``by_store`` for each. Targets (issues 2 and 27): write <= 10 s,
read <= 3 s for one tree of 10^6 items, on every backend.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time

import duckdb
import numpy as np
import sqlalchemy as sa

from benchmarks.machine import machine_info
from benchmarks.output import write_json
from benchmarks.timing import at_least
from grove.indexstore.store import Store
from grove.indexstore.structures import Forest, PathCodes, Tree

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "store_roundtrip.json"


def balanced_tree(n: int, arity: int, perm: np.ndarray | None = None) -> Tree:
    """Leaf i holds item perm[i] (identity by default) at the base-K digits of i."""
    depth = max(1, int(np.ceil(np.log(n) / np.log(arity) - 1e-9)))
    digits = (np.arange(n, dtype=np.int64)[:, None] // arity ** np.arange(depth - 1, -1, -1)) % arity
    items = np.arange(n, dtype=np.int64) if perm is None else perm
    return Tree.from_paths(digits, items, n, arity)


def random_codes(n: int, j: int, d: int, arity: int, seed: int) -> PathCodes:
    rng = np.random.default_rng(seed)
    # distinct paths per item: j distinct offsets added to a random base path id, mod K^D
    base = rng.integers(0, arity**d, size=(n, 1))
    path_id = (base + np.arange(j)[None, :] * 7919) % arity**d  # (n, J) distinct for j*7919 < K^D
    codes = (path_id[:, :, None] // arity ** np.arange(d - 1, -1, -1)) % arity  # (n, J, D)
    return PathCodes(codes, rng.random((n, j), dtype=np.float32), arity)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_case(store: Store, name: str, structure, runs: int) -> dict:
    writes, reads = [], []
    for r in range(runs):
        tw, info = timed(lambda r=r: store.write_version(f"bench-{name}", "bench", structure, {"run": r}))
        tr, back = timed(lambda v=info.id: store.read_structure(v))
        assert back.equals(structure), f"{name}: round trip differs"
        writes.append(tw)
        reads.append(tr)
        print(f"{name}: run {r}: write {tw:.2f}s read {tr:.2f}s", flush=True)
    return {
        "write_s": statistics.median(writes),
        "read_s": statistics.median(reads),
        "write_runs": writes,
        "read_runs": reads,
    }


def measure(url: str, n: int, runs: int) -> dict:
    """Every case on the (empty) store at ``url``: {"results": {case: ...}, "meets_targets"}."""
    rng = np.random.default_rng(0)
    Store.init(url)
    store = Store.open(url)
    cases = {
        "tree_k2": lambda m: balanced_tree(m, 2),
        "tree_k18": lambda m: balanced_tree(m, 18),
        "forest4_k18": lambda m: Forest(tuple(balanced_tree(m, 18, rng.permutation(m)) for _ in range(4))),
        "codes_j3_d3_k100": lambda m: random_codes(m, 3, 3, 100, 0),
    }
    for name, build in cases.items():  # warm-up: the same code paths once, on small versions
        run_case(store, f"warmup-{name}", build(1000), 1)
    results = {}
    for name, build in cases.items():
        tb, structure = timed(lambda b=build: b(n))
        res = run_case(store, name, structure, runs)
        res["build_s"] = tb
        res["rows"] = (
            {"nodes": sum(t.n_nodes for t in structure.trees)}
            if isinstance(structure, Forest)
            else {"nodes": structure.n_nodes}
            if isinstance(structure, Tree)
            else {"paths": structure.n_items * structure.n_paths}
        )
        results[name] = res
    meets = all(results[k]["write_s"] <= 10 and results[k]["read_s"] <= 3 for k in ("tree_k2", "tree_k18"))
    return {"results": results, "meets_targets": meets}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--items",
        type=at_least(1000),
        default=1_000_000,
        help="items per version (>= 1,000: the warm-up versions have 1,000)",
    )
    ap.add_argument("--runs", type=at_least(1), default=5, help="timed write + read runs per case (median)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument(
        "--store",
        action="append",
        metavar="URL",
        help="a store to measure (repeatable): 'duckdb' (a temporary file, the default) or an empty database's URL",
    )
    args = ap.parse_args(argv)
    info = machine_info(duckdb=duckdb.__version__, numpy=np.__version__)  # load average before the run
    by_store = {}
    for k, target in enumerate(args.store or ["duckdb"]):
        label = "duckdb" if target == "duckdb" else sa.engine.make_url(target).drivername.split("+")[0]
        label = label if label not in by_store else f"{label}_{k}"
        with tempfile.TemporaryDirectory(prefix="grove-bench-") as tmp:
            url = f"duckdb:///{tmp}/bench.duckdb" if target == "duckdb" else target
            print(f"store {label}: {sa.engine.make_url(url)!r}", flush=True)  # password hidden
            by_store[label] = measure(url, args.items, args.runs)
            if target == "duckdb":
                by_store[label]["store_file_bytes"] = os.path.getsize(f"{tmp}/bench.duckdb")
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    first = next(iter(by_store.values()))
    out = {
        "items": args.items,
        "runs": args.runs,
        "warmup": "one write + read of a 1,000-item version of each case first",
        "machine": info,
        "store_file_bytes": first.get("store_file_bytes"),
        "targets": {"tree_write_s": 10.0, "tree_read_s": 3.0},
        "results": first["results"],
        "meets_targets": all(v["meets_targets"] for v in by_store.values()),
        "by_store": by_store,
    }
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, out)
    for label, one in by_store.items():
        medians = {
            k: {"write_s": round(v["write_s"], 2), "read_s": round(v["read_s"], 2)} for k, v in one["results"].items()
        }
        print(label, json.dumps(medians))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    exit_quietly(main() or 0)
