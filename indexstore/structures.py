"""Index structures: `Tree`, `Forest` and `PathCodes`.

All three are numpy-backed, validated when built and immutable afterwards (their arrays are
made read-only). They know nothing of SQL or torch: the store persists them, the models learn
and search them.

Conventions
-----------
* Items are dense integers ``0 .. n_items - 1``.
* A tree's nodes are numbered in breadth-first order: the root is node 0 and every node's
  parent has a smaller number than the node (``parent[i] < i``). This makes cycles impossible
  by construction once validated, and lets levels and paths be computed in one vectorised pass
  per level.
* Leaves carry an item (``item[node] >= 0``); internal nodes carry ``-1``. An item may sit at
  several leaves (RecForest's complete trees duplicate items); every item sits at >= 1 leaf.
* Leaves may sit at different levels (a category tree over N items that is not a power of K).
* ``path`` of a node = the child indices (each in ``[0, K)``) from the root down to it, i.e.
  the K-way code of the node. ``PathCodes`` uses the same notion for Deep Retrieval's grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from grove.indexstore.errors import StructureError


def _frozen(a: np.ndarray, dtype) -> np.ndarray:
    out = np.ascontiguousarray(a, dtype=dtype)
    if out is a or out.base is not None:
        out = out.copy()
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class Tree:
    """A K-ary tree whose leaves hold items.

    Parameters
    ----------
    parent : (M,) int64 -- parent node of every node, ``-1`` for the root (node 0 only).
    item : (M,) int64 -- item at every leaf, ``-1`` at internal nodes.
    n_items : int -- size of the item set; every item in ``[0, n_items)`` must sit at a leaf.
    arity : int -- K, the maximum number of children of a node.

    Use `Tree.from_parents` to build from arrays in any node order (it checks for cycles and
    orphans and renumbers breadth-first); the constructor expects breadth-first order already.
    """

    parent: np.ndarray
    item: np.ndarray
    n_items: int
    arity: int
    level: np.ndarray = field(init=False)

    def __post_init__(self):
        parent = _frozen(self.parent, np.int64)
        item = _frozen(self.item, np.int64)
        object.__setattr__(self, "parent", parent)
        object.__setattr__(self, "item", item)
        object.__setattr__(self, "n_items", int(self.n_items))
        object.__setattr__(self, "arity", int(self.arity))
        object.__setattr__(self, "level", _frozen(self._validate(), np.int32))

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_parents(cls, parent, item, n_items: int, arity: int | None = None) -> Tree:
        """Build from parent/item arrays in any order; renumbers nodes breadth-first.

        Children keep their relative order (by old node id). Raises `StructureError` on more
        than one root, an orphan (parent out of range / unreachable, i.e. a cycle).
        """
        parent = np.asarray(parent, dtype=np.int64)
        item = np.asarray(item, dtype=np.int64)
        m = parent.shape[0]
        if item.shape != (m,):
            raise StructureError(f"parent has {m} nodes but item has shape {item.shape}")
        roots = np.flatnonzero(parent == -1)
        if roots.size != 1:
            raise StructureError(f"a tree needs exactly one root, found {roots.size}")
        bad = np.flatnonzero((parent < -1) | (parent >= m))
        if bad.size:
            raise StructureError(f"node {bad[0]} has parent {parent[bad[0]]}, not a node of the tree")
        order = [roots]
        seen = np.zeros(m, dtype=bool)
        seen[roots] = True
        # children grouped by parent, sorted by (parent, old id)
        child_sort = np.lexsort((np.arange(m), parent))
        sorted_parent = parent[child_sort]
        frontier = roots
        while frontier.size:
            lo = np.searchsorted(sorted_parent, frontier, side="left")
            hi = np.searchsorted(sorted_parent, frontier, side="right")
            nxt = np.concatenate([child_sort[a:b] for a, b in zip(lo, hi)]) if frontier.size else frontier
            nxt = nxt.astype(np.int64)
            if seen[nxt].any():
                raise StructureError("the parent links contain a cycle")
            seen[nxt] = True
            if nxt.size:
                order.append(nxt)
            frontier = nxt
        if not seen.all():
            orphan = int(np.flatnonzero(~seen)[0])
            raise StructureError(f"node {orphan} is not reachable from the root (orphan or cycle)")
        flat_order = np.concatenate(order)
        new_id = np.empty(m, dtype=np.int64)
        new_id[flat_order] = np.arange(m)
        new_parent = np.where(parent[flat_order] >= 0, new_id[np.maximum(parent[flat_order], 0)], -1)
        counts = np.bincount(new_parent[1:], minlength=m) if m > 1 else np.zeros(1, np.int64)
        k = int(counts.max()) if arity is None else arity
        return cls(new_parent, item[flat_order], n_items, max(k, 1))

    @classmethod
    def from_paths(cls, paths: np.ndarray, items: np.ndarray, n_items: int, arity: int) -> Tree:
        """Build from the K-way codes of leaves: ``paths`` (L, depth) ints in [0, K), one row per
        leaf, ``items`` (L,) the item at each leaf. Distinct rows required (one leaf per code).
        Used for complete trees (RecForest) and k-means trees whose leaves all sit at one depth.
        """
        paths = np.asarray(paths, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if paths.ndim != 2 or paths.shape[0] != items.shape[0]:
            raise StructureError(f"paths must be (leaves, depth) matching items, got {paths.shape}, {items.shape}")
        if paths.size and (paths.min() < 0 or paths.max() >= arity):
            raise StructureError(f"a path code is out of range [0, {arity})")
        n_leaves, depth = paths.shape
        parents = [np.array([-1], dtype=np.int64)]
        node_items = [np.array([-1], dtype=np.int64)]
        prev_keys = np.zeros(n_leaves, dtype=np.int64)  # index of each leaf's ancestor at the previous level
        next_id = 1
        prev_base = 0
        for d in range(depth):
            key = prev_keys * arity + paths[:, d]
            uniq, inv = np.unique(key, return_inverse=True)
            parent_of_uniq = prev_base + (uniq // arity)
            # uniq // arity == index into previous level's uniq list
            parents.append(parent_of_uniq)
            if d == depth - 1:
                if uniq.size != n_leaves:
                    raise StructureError("two leaves share the same path")
                leaf_item = np.empty(uniq.size, dtype=np.int64)
                leaf_item[inv] = items
                node_items.append(leaf_item)
            else:
                node_items.append(np.full(uniq.size, -1, dtype=np.int64))
            prev_base = next_id
            next_id += uniq.size
            prev_keys = inv.astype(np.int64)
        return cls(np.concatenate(parents), np.concatenate(node_items), n_items, arity)

    # ---------------------------------------------------------------------------- validation
    def _validate(self) -> np.ndarray:
        parent, item, m = self.parent, self.item, self.parent.shape[0]
        if parent.ndim != 1 or m == 0:
            raise StructureError("a tree needs at least a root node")
        if item.shape != (m,):
            raise StructureError(f"parent has {m} nodes but item has shape {item.shape}")
        if parent[0] != -1:
            raise StructureError(f"node 0 must be the root (parent -1), has parent {parent[0]}")
        if m > 1:
            rest = parent[1:]
            bad = np.flatnonzero((rest < 0) | (rest >= np.arange(1, m)))
            if bad.size:
                i = int(bad[0]) + 1
                what = "a second root" if parent[i] == -1 else f"parent {parent[i]}"
                raise StructureError(
                    f"node {i} has {what}: nodes must be in breadth-first order with one root "
                    "(a cycle or an orphan node)"
                )
            unordered = np.flatnonzero(np.diff(rest) < 0)
            if unordered.size:
                i = int(unordered[0]) + 2
                raise StructureError(
                    f"node {i} has parent {parent[i]} after a node with parent "
                    f"{parent[i - 1]}: nodes must be in breadth-first order"
                )
        n_children = np.bincount(parent[1:], minlength=m) if m > 1 else np.zeros(m, np.int64)
        if self.arity < 1 or n_children.max(initial=0) > self.arity:
            raise StructureError(f"a node has {n_children.max()} children, more than K={self.arity}")
        is_leaf = n_children == 0
        if (item[is_leaf] < 0).any():
            raise StructureError(f"leaf node {int(np.flatnonzero(is_leaf & (item < 0))[0])} holds no item")
        if (item[~is_leaf] >= 0).any():
            raise StructureError(f"internal node {int(np.flatnonzero(~is_leaf & (item >= 0))[0])} holds an item")
        if (item >= self.n_items).any():
            raise StructureError(f"leaf item {int(item.max())} out of range [0, {self.n_items})")
        present = np.zeros(self.n_items, dtype=bool)
        present[item[is_leaf]] = True
        if not present.all():
            raise StructureError(f"item {int(np.flatnonzero(~present)[0])} is not reachable (no leaf holds it)")
        # breadth-first order: the parent array is sorted, so the children of the nodes of level l
        # (ids [lo_l, lo_{l+1})) are the contiguous ids from lo_{l+1} to the first node whose parent
        # is >= lo_{l+1}.
        level = np.zeros(m, dtype=np.int64)
        lo, lv = 1, 0
        while lo < m:
            hi = int(np.searchsorted(parent, lo, side="left"))
            level[lo:hi] = lv + 1
            lo, lv = hi, lv + 1
        return level

    # ------------------------------------------------------------------------------- derived
    @property
    def n_nodes(self) -> int:
        return int(self.parent.shape[0])

    @cached_property
    def depth(self) -> int:
        """Number of edges from the root to the deepest leaf."""
        return int(self.level.max())

    @cached_property
    def is_leaf(self) -> np.ndarray:
        return _frozen(self.item >= 0, bool)

    @cached_property
    def children(self) -> np.ndarray:
        """(M, K) int64: children of every node in order, padded with -1."""
        m, k = self.n_nodes, self.arity
        out = np.full((m, k), -1, dtype=np.int64)
        if m > 1:
            par = self.parent[1:]
            child = np.arange(1, m)
            # breadth-first order => children of a node are contiguous and ascending
            first = np.full(m, m, dtype=np.int64)
            np.minimum.at(first, par, child)
            slot = child - first[par]
            out[par, slot] = child
        return _frozen(out, np.int64)

    @cached_property
    def child_index(self) -> np.ndarray:
        """(M,) int64: position of every node among its parent's children (root: -1)."""
        out = np.full(self.n_nodes, -1, dtype=np.int64)
        ch = self.children
        rows, cols = np.nonzero(ch >= 0)
        out[ch[rows, cols]] = cols
        return _frozen(out, np.int64)

    def nodes_at_level(self, level: int) -> np.ndarray:
        return np.flatnonzero(self.level == level)

    def ancestors_at(self, nodes: np.ndarray, level: int) -> np.ndarray:
        """Ancestor at ``level`` of each node (itself if already at that level; -1 if above it).
        nodes: any-shape int array (-1 entries stay -1)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        out = nodes.copy()
        valid = out >= 0
        for _ in range(self.depth):
            lv = np.where(valid, self.level[np.maximum(out, 0)], -1)
            move = valid & (lv > level)
            if not move.any():
                break
            out[move] = self.parent[out[move]]
        lv = np.where(out >= 0, self.level[np.maximum(out, 0)], -1)
        return np.where(valid & (lv >= level) & (lv >= 0), out, -1)

    @cached_property
    def leaves(self) -> np.ndarray:
        return _frozen(np.flatnonzero(self.is_leaf), np.int64)

    @cached_property
    def item_leaf(self) -> np.ndarray:
        """(n_items,) int64: the first (lowest-numbered) leaf of every item."""
        out = np.full(self.n_items, self.n_nodes, dtype=np.int64)
        leaves = self.leaves
        np.minimum.at(out, self.item[leaves], leaves)
        return _frozen(out, np.int64)

    @cached_property
    def node_paths(self) -> np.ndarray:
        """(M, depth) int64: K-way code of every node from the root, padded with -1 below it."""
        m, d = self.n_nodes, self.depth
        out = np.full((m, d), -1, dtype=np.int64)
        ci = self.child_index
        # breadth-first order: a level's nodes are contiguous and come after their parents
        bounds = np.searchsorted(self.level, np.arange(d + 2))
        for lv in range(1, d + 1):
            nodes = np.arange(bounds[lv], bounds[lv + 1])
            out[nodes] = out[self.parent[nodes]]
            out[nodes, lv - 1] = ci[nodes]
        return _frozen(out, np.int64)

    def leaf_paths(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(leaves (L,), items (L,), paths (L, depth) padded -1) for every leaf."""
        leaves = self.leaves
        return leaves, self.item[leaves], self.node_paths[leaves]

    def level_counts(self) -> np.ndarray:
        return np.bincount(self.level, minlength=self.depth + 1)

    def to_networkx(self):
        """A networkx DiGraph parent -> child with node attributes level and item."""
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(
            (int(n), {"level": int(lv), "item": int(it)})
            for n, lv, it in zip(range(self.n_nodes), self.level, self.item)
        )
        g.add_edges_from(zip(self.parent[1:].tolist(), range(1, self.n_nodes)))
        return g

    def equals(self, other: Tree) -> bool:
        return (
            isinstance(other, Tree)
            and self.n_items == other.n_items
            and self.arity == other.arity
            and np.array_equal(self.parent, other.parent)
            and np.array_equal(self.item, other.item)
        )


