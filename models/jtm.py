"""JTM (NeurIPS 2019): hierarchical user preference representation and tree learning.

Hierarchical user preference representation (supplement B): to score a node at level l, every
behaviour item c is replaced by ``b_l(pi(c))``, its ancestor at level l (``HierarchicalScorer``).
A behaviour whose leaf sits above level l keeps its leaf.

Tree learning (paper Algorithm 2, supplement B): items are re-assigned to the positions of a
complete K-ary tree of depth ``D = ceil(log_K n_items)``, top down, ``gap`` (d) levels at a time.
At step l0 -> l = min(l0 + d, D) every item, already under a node n_i of level l0, picks one of
n_i's K**(l - l0) descendants at level l by the weight

    L_c(child) = sum over training pairs (u, c) with target c of
                 sum_{j = l0+1..l} log p(ancestor of child at level j | u)

under the current model (the scorer and the tree it was trained with). Then the rebalance: a
child holds at most K**(D - l) items; items whose choice equals their previous assignment are
kept first, the other items of a full child by descending weight, and the overflow moves to the
best child that still has room (done in vectorised rounds, see `assign_with_capacity`). The
result is a complete layout pruned of empty subtrees: every item at exactly one leaf, all
leaves at depth D.

Choices where the paper is silent
---------------------------------
* A position of the complete layout that the old tree lacks is scored with the embedding of its
  deepest existing ancestor (a leaf's item stands in for positions below it), so the old model
  can score every position.
* The rebalance ranks competing items by the MEAN log-likelihood per training pair, not the sum:
  a sum favours items with few pairs (fewer negative terms). Items with no training pair keep
  their previous child when it is still under their node, and otherwise yield to items with
  evidence.
* Tree learning scores at most ``max_samples`` training pairs (seeded subset): the cost is
  O(samples * K**(d+1)) scorer calls per step.
"""
from __future__ import annotations

import numpy as np
import torch

from indexstore.structures import Tree
from models.progress import Progress
from models.tdm import TDMScorer, default_chunk_elements, position_keys
from models.tree_training import subsample


def ancestor_table(tree: Tree) -> np.ndarray:
    """(depth + 1, n_items) int64: node of item i at level l = ancestor of its first leaf at
    level l, or the leaf itself when the leaf sits above level l."""
    leaf = tree.item_leaf
    rows = [np.where(a >= 0, a, leaf) for a in (tree.ancestors_at(leaf, lv) for lv in range(tree.depth + 1))]
    return np.stack(rows)


