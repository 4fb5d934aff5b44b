"""Top-down tree learning shared by JTM (Algorithm 2) and DeFoRec (§5): the layout, the pairs,
the assignment loop and the capacity rebalance. What differs, the weight of an item for a
candidate position, is a function the caller passes (`grove.models.jtm`, `grove.models.deforec.training`).

Items are re-assigned to the positions of a complete K-ary tree of depth ``D = ceil(log_K n)``,
top down, ``gap`` (d) levels at a time: at step l0 -> l = min(l0 + d, D) every item, already
under a position of level l0, picks one of its K**(l - l0) descendants at level l by its weight
(summed over the item's training pairs), under a capacity of K**(D - l) items per position
(`assign_with_capacity`). The result is a complete layout pruned of empty subtrees: every item
at exactly one leaf, all leaves at depth D.

Scoring the pairs is the whole cost: O(pairs * K**d) scorer evaluations per step, each linear
in the history's length. `PairChunks` orders the pairs by history length so that every chunk
is cut to its own longest history (on a corpus of short histories, most of the 69 columns
are padding) and sizes each chunk by that width.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from grove.indexstore.samples import TrainingSamples
from grove.indexstore.structures import Tree
from grove.models.distributed import all_reduce_sum_, mine, world
from grove.models.node_scorer import position_keys
from grove.models.progress import Progress
from grove.models.tree_training import subsample
from grove.models.windows import DeviceWindows


def layout_depth(n_items: int, arity: int) -> int:
    """Smallest D >= 1 with arity**D >= n_items."""
    d, cap = 1, arity
    while cap < n_items:
        d, cap = d + 1, cap * arity
    return d


def _level_positions(tree: Tree) -> tuple[np.ndarray, np.ndarray]:
    """(M,) index of every node among the K**level positions of its level in a complete tree."""
    k, lv = tree.arity, tree.level.astype(np.int64)
    first = (k**lv - 1) // (k - 1)  # complete-tree breadth-first key of each level's first node
    return position_keys(tree) - first, lv


def position_maps(tree: Tree, depth: int) -> list[np.ndarray]:
    """For levels j = 0..depth, (K**j,) node of ``tree`` standing for every position: the node
    at that position, or its deepest existing ancestor."""
    k = tree.arity
    pos, lv = _level_positions(tree)
    maps = [np.zeros(1, dtype=np.int64)]
    for j in range(1, depth + 1):
        m = maps[-1][np.arange(k**j) // k]
        here = np.flatnonzero(lv == j)
        m[pos[here]] = here
        maps.append(m)
    return maps


def old_leaf_positions(tree: Tree, depth: int) -> np.ndarray:
    """(n_items,) position at level ``depth`` of every item's first leaf (a shallower leaf goes
    to its first descendant position; a deeper one to its ancestor position)."""
    k = tree.arity
    pos, lv = _level_positions(tree)
    leaf = tree.item_leaf
    p, lev = pos[leaf], lv[leaf]
    return np.where(lev <= depth, p * k ** np.maximum(depth - lev, 0), p // k ** np.maximum(lev - depth, 0))


class PairChunks:
    """The training pairs tree learning scores, on the device, shortest histories first.

    Parameters
    ----------
    samples : the training windows; ``max_samples`` of them (seeded subset) are scored.
    """

    def __init__(
        self, samples: TrainingSamples, max_samples: int | None, seed: int, device: torch.device, block: int = 1 << 16
    ):
        keep = subsample(len(samples), max_samples, seed)
        # history lengths, a block of windows at a time (never all (n, 69) windows at once)
        lengths = np.concatenate(
            [(samples.take(keep[i : i + block]) >= 0).sum(axis=1) for i in range(0, keep.shape[0], block)]
            or [np.zeros(0, np.int64)]
        )
        order = np.argsort(lengths, kind="stable")
        self.lengths = np.maximum(lengths[order], 1)  # (n,) ascending
        self.windows = DeviceWindows(samples, device, keep[order])
        self.targets = self.windows.targets  # (n,) long
        # the m distinct targets, each pair's row among them, and the pairs per item
        self.items, self.row = torch.unique(self.targets, return_inverse=True)  # (m,), (n,)
        self.counts = torch.bincount(self.row, minlength=self.items.shape[0]).to(torch.float32)

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def chunks(self, per_column: int, columns: int, max_elements: int) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield (pairs, histories (b, width)): consecutive pairs whose (b, columns, width,
        per_column) activations hold about ``max_elements`` floats; width = the chunk's longest
        history, so the padding columns of shorter ones are never scored. Among data-parallel
        workers each gets every N-th chunk (`grove.models.distributed.mine`; the cuts are the same on
        all of them)."""
        n, lo, i = len(self), 0, -1
        while lo < n:
            width = int(self.lengths[min(n - 1, lo)])
            step = max(1, max_elements // (columns * per_column * width))
            hi = min(n, lo + step)
            width = int(self.lengths[hi - 1])  # the longest of the chunk (ascending order)
            i += 1
            if mine(i):
                idx = torch.arange(lo, hi, device=self.targets.device)
                yield slice(lo, hi), self.windows.behaviours(idx)[:, :width]
            lo = hi


WeightFn = Callable[[int, int, torch.Tensor, Progress], torch.Tensor]


def learn_top_down(tree: Tree, pairs: PairChunks, gap: int, weights: WeightFn, desc: str) -> Tree:
    """The assignment loop.

    ``weights(l0, g, cur, progress)`` returns the (m, K**g) summed weight of every item of
    ``pairs.items`` (the m items with training pairs) for each of the K**g descendants, g levels
    down, of its position ``cur[item]`` at level l0 (``cur``: (n_items,)), over the pairs of the
    chunks it is given (`PairChunks.chunks`), and advances ``progress`` by the pairs it scored.
    Among data-parallel workers the sums are added up over the workers, and every worker then
    makes the same (deterministic) assignment.

    Returns a Tree of arity ``tree.arity`` with all leaves at depth ceil(log_K n_items).
    """
    if gap < 1:
        raise ValueError(f"gap must be >= 1, got {gap}")
    k, n = tree.arity, tree.n_items
    depth = layout_depth(n, k)
    device = pairs.targets.device
    old_leaf = torch.as_tensor(old_leaf_positions(tree, depth), device=device)
    cur = torch.zeros(n, dtype=torch.int64, device=device)  # position at level l0
    steps, workers = -(-depth // gap), world()[1]
    with Progress(desc, total=steps * -(-len(pairs) // workers), unit="pair") as prog:  # rank 0's share
        for l0 in range(0, depth, gap):
            g = min(gap, depth - l0)
            w = all_reduce_sum_(weights(l0, g, cur, prog))  # (m, K**g)
            old_child = old_leaf // k ** (depth - l0 - g) - cur * k**g
            old_child = torch.where((old_child >= 0) & (old_child < k**g), old_child, -1)
            child = assign_with_capacity(w, pairs.items, pairs.counts, cur, old_child, capacity=k ** (depth - l0 - g))
            cur = cur * k**g + child
    digits = k ** torch.arange(depth - 1, -1, -1, device=device)
    paths = (cur.unsqueeze(1) // digits) % k  # (n, D) K-way codes
    return Tree.from_paths(paths.cpu().numpy(), np.arange(n), n, k)


def assign_with_capacity(
    weights: torch.Tensor,
    rows: torch.Tensor,
    counts: torch.Tensor,
    parent: torch.Tensor,
    old_child: torch.Tensor,
    capacity: int,
) -> torch.Tensor:
    """Greedy choice of a child per item under a capacity per child, with JTM's rebalance.

    Parameters
    ----------
    weights : (m, W) summed log-likelihood of the items ``rows`` for each of their parent's W
        children; only items with training pairs have a row (memory O(pairs * W), not O(n * W)).
    rows : (m,) long, the items of ``weights``' rows (distinct).
    counts : (m,) their training pairs (> 0).
    parent : (n,) every item's current node (children of p are p*W .. p*W+W-1).
    old_child : (n,) child of the previous assignment, -1 if it is not under ``parent``.
    capacity : items a child may hold.

    Returns
    -------
    (n,) long child in [0, W) of every item.

    Rounds: every unplaced item proposes to its best child that still has room (an item without
    pairs: its previous child, else its parent's first child with room); a child takes proposals
    up to its room, items proposing their previous child first, then by descending mean
    log-likelihood (items without pairs last); the rest propose again next round. A child that
    rejects is full, so a parent needs at most W + 1 rounds; all parents advance in the same
    vectorised round.
    """
    n, width = parent.shape[0], weights.shape[1]
    device = parent.device
    row_of = torch.full((n,), -1, dtype=torch.int64, device=device)
    row_of[rows] = torch.arange(rows.shape[0], device=device)
    mean = weights / counts.clamp(min=1).unsqueeze(1)  # (m, W)
    room = torch.full(((int(parent.max()) + 1) * width,), capacity, dtype=torch.int64, device=device)
    child = torch.full((n,), -1, dtype=torch.int64, device=device)
    for _ in range(width + 2):
        todo = torch.nonzero(child < 0).squeeze(1)
        if todo.numel() == 0:
            return child
        best, rank = _proposals(weights, mean, row_of[todo], parent[todo], old_child[todo], room, width)
        gid = parent[todo] * width + best
        keep = old_child[todo] == best
        # order by (gid asc, keep first, rank desc) with stable sorts, last key first
        order = torch.argsort(rank, descending=True, stable=True)
        order = order[torch.argsort(keep[order].to(torch.int8), descending=True, stable=True)]
        order = order[torch.argsort(gid[order], stable=True)]
        g_sorted = gid[order]
        within = torch.arange(order.numel(), device=device) - torch.searchsorted(g_sorted, g_sorted)
        accept = order[within < room[g_sorted]]
        child[todo[accept]] = best[accept]
        room -= torch.bincount(gid[accept], minlength=room.numel())
    raise RuntimeError("capacity rebalance did not converge: a node holds more items than its capacity")


def _proposals(weights, mean, row, parent, old_child, room, width) -> tuple[torch.Tensor, torch.Tensor]:
    """(best child, rank) of unplaced items: the best child with room by weight for items with
    pairs (``row`` >= 0); for the others their previous child if it has room, else the first
    child of their parent with room, ranked -inf."""
    has_room = room.view(-1, width) > 0  # (parents, W)
    first_free = has_room.to(torch.int8).argmax(dim=1)  # (parents,)
    oc = old_child.clamp(min=0)
    old_ok = (old_child >= 0) & has_room[parent, oc]
    best = torch.where(old_ok, oc, first_free[parent])
    rank = torch.full(best.shape, -torch.inf, device=best.device)
    ev = torch.nonzero(row >= 0).squeeze(1)
    if ev.numel():
        r = row[ev]
        cand = weights[r].masked_fill(~has_room[parent[ev]], -torch.inf)  # (e, W)
        best[ev] = cand.argmax(dim=1)
        rank[ev] = mean[r, best[ev]]
    return best, rank