@dataclass(frozen=True, eq=False)
class Forest:
    """Several trees over one item set (DeFoRec rounds, RecForest's T trees)."""

    trees: tuple[Tree, ...]

    def __post_init__(self):
        trees = tuple(self.trees)
        if not trees:
            raise StructureError("a forest needs at least one tree")
        n = {t.n_items for t in trees}
        if len(n) != 1:
            raise StructureError(f"the trees of a forest cover different item sets: {sorted(n)}")
        object.__setattr__(self, "trees", trees)

    @property
    def n_items(self) -> int:
        return self.trees[0].n_items

    def __len__(self) -> int:
        return len(self.trees)

    def equals(self, other: Forest) -> bool:
        return (
            isinstance(other, Forest)
            and len(self) == len(other)
            and all(a.equals(b) for a, b in zip(self.trees, other.trees))
        )

    def to_networkx(self):
        import networkx as nx

        return nx.disjoint_union_all([t.to_networkx() for t in self.trees])


@dataclass(frozen=True, eq=False)
class PathCodes:
    """Deep Retrieval's item-to-path assignment: J paths of D codes in [0, K) per item.

    Parameters
    ----------
    codes : (n_items, J, D) int -- the J paths of every item; paths of one item are distinct.
    scores : (n_items, J) float32 -- the score of each path (E-step score; 0 for random init).
    arity : int -- K, the width of each layer.
    """

    codes: np.ndarray
    scores: np.ndarray
    arity: int

    def __post_init__(self):
        codes = _frozen(self.codes, np.int32)
        scores = _frozen(self.scores, np.float32)
        object.__setattr__(self, "codes", codes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "arity", int(self.arity))
        if codes.ndim != 3 or codes.shape[0] == 0:
            raise StructureError(f"codes must have shape (items, J, D), got {codes.shape}")
        if scores.shape != codes.shape[:2]:
            raise StructureError(f"scores must have shape {codes.shape[:2]}, got {scores.shape}")
        bad = np.argwhere((codes < 0) | (codes >= self.arity))
        if bad.size:
            i, j, d = (int(x) for x in bad[0])
            raise StructureError(
                f"code {codes[i, j, d]} of item {i}, path {j}, layer {d} is out of range [0, {self.arity})"
            )
        if codes.shape[1] > 1:
            flat = self.path_ids()
            s = np.sort(flat, axis=1)
            dup = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
            if dup.size:
                raise StructureError(f"item {int(dup[0])} has two identical paths")

    @property
    def n_items(self) -> int:
        return int(self.codes.shape[0])

    @property
    def n_paths(self) -> int:  # J
        return int(self.codes.shape[1])

    @property
    def depth(self) -> int:  # D
        return int(self.codes.shape[2])

    def path_ids(self) -> np.ndarray:
        """(n_items, J) int64: every path as one integer sum_d c_d * K^(D-1-d)."""
        k = np.int64(self.arity)
        weights = k ** np.arange(self.depth - 1, -1, -1, dtype=np.int64)
        return (self.codes.astype(np.int64) * weights).sum(axis=2)

    def equals(self, other: PathCodes) -> bool:
        return (
            isinstance(other, PathCodes)
            and self.arity == other.arity
            and np.array_equal(self.codes, other.codes)
            and np.array_equal(self.scores, other.scores)
        )


Structure = Tree | Forest | PathCodes


def kind_of(structure: Structure) -> str:
    """'tree', 'forest' or 'codes'."""
    if isinstance(structure, Tree):
        return "tree"
    if isinstance(structure, Forest):
        return "forest"
    if isinstance(structure, PathCodes):
        return "codes"
    raise TypeError(f"not an index structure: {type(structure).__name__}")