class HierarchicalScorer(TDMScorer):
    """TDM's scorer with JTM's hierarchical user preference representation: behaviours are
    mapped to their ancestors at the level of the node being scored. Same parameters."""

    def __init__(self, tree: Tree, **kwargs):
        super().__init__(tree, **kwargs)
        self.register_buffer("ancestor", torch.as_tensor(ancestor_table(tree)), persistent=False)

    def behaviour_rows(self, histories: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """(U, L) rows when all nodes share a level (beam search), else (U, C, L)."""
        level = self.node_level[nodes.clamp(min=0)]                 # (U, C)
        ok = (histories >= 0) & (histories < self.n_items)          # (U, L)
        items = torch.where(ok, histories, torch.zeros_like(histories))
        if bool((level == level.reshape(-1)[0]).all()):
            anc = self.ancestor[level.reshape(-1)[0], items]        # (U, L) nodes
            return torch.where(ok, self.node_row[anc], torch.full_like(anc, self.pad_row))
        anc = self.ancestor[level.unsqueeze(-1), items.unsqueeze(1)]  # (U, C, L) nodes
        return torch.where(ok.unsqueeze(1), self.node_row[anc], torch.full_like(anc, self.pad_row))


# ------------------------------------------------------------------------------ tree learning
def layout_depth(n_items: int, arity: int) -> int:
    """Smallest D >= 1 with arity**D >= n_items."""
    d, cap = 1, arity
    while cap < n_items:
        d, cap = d + 1, cap * arity
    return d


def _level_positions(tree: Tree) -> tuple[np.ndarray, np.ndarray]:
    """(M,) index of every node among the K**level positions of its level in a complete tree."""
    k, lv = tree.arity, tree.level.astype(np.int64)
    first = (k ** lv - 1) // (k - 1)           # complete-tree breadth-first key of each level's first node
    return position_keys(tree) - first, lv


def position_maps(tree: Tree, depth: int) -> list[np.ndarray]:
    """For levels j = 0..depth, (K**j,) node of ``tree`` standing for every position: the node
    at that position, or its deepest existing ancestor."""
    k = tree.arity
    pos, lv = _level_positions(tree)
    maps = [np.zeros(1, dtype=np.int64)]
    for j in range(1, depth + 1):
        m = maps[-1][np.arange(k ** j) // k]
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
    p, l = pos[leaf], lv[leaf]
    return np.where(l <= depth, p * k ** np.maximum(depth - l, 0), p // k ** np.maximum(l - depth, 0))


def learn_tree(scorer: TDMScorer, tree: Tree, behaviours: np.ndarray, targets: np.ndarray,
               gap: int = 7, max_samples: int | None = None, seed: int = 0,
               device: torch.device | str = "cpu", max_elements: int | None = None) -> Tree:
    """JTM Algorithm 2: a new tree over ``tree.n_items`` items from the trained ``scorer``.

    Parameters
    ----------
    scorer : the model trained on ``tree`` (any `TDMScorer`; JTM uses `HierarchicalScorer`).
    behaviours, targets : (n, L) and (n,) training pairs.
    gap : d, levels assigned per step.
    max_samples : score at most this many pairs (seeded random subset).
    max_elements : activation floats per chunk of pairs (None: `models.tdm.default_chunk_elements`).

    Returns
    -------
    Tree with arity ``tree.arity``, all leaves at depth ceil(log_K n_items), one leaf per item.
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
    maps = [torch.as_tensor(m, device=device) for m in position_maps(tree, depth)]
    old_leaf = torch.as_tensor(old_leaf_positions(tree, depth), device=device)
    cur = torch.zeros(n, dtype=torch.int64, device=device)        # position at level l0
    scorer = scorer.to(device).eval()
    l0 = 0
    with Progress("jtm tree learning", total=depth, unit="level") as prog:
        while l0 < depth:
            l = min(l0 + gap, depth)
            g = l - l0
            weights = _step_weights(scorer, maps, l0, g, k, cur, hist, tgt, max_elements)  # (n, K**g)
            old_child = old_leaf // k ** (depth - l) - cur * k ** g
            old_child = torch.where((old_child >= 0) & (old_child < k ** g), old_child, -1)
            child = assign_with_capacity(weights, counts, cur, old_child, capacity=k ** (depth - l))
            cur = cur * k ** g + child
            prog.update(g)
            l0 = l
    digits = k ** torch.arange(depth - 1, -1, -1, device=device)
    paths = (cur.unsqueeze(1) // digits) % k                       # (n, D) K-way codes
    return Tree.from_paths(paths.cpu().numpy(), np.arange(n), n, k)


def _step_weights(scorer, maps, l0: int, g: int, k: int, cur: torch.Tensor, hist: torch.Tensor,
                  tgt: torch.Tensor, max_elements: int) -> torch.Tensor:
    """(n_items, K**g) summed log-likelihood of every item's pairs for every child position.

    For each pair, all nodes of levels l0+1..l0+g under its target's current node are scored in
    one call: C = K + K**2 + ... + K**g columns."""
    n, width = cur.shape[0], k ** g
    device = cur.device
    offsets = [torch.arange(k ** j, device=device) for j in range(1, g + 1)]
    # for a child r at level l0+g, its ancestor at level l0+j is column r // K**(g-j) of level j
    gather = torch.cat([offsets[-1] // k ** (g - j) + sum(k ** i for i in range(1, j))
                        for j in range(1, g + 1)]).view(g, width)  # (g, width) column indices
    out = torch.zeros(n, width, device=device)
    cols = sum(k ** j for j in range(1, g + 1))
    per_pair = hist.shape[1] * max(getattr(getattr(scorer, "act_in", None), "out_features", 1), getattr(scorer, "dim", 1))
    chunk = max(1, max_elements // (cols * per_pair))
    with torch.inference_mode():
        for s in range(0, tgt.shape[0], chunk):
            t, h = tgt[s:s + chunk], hist[s:s + chunk].long()
            base = cur[t]                                           # (U,) position at level l0
            nodes = torch.cat([maps[l0 + j][base.unsqueeze(1) * k ** j + offsets[j - 1]]
                               for j in range(1, g + 1)], dim=1)    # (U, cols) old-tree nodes
            logp = torch.nn.functional.logsigmoid(scorer(h, nodes))  # (U, cols)
            out.index_add_(0, t, logp[:, gather].sum(dim=1))        # (U, width) summed over levels
    return out


def assign_with_capacity(weights: torch.Tensor, counts: torch.Tensor, parent: torch.Tensor,
                         old_child: torch.Tensor, capacity: int) -> torch.Tensor:
    """Greedy choice of a child per item under a capacity per child, with JTM's rebalance.

    Parameters
    ----------
    weights : (n, W) summed log-likelihood of each item for each of its parent's W children.
    counts : (n,) training pairs per item (0: no evidence).
    parent : (n,) each item's current node (children of p are p*W .. p*W+W-1).
    old_child : (n,) child of the previous assignment, -1 if it is not under ``parent``.
    capacity : items a child may hold.

    Returns
    -------
    (n,) long child in [0, W) of every item.

    Rounds: every unplaced item proposes to its best child that still has room; a child takes
    proposals up to its room, items proposing their previous child first, then by descending
    mean log-likelihood; the rest propose again next round. A child that rejects is full, so a
    parent needs at most W + 1 rounds; all parents advance in the same vectorised round.
    """
    n, width = weights.shape
    device = weights.device
    has = counts > 0
    is_old = torch.zeros_like(weights, dtype=torch.bool)
    is_old[old_child >= 0, old_child[old_child >= 0]] = True
    # items without pairs prefer their previous child, else the first child with room
    pref = torch.where(has.unsqueeze(1), weights, is_old.to(weights.dtype))
    mean = torch.where(has.unsqueeze(1), weights / counts.clamp(min=1).unsqueeze(1),
                       torch.full_like(weights, -torch.inf))
    room = torch.full(((int(parent.max()) + 1) * width,), capacity, dtype=torch.int64, device=device)
    child = torch.full((n,), -1, dtype=torch.int64, device=device)
    cols = torch.arange(width, device=device)
    for _ in range(width + 2):
        todo = torch.nonzero(child < 0).squeeze(1)
        if todo.numel() == 0:
            return child
        gid_all = parent[todo].unsqueeze(1) * width + cols            # (m, W)
        cand = pref[todo].masked_fill(room[gid_all] <= 0, -torch.inf)
        best = cand.argmax(dim=1)                                     # (m,)
        gid = gid_all[torch.arange(todo.numel(), device=device), best]
        keep = is_old[todo, best]
        rank = mean[todo, best]
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
