"""Tree relearning by chunk size: JTM's Algorithm 2 and DeFoRec's softmax relearning.

    python -m benchmarks.relearn_chunks [--items 10000] [--pairs 1000] [--device cpu|cuda] [--runs 5]

Both relearners score every training pair against all candidate nodes of the next ``gap`` (7)
levels, in chunks of pairs bounded by ``max_elements`` activation floats per (chunk, C, L, 36)
intermediate (`grove.models.jtm.tree_learning.learn_tree`,
`grove.models.deforec.tree_learning.learn_tree_softmax`). This times
one relearning round for each ``--sizes`` value (``0`` = the default,
`grove.models.node_scorer.default_chunk_elements`), on an untrained scorer over a binary category tree of
``--items`` items (categories of ~100) and ``--pairs`` random (69 behaviours, target) pairs:
a warm-up round on a small tree first, then the median of ``--runs`` rounds per size. Chunking
must not change the tree: the JSON records whether every size gave the same item -> leaf map.
Writes ``results/relearn_chunks_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np
import torch

from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from benchmarks.timing import at_least

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
DIM, HIST = 24, 69


def relearners():
    from grove.models.deforec.tree_learning import learn_tree_softmax
    from grove.models.jtm.hierarchical import HierarchicalScorer
    from grove.models.jtm.tree_learning import learn_tree
    from grove.models.node_scorer import TDMScorer

    return {"jtm": (HierarchicalScorer, learn_tree), "deforec": (TDMScorer, learn_tree_softmax)}


def setup(kind: str, n: int, pairs: int, seed: int):
    from grove.indexstore.samples import TrainingSamples
    from grove.models.tree_builders import category_tree

    rng = np.random.default_rng(seed)
    tree = category_tree(rng.integers(0, max(n // 100, 1), n), 2, seed=seed)
    torch.manual_seed(seed)
    scorer = relearners()[kind][0](tree, dim=DIM)
    return (
        scorer,
        tree,
        TrainingSamples.from_windows(
            rng.integers(0, n, (pairs, HIST)), rng.integers(0, n, pairs), np.zeros(pairs, np.int32)
        ),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# Tree relearning by chunk size ({res['items']:,} items, {res['pairs']:,} pairs, device {res['device']})",
        "",
        f"Machine: {m['cpu_count']} CPU cores ({m['torch_threads']} torch threads), GPU: {m['gpu'] or 'none'}; "
        f"torch {m['torch']}; load average before {m['load_average_before']}. Median of {res['runs']} "
        f"rounds after a warm-up. Default chunk on this device: 2^{res['default'].bit_length() - 1}. "
        f"Command: `{res['command']}`.",
        "",
        "| relearner | max_elements | median s per round | runs (s) | same tree as the default |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        runs = ", ".join(f"{s:.2f}" for s in r["seconds"])
        lines.append(
            f"| {r['relearner']} | 2^{r['max_elements'].bit_length() - 1}{' (default)' if r['is_default'] else ''} "
            f"| {r['median_s']:.2f} | {runs} | {'yes' if r['same_tree'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    from grove.models.node_scorer import default_chunk_elements

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=at_least(2), default=10_000)
    ap.add_argument("--pairs", type=at_least(1), default=1000)
    ap.add_argument("--relearners", nargs="+", default=["jtm", "deforec"], choices=["jtm", "deforec"])
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[0, 1 << 24], help="max_elements values; 0 = the device's default"
    )
    ap.add_argument("--runs", type=at_least(1), default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out-dir", default=str(RESULTS))
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    default = default_chunk_elements(device)
    sizes = sorted({s if s > 0 else default for s in a.sizes})
    res = {
        "command": " ".join(["python -m benchmarks.relearn_chunks", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "device": str(device),
        "items": a.items,
        "pairs": a.pairs,
        "runs": a.runs,
        "default": default,
        "rows": [],
    }
    for kind in a.relearners:
        learn = relearners()[kind][1]
        learn(*setup(kind, 1000, 20, 1), gap=7, device=device)  # warm-up
        args = setup(kind, a.items, a.pairs, 0)
        leaves = {}
        for me in sizes:
            secs = []
            for _ in range(a.runs):
                t = time.perf_counter()
                tree = learn(*args, gap=7, device=device, max_elements=me)
                _sync(device)
                secs.append(time.perf_counter() - t)
            leaves[me] = tree.item_leaf
            res["rows"].append(
                {
                    "relearner": kind,
                    "max_elements": me,
                    "is_default": me == default,
                    "median_s": statistics.median(secs),
                    "seconds": secs,
                }
            )
            print(f"{kind} 2^{me.bit_length() - 1}: {statistics.median(secs):.2f}s", flush=True)
        for r in res["rows"]:
            if r["relearner"] == kind:
                r["same_tree"] = bool(np.array_equal(leaves[r["max_elements"]], leaves[default]))
    out = pathlib.Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_and_markdown(out / f"relearn_chunks_{device.type}", res, markdown)
    print(markdown(res))
    return res


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
