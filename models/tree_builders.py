"""Tree construction: the category tree (TDM §3.5 initialisation), the balanced k-means tree
(TDM §3.5 tree learning) and RecForest's Random+Kmeans complete tree (appendix Algorithm 2).

All builders grow the tree top down one *level* at a time: every node of a level is split in
the same batched call (tensors over all the level's clusters), never a Python loop per node.

Layout of the category and k-means trees (items unique, leaves possibly at several depths)
------------------------------------------------------------------------------------------
Let ``H = ceil(log_K N)`` be the least depth that can hold N leaves. A node at level l holding
n > 1 items gets ``clamp(ceil(n / K^(H-l-1)), 2, min(K, n))`` children whose sizes differ by at
most one (the fewest children such that every child's subtree can still hold its items within
depth H). Filling the deep levels first keeps every leaf at depth H whenever K >= 3 and N is not
tiny; for K = 2 it is TDM's "halve recursively", so leaves sit at depths H-1 and H unless N is a
power of two (a binary tree without single-child chains cannot do better). A node of one item is
a leaf.

Node numbering is breadth-first, children of a node in cluster order, as `Tree` requires.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from grove.indexstore.errors import GroveError
from grove.indexstore.structures import Tree
from grove.models.kmeans import balanced_kmeans_batched, equal_caps
from grove.models.progress import Progress

# split(order (N,), starts (C,), sizes (C,), caps (C, K)) -> order with every segment permuted so
# that child j's items are the j-th run of caps[:, j] items of the segment.
SplitFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def complete_depth(n: int, k: int) -> int:
    """Least H with K^H >= n (integer arithmetic): the depth of a complete K-ary tree over n items."""
    h, cap = 0, 1
    while cap < n:
        cap *= k
        h += 1
    return h


def tightest_arity(n: int, depth: int) -> int:
    """Least K >= 2 with K^depth >= n: the arity whose complete tree of that depth over n items
    has the fewest leaves, so the fewest duplicated items (integer arithmetic, no float root)."""
    if n < 1 or depth < 1:
        raise GroveError(f"tightest_arity needs n >= 1 and depth >= 1, got n={n}, depth={depth}")
    k = max(2, int(round(n ** (1.0 / depth))))
    while k > 2 and (k - 1) ** depth >= n:
        k -= 1
    while k**depth < n:
        k += 1
    return k


def _child_caps(sizes: torch.Tensor, level: int, depth: int, k: int) -> torch.Tensor:
    """Children sizes (C, K) of nodes holding ``sizes`` (C,) > 1 items at ``level`` (module doc)."""
    below = k ** max(depth - level - 1, 0)  # capacity of a child's subtree
    need = torch.div(sizes + below - 1, below, rounding_mode="floor")
    kc = torch.minimum(need.clamp(min=2, max=k), sizes)
    return equal_caps(sizes, kc, k)


def _grow(order: torch.Tensor, n_items: int, k: int, split: SplitFn, desc: str) -> Tree:
    """Grow a tree over the item sequence ``order`` (N,) level by level with ``split``."""
    dev = order.device
    depth = complete_depth(n_items, k)
    starts = torch.zeros(1, dtype=torch.long, device=dev)  # segments of the current level: (C,)
    sizes = torch.full((1,), n_items, dtype=torch.long, device=dev)
    parents, items = [torch.full((1,), -1, dtype=torch.long, device=dev)], []
    base, level = 0, 0
    with Progress(desc, total=depth, unit="level") as prog:
        while True:
            leaf = sizes == 1
            items.append(torch.where(leaf, order[starts], -1))
            inner = torch.nonzero(~leaf).squeeze(1)  # (Ci,) positions in the level
            if inner.numel() == 0:
                break
            caps = _child_caps(sizes[inner], level, depth, k)  # (Ci, K)
            order = split(order, starts[inner], sizes[inner], caps)
            # children in breadth-first order: parent-major, child j after child j-1
            offs = torch.cumsum(caps, dim=1) - caps + starts[inner][:, None]  # (Ci, K)
            keep = caps > 0
            n_level = sizes.numel()
            parents.append((base + inner)[:, None].expand_as(caps)[keep])
            starts, sizes = offs[keep], caps[keep]
            base += n_level
            level += 1
            prog.update(1, postfix=f"{sizes.numel()} nodes")
    parent = torch.cat(parents).cpu().numpy()
    item = torch.cat(items).cpu().numpy()
    return Tree(parent, item, n_items, k)


def _check(n: int, k: int, what: str) -> None:
    if n < 1:
        raise GroveError(f"{what}: needs at least one item, got {n}")
    if k < 2:
        raise GroveError(f"{what}: arity K must be >= 2, got {k}")


def category_tree(item_category, arity: int = 2, seed: int = 0) -> Tree:
    """TDM's category-based initial tree, generalised to K children.

    Categories are shuffled with the seed; items of a category are placed together in a random
    order; the ranked list is then split recursively into near-equal contiguous parts (layout in
    the module doc). Items without a category (-1) are kept together as one more category.

    Parameters
    ----------
    item_category : (n_items,) int -- category code of every item, -1 for none.
    arity : int -- K.
    seed : int -- seeds the category shuffle and the order inside categories.

    Returns
    -------
    Tree over ``n_items`` items, every item at exactly one leaf; the leaves read left to right
    list the categories as contiguous runs.
    """
    cat = np.asarray(item_category, dtype=np.int64).reshape(-1)
    n = int(cat.shape[0])
    _check(n, arity, "category_tree")
    rng = np.random.default_rng(seed)
    codes, inv = np.unique(cat, return_inverse=True)  # -1 (no category) is one more code
    cat_rank = rng.permutation(codes.size)[inv]  # (n,) random position of the item's category
    order = np.lexsort((rng.random(n), cat_rank))  # category-major, random inside a category
    order_t = torch.from_numpy(order.astype(np.int64))
    return _grow(order_t, n, arity, lambda o, *_: o, "category tree")


def _kmeans_split(emb: torch.Tensor, iters: int, gen: torch.Generator) -> SplitFn:
    """A split that reorders every segment by balanced k-means labels (one batched call)."""

    def split(order, starts, sizes, caps):
        smax = int(sizes.max())
        ar = torch.arange(smax, device=order.device)[None, :]
        pos = starts[:, None] + torch.minimum(ar, sizes[:, None] - 1)  # (C, smax), padding repeats
        seg = order[pos]  # (C, smax) item ids
        labels = balanced_kmeans_batched(emb[seg], sizes, caps, iters, gen)  # (C, smax)
        labels = labels.masked_fill(ar >= sizes[:, None], caps.shape[1])  # padding last
        perm = torch.sort(labels, dim=1, stable=True).indices
        valid = ar < sizes[:, None]
        out = order.clone()
        out[pos[valid]] = seg.gather(1, perm)[valid]
        return out

    return split


def kmeans_tree(embeddings, arity: int = 2, seed: int = 0, device: str | torch.device = "cpu", iters: int = 10) -> Tree:
    """Top-down balanced k-means tree (TDM §3.5 tree learning), every level split in one batch.

    Parameters
    ----------
    embeddings : (n_items, d) float -- numpy or torch; item i's (learnt leaf) embedding.
    arity : int -- K.
    seed : int -- seeds every centroid initialisation; the same seed gives the same tree.
    device : where the clustering runs (CPU or CUDA).
    iters : int -- maximum k-means rounds per level.

    Returns
    -------
    Tree with every item at exactly one leaf; sibling clusters differ in size by at most one.
    """
    emb = torch.as_tensor(embeddings).to(device=device, dtype=torch.float32)
    if emb.ndim != 2:
        raise GroveError(f"kmeans_tree needs embeddings of shape (n_items, d), got {tuple(emb.shape)}")
    n = int(emb.shape[0])
    _check(n, arity, "kmeans_tree")
    gen = torch.Generator(device=emb.device)
    gen.manual_seed(int(seed))
    order = torch.arange(n, device=emb.device)
    return _grow(order, n, arity, _kmeans_split(emb, iters, gen), "k-means tree")


# ------------------------------------------------------------------------------- RecForest
def _recforest_level(items, emb, k, random_ratio, iters, gen):
    """One level of Algorithm 2 for C clusters of equal size s: items (C, s) -> (C*K, ceil(s/K))."""
    c, s = items.shape
    dev = items.device
    r = s % k
    shuffled = items.gather(1, torch.rand(c, s, generator=gen, device=dev).argsort(dim=1))
    d0, pool = shuffled[:, :r], shuffled[:, r:]  # D0: n mod K items drawn without replacement
    per = pool.shape[1] // k
    n_rand = int(random_ratio * per)  # items per child assigned at random (pool is shuffled)
    parts = [pool[:, : n_rand * k].reshape(c, k, n_rand)]
    km = pool[:, n_rand * k :]  # (C, K*m) partitioned by balanced k-means
    m = km.shape[1] // k
    if m > 0:
        caps = torch.full((c, k), m, dtype=torch.long, device=dev)
        sizes = torch.full((c,), k * m, dtype=torch.long, device=dev)
        labels = balanced_kmeans_batched(emb[km], sizes, caps, iters, gen)
        parts.append(km.gather(1, torch.sort(labels, dim=1, stable=True).indices).reshape(c, k, m))
    if r > 0:
        # one D0 item per child: the first r children take the r items of D0 once each (so no
        # item is lost), the other K - r children draw from D0 with replacement.
        j = torch.arange(k, device=dev)[None, :]
        draw = torch.randint(0, r, (c, k), generator=gen, device=dev)
        pick = torch.where(j < r, j.clamp(max=r - 1), draw)
        parts.append(d0.gather(1, pick)[..., None])
    return torch.cat(parts, dim=2).reshape(c * k, -1)


def recforest_tree(
    embeddings,
    arity: int = 18,
    seed: int = 0,
    random_ratio: float = 0.0,
    device: str | torch.device = "cpu",
    iters: int = 10,
) -> Tree:
    """RecForest's tree (appendix Algorithm 2): a complete K-ary tree by Random+Kmeans.

    Every cluster of n items: draw D0 = n mod K items without replacement; split the rest into K
    equal children; give each child one item of D0 (a duplicate where D0 is reused). Recursing
    until clusters hold one item gives a complete K-ary tree of depth ``ceil(log_K N)`` with
    K^depth leaves, items duplicated to fill it. Choices where the paper is vague:

    * The appendix draws each child's D0 item with replacement, which can drop an item; here the
      first ``n mod K`` children take D0's items once each and only the rest draw with
      replacement, so every item keeps >= 1 leaf.
    * ``random_ratio`` (δ): Algorithm 2 takes "random ratio δ" as an input and never uses it;
      its steps are D0 at random and balanced k-means on the rest, and the randomness that makes
      a forest's trees differ is D0's draws and each tree's k-means seeds. ``0`` (the default) is
      the algorithm as printed. ``δ > 0`` is a reading of the name that grove used before issue
      30 (0.1): in every cluster a fraction δ of the items left after D0 (rounded down to a
      multiple of K) is split among the children uniformly at random (the appendix's "Random"
      strategy), the rest by balanced k-means. On ml-1m-subset (2 trees, 3 seeds) δ = 0.1 and
      δ = 0 differ by less than a seed's spread (benchmarks/README.md, "variants").

    Parameters
    ----------
    embeddings : (n_items, d) float -- numpy or torch (e.g. pretrained two-tower item vectors).
    arity : int -- K (18 in the paper).
    seed : int -- seeds D0 draws, the random part and the centroids; T trees = T seeds.
    random_ratio : float in [0, 1].
    device : where the clustering runs.
    iters : int -- maximum k-means rounds per level.

    Returns
    -------
    Tree, complete K-ary: every internal node has K children, all leaves at one depth.
    """
    emb = torch.as_tensor(embeddings).to(device=device, dtype=torch.float32)
    if emb.ndim != 2:
        raise GroveError(f"recforest_tree needs embeddings of shape (n_items, d), got {tuple(emb.shape)}")
    n = int(emb.shape[0])
    _check(n, arity, "recforest_tree")
    if not 0.0 <= random_ratio <= 1.0:
        raise GroveError(f"recforest_tree: random_ratio must be in [0, 1], got {random_ratio}")
    gen = torch.Generator(device=emb.device)
    gen.manual_seed(int(seed))
    items = torch.arange(n, device=emb.device)[None, :]  # (1, N): one cluster
    depth = complete_depth(n, arity)
    with Progress("recforest tree", total=depth, unit="level") as prog:
        while items.shape[1] > 1:
            items = _recforest_level(items, emb, arity, random_ratio, iters, gen)
            prog.update(1)
    n_leaves = items.shape[0]
    n_inner = (n_leaves - 1) // (arity - 1)  # complete K-ary: (K^H - 1) / (K - 1) internal nodes
    m = n_inner + n_leaves
    parent = np.concatenate([[-1], (np.arange(1, m) - 1) // arity]).astype(np.int64)
    item = np.concatenate([np.full(n_inner, -1, np.int64), items[:, 0].cpu().numpy()])
    return Tree(parent, item, n, arity)


# ----------------------------------------------------------------------------- for search
@dataclass(frozen=True)
class TreeTensors:
    """A tree's arrays as tensors on one device, for beam search.

    children (M, K) long (-1 padding); is_leaf (M,) bool; item (M,) long (-1 inner);
    level (M,) long; leaves (L,) long; depth int; inner_per_level tuple[int] (internal nodes at
    every level 0..depth, a host-side copy used to size the beam without device syncs).
    """

    children: torch.Tensor
    is_leaf: torch.Tensor
    item: torch.Tensor
    level: torch.Tensor
    leaves: torch.Tensor
    depth: int
    arity: int
    n_items: int
    inner_per_level: tuple[int, ...]

    @property
    def device(self) -> torch.device:
        return self.children.device

    @property
    def n_nodes(self) -> int:
        return int(self.children.shape[0])


_CACHE: weakref.WeakKeyDictionary[Tree, dict[str, TreeTensors]] = weakref.WeakKeyDictionary()


def tree_tensors(tree: Tree, device: str | torch.device = "cpu") -> TreeTensors:
    """The `TreeTensors` of ``tree`` on ``device``, built once per (tree, device) and cached."""
    dev = torch.device(device)
    per_tree = _CACHE.setdefault(tree, {})
    key = str(dev)
    if key not in per_tree:
        inner = np.bincount(tree.level[~tree.is_leaf], minlength=tree.depth + 1)
        per_tree[key] = TreeTensors(
            children=torch.as_tensor(np.array(tree.children), device=dev),
            is_leaf=torch.as_tensor(np.array(tree.is_leaf), device=dev),
            item=torch.as_tensor(np.array(tree.item), device=dev),
            level=torch.as_tensor(np.array(tree.level, dtype=np.int64), device=dev),
            leaves=torch.as_tensor(np.array(tree.leaves), device=dev),
            depth=tree.depth,
            arity=tree.arity,
            n_items=tree.n_items,
            inner_per_level=tuple(int(v) for v in inner),
        )
    return per_tree[key]
