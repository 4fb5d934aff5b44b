"""Scale of tree construction and beam search (issue 7 targets).

* Balanced k-means tree (`grove.models.tree_builders.kmeans_tree`) over N random 24-d embeddings,
  K = 2 and 18: wall time and peak RSS. Every build runs in a fresh subprocess so its peak RSS
  is its own (``ru_maxrss`` of that process; ``base_rss_mb`` = RSS after making the data and a
  2,000-item warm-up build). Median of ``--repeats`` builds (``--repeats-large`` for N >= 10^6;
  both 5 by default).
* Beam search users/s at batch 256 and batch 1 with a cheap dot-product scorer over random node
  vectors (`grove.models.beam_search.DotScorer`), on trees of the same layout (built with
  `category_tree`, which is fast; the k-means tree has the same shape), N = 10^4..10^6. Cost per
  user should grow with depth only: ``per_user_growth`` = time per user at the largest N over
  the smallest.

Run: ``python -m benchmarks.tree_build [--quick] [--device cuda] [--threads 2]``; writes
``benchmarks/results/tree_build.json``. The JSON records the machine, the torch thread count and
the load average before the run (other processes on a shared 2-core machine slow every figure).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import machine_info
from benchmarks.output import write_json
from benchmarks.timing import at_least

RESULTS = Path(__file__).resolve().parent / "results" / "tree_build.json"
DIM = 24


def _worker(spec: dict) -> dict:
    """One tree build in this (fresh) process; returns time and peak RSS."""
    import numpy as np
    import torch

    from grove.models.tree_builders import kmeans_tree

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    x = np.random.default_rng(spec["seed"]).standard_normal((spec["n"], DIM)).astype(np.float32)
    kmeans_tree(x[:2000], spec["k"], seed=spec["seed"], device=spec["device"], iters=spec["iters"])  # warm-up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    tree = kmeans_tree(x, spec["k"], seed=spec["seed"], device=spec["device"], iters=spec["iters"])
    if spec["device"].startswith("cuda"):
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    leaf_levels = sorted(set(tree.level[tree.leaves].tolist()))
    return {
        "seconds": secs,
        "peak_rss_mb": peak,
        "base_rss_mb": base,
        "depth": tree.depth,
        "leaf_levels": leaf_levels,
        "n_nodes": tree.n_nodes,
    }


def _run_build(spec: dict) -> dict:
    env = dict(os.environ, GROVE_QUIET="1")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.tree_build", "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_builds(sizes, arities, repeats, repeats_large, iters, device, threads) -> list[dict]:
    rows = []
    for k in arities:
        for n in sizes:
            reps = repeats_large if n >= 1_000_000 else repeats
            runs = [
                _run_build({"n": n, "k": k, "seed": r, "iters": iters, "device": device, "threads": threads})
                for r in range(reps)
            ]
            row = {
                "n_items": n,
                "arity": k,
                "repeats": reps,
                "iters": iters,
                "seconds_median": statistics.median(r["seconds"] for r in runs),
                "seconds_all": [round(r["seconds"], 3) for r in runs],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "base_rss_mb": max(r["base_rss_mb"] for r in runs),
                "depth": runs[0]["depth"],
                "leaf_levels": runs[0]["leaf_levels"],
            }
            rows.append(row)
            print(
                f"kmeans_tree N={n:>8} K={k:>2}: {row['seconds_median']:.2f}s "
                f"(runs {row['seconds_all']}), peak RSS {row['peak_rss_mb']:.0f} MB",
                file=sys.stderr,
            )
    return rows


def _time_search(tt, scorer, b, k, beam, users, sync):
    from grove.models.beam_search import beam_search

    beam_search(tt, scorer, b, k, beam)  # warm-up
    sync()
    n_calls = max(users // b, 1)
    times = []
    for _ in range(n_calls):
        t0 = time.perf_counter()
        beam_search(tt, scorer, b, k, beam)
        sync()
        times.append(time.perf_counter() - t0)
    return b / statistics.median(times)


def bench_search(sizes, arities, k, beam, device, threads) -> list[dict]:
    import numpy as np
    import torch

    from grove.models.beam_search import DotScorer
    from grove.models.tree_builders import category_tree, tree_tensors

    if threads:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = []
    for arity in arities:
        for n in sizes:
            rng = np.random.default_rng(0)
            tree = category_tree(rng.integers(0, max(n // 100, 1), n), arity, seed=0)
            tt = tree_tensors(tree, device)
            g = torch.Generator().manual_seed(0)
            node_vec = torch.randn(tree.n_nodes, DIM, generator=g).to(device)
            row = {"n_items": n, "arity": arity, "depth": tree.depth, "k": k, "beam": beam}
            for b, users in ((256, 256 * 8), (1, 100)):
                scorer = DotScorer(torch.randn(b, DIM, generator=g).to(device), node_vec)
                row[f"users_per_s_batch{b}"] = _time_search(tt, scorer, b, k, beam, users, sync)
            rows.append(row)
            print(
                f"beam search N={n:>8} K={arity:>2} depth {tree.depth}: "
                f"{row['users_per_s_batch256']:.0f} users/s @256, {row['users_per_s_batch1']:.0f} @1",
                file=sys.stderr,
            )
    return rows


def growth(rows: list[dict]) -> dict:
    """Time per user at the largest N over the smallest, per arity and batch (target <= 2)."""
    out = {}
    for arity in sorted({r["arity"] for r in rows}):
        mine = [r for r in rows if r["arity"] == arity]
        lo, hi = mine[0], mine[-1]
        for b in (256, 1):
            key = f"users_per_s_batch{b}"
            out[f"K{arity}_batch{b}_{lo['n_items']}_to_{hi['n_items']}"] = round(lo[key] / hi[key], 3)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="10^4 and 10^5 only, one repeat")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--arities", type=int, nargs="+", default=[2, 18])
    ap.add_argument("--repeats", type=at_least(1), default=5)
    ap.add_argument("--repeats-large", type=at_least(1), default=5, help="repeats for N >= 10^6")
    ap.add_argument("--iters", type=at_least(1), default=10, help="k-means rounds per level (max)")
    ap.add_argument("--k", type=at_least(1), default=50)
    ap.add_argument("--beam", type=at_least(1), default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return {}
    sizes = [10_000, 100_000] if args.quick else args.sizes
    repeats = 1 if args.quick else args.repeats
    result = {
        "machine": machine_info(device=args.device, **({"torch_threads": args.threads} if args.threads else {})),
        "notes": "kmeans_tree: median of `repeats` builds, each in a fresh process (peak RSS "
        "is that process's ru_maxrss, including the embeddings and torch); "
        "N >= 10^6 uses `repeats_large`. Beam search: dot-product scorer over "
        "random node vectors, trees of the kmeans_tree layout.",
        "kmeans_tree": []
        if args.skip_build
        else bench_builds(sizes, args.arities, repeats, args.repeats_large, args.iters, args.device, args.threads),
        "beam_search": bench_search(sizes, args.arities, args.k, args.beam, args.device, args.threads),
    }
    result["beam_search_per_user_growth"] = growth(result["beam_search"])
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
