"""Every method's lifecycle on a synthetic catalogue of 10^6 (or 10^7) items (issue 23.4).

    python -m benchmarks.large [--items 1000000] [--users 300000] [--methods tdm jtm ...]
    python -m benchmarks.large --items 10000000 --users 1000000 --methods tdm dr --set dr.dim=32

For TDM, JTM, DeFoRec, RecForest, Deep Retrieval and the two-tower: synthesise the corpus
(`grove.indexstore.synth`, planted hierarchy of interests) and split it, then each method's cycle
through the flows' steps (construct -> train -> relearn -> train; RecForest and the two-tower
construct -> train), each step in its own process (`benchmarks.large_steps`) so that its
seconds and peak RSS are its own. Then each final version is loaded as a server would and
searched for the first ``--test-users`` test users: recall@k and users/s at batch 256 for every
beam, users/s at batch 1; and FAISS HNSW / IVF over the two-tower's item vectors beside its
exact search.

Training is budgeted (the corpus has millions of windows; full epochs take days on 2 cores):
``BUDGETS`` says what each method trains on, and every row of the results names it.
``--set METHOD.FIELD=VALUE`` overrides a config field. Results: ``benchmarks/results/
large_<items>.{json,md,png}``; the store is kept in ``benchmarks/work/`` for reuse.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

from benchmarks.large_report import markdown, plot
from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from benchmarks.timing import at_least

ROOT = pathlib.Path(__file__).resolve().parent
METHODS = ("tdm", "jtm", "deforec", "recforest", "dr", "two_tower")
# per method: the config overrides of the budgeted run, and a one-line name of the budget
# (about 20-50 minutes of this 2-core CPU per method; one epoch of the 10^6-item corpus is
# 7.5M windows, days of training here)
BUDGETS = {
    "tdm": ({"max_samples": 100_000}, "1 epoch of 100,000 windows per train"),
    "jtm": ({"max_samples": 50_000}, "1 epoch of 50,000 windows per train; tree learning 100,000 pairs"),
    "deforec": ({"max_samples": 50_000}, "1 epoch of 50,000 windows per train; tree learning 100,000 pairs"),
    "recforest": (
        {"max_steps": 400, "pretrain_max_steps": 2000},
        "400 steps of 256 (102,400 windows); two-tower pretraining 2,000 steps of 256",
    ),
    "dr": ({"max_samples": 100_000}, "4 epochs of 100,000 windows per train; E-step on the same 100,000"),
    "two_tower": ({"max_steps": 4000}, "4,000 steps of 256 (1,024,000 windows)"),
}
QUICK = {
    "tdm": {"max_samples": 300},
    "jtm": {"max_samples": 300, "tree_samples": 300},
    "deforec": {"max_samples": 300, "tree_samples": 300},
    "recforest": {"max_steps": 2, "pretrain_max_steps": 2, "hidden": 16, "ff": 32, "heads": 2},
    "dr": {"max_samples": 300, "epochs": 1, "arity": 10, "dim": 8},
    "two_tower": {"max_steps": 3},
}


def run_step(spec: dict, log: list) -> dict:
    """One step in a fresh process; its JSON result (seconds, peak RSS) is appended to ``log``."""
    env = dict(os.environ, GROVE_LOCAL="1")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.large_steps", json.dumps(spec)],
        cwd=ROOT.parent,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"step {spec['step']} of {spec.get('method', '')} failed (exit {proc.returncode})")
    out = json.loads(lines[-1])
    log.append({"step": spec["step"], "method": spec.get("method"), **out})
    print(
        f"{spec.get('method') or 'data'} {spec['step']}: {out['seconds']:.1f} s, peak {out['peak_rss_gb']:.2f} GiB",
        flush=True,
    )
    return out


def lifecycle(method: str, config: dict, base: dict, log: list) -> tuple[int, int]:
    """construct -> train [-> relearn -> train]; returns (first trained version, final version)."""
    from grove.models.registry import get_method

    spec = {**base, "method": method, "index": f"large-{method}"}
    vid = run_step({**spec, "step": "construct", "config": config}, log)["version"]
    first = vid = run_step({**spec, "step": "train", "version": vid}, log)["version"]
    if get_method(method).relearns:
        vid = run_step({**spec, "step": "relearn", "version": vid}, log)["version"]
        vid = run_step({**spec, "step": "train", "version": vid}, log)["version"]
    return first, vid


def has_split(url: str, dataset: str) -> bool:
    """Whether the benchmark's store already holds the dataset and its default split."""
    from grove.indexstore.errors import GroveError
    from grove.indexstore.store import Store

    try:
        return any(s.name == "default" for s in Store.open(url).list_splits(dataset))
    except GroveError:
        return False


