"""``python -m benchmarks.quality``: the arguments, the jobs (one per dataset and seed, in
parallel processes with ``--jobs``), and the results written after every finished run."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from benchmarks.quality.data import find_data_dir
from benchmarks.quality.merge import aggregate, combine_results, merge_results
from benchmarks.quality.report import markdown
from benchmarks.quality.runner import run_one
from benchmarks.quality.settings import CONFIGS, DATASETS, KS, LIFECYCLE, METHODS, QUICK, QUICK_LIFECYCLE, RESULTS


def apply_override(configs: dict, life: dict, item: str) -> None:
    """``tdm.max_samples=30000`` -> configs["tdm"]["max_samples"] = 30000; ``life.X=V`` -> the lifecycle.
    The method's config class checks the field name when the run builds it; a bad key fails here."""
    key, sep, raw = item.partition("=")
    name, dot, field = key.partition(".")
    if not sep or not dot or not field:
        raise SystemExit(f"--set {item!r}: expected METHOD.FIELD=VALUE")
    if name != "life" and name not in configs:
        raise SystemExit(f"--set {item!r}: unknown method {name!r} (known: {', '.join(configs)}, life)")
    if name == "life" and field not in life:
        raise SystemExit(f"--set {item!r}: unknown lifecycle field {field!r} (known: {', '.join(life)})")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if name == "life":
        life[field] = tuple(value) if isinstance(value, list) else value
    else:
        from grove.indexstore.errors import GroveError
        from grove.models.method import config_from_dict
        from grove.models.registry import get_method

        try:  # an unknown field or a bad value fails now, not after the earlier methods ran
            config_from_dict(get_method(name).config_cls, {**configs[name], field: value})
        except GroveError as exc:
            raise SystemExit(f"--set {item!r}: {exc}") from exc
        configs[name][field] = value


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Quality benchmark: every method against the two-tower and Item-CF")
    p.add_argument("--dataset", nargs="+", default=["ml-1m-subset"], choices=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--device", default="auto", help="training and evaluation device (auto: CUDA if present)")
    p.add_argument("--beams", nargs="+", type=int, default=[20, 50, 100])
    p.add_argument("--cpu-threads", type=int, default=2, help="threads of the CPU speed measurement")
    p.add_argument("--speed-repeats", type=int, default=5, help="timed runs per speed figure (median)")
    p.add_argument(
        "--train-threads",
        type=int,
        default=0,
        help="torch threads of training and evaluation (0: the cores over the parallel jobs); "
        "1 when other jobs share the cores: 2 OpenMP threads on a busy 2-core machine run 5-10x slower",
    )
    p.add_argument("--no-speed", action="store_true", help="skip the CPU speed measurement")
    p.add_argument("--jobs", type=int, default=1, help="(dataset, seed) runs in parallel processes")
    p.add_argument("--quick", action="store_true", help="tiny caps everywhere: a smoke run, not figures")
    p.add_argument("--test-users", type=int, default=0, help="evaluate the first N test users only (0: all)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset folders")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="override a config field (tdm.max_samples=30000) or the lifecycle (life.jtm_relearns=1); "
        "values are JSON, else text",
    )
    p.add_argument("--tag", default="", help="results go to quality_<dataset>_<tag>.* (a run under other budgets)")
    p.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="RESULT.json",
        help="join the seeds of finished runs (same dataset, configs, methods) into quality_<dataset>_<tag>.*; "
        "runs nothing",
    )
    p.add_argument(
        "--combine",
        nargs="+",
        default=[],
        metavar="RESULT.json",
        help="one table from runs of one dataset that measured different methods or budgets "
        "(rows keyed by model and config, seeds joined, repeated baselines kept once); runs nothing",
    )
    a = p.parse_args(argv)
    if a.merge and a.combine:
        p.exit(2, "quality: --merge and --combine are two different joins; give one\n")
    if a.merge or a.combine:
        flag, join, inputs = (
            ("--merge", merge_results, a.merge) if a.merge else ("--combine", combine_results, a.combine)
        )
        try:
            merged = join([pathlib.Path(f) for f in inputs])
        except ValueError as exc:
            p.exit(2, f"quality {flag}: {exc}\n")
        stem = pathlib.Path(a.out_dir) / (
            f"quality_{merged['dataset']}" + ("_quick" if merged["quick"] else "") + (f"_{a.tag}" if a.tag else "")
        )
        if str(stem) + ".json" in {str(pathlib.Path(f)) for f in inputs}:
            p.exit(2, f"quality {flag}: the output {stem}.json is one of the inputs; give another --tag\n")
        stem.parent.mkdir(parents=True, exist_ok=True)
        write_json_and_markdown(stem, merged, markdown)
        print(markdown(merged))
        return {merged["dataset"]: merged}
    configs = {k: dict(v) for k, v in CONFIGS.items()}
    life = dict(LIFECYCLE)
    if a.quick:
        for k, v in QUICK.items():
            configs[k].update(v)
        life.update(QUICK_LIFECYCLE)
        a.speed_repeats = min(a.speed_repeats, 1)
        a.test_users = a.test_users or 64
    for item in a.set:
        apply_override(configs, life, item)
    cores = os.cpu_count() or 2
    jobs = []
    for ds in a.dataset:
        folder = find_data_dir(ds, a.data_dir)
        for i, seed in enumerate(a.seeds):
            jobs.append(
                {
                    "dataset": ds,
                    "folder": str(folder),
                    "seed": seed,
                    "device": a.device,
                    "beams": a.beams,
                    "speed": (i == 0 and not a.no_speed),
                    "cpu_threads": a.cpu_threads,
                    "repeats": a.speed_repeats,
                    "configs": configs,
                    "lifecycle": life,
                    "test_users": a.test_users or None,
                    "methods": a.methods,
                    "quiet": a.jobs > 1,
                    "threads_train": a.train_threads
                    or max(1, cores // max(1, min(a.jobs, len(a.dataset) * len(a.seeds)))),
                }
            )
    start = time.perf_counter()
    command = "python -m benchmarks.quality " + " ".join(argv if argv is not None else sys.argv[1:])
    out_dir = pathlib.Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def write(outs: list[dict], final: bool) -> dict:
        """Results of the runs so far, per dataset: JSON + Markdown (rewritten after every serial
        run, so that a run cut short keeps the seeds it finished; ``complete`` says which)."""
        results = {}
        for ds in a.dataset:
            mine = [o for o in outs if o["dataset"] == ds]
            if not mine:
                continue
            rows = [r for o in mine for r in o["rows"]]
            result = {
                "dataset": ds,
                "dataset_label": "ML-1M subset" if ds == "ml-1m-subset" else "MovieLens latest-small",
                "command": command,
                "quick": a.quick,
                "machine": machine_info(),
                "complete": final,
                "settings": {
                    "overrides": a.set,
                    "tag": a.tag,
                    "seeds": a.seeds,
                    "seeds_done": [o["seed"] for o in mine],
                    "beams": a.beams,
                    "ks": list(KS),
                    "device": a.device,
                    "cpu_threads": a.cpu_threads,
                    "speed_repeats": a.speed_repeats,
                    "exact_speed_repeats": a.speed_repeats,
                    "jobs": a.jobs,
                    "test_users": a.test_users or "all",
                    "methods": a.methods,
                },
                "configs": configs,
                "lifecycle": {k: list(v) if isinstance(v, tuple) else v for k, v in life.items()},
                "data": mine[0]["data"],
                "per_seed_data": [{"seed": o["seed"], **o["data"]} for o in mine],
                "seconds": {
                    "wall_all_datasets": time.perf_counter() - start,
                    "per_seed": {str(o["seed"]): {"total": o["seconds"], **o["method_seconds"]} for o in mine},
                },
                "errors": [e for o in mine for e in o["errors"]],
                "key_format": "metric@k[/filtered]/tag, tag = 'exact' (the model over every item) or 'b<beam>'",
                "aggregate": aggregate(rows),
                "rows": rows,
            }
            stem = f"quality_{ds}" + ("_quick" if a.quick else "") + (f"_{a.tag}" if a.tag else "")
            write_json_and_markdown(out_dir / stem, result, markdown)
            results[ds] = result
        return results

    outs = []
    if a.jobs > 1:  # results rewritten as each (dataset, seed) run ends: a run cut short keeps them
        with ProcessPoolExecutor(max_workers=a.jobs, mp_context=get_context("spawn")) as pool:
            for done in as_completed([pool.submit(run_one, j) for j in jobs]):
                outs.append(done.result())
                write(outs, final=False)
    else:
        for j in jobs:
            outs.append(run_one(j))
            write(outs, final=False)
    results = write(outs, final=True)
    for result in results.values():
        print(markdown(result))
    wall = time.perf_counter() - start
    print(f"total {wall:.0f}s", flush=True)
    return results
