"""Same seed, same index: does one seed give the same index bit for bit on this machine?

    python -m benchmarks.reproducibility                       # ml-1m-subset, every index method, 2 threads
    python -m benchmarks.reproducibility --methods recforest --threads 1 --tag 1thread

A retraining user expects a seed to pin the index down: rerunning a cycle, or rebuilding a
version that was promoted and rolled back, should give the same tree and the same weights, and a
benchmark's figures should be reproducible to the last digit. Unit tests check this on toy data;
this script checks it on a real split at the kernel sizes of real training, where CPU kernels run
on several threads (some of them add with atomics there, in an order that changes run to run).

For each method, on ``--dataset``'s split ``seed0`` and ``--threads`` torch threads, the lifecycle
that `benchmarks.curves` stores (construct -> train, and relearn -> train for the methods that
relearn), with benchmarks.quality's QUICK configs (a few thousand training windows; a larger
budget only lets a difference grow), is run three times with seed ``--seed``:

* ``verbs`` twice: the method's verbs in this process (what benchmarks.quality does), with the
  seeds `grove.models.lifecycle.Recipe.seed` derives (train: seed + round, relearn into round r: its
  own stream);
* ``store`` once: through the flows' steps into a DuckDB store, each step a version read back
  from the store by the next (what `grove cycle` and benchmarks.curves do).

It compares the final structures (`Tree.equals` / `Forest.equals` / `PathCodes.equals`) and every
tensor of every artifact (timings in the training stats ignored): the largest absolute
difference and whether all are bitwise equal, verbs against verbs and verbs against store.

Writes ``benchmarks/results/reproducibility_<dataset>[_<tag>].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from benchmarks.quality import CONFIGS, QUICK, RESULTS, find_data_dir, load_data

METHODS = ("tdm", "jtm", "deforec", "recforest", "dr")
IGNORED = frozenset({"seconds", "stats"})  # wall-clock figures inside saved training stats


def run_verbs(name: str, values: dict, data) -> object:
    """construct -> train (-> relearn -> train) in memory through `grove.models.lifecycle` (the seeds
    the stored lifecycle uses); the final Built."""
    from grove.models.lifecycle import Recipe, advance, build
    from grove.models.registry import get_method

    recipe = Recipe.new(name, values)
    built, recipe = advance(recipe, build(recipe, data), data, "train")
    if get_method(name).relearns:
        built, recipe = advance(recipe, built, data, "relearn")
        built, recipe = advance(recipe, built, data, "train")
    return built


def run_store(name: str, values: dict, url: str, dataset: str) -> object:
    """The same lifecycle through the flows' steps; the final version read back as a Built."""
    from benchmarks.curves import train_into_store
    from grove.indexstore.store import Store
    from grove.models.method import Built

    vid = train_into_store(url, name, dataset, values)
    _, structure, artifacts = Store.open(url).read_version(vid)
    return Built(structure, artifacts)


def largest_difference(a, b) -> float:
    """Max |a - b| over the tensors and numbers of two saved states (nested dicts and lists, as
    `bytes_to_state` loads them); inf where their shapes, keys or other values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) - IGNORED
        if keys != set(b) - IGNORED:
            return float("inf")
        return max((largest_difference(a[k], b[k]) for k in keys), default=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return float("inf")
        return max((largest_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return float("inf")
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b))
    return 0.0 if a == b else float("inf")


def compare(a, b) -> dict:
    """Structure equality and the largest weight difference between two Builts."""
    from grove.models.method import bytes_to_state

    if set(a.artifacts) != set(b.artifacts):
        return {
            "structure_equal": a.structure.equals(b.structure),
            "max_abs_diff": float("inf"),
            "bitwise": False,
            "artifacts": f"{sorted(a.artifacts)} against {sorted(b.artifacts)}",
        }
    diff = max(
        (largest_difference(bytes_to_state(a.artifacts[k]), bytes_to_state(b.artifacts[k])) for k in a.artifacts),
        default=0.0,
    )
    same = a.structure.equals(b.structure)
    return {"structure_equal": same, "max_abs_diff": diff, "bitwise": same and diff == 0.0}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# Same seed, same index: {result['dataset']}",
        "",
        f"Split seed0, seed {result['seed']}, {result['threads']} torch thread(s), benchmarks.quality's QUICK "
        "configs, the lifecycle benchmarks.curves stores. `verbs`: the method's verbs in one process "
        "(run twice); `store`: the flows' steps through a DuckDB store. Largest absolute difference "
        "over every tensor of every artifact; structure compared node for node.",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, torch {m['torch']}"
        f"{', GPU ' + m['gpu'] if m.get('gpu') else ', no GPU'}.",
        "",
        "| method | verbs = verbs (structure) | verbs - verbs (max abs) | verbs = store (structure) "
        "| verbs - store (max abs) | bitwise | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["methods"].items():
        if "error" in row:
            lines.append(f"| {name} | error: {row['error']} | | | | | |")
            continue
        again, store = row["verbs_again"], row["store"]
        lines.append(
            f"| {name} | {'yes' if again['structure_equal'] else 'no'} | {again['max_abs_diff']:.3g} "
            f"| {'yes' if store['structure_equal'] else 'no'} | {store['max_abs_diff']:.3g} "
            f"| {'yes' if again['bitwise'] and store['bitwise'] else 'no'} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-1m-subset")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads of every training")
    p.add_argument("--tag", default="", help="results go to reproducibility_<dataset>_<tag>.*")
    p.add_argument("--out-dir", default=str(RESULTS))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("GROVE_QUIET", "1")
    os.makedirs(a.out_dir, exist_ok=True)
    out = os.path.join(a.out_dir, f"reproducibility_{a.dataset}{'_' + a.tag if a.tag else ''}")
    result = {
        "dataset": a.dataset,
        "seed": a.seed,
        "threads": a.threads,
        "machine": machine_info(),
        "command": " ".join(["python -m benchmarks.reproducibility", *(sys.argv[1:] if argv is None else argv)]),
        "methods": {},
    }
    with tempfile.TemporaryDirectory() as work:
        url = f"duckdb:///{work}/reproducibility.duckdb"
        data, _ = load_data(a.dataset, find_data_dir(a.dataset, a.data_dir), 0, work, url=url)
        for name in a.methods:
            values = {**CONFIGS[name], **QUICK[name], "device": "cpu", "seed": a.seed}
            start = time.perf_counter()
            print(f"{name}: three runs of seed {a.seed}", flush=True)
            try:
                one, two = run_verbs(name, values, data), run_verbs(name, values, data)
                stored = run_store(name, values, url, a.dataset)
            except Exception as exc:  # recorded; the other methods still run
                result["methods"][name] = {"config": values, "error": f"{type(exc).__name__}: {exc}"}
                print(f"{name}: FAILED {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            else:
                row = {
                    "config": values,
                    "verbs_again": compare(one, two),
                    "store": compare(one, stored),
                    "seconds": time.perf_counter() - start,
                }
                result["methods"][name] = row
                print(f"{name}: verbs again {row['verbs_again']}, store {row['store']}", flush=True)
            write_json_and_markdown(out, result, markdown)  # after each method: a long run keeps its rows
    print(f"wrote {out}.json and .md")
    return result


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    res = main()
    exit_quietly(1 if any("error" in row for row in res["methods"].values()) else 0)