def configs(args) -> dict[str, dict]:
    out = {m: dict(QUICK[m] if args.quick else BUDGETS[m][0]) for m in args.methods}
    for item in args.set or []:
        key, _, value = item.partition("=")
        method, _, field = key.partition(".")
        if method not in out or not field:
            raise SystemExit(f"--set {item!r}: expected METHOD.FIELD=VALUE for one of {', '.join(out)}")
        try:
            out[method][field] = json.loads(value)
        except json.JSONDecodeError:
            out[method][field] = value
    return out


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=at_least(100), default=1_000_000)
    ap.add_argument("--users", type=at_least(100), default=300_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--test-users", type=at_least(1), default=1000)
    ap.add_argument("--batch1-users", type=at_least(1), default=100)
    ap.add_argument("--beams", type=int, nargs="+", default=[20, 50, 100])
    ap.add_argument("--k", type=at_least(1), default=50)
    ap.add_argument("--ef", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--set", action="append", metavar="METHOD.FIELD=VALUE")
    ap.add_argument("--quick", action="store_true", help="tiny budgets (a rehearsal of the script)")
    ap.add_argument("--work", default=str(ROOT / "work"), help="folder of the benchmark's store")
    ap.add_argument("--out", default=None, help="results stem (default results/large_<items>)")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    cfgs = configs(args)
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    db = work / f"large_{args.items}_{args.users}_{args.seed}.duckdb"
    base = {
        "url": f"duckdb:///{db}",
        "dataset": "large",
        "seed": args.seed,
        "k": args.k,
        "users": args.test_users,
        "batch1_users": args.batch1_users,
        "batch1_beam": 50,
    }
    result = {
        "command": "python -m benchmarks.large " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "items": args.items,
        "users": args.users,
        "k": args.k,
        "test_users": args.test_users,
        "steps": [],
        "methods": {},
        "started": time.time(),
    }
    stem = args.out or str(ROOT / "results" / f"large_{args.items}")
    if not has_split(base["url"], base["dataset"]):
        db.unlink(missing_ok=True)  # a run stopped before its split: start the store again
        run_step({**base, "step": "synth", "items": args.items, "users": args.users}, result["steps"])
        run_step({**base, "step": "split"}, result["steps"])
    for method, config in cfgs.items():
        first, vid = lifecycle(method, config, base, result["steps"])
        spec = {**base, "step": "evaluate", "method": method, "index": f"large-{method}"}
        before = None
        if first != vid:  # the initial structure, trained once: what relearning starts from
            before = run_step({**spec, "version": first, "beams": [50], "batch1_users": 1}, result["steps"])
        beams = [50] if method == "two_tower" else args.beams
        ev = run_step({**spec, "version": vid, "beams": beams}, result["steps"])
        budget = "quick" if args.quick else BUDGETS[method][1]
        changed = {k: v for k, v in config.items() if args.quick or BUDGETS[method][0].get(k) != v}
        if changed and not args.quick:  # --set overrides: the row names them
            budget += "; " + ", ".join(f"{k}={json.dumps(v)}" for k, v in changed.items())
        result["methods"][method] = {
            "version": vid,
            "config": config,
            "budget": budget,
            "eval": ev,
            "before_relearn": before,
        }
        if method == "two_tower":
            result["methods"][method]["ann"] = run_step(
                {
                    **base,
                    "step": "ann",
                    "method": method,
                    "index": "large-two_tower",
                    "version": vid,
                    "ef": args.ef,
                    "nprobe": args.nprobe,
                },
                result["steps"],
            )
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        write_json_and_markdown(stem, result, markdown)  # after every method: a partial run keeps its rows
    plot(result, stem + ".png")
    print(markdown(result))
    return result


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
