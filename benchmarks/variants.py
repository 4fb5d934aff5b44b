"""The paper-faithful variants of issue 30, before and after, on ml-1m-subset.

    python -m benchmarks.variants [--points jtm_network ...] [--seeds 0 1 2] [--workers 2]

Each point compares the configs that differ in one choice, over the same seeds (each seed splits
the data, seeds the model and, for the tree builders, the trees):

* ``tdm_network``: TDM's attention-DNN against its "TDM DNN" (window averages), batch norm on.
* ``jtm_network``: JTM with TDM's attention network (grove before issue 30) against the
  supplement's plain network (window averages, MLP without batch norm), every window; the plain
  network also at a 10x learning rate (at these budgets it barely moves at the paper's 1e-3).
* ``jtm_longer``: the plain network at the paper's learning rate on 5x the windows (run with
  ``--seeds 0``: one seed, for how much the short budget explains).
* ``jtm_windows``: JTM's plain network (learning rate 1e-2) on every window against windows of
  >= 6 interactions.
* ``deforec_hierarchical``: DeFoRec scoring with the items against their ancestors at the
  node's level.
* ``recforest_delta``: RecForest's trees with a random fraction δ = 0.1 of every cluster
  against Algorithm 2 as printed (δ = 0), every window.
* ``recforest_windows``: RecForest (δ = 0) on every window against windows of >= 15
  interactions.

Budgets are short and named in ``BUDGETS`` (CPU, one torch thread per run): the figures compare
variants trained the same way, not converged models. A run constructs and trains once (JTM and
DeFoRec on the category tree: the scorer alone makes the difference). Metrics on the test users
at beam ``BEAM``: recall, precision and NDCG at ``KS``. ``--workers`` runs that many runs side
by side in separate processes. Writes ``results/variants.json`` and ``.md`` after every run;
runs already in that file (same method, fields and seed) are kept and not run again
(``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "variants"
BEAM = 100
KS = (20, 50)
METRICS = ("recall", "precision", "ndcg")
BUDGETS = {
    "tdm": {"max_samples": 20_000, "device": "cpu"},
    "jtm": {"max_samples": 20_000, "device": "cpu"},
    "deforec": {"max_samples": 20_000, "device": "cpu"},
    "recforest": {"trees": 2, "max_steps": 300, "pretrain_max_steps": 300, "device": "cpu"},
}
# --quick: a smoke run of every code path (seconds per run)
QUICK = {"max_samples": 600, "max_steps": 5, "pretrain_max_steps": 5}
# point -> (method, [(label, config fields), ...]); the first is "before", each other an "after"
POINTS: dict[str, tuple[str, list[tuple[str, dict]]]] = {
    "tdm_network": ("tdm", [("attention", {"network": "attention"}), ("average", {"network": "average"})]),
    "jtm_network": (
        "jtm",
        [
            ("attention + BN", {"network": "attention", "batch_norm": True, "min_behaviours": 1}),
            ("average, no BN", {"network": "average", "batch_norm": False, "min_behaviours": 1}),
            ("average, no BN, lr 1e-2", {"network": "average", "batch_norm": False, "min_behaviours": 1, "lr": 0.01}),
        ],
    ),
    "jtm_longer": (
        "jtm",
        [
            ("average, no BN", {"network": "average", "batch_norm": False, "min_behaviours": 1}),
            (
                "average, no BN, 100,000 windows",
                {"network": "average", "batch_norm": False, "min_behaviours": 1, "max_samples": 100_000},
            ),
        ],
    ),
    "jtm_windows": (
        "jtm",
        [
            ("every window (lr 1e-2)", {"network": "average", "batch_norm": False, "min_behaviours": 1, "lr": 0.01}),
            (
                ">= 6 interactions (lr 1e-2)",
                {"network": "average", "batch_norm": False, "min_behaviours": 5, "lr": 0.01},
            ),
        ],
    ),
    "deforec_hierarchical": ("deforec", [("items", {"hierarchical": False}), ("ancestors", {"hierarchical": True})]),
    "recforest_delta": (
        "recforest",
        [
            ("δ = 0.1", {"random_ratio": 0.1, "min_behaviours": 1}),
            ("δ = 0", {"random_ratio": 0.0, "min_behaviours": 1}),
        ],
    ),
    "recforest_windows": (
        "recforest",
        [
            ("every window", {"random_ratio": 0.0, "min_behaviours": 1}),
            (">= 15 interactions", {"random_ratio": 0.0, "min_behaviours": 14}),
        ],
    ),
}


def run_one(method: str, fields: dict, seed: int, quick: bool = False) -> dict:
    """Construct and train ``method`` with ``fields`` on ml-1m-subset split by ``seed``; the test
    users' metrics at beam `BEAM`, the training windows used and the seconds taken."""
    import torch

    from benchmarks.forests import load_data
    from grove.models.evaluation import evaluate
    from grove.models.method import config_from_dict
    from grove.models.registry import get_method

    torch.set_num_threads(1)
    m = get_method(method)
    budget = {k: QUICK.get(k, v) for k, v in BUDGETS[method].items()} if quick else BUDGETS[method]
    config = config_from_dict(m.config_cls, {**budget, **fields, "seed": seed})
    data = load_data("ml-1m-subset", seed, min_behaviours=getattr(config, "min_behaviours", 1))
    start = time.perf_counter()
    built = m.train(config, m.construct(config, data, seed), data, seed)
    seconds = time.perf_counter() - start
    res = evaluate(m.searcher(config, built, "cpu"), data.test, ks=KS, beam=BEAM, role="test")
    out = {f"{name}@{k}": res.value(name, k) for name in METRICS for k in KS}
    return out | {"windows": len(data.train), "seconds": seconds}


