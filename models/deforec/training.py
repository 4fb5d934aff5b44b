"""DeFoRec's training (SIGIR 2022): the layer-wise sampled-softmax trainer of a one-logit node
scorer (§4, Eq. 6-9); its tree learning is `grove.models.deforec.tree_learning`.

Training: for a sample (behaviours, target), at every level l = 1..depth the target's ancestor
is the positive class and m negatives are drawn uniformly with replacement among the level's
other c(l) - 1 nodes (`grove.models.tree_training.LevelSampler` with m per level). Negative logits are
corrected by ``- ln(m_l * q_l)`` with ``q_l = 1 / (c(l) - 1)``; the positive's logit is left as
is (Eq. 6). The loss of a level is ``logsumexp(corrected) - positive`` (Eq. 7); levels are summed
(Eq. 9), samples averaged. ``m_l = min(m, c(l) - 1)``: a level with fewer nodes than m draws
each of its nodes about once (duplicates would only repeat them; the correction uses m_l). A
target whose first leaf sits above level l (category trees) has no class at l: that level is
skipped for it.

Negatives per sample: m per level makes a sample's cost grow with the depth (m = 40 on a depth-20
tree of 10^6 items: 657 columns); ``m_total`` caps their sum by lowering the deep levels' m_l
evenly (`level_negatives`; DeFoRec's default 480 keeps m = 40 on every level of trees up to
depth 14, and 28 per deep level at depth 20).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from grove.indexstore.samples import TrainingSamples
from grove.indexstore.structures import Tree
from grove.models.distributed import batches, epoch_order, mean_over_workers, worker_generator
from grove.models.node_scorer import TDMScorer
from grove.models.optim import EmbeddingAdam
from grove.models.progress import Progress
from grove.models.tree_training import LevelSampler, TrainOptions, subsample
from grove.models.windows import DeviceWindows


def level_negatives(level_sizes: np.ndarray, m: int, total: int = 0) -> np.ndarray:
    """Negatives m_l at every level 0..depth (level 0 always 0): ``min(m, c(l) - 1)``, and when
    those add up to more than ``total`` (> 0), ``min(m, c(l) - 1, t)`` with the largest t that
    keeps the sum within ``total`` (the deep levels, which all have room for m, give up the same
    number each; shallow levels with fewer nodes keep theirs).
    """
    room = np.minimum(m, np.maximum(np.asarray(level_sizes[1:], dtype=np.int64) - 1, 0))  # (depth,)
    if total > 0 and int(room.sum()) > total:
        t = max((c for c in range(int(room.max()), -1, -1) if int(np.minimum(room, c).sum()) <= total), default=0)
        room = np.minimum(room, max(t, 1))
    return np.concatenate([[0], room])


class SoftmaxLevels:
    """Columns of a `LevelSampler` grouped per level, with the logQ correction per column."""

    def __init__(self, tree: Tree, m: int, device: torch.device, total: int = 0):
        sizes = tree.level_counts()
        n_neg = level_negatives(sizes, m, total)  # (depth+1,)
        self.sampler = LevelSampler(tree, n_neg, device)
        # correction ln(m_l * q_l) = ln(m_l / (c(l) - 1)) on negative columns, 0 on positives
        corr = [
            np.concatenate(
                [[0.0], np.full(n_neg[lv], math.log(n_neg[lv] / max(sizes[lv] - 1, 1)) if n_neg[lv] else 0.0)]
            )
            for lv in range(1, tree.depth + 1)
        ]
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


def train_softmax_scorer(
    scorer: TDMScorer,
    tree: Tree,
    samples: TrainingSamples,
    m: int,
    opts: TrainOptions,
    device: torch.device,
    max_steps: int = 0,
    m_total: int = 0,
) -> dict:
    """Train ``scorer`` (built for ``tree``) in place with layer-wise sampled softmax, ``m``
    negatives per level and at most ``m_total`` per sample (`level_negatives`).

    Returns dict loss (mean of the last epoch), samples_per_s, steps, samples."""
    if len(samples) == 0:
        raise ValueError("no training samples")
    data = DeviceWindows(samples, device, subsample(len(samples), opts.max_samples, opts.seed))
    n = len(data)
    levels = SoftmaxLevels(tree, m, device, m_total)
    gen = worker_generator(opts.seed, device)
    scorer.to(device).train()
    optim = EmbeddingAdam(scorer, lr=opts.lr)
    per_epoch = math.ceil(n / opts.batch_size)
    total = per_epoch * opts.epochs if max_steps <= 0 else min(per_epoch * opts.epochs, max_steps)
    steps, done, loss_sum, n_batches, start = 0, 0, 0.0, 0, time.perf_counter()
    with Progress("deforec training", total=total, unit="batch") as prog:
        epoch = 0
        while steps < total:
            loss_sum, n_batches = 0.0, 0
            for b, idx in enumerate(batches(epoch_order(n, opts.seed, epoch, device), opts.batch_size)):
                if steps >= total:
                    break
                loss = softmax_step(scorer, optim, levels, data.behaviours(idx), data.targets[idx], gen)
                steps, n_batches = steps + 1, n_batches + 1
                done += min(opts.batch_size, n - b * opts.batch_size)  # the global batch's samples
                loss_sum += float(loss)
                prog.update(1, postfix=f"loss {loss_sum / n_batches:.3f}")
            optim.decay(opts.lr_decay)
            epoch += 1
    scorer.eval()
    elapsed = max(time.perf_counter() - start, 1e-9)
    mean_loss = mean_over_workers(loss_sum / max(n_batches, 1))
    return {"loss": mean_loss, "samples_per_s": done / elapsed, "steps": steps, "samples": done}


def softmax_step(
    scorer: TDMScorer,
    optim: EmbeddingAdam,
    levels: SoftmaxLevels,
    hist: torch.Tensor,
    tgt: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """One Adam step on a batch, hist (N, L) and tgt (N,): Eq. 9 over freshly drawn negatives.
    Returns the (detached) loss."""
    nodes, _, mask = levels.sampler.sample(tgt, gen)  # (N, C)
    loss = levels.loss(scorer(hist, nodes), mask)
    optim.zero_grad()
    loss.backward()
    optim.step()
    return loss.detach()
