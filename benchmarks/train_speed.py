"""Training speed of the tree scorers: the activation unit in checkpointed chunks vs in one piece.

    python -m benchmarks.train_speed [--batches 64 256] [--runs 5] [--device cpu]

`grove.models.node_scorer.TDMScorer.forward_rows` runs the activation unit in user chunks of
``train_chunk_elements`` floats per (chunk, C, L, h) intermediate under activation checkpointing
when it trains on CPU. This measures what that buys, per trainer:

* ``tdm``: `TDMScorer` with TDM's per-level binary cross-entropy (`grove.models.tree_training.bce_step`,
  negatives per level from `TDMConfig`'s defaults, 2 * 1.3^(l-1));
* ``jtm``: `grove.models.jtm.hierarchical.HierarchicalScorer` (behaviours mapped to the scored node's level: no
  behaviour sharing across a user's C nodes), same loss;
* ``deforec``: `TDMScorer` with DeFoRec's layer-wise sampled softmax
  (`grove.models.deforec.training.softmax_step`, m = `DeFoRecConfig().negatives`, 40).

Corpus: synthetic, the shape of ml-1m-subset: 3,615 items on a K = 2 category tree (18
categories; depth 12), full 69-item histories. For every (trainer, batch size) one scorer is
built and its Adam steps alternate between the default chunk and one piece
(``train_chunk_elements`` = 2**62), a warm-up step of each first, then ``--runs`` timed steps of
each: samples/s = batch / median step seconds, and the ratio of the two measured side by side.
Writes ``results/train_speed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown

RESULTS = Path(__file__).resolve().parent / "results"
N_ITEMS, CATEGORIES, HIST = 3615, 18, 69
ONE_PIECE = 1 << 62


def _trainer(kind: str, device, seed: int = 0):
    """(scorer, step(hist, tgt) -> loss) for one trainer kind on the synthetic tree."""
    import numpy as np
    import torch

    from grove.models.deforec.method import DeFoRecConfig
    from grove.models.deforec.training import SoftmaxLevels, softmax_step
    from grove.models.jtm.hierarchical import HierarchicalScorer
    from grove.models.node_scorer import TDMScorer
    from grove.models.optim import EmbeddingAdam
    from grove.models.tdm.method import TDMConfig
    from grove.models.tree_builders import category_tree
    from grove.models.tree_training import LevelSampler, bce_step, negatives_per_level

    tree = category_tree(np.random.default_rng(seed).integers(0, CATEGORIES, N_ITEMS), 2, seed=seed)
    torch.manual_seed(seed)
    scorer = (HierarchicalScorer if kind == "jtm" else TDMScorer)(tree, dim=24).to(device).train()
    optim = EmbeddingAdam(scorer, lr=1e-3)
    gen = torch.Generator(device=device).manual_seed(seed)
    if kind == "deforec":
        levels = SoftmaxLevels(tree, DeFoRecConfig().negatives, device, DeFoRecConfig().negatives_total)
        return scorer, tree, lambda h, t: softmax_step(scorer, optim, levels, h, t, gen)
    cfg = TDMConfig()  # the negatives per level of the TDM and JTM configs' defaults
    sampler = LevelSampler(
        tree, negatives_per_level(tree.level_counts(), cfg.neg_base, cfg.neg_growth, total=cfg.neg_total), device
    )
    return scorer, tree, lambda h, t: bce_step(scorer, optim, sampler, h, t, gen)


def measure(kind: str, batch: int, runs: int, device) -> dict:
    """Median step seconds with the default chunk and in one piece, alternating."""
    import numpy as np
    import torch

    scorer, tree, step = _trainer(kind, device)
    rng = np.random.default_rng(1)
    hist = torch.as_tensor(rng.integers(0, N_ITEMS, (batch, HIST)), device=device)
    tgt = torch.as_tensor(rng.integers(0, N_ITEMS, batch), device=device)
    chunk = scorer.train_chunk_elements
    secs = {"chunked": [], "one_piece": []}
    for r in range(runs + 1):  # r = 0: warm-up
        for mode in ("chunked", "one_piece") if r % 2 == 0 else ("one_piece", "chunked"):
            scorer.train_chunk_elements = chunk if mode == "chunked" else ONE_PIECE
            t0 = time.perf_counter()
            step(hist, tgt)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r > 0:
                secs[mode].append(time.perf_counter() - t0)
    med = {m: statistics.median(v) for m, v in secs.items()}
    return {
        "trainer": kind,
        "batch": batch,
        "depth": tree.depth,
        "chunk_elements": chunk,
        "runs": runs,
        "step_s": secs,
        "samples_per_s": {m: round(batch / v, 1) for m, v in med.items()},
        "speedup": round(med["one_piece"] / med["chunked"], 2),
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Training speed: checkpointed chunks vs one piece (`python -m benchmarks.train_speed`)",
        "",
        f"Machine: {m['cpu_count']} cores ({m['cpu_model']}), torch {m['torch']} with {m['torch_threads']} "
        f"threads, device {result['device']}, GPU {m['gpu']}; load average {m['load_average_before']} before, "
        f"{result['load_average_after']} after (a shared machine: the load says what else ran).",
        "",
        "| trainer | batch | samples/s chunked | samples/s one piece | speed-up (median, side by side) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['trainer']} | {r['batch']} | {r['samples_per_s']['chunked']} | {r['samples_per_s']['one_piece']} "
        f"| {r['speedup']}x |"
        for r in result["rows"]
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    import os

    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainers", nargs="+", default=["tdm", "jtm", "deforec"], choices=["tdm", "jtm", "deforec"])
    ap.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = machine_info(device=args.device)
    rows = []
    for kind in args.trainers:
        for b in args.batches:
            rows.append(measure(kind, b, args.runs, device))
            print(f"{kind} batch {b}: {rows[-1]['samples_per_s']} ({rows[-1]['speedup']}x)", flush=True)
    result = {
        "machine": info,
        "device": args.device,
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_and_markdown(args.out / "train_speed", result, markdown)
    print(markdown(result))
    return result


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
