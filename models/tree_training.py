"""Training a node scorer on a tree: TDM's per-level sampling and binary cross-entropy.

For a sample (behaviours, target) the target's leaf and its ancestors are the positives, one per
level 1..depth (the root is skipped: it is every user's positive); at level l, ``n_neg[l]``
negatives are drawn uniformly among that level's nodes other than the positive (TDM §3.3,
"randomly selected nodes except positive ones in each level"). More negatives are drawn near the
leaves (TDM §5.2). An item on several leaves uses its first leaf (`Tree.item_leaf`). A target
whose leaf sits above level l (category trees have leaves on two levels) has no positive there;
its negatives at level l are drawn among all of that level's nodes.

Everything runs as tensors on the training device: no Python loop per sample or per node.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from grove.indexstore.samples import TrainingSamples
from grove.indexstore.structures import Tree
from grove.models.distributed import batches, epoch_order, mean_over_workers, worker_generator
from grove.models.optim import EmbeddingAdam
from grove.models.progress import Progress
from grove.models.windows import DeviceWindows


def negatives_per_level(
    level_sizes: np.ndarray, base: float, growth: float, explicit: tuple[int, ...] = (), total: int = 0
) -> np.ndarray:
    """Negatives at every level 0..depth (level 0 always 0).

    ``explicit`` (one count per level 1..depth) wins when given. Otherwise level l gets
    ``ceil(base * growth ** (l - 1))``; when those add up to more than ``total`` (> 0), the total
    is shared out instead in the same proportions (`spread_total`): the count per sample, and so
    the cost of a training step, stays bounded however deep the tree is (TDM §5.2 and JTM count
    100-200 negatives per sample over all levels, more near the leaves). Either way a level never
    gets more than its number of nodes minus one (sampling is with replacement; more would only
    repeat nodes).
    """
    depth = len(level_sizes) - 1
    room = np.maximum(np.asarray(level_sizes[1:], dtype=np.int64) - 1, 0)  # (depth,)
    if explicit:
        if len(explicit) < depth:
            raise ValueError(f"negatives gives {len(explicit)} counts but the tree has {depth} levels")
        want = np.asarray(explicit[:depth], dtype=np.int64)
    else:
        weight = growth ** np.arange(depth, dtype=np.float64)
        want = np.ceil(base * weight).astype(np.int64)
        if total > 0 and int(np.minimum(want, room).sum()) > total:
            want = spread_total(total, weight, room)
    return np.concatenate([[0], np.minimum(want, room)])


def spread_total(total: int, weight: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Integer counts that add up to ``total`` (or to ``room.sum()`` if less), in proportion to
    ``weight``, at least 1 and at most ``room`` per entry where ``room`` allows.

    Entries whose proportional share exceeds their room are filled and their excess goes to the
    others (repeated until none overflows); rounding by largest remainders, ties to the deepest.
    """
    out = np.minimum(np.ones_like(room), room)
    left = total - int(out.sum())
    free = room > out
    while left > 0 and free.any():
        share = np.zeros(weight.shape[0])
        share[free] = left * weight[free] / weight[free].sum()
        over = free & (out + share >= room)
        if over.any():  # fill the levels that overflow, then share the rest again
            left -= int((room - out)[over].sum())
            out[over], free = room[over], free & ~over
            continue
        whole = np.floor(share).astype(np.int64)
        rest = left - int(whole.sum())
        order = np.lexsort((-np.arange(share.shape[0]), -(share - whole)))  # largest remainder first
        whole[order[:rest]] += 1
        out += whole
        break
    return out