def _same(run: dict, method: str, fields: dict, seed: int) -> bool:
    return run["method"] == method and run["fields"] == fields and run["seed"] == seed


def _runs(result: dict, method: str, fields: dict) -> dict[int, dict]:
    """seed -> metrics of the runs of ``method`` with exactly ``fields``."""
    return {r["seed"]: r for r in result["runs"] if r["method"] == method and r["fields"] == fields}


def markdown(result: dict) -> str:
    lines = [
        "# Paper-faithful variants (`benchmarks.variants`)",
        "",
        f"ml-1m-subset test users, beam {BEAM}, seeds {result['seeds']}; mean ± std over seeds, in %. "
        "Δ: a variant minus the point's first, mean ± std over seeds of the per-seed difference "
        "(same split, same seed). Seconds: construct + train, one thread, two runs side by side.",
        "",
        "| point | variant | windows | s | " + " | ".join(f"{n}@{k}" for n in METRICS for k in KS) + " | Δ recall@50 |",
        "|---|---|---|---|" + "---|" * (len(METRICS) * len(KS)) + "---|",
    ]
    for point, (method, variants) in POINTS.items():
        runs = [_runs(result, method, fields) for _, fields in variants]
        if not all(runs):
            continue
        for i, (label, _) in enumerate(variants):
            rows = [runs[i][s] for s in sorted(runs[i])]
            cells = []
            for name in METRICS:
                for k in KS:
                    vals = [100 * r[f"{name}@{k}"] for r in rows]
                    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                    cells.append(f"{statistics.mean(vals):.2f} ± {sd:.2f}")
            delta = ""
            if i > 0:
                common = sorted(set(runs[0]) & set(runs[i]))
                diffs = [100 * (runs[i][s]["recall@50"] - runs[0][s]["recall@50"]) for s in common]
                sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                delta = f"{statistics.mean(diffs):+.2f} ± {sd:.2f}"
            windows = statistics.mean(r["windows"] for r in rows)
            secs = statistics.median(r["seconds"] for r in rows)
            lines.append(f"| {point} | {label} | {windows:,.0f} | {secs:.0f} | " + " | ".join(cells) + f" | {delta} |")
    lines += ["", "Budgets: " + "; ".join(f"{m} {b}" for m, b in BUDGETS.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", nargs="+", default=list(POINTS), choices=list(POINTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=1, help="runs side by side, one process and one thread each")
    ap.add_argument("--out", default=str(RESULTS), help="results stem: writes STEM.json and STEM.md")
    ap.add_argument("--quick", action="store_true", help="tiny budgets: check every path runs (figures meaningless)")
    ap.add_argument("--fresh", action="store_true", help="ignore the runs already in STEM.json")
    a = ap.parse_args(argv)
    out = pathlib.Path(a.out)
    before = pathlib.Path(str(out) + ".json")
    kept = json.loads(before.read_text()) if before.exists() and not a.fresh else {}
    runs = [r for r in kept.get("runs", []) if kept.get("quick") == a.quick and kept.get("budgets") == BUDGETS]
    seeds = sorted(set(a.seeds) | {r["seed"] for r in runs})
    result: dict = {"machine": machine_info(), "seeds": seeds, "beam": BEAM, "budgets": BUDGETS, "quick": a.quick}
    result["runs"] = runs
    # one run per distinct (method, fields, seed) not in the results yet: points share runs
    jobs = []
    for point in a.points:
        method, variants = POINTS[point]
        for _, fields in variants:
            for seed in a.seeds:
                job = (method, fields, seed)
                if job not in jobs and not any(_same(r, *job) for r in runs):
                    jobs.append(job)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    failed = []
    with ProcessPoolExecutor(max_workers=a.workers) as pool:
        futures = {pool.submit(run_one, *job, a.quick): job for job in jobs}
        for fut in as_completed(futures):
            method, fields, seed = futures[fut]
            try:
                row = fut.result()
            except Exception as exc:  # one failed run must not lose the others in flight
                print(method, fields, "seed", seed, f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                failed.append((method, fields, seed))
                continue
            print(method, fields, "seed", seed, {k: round(v, 4) for k, v in row.items()}, flush=True)
            result["runs"].append({"method": method, "fields": fields, "seed": seed, **row})
            write_json_and_markdown(out, result, markdown)
    write_json_and_markdown(out, result, markdown)
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed (see above); a second call runs only them")


if __name__ == "__main__":
    main()
