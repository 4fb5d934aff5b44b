"""Batched layer-wise beam search over a tree (TDM Algorithm 1) and the exhaustive reference.

Score function protocol
-----------------------
A scorer is any callable ``score_fn(rows, nodes) -> scores`` with

* ``rows``  (P,) long -- index of the user in the batch, in ``[0, B)``;
* ``nodes`` (P,) long -- tree node id, in ``[0, M)``;
* returns (P,) float -- the score of every (user, node) pair (higher is better; a logit or a
  log-probability -- only the order matters, and the final result reports these scores).

Flat pairs let a TDM scorer run ONE forward pass per level for all (user, candidate) pairs of
the batch: it gathers ``user_features[rows]`` and ``node_embedding[nodes]`` and scores them
together. The pairs of one call come user-major: ``rows`` is ``arange(B).repeat_interleave(W)``
for a level of W candidates per user, so a scorer may also ``view(B, W)`` them to compute each
user's history encoding once. Padding pairs (missing children) are passed with node 0 and their
scores are discarded; a scorer must accept them.

Search (TDM Algorithm 1, batched)
---------------------------------
Start from the root. At every level: take the children of the beam, (B, F*K), padded with -1;
score them in one call; leaf candidates go to the result set (they are not expanded);
internal candidates compete in one ``topk`` over (B, F*K) -- padding and leaves at -inf -- for
the next beam of ``min(beam, internal nodes on the next level)``. When no internal node is
left, the result is the top-k by score among all collected leaves, mapped to items; an item
reached through several leaves (RecForest's duplicated items) counts once with its best score.
Results are padded with -inf / -1.

``k`` may exceed ``beam``: every leaf candidate of every level is collected (up to beam*K per
level), not only the beam's top, so a search returns up to ``beam * K`` leaves from the last
level plus the leaves met earlier. Pass ``beam >= ceil(k / K)`` to fill k; for a scorer with the
max-heap property (a node scores the max of its children), ``beam >= k * c`` returns exactly
the brute-force top-k, c = the most leaves any item has (1 for TDM/JTM trees): an internal node
that outranks the ancestor of a true top-k leaf holds a better leaf, and fewer than k items, so
fewer than k * c leaves, are better.

Everything runs on the tree tensors' device; the loop is over levels only and makes no host
syncs (the beam width per level comes from host-side level counts).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from grove.indexstore.errors import GroveError
from grove.models.tree_builders import TreeTensors

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

NEG_INF = float("-inf")


def check_search_args(b: int, k: int, beam: int | None = None) -> None:
    if b < 0:
        raise GroveError(f"batch size must be >= 0, got {b}")
    if k <= 0:
        raise GroveError(f"k must be > 0, got {k}")
    if beam is not None and beam <= 0:
        raise GroveError(f"beam must be > 0, got {beam}")


def _score(score_fn: ScoreFn, nodes: torch.Tensor) -> torch.Tensor:
    """Score (B, W) candidate nodes (-1 = padding) in one call; padding -> -inf. Returns (B, W)."""
    b, w = nodes.shape
    rows = torch.arange(b, device=nodes.device).repeat_interleave(w)  # user-major pairs
    s = score_fn(rows, nodes.clamp(min=0).reshape(-1)).reshape(b, w).float()
    return s.masked_fill(nodes < 0, NEG_INF)


def top_items(scores: torch.Tensor, items: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k distinct items per row, each item once with its best score.

    Parameters
    ----------
    scores : (B, W) float -- -inf marks an empty slot.
    items : (B, W) long -- item of every slot (-1 empty).
    k : int.

    Returns
    -------
    (scores (B, k) float32, items (B, k) long), best first, padded -inf / -1.
    """
    b, w = scores.shape
    scores = scores.float().masked_fill(items < 0, NEG_INF)
    # best score first, then group equal items (stable sort keeps best-first inside a group)
    by_score = scores.argsort(dim=1, descending=True)
    it = items.gather(1, by_score)
    sc = scores.gather(1, by_score)
    by_item = it.argsort(dim=1, stable=True)
    it, sc = it.gather(1, by_item), sc.gather(1, by_item)
    dup = torch.zeros_like(it, dtype=torch.bool)
    dup[:, 1:] = it[:, 1:] == it[:, :-1]  # not the first (= best) slot of its item
    sc = sc.masked_fill(dup, NEG_INF)
    if w < k:  # pad to k slots
        sc = torch.cat([sc, sc.new_full((b, k - w), NEG_INF)], dim=1)
        it = torch.cat([it, it.new_full((b, k - w), -1)], dim=1)
    top_s, top_i = sc.topk(k, dim=1)
    top_it = it.gather(1, top_i)
    return top_s, torch.where(torch.isinf(top_s) & (top_s < 0), -1, top_it)


