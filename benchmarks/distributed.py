"""Data-parallel training with torch.distributed (issue 26.6): samples/s of 2 workers x 1 thread
against 1 x 1 thread, and the validation recall 2 workers reach against 1.

    python -m benchmarks.distributed [--methods tdm dr] [--dataset ml-1m-subset]
        [--speed-samples 6000] [--repeats 5] [--recall-samples 40000] [--seeds 1 2 3]

Both parts run on a MovieLens dataset imported into a DuckDB store in ``--workdir``.

* speed: per method, one constructed version; each run launches N workers with torch's elastic
  launcher (`grove.flows.distributed_train`'s launch, gloo, one torch thread per worker), every worker
  loads the version and the split, waits at a barrier and then runs the lifecycle's train step
  (`grove.models.lifecycle.step_result`: the same loops as ``grove train --nproc N``, without the
  store write) on ``--speed-samples`` windows; samples/s = samples / the slowest worker's
  seconds. Runs with 1 and 2 workers alternate (a VM drifts over minutes); median of
  ``--repeats``. Target: >= 1.7x.
* recall: per seed, construct -> ``grove train`` with 1 worker and with 2 (``steps.train``, the
  CLI's path) on ``--recall-samples`` windows -> recall@50 (beam 50) on the validation users.
  2 workers pass when their mean lies within the spread (min..max over seeds) of 1 worker's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from benchmarks.quality.data import find_data_dir
from benchmarks.quality.settings import DATASETS
from benchmarks.timing import at_least

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("tdm", "dr")


def _settings(method: str, samples: int) -> dict:
    """The method's default config on the CPU, limited to ``samples`` training windows."""
    return {"max_samples": samples, "device": "cpu"} | ({"epochs": 1} if method == "dr" else {})


def _store(dataset: str, workdir: str) -> str:
    from grove.flows.datasets import import_file, split_dataset
    from grove.indexstore.store import Store

    url = f"duckdb:///{workdir}/distributed_{dataset}.duckdb"
    Store.init(url)
    store = Store.open(url)
    if dataset not in {d.name for d in store.list_datasets()}:
        ratings, items = (find_data_dir(dataset, None) / f for f in DATASETS[dataset])
        import_file(store, str(ratings), dataset, items=str(items), seed=0)
    if "default" not in {s.name for s in store.list_splits(dataset)}:
        split_dataset(store, dataset, "default", seed=0)
    return url


def timed_step(url: str, version_id: int) -> tuple[float, int]:
    """One worker: load, join the group, barrier, the train step timed -> (seconds, rank)."""
    import torch

    from grove.indexstore.store import Store
    from grove.models import distributed, lifecycle

    torch.set_num_threads(1)
    store = Store.open(url)
    old = lifecycle.load(store, version_id)
    lifecycle.split_data(store, old.dataset, old.split, old.recipe.config)  # loaded before the clock
    with distributed.process_group(old.recipe.device):
        distributed.barrier()
        start = time.perf_counter()
        lifecycle.step_result(store, old, "train")
        seconds = time.perf_counter() - start
        slowest = torch.tensor([seconds], dtype=torch.float64)
        if distributed.world()[1] > 1:
            torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
        return float(slowest[0]), distributed.world()[0]


def _launch_timed(url: str, version_id: int, nproc: int) -> float:
    from grove.flows.distributed_train import launch

    return launch(timed_step, nproc, url, version_id)[0][0]