class LevelSampler:
    """Positive and negative nodes of every level for a batch of targets.

    Parameters
    ----------
    tree : the tree (breadth-first: each level's nodes are contiguous).
    n_neg : (depth + 1,) negatives per level, from `negatives_per_level`.
    device : where the tables live and samples are drawn.
    """

    def __init__(self, tree: Tree, n_neg: np.ndarray, device: torch.device):
        depth = tree.depth
        sizes = tree.level_counts()
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        leaf = tree.item_leaf
        # (depth, n_items): ancestor of every item's first leaf at levels 1..depth, -1 below the leaf
        anc = np.stack([tree.ancestors_at(leaf, lv) for lv in range(1, depth + 1)])
        # columns: for each level one positive column, then its negative columns
        col_level = np.concatenate([np.full(1 + n_neg[lv], lv) for lv in range(1, depth + 1)])
        col_pos = np.concatenate([np.arange(1 + n_neg[lv]) == 0 for lv in range(1, depth + 1)])
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), device=device)  # noqa: E731
        self.anc = as_t(anc)  # (D, n_items)
        self.col_level = as_t(col_level - 1)  # (C,) row of `anc` for each column
        self.col_pos = as_t(col_pos)  # (C,) bool
        self.col_start = as_t(starts[col_level])  # (C,) first node of the column's level
        self.col_size = as_t(sizes[col_level])  # (C,) nodes in the column's level
        self.n_columns = int(col_level.shape[0])

    def sample(self, targets: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nodes, labels and mask for ``targets`` (N,) long items.

        Returns
        -------
        nodes : (N, C) long -- tree nodes (0 where masked).
        labels : (N, C) float -- 1 for positives, 0 for negatives.
        mask : (N, C) bool -- False where a column has no node (no positive at a level below
            the target's leaf, or no other node to draw).
        """
        pos = self.anc[:, targets].T[:, self.col_level]  # (N, C) positive node, -1 if none
        has_pos = pos >= 0
        avail = self.col_size - has_pos.long()  # (N, C) nodes to draw from
        u = torch.rand(pos.shape, generator=gen, device=pos.device)
        r = torch.minimum((u * avail).long(), (avail - 1).clamp(min=0))
        # skip over the positive: uniform over the level without it
        r = r + (has_pos & (r >= pos - self.col_start)).long()
        neg = self.col_start + r
        nodes = torch.where(self.col_pos, pos, neg)
        mask = torch.where(self.col_pos, has_pos, avail > 0)
        nodes = torch.where(mask, nodes, torch.zeros_like(nodes))
        labels = self.col_pos.to(torch.float32).expand_as(nodes)
        return nodes, labels, mask


@dataclass(frozen=True)
class TrainOptions:
    """Knobs of `train_scorer` (the method configs map onto these)."""

    epochs: int = 1
    batch_size: int = 256
    lr: float = 1e-3
    lr_decay: float = 0.9  # ExponentialLR gamma applied after every epoch (JTM: 0.9)
    neg_base: float = 1.0  # level l gets ceil(neg_base * neg_growth ** (l - 1)) negatives
    neg_growth: float = 1.3
    negatives: tuple[int, ...] = ()  # explicit per-level counts (levels 1..depth) instead
    neg_total: int = 0  # > 0: at most this many negatives per sample (levels summed)
    max_samples: int | None = None  # train on a seeded random subset of this many samples
    seed: int = 0


def subsample(n: int, max_samples: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random subset of ``range(n)`` of at most ``max_samples`` (sorted)."""
    if max_samples is None or max_samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))


def train_scorer(
    scorer: nn.Module,
    tree: Tree,
    samples: TrainingSamples,
    opts: TrainOptions,
    device: torch.device,
    desc: str = "train",
) -> dict:
    """Train ``scorer`` (a `grove.models.node_scorer.TDMScorer` or subclass, built for ``tree``) in place.

    Parameters
    ----------
    samples : the training windows and targets (a seeded subset when ``opts.max_samples``).
    opts : epochs, batch size, Adam learning rate and per-epoch decay, negatives, seed.

    Returns
    -------
    dict with ``loss`` (mean of the last epoch), ``samples_per_s``, ``steps``, ``samples``.
    """
    if len(samples) == 0:
        raise ValueError("no training samples")
    data = DeviceWindows(samples, device, subsample(len(samples), opts.max_samples, opts.seed))
    n = len(data)
    sampler = LevelSampler(
        tree,
        negatives_per_level(tree.level_counts(), opts.neg_base, opts.neg_growth, tuple(opts.negatives), opts.neg_total),
        device,
    )
    gen = worker_generator(opts.seed, device)
    scorer.to(device).train()
    optim = EmbeddingAdam(scorer, lr=opts.lr)
    steps_per_epoch = math.ceil(n / opts.batch_size)
    steps, done, start = 0, 0, time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    with Progress(desc, total=opts.epochs * steps_per_epoch, unit="batch") as prog:
        for epoch in range(opts.epochs):
            loss_sum = torch.zeros((), device=device)
            for b, idx in enumerate(batches(epoch_order(n, opts.seed, epoch, device), opts.batch_size)):
                loss = bce_step(scorer, optim, sampler, data.behaviours(idx), data.targets[idx], gen)
                loss_sum += loss
                steps, done = steps + 1, min(n, (b + 1) * opts.batch_size) + epoch * n
                prog.update(1, postfix=f"{done / max(time.perf_counter() - start, 1e-9):,.0f} samples/s")
            optim.decay(opts.lr_decay)
    elapsed = max(time.perf_counter() - start, 1e-9)
    scorer.eval()
    return {
        "loss": mean_over_workers(float(loss_sum) / steps_per_epoch),
        "samples_per_s": opts.epochs * n / elapsed,
        "steps": steps,
        "samples": int(n),
    }


def bce_step(
    scorer, optim: EmbeddingAdam, sampler: LevelSampler, hist: torch.Tensor, tgt: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """One Adam step on a batch: masked mean binary cross-entropy over all sampled pairs."""
    nodes, labels, mask = sampler.sample(tgt, gen)  # (N, C) each
    logits = scorer(hist, nodes)  # (N, C)
    per_pair = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    m = mask.to(per_pair.dtype)
    loss = (per_pair * m).sum() / m.sum().clamp(min=1.0)
    optim.zero_grad()
    loss.backward()
    optim.step()
    return loss.detach()