def beam_search(
    tt: TreeTensors, score_fn: ScoreFn, batch_size: int, k: int, beam: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-wise beam search for a batch of users (module doc).

    Parameters
    ----------
    tt : `TreeTensors` of the tree (`grove.models.tree_builders.tree_tensors`), on the search device.
    score_fn : (rows (P,), nodes (P,)) -> (P,) scores (module doc).
    batch_size : int -- B, the number of users (``rows`` range over ``[0, B)``).
    k : int -- items to return per user.
    beam : int -- internal nodes kept per level.

    Returns
    -------
    scores (B, k) float32, items (B, k) long -- best first, padded -inf / -1.
    """
    check_search_args(batch_size, k, beam)
    dev, b = tt.device, batch_size
    frontier = torch.zeros(b, 1, dtype=torch.long, device=dev)  # (B, F) beam, -1 = empty
    if tt.depth == 0:  # the root is the only leaf
        s = _score(score_fn, frontier)
        return top_items(s, tt.item[frontier], k)
    got_scores, got_nodes = [], []
    for level in range(tt.depth):
        f = frontier.shape[1]
        cand = tt.children[frontier.clamp(min=0)]  # (B, F, K)
        cand = cand.masked_fill((frontier < 0)[..., None], -1).reshape(b, f * tt.arity)
        s = _score(score_fn, cand)  # (B, F*K), padding -inf
        leaf = tt.is_leaf[cand.clamp(min=0)] & (cand >= 0)
        got_scores.append(s.masked_fill(~leaf, NEG_INF))
        got_nodes.append(cand.masked_fill(~leaf, -1))
        inner = (cand >= 0) & ~leaf
        width = min(beam, f * tt.arity, tt.inner_per_level[level + 1])
        if width == 0:
            break
        top = s.masked_fill(~inner, NEG_INF).topk(width, dim=1).indices  # (B, width)
        frontier = torch.where(inner.gather(1, top), cand.gather(1, top), -1)
    nodes = torch.cat(got_nodes, dim=1)
    items = torch.where(nodes >= 0, tt.item[nodes.clamp(min=0)], -1)
    return top_items(torch.cat(got_scores, dim=1), items, k)


def exhaustive(
    tt: TreeTensors, score_fn: ScoreFn, batch_size: int, k: int, chunk: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every leaf for every user (brute-force reference), ``chunk`` leaves per call.

    Parameters
    ----------
    tt, score_fn, batch_size, k : as `beam_search`.
    chunk : int -- leaves scored per call (B * chunk pairs), bounding memory.

    Returns
    -------
    scores (B, k) float32, items (B, k) long -- the exact top-k distinct items by leaf score,
    best first, padded -inf / -1.
    """
    check_search_args(batch_size, k)
    if chunk <= 0:
        raise GroveError(f"chunk must be > 0, got {chunk}")
    b = batch_size
    best_s = torch.full((b, 0), NEG_INF, device=tt.device)
    best_i = torch.full((b, 0), -1, dtype=torch.long, device=tt.device)
    for lo in range(0, tt.leaves.numel(), chunk):
        nodes = tt.leaves[lo : lo + chunk][None, :].expand(b, -1)  # (B, c)
        s = _score(score_fn, nodes)
        merged_s = torch.cat([best_s, s], dim=1)
        merged_i = torch.cat([best_i, tt.item[nodes]], dim=1)
        best_s, best_i = top_items(merged_s, merged_i, k)
    if best_s.shape[1] < k:
        return top_items(best_s, best_i, k)
    return best_s, best_i


# ------------------------------------------------------------------------- test scorers
class DotScorer:
    """Pure-torch scorer: score(user, node) = <user_vec[user], node_vec[node]>.

    user_vec (B, d), node_vec (M, d), on the same device. A cheap stand-in for a neural
    scorer (benchmarks) and the basis of `max_heap_table`.
    """

    def __init__(self, user_vec: torch.Tensor, node_vec: torch.Tensor):
        self.user_vec, self.node_vec = user_vec, node_vec

    def __call__(self, rows: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        return (self.user_vec[rows] * self.node_vec[nodes]).sum(-1)


class TableScorer:
    """Pure-torch scorer reading a dense (B, M) table: score(user, node) = table[user, node]."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __call__(self, rows: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        return self.table[rows, nodes]


def max_heap_table(tt: TreeTensors, leaf_scores: torch.Tensor) -> torch.Tensor:
    """A (B, M) score table with the max-heap property: a leaf keeps its score from
    ``leaf_scores`` (B, M) (other entries ignored) and an internal node scores the max of its
    children. Filled bottom-up one level at a time."""
    table = leaf_scores.clone().float()
    for lv in range(tt.depth - 1, -1, -1):
        nodes = torch.nonzero((tt.level == lv) & ~tt.is_leaf).squeeze(1)  # (n,)
        ch = tt.children[nodes]  # (n, K)
        vals = table[:, ch.clamp(min=0)].masked_fill((ch < 0)[None], NEG_INF)  # (B, n, K)
        table[:, nodes] = vals.max(dim=2).values
    return table
