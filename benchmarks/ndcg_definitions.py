"""The two NDCGs side by side (issue 30.5): grove's (ideal DCG of min(|G|, k) hits) and
RecForest's appendix D (ideal DCG of the returned list re-ordered, `ndcg_returned`).

    python -m benchmarks.ndcg_definitions [--methods recforest tdm two_tower] [--seeds 0 1 2]

Per method and seed: the method trained on ml-1m-subset (split with that seed; budgets in
``BUDGETS``, named in the results), searched for the test users at beam 100, and both NDCGs at
k = 20 and 40 (RecForest's Table 6 cut-offs) with recall beside them. The point is how far the two
definitions lie apart on the same lists, not the models' quality. Writes
``results/ndcg_definitions.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics

import torch

from benchmarks.forests import load_data
from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from grove.models.evaluation import evaluate
from grove.models.method import config_from_dict
from grove.models.registry import get_method

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "ndcg_definitions"
BUDGETS = {
    "recforest": {"trees": 2, "max_steps": 300, "pretrain_max_steps": 300, "device": "cpu"},
    "tdm": {"max_samples": 30_000, "device": "cpu"},
    "two_tower": {"max_steps": 1500, "device": "cpu"},
}
KS = (20, 40)
BEAM = 100


def run_one(method: str, seed: int) -> dict:
    data = load_data("ml-1m-subset", seed)
    m = get_method(method)
    config = config_from_dict(m.config_cls, {**BUDGETS[method], "seed": seed})
    built = m.train(config, m.construct(config, data, seed), data, seed)
    searcher = m.searcher(config, built, "cpu")
    res = evaluate(searcher, data.test, ks=KS, beam=BEAM, role="test")
    return {f"{name}@{k}": res.value(name, k) for name in ("recall", "ndcg", "ndcg_returned") for k in KS}


def markdown(result: dict) -> str:
    lines = [
        "# NDCG: grove's and RecForest's appendix D (`benchmarks.ndcg_definitions`)",
        "",
        f"ml-1m-subset test users, beam {BEAM}, seeds {result['seeds']}; mean ± std over seeds, in %. "
        "`ndcg` divides by the DCG of min(|G|, k) hits on top; `ndcg_returned` by the DCG of the "
        "returned list re-ordered (its hits on top).",
        "",
        "| method | budget | k | recall | ndcg | ndcg_returned | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, runs in result["methods"].items():
        for k in KS:
            cells = []
            for name in ("recall", "ndcg", "ndcg_returned"):
                vals = [100 * r[f"{name}@{k}"] for r in runs]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{statistics.mean(vals):.2f} ± {sd:.2f}")
            ratio = statistics.mean(r[f"ndcg_returned@{k}"] / max(r[f"ndcg@{k}"], 1e-12) for r in runs)
            budget = ", ".join(f"{a}={b}" for a, b in BUDGETS[method].items() if a != "device")
            lines.append(f"| {method} | {budget} | {k} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    result: dict = {"machine": machine_info(), "seeds": a.seeds, "budgets": BUDGETS, "methods": {}}
    for method in a.methods:
        result["methods"][method] = []
        for seed in a.seeds:
            row = run_one(method, seed)
            print(method, seed, {k: round(v, 4) for k, v in row.items()}, flush=True)
            result["methods"][method].append(row)
    write_json_and_markdown(pathlib.Path(a.out), result, markdown)


if __name__ == "__main__":
    main()