def _independent_pair(url: str, version_id: int, samples: int) -> float:
    """The machine's ceiling: two unrelated 1-worker runs at once (no all-reduce, no shared data)
    -> their summed samples/s. What 2 workers can reach on this machine at best."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        seconds = list(pool.map(_launch_timed, [url, url], [version_id, version_id], [1, 1]))
    return sum(samples / s for s in seconds)


def speed(url: str, dataset: str, method: str, samples: int, repeats: int) -> dict:
    from grove.indexstore.store import Store
    from grove.models import lifecycle

    recipe = lifecycle.Recipe.new(method, _settings(method, samples))
    v0 = lifecycle.construct(Store.open(url), f"speed-{method}", recipe, dataset).id
    runs: dict[int, list[float]] = {1: [], 2: [], 0: []}  # 0: two independent 1-worker runs at once
    for r in range(repeats):
        for n in (1, 2, 0) if r % 2 == 0 else (0, 2, 1):
            runs[n].append(_independent_pair(url, v0, samples) if n == 0 else samples / _launch_timed(url, v0, n))
            what = "2 independent 1-worker runs" if n == 0 else f"{n} worker(s)"
            print(f"{method} speed run {r + 1}/{repeats}, {what}: {runs[n][-1]:,.1f} samples/s", flush=True)
    med = {n: statistics.median(v) for n, v in runs.items()}
    return {
        "method": method,
        "samples": samples,
        "runs": runs,
        "median": med,
        "speedup": med[2] / med[1],
        "ceiling": med[0] / med[1],
    }


def recall(url: str, dataset: str, method: str, samples: int, seeds: list[int], users: int) -> dict:
    from grove.flows import steps
    from grove.indexstore.store import Store
    from grove.models import lifecycle

    out: dict[int, list[float]] = {1: [], 2: []}
    for seed in seeds:
        recipe = lifecycle.Recipe.new(method, _settings(method, samples) | {"seed": seed})
        v0 = lifecycle.construct(Store.open(url), f"recall-{method}-{seed}", recipe, dataset).id
        for n in (1, 2):
            v = steps.train(url, v0, nproc=n).version_id
            rows = lifecycle.evaluate(Store.open(url), v, "valid", (50,), (50,), users, "cpu", False)
            out[n].append(next(r.value for r in rows if r.name == "recall" and r.k == 50 and not r.filtered))
            print(f"{method} seed {seed}, {n} worker(s): recall@50 {out[n][-1]:.4f}", flush=True)
    lo, hi = min(out[1]), max(out[1])
    mean2 = statistics.fmean(out[2])
    return {
        "method": method,
        "samples": samples,
        "seeds": seeds,
        "recall_at_50": out,
        "within_spread": lo <= mean2 <= hi,
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Data-parallel training: 2 workers against 1 (`benchmarks.distributed`)",
        "",
        f"Machine: {m['cpu_count']} cores ({m['cpu_model']}), torch {m['torch']}, one torch thread per "
        f"worker, gloo; load average {m['load_average_before']} before, {result['load_average_after']} "
        f"after. Dataset {result['dataset']}. Command: `{result['command']}`.",
        "",
    ]
    if result["speed"]:
        lines += [
            "| method | windows per run | 1 worker: samples/s | 2 workers: samples/s | speed-up (target >= 1.7x) "
            "| 2 independent 1-worker runs: samples/s (machine's ceiling) |",
            "|---|---|---|---|---|---|",
        ]
        for s in result["speed"]:
            med = {int(k): v for k, v in s["median"].items()}
            lines.append(
                f"| {s['method']} | {s['samples']:,} | {med[1]:,.1f} | {med[2]:,.1f} | {s['speedup']:.2f}x "
                f"| {med[0]:,.1f} ({s['ceiling']:.2f}x) |"
            )
        lines += [
            "",
            f"Median of {result['repeats']} runs each, the three kinds of run alternating. The last column runs "
            "two unrelated one-worker trainings at the same time (no gradient exchange): the most two "
            "workers can reach on this machine's two cores.",
            "",
        ]
    if result["recall"]:
        lines += [
            "| method | windows | seeds | recall@50, 1 worker | recall@50, 2 workers | 2 within 1's spread |",
            "|---|---|---|---|---|---|",
        ]
        for r in result["recall"]:
            one, two = (r["recall_at_50"][k] for k in sorted(r["recall_at_50"], key=int))
            fmt = lambda xs: ", ".join(f"{x:.4f}" for x in xs)  # noqa: E731
            lines.append(
                f"| {r['method']} | {r['samples']:,} | {len(r['seeds'])} | {fmt(one)} | {fmt(two)} | "
                f"{'yes' if r['within_spread'] else 'no'} |"
            )
        lines += ["", f"Validation users evaluated: {result['users']:,} (beam 50)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="ml-1m-subset")
    ap.add_argument("--speed-samples", type=at_least(0), default=6000, help="0: skip the speed part")
    ap.add_argument("--repeats", type=at_least(1), default=5)
    ap.add_argument("--recall-samples", type=at_least(0), default=40_000, help="0: skip the recall part")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--users", type=at_least(1), default=2000, help="validation users evaluated")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(RESULTS / "distributed"))
    args = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"  # the workers inherit it: one thread each
    os.environ.setdefault("GROVE_QUIET", "1")
    workdir = args.workdir or tempfile.mkdtemp(prefix="grove-distributed-")
    url = _store(args.dataset, workdir)
    result: dict = {
        "command": "python -m benchmarks.distributed " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(torch_threads=1),
        "dataset": args.dataset,
        "repeats": args.repeats,
        "users": args.users,
        "speed": [],
        "recall": [],
    }
    for method in args.methods if args.speed_samples else ():
        result["speed"].append(speed(url, args.dataset, method, args.speed_samples, args.repeats))
    if args.recall_samples:
        for method in args.methods:
            result["recall"].append(recall(url, args.dataset, method, args.recall_samples, args.seeds, args.users))
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_and_markdown(args.out, result, markdown)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
