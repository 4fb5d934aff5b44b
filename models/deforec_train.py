"""DeFoRec's learning (SIGIR 2022): the layer-wise sampled-softmax trainer of a one-logit node
scorer (§4, Eq. 6-9) and tree learning by the softmax matching score (§5, Eq. 10).

Training: for a sample (behaviours, target), at every level l = 1..depth the target's ancestor
is the positive class and m negatives are drawn uniformly with replacement among the level's
other c(l) - 1 nodes (`models.tree_training.LevelSampler` with m per level). Negative logits are
corrected by ``- ln(m_l * q_l)`` with ``q_l = 1 / (c(l) - 1)``; the positive's logit is left as
is (Eq. 6). The loss of a level is ``logsumexp(corrected) - positive`` (Eq. 7); levels are summed
(Eq. 9), samples averaged. ``m_l = min(m, c(l) - 1)``: a level with fewer nodes than m draws
each of its nodes about once (duplicates would only repeat them; the correction uses m_l). A
target whose first leaf sits above level l (category trees) has no class at l: that level is
skipped for it.

Tree learning: JTM's top-down assignment with gap d (`models.jtm`) where an item's weight for a
candidate node n_j at level l = min(l0 + d, depth) under its current node is
``sum over its training pairs of log softmax_j(o_u^j)`` over the c candidates (Eq. 10), then
`models.jtm.assign_with_capacity` (capacity = leaves under the node; the rebalance order of JTM).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from indexstore.structures import Tree
from models.jtm import assign_with_capacity, layout_depth, old_leaf_positions, position_maps
from models.progress import Progress
from models.tdm import TDMScorer, default_chunk_elements
from models.tree_training import LevelSampler, TrainOptions, negatives_per_level, subsample


class SoftmaxLevels:
    """Columns of a `LevelSampler` grouped per level, with the logQ correction per column."""

    def __init__(self, tree: Tree, m: int, device: torch.device):
        sizes = tree.level_counts()
        n_neg = negatives_per_level(sizes, 0, 1, explicit=(m,) * tree.depth)  # (depth+1,)
        self.sampler = LevelSampler(tree, n_neg, device)
        # correction ln(m_l * q_l) = ln(m_l / (c(l) - 1)) on negative columns, 0 on positives
        corr = [np.concatenate([[0.0], np.full(n_neg[lv], math.log(n_neg[lv] / max(sizes[lv] - 1, 1))
                                               if n_neg[lv] else 0.0)]) for lv in range(1, tree.depth + 1)]
        self.correction = torch.as_tensor(np.concatenate(corr), dtype=torch.float32, device=device)
        self.bounds = np.concatenate([[0], np.cumsum(1 + n_neg[1:])])  # column range per level

    def loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """logits, mask (N, C) -> mean over samples of sum over levels of Eq. 7."""
        adj = (logits - self.correction).masked_fill(~mask, float("-inf"))
        total = logits.new_zeros(logits.shape[0])
        for a, b in zip(self.bounds[:-1], self.bounds[1:]):  # one slice per level (depth ~ 3-12)
            has = mask[:, a]  # a positive exists at this level
            lvl = torch.logsumexp(adj[:, a:b], dim=1) - logits[:, a]
            total = total + torch.where(has, lvl, torch.zeros_like(lvl))
        return total.mean()


def train_softmax_scorer(scorer: TDMScorer, tree: Tree, behaviours: np.ndarray, targets: np.ndarray,
                         m: int, opts: TrainOptions, device: torch.device, max_steps: int = 0) -> dict:
    """Train ``scorer`` (built for ``tree``) in place with layer-wise sampled softmax.

    Returns dict loss (mean of the last epoch), samples_per_s, steps, samples."""
    keep = subsample(len(targets), opts.max_samples, opts.seed)
    beh = torch.as_tensor(np.asarray(behaviours)[keep], device=device)
    tgt = torch.as_tensor(np.asarray(targets)[keep].astype(np.int64), device=device)
    n = int(tgt.shape[0])
    if n == 0:
        raise ValueError("no training samples")
    levels = SoftmaxLevels(tree, m, device)
    gen = torch.Generator(device=device).manual_seed(opts.seed)
    scorer.to(device).train()
    optim = torch.optim.Adam(scorer.parameters(), lr=opts.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(optim, gamma=opts.lr_decay)
    per_epoch = math.ceil(n / opts.batch_size)
    total = per_epoch * opts.epochs if max_steps <= 0 else min(per_epoch * opts.epochs, max_steps)
    steps, done, loss_sum, start = 0, 0, 0.0, time.perf_counter()
    with Progress("deforec training", total=total, unit="batch") as prog:
        while steps < total:
            order = torch.randperm(n, generator=gen, device=device)
            loss_sum, batches = 0.0, 0
            for b in range(per_epoch):
                if steps >= total:
                    break
                idx = order[b * opts.batch_size:(b + 1) * opts.batch_size]
                loss = softmax_step(scorer, optim, levels, beh[idx].long(), tgt[idx], gen)
                steps, done, batches = steps + 1, done + idx.numel(), batches + 1
                loss_sum += float(loss)
                prog.update(1, postfix=f"loss {loss_sum / batches:.3f}")
            sched.step()
    scorer.eval()
    elapsed = max(time.perf_counter() - start, 1e-9)
    return {"loss": loss_sum / max(batches, 1), "samples_per_s": done / elapsed, "steps": steps,
            "samples": done}


def softmax_step(scorer: TDMScorer, optim, levels: SoftmaxLevels, hist: torch.Tensor, tgt: torch.Tensor,
                 gen: torch.Generator) -> torch.Tensor:
    """One Adam step on a batch, hist (N, L) and tgt (N,): Eq. 9 over freshly drawn negatives.
    Returns the (detached) loss."""
    nodes, _, mask = levels.sampler.sample(tgt, gen)  # (N, C)
    loss = levels.loss(scorer(hist, nodes), mask)
    optim.zero_grad(set_to_none=True)
    loss.backward()
    optim.step()
    return loss.detach()


def learn_tree_softmax(scorer: TDMScorer, tree: Tree, behaviours: np.ndarray, targets: np.ndarray,
                       gap: int = 7, max_samples: int | None = None, seed: int = 0,
                       device: torch.device | str = "cpu", max_elements: int | None = None) -> Tree:
    """A new tree from the trained ``scorer`` by the softmax matching score (Eq. 10).

    Parameters
    ----------
    scorer : trained on ``tree``; behaviours (n, L), targets (n,) training pairs.
    gap : d, levels assigned per step; max_samples : seeded subset of pairs to score.
    max_elements : activation floats per chunk of pairs (None: `models.tdm.default_chunk_elements`).

    Returns
    -------
    Tree of arity ``tree.arity`` with all leaves at depth ceil(log_K n_items), one leaf per item.
    """
    if gap < 1:
        raise ValueError(f"gap must be >= 1, got {gap}")
    device = torch.device(device)
    if max_elements is None:  # activation floats per chunk of pairs: 2**20 on CPU, large on CUDA
        max_elements = default_chunk_elements(device)
    k, n = tree.arity, tree.n_items
    depth = layout_depth(n, k)
    keep = subsample(len(targets), max_samples, seed)
    hist = torch.as_tensor(np.asarray(behaviours)[keep], device=device)
    tgt = torch.as_tensor(np.asarray(targets)[keep].astype(np.int64), device=device)
    counts = torch.bincount(tgt, minlength=n).to(torch.float32)
    maps = [torch.as_tensor(mp, device=device) for mp in position_maps(tree, depth)]
    old_leaf = torch.as_tensor(old_leaf_positions(tree, depth), device=device)
    cur = torch.zeros(n, dtype=torch.int64, device=device)  # position of every item at level l0
    scorer = scorer.to(device).eval()
    l0 = 0
    with Progress("deforec tree learning", total=depth, unit="level") as prog:
        while l0 < depth:
            lv = min(l0 + gap, depth)
            g = lv - l0
            weights = _softmax_weights(scorer, maps[lv], k ** g, cur, hist, tgt, max_elements)
            old_child = old_leaf // k ** (depth - lv) - cur * k ** g
            old_child = torch.where((old_child >= 0) & (old_child < k ** g), old_child, -1)
            child = assign_with_capacity(weights, counts, cur, old_child, capacity=k ** (depth - lv))
            cur = cur * k ** g + child
            prog.update(g)
            l0 = lv
    digits = k ** torch.arange(depth - 1, -1, -1, device=device)
    paths = (cur.unsqueeze(1) // digits) % k  # (n, depth)
    return Tree.from_paths(paths.cpu().numpy(), np.arange(n), n, k)


def _softmax_weights(scorer, level_map: torch.Tensor, width: int, cur: torch.Tensor,
                     hist: torch.Tensor, tgt: torch.Tensor, max_elements: int) -> torch.Tensor:
    """(n_items, width): sum over each item's pairs of log softmax over the ``width`` candidate
    positions under the item's current node (positions -> old-tree nodes by ``level_map``)."""
    n = cur.shape[0]
    out = torch.zeros(n, width, device=cur.device)
    offs = torch.arange(width, device=cur.device)
    per_pair = width * hist.shape[1] * max(scorer.act_in.out_features, scorer.dim)
    chunk = max(1, max_elements // per_pair)
    with torch.inference_mode():
        for s in range(0, tgt.shape[0], chunk):
            t, h = tgt[s:s + chunk], hist[s:s + chunk].long()
            nodes = level_map[cur[t].unsqueeze(1) * width + offs]  # (U, width) old-tree nodes
            out.index_add_(0, t, torch.log_softmax(scorer(h, nodes), dim=1))
    return out
