"""Comparing two index structures item by item (``grove versions diff V1 V2``).

For trees, every item is followed to its *first* leaf (`Tree.item_leaf`, the lowest-numbered
leaf holding it) and that leaf's K-way path from the root. An item "moved" when its leaf number
or its path differs. Agreement at level l is the share of items whose path prefixes of length l
are equal (level 0 is always 1.0); items whose leaf is shallower than l count as agreeing at l
only if both sides stop at the same depth with the same path.

Forests compare tree t with tree t (for the trees both have). Codes compare slot j with slot j
(paths sorted per item first, so a reordering of an item's J paths is not a move) and report an
item as moved when its set of paths changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grove.indexstore.errors import GroveError
from grove.indexstore.structures import Forest, PathCodes, Structure, Tree, kind_of


@dataclass(frozen=True)
class PartDiff:
    """Differences of one tree (or one slot of codes)."""

    part: str  # 'tree 0', 'slot 1', 'paths'
    n_items: int
    n_moved: int
    sample: tuple[int, ...]  # up to 10 moved items (dense ids)
    agreement: tuple[float, ...]  # (depth+1,) share of items agreeing at levels 0..depth


@dataclass(frozen=True)
class VersionDiff:
    v1: int
    v2: int
    kind: str
    parts: tuple[PartDiff, ...]


def _item_codes(tree: Tree) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(leaf (n,), depth (n,), codes (n, D) padded -1) of every item's first leaf."""
    from grove.indexstore.version_io import leaf_paths

    leaves, lengths, values = leaf_paths(tree)
    d = int(lengths.max()) if lengths.size else 0
    padded = np.full((leaves.shape[0], d), -1, dtype=np.int64)
    padded[np.arange(d)[None, :] < lengths[:, None]] = values
    row = np.searchsorted(leaves, tree.item_leaf)  # (n_items,) row of each item's first leaf
    return tree.item_leaf, lengths[row], padded[row]


def _pad(a: np.ndarray, width: int) -> np.ndarray:
    out = np.full((a.shape[0], width), -1, dtype=np.int64)
    out[:, : a.shape[1]] = a
    return out


def _compare(part: str, leaf1, leaf2, codes1: np.ndarray, codes2: np.ndarray) -> PartDiff:
    width = max(codes1.shape[1], codes2.shape[1])
    c1, c2 = _pad(codes1, width), _pad(codes2, width)  # (n, width)
    same = c1 == c2
    prefix = np.logical_and.accumulate(same, axis=1)  # (n, width): prefix of length l+1 equal
    agreement = [1.0] + [float(x) for x in prefix.mean(axis=0)]
    moved = ~same.all(axis=1)
    if leaf1 is not None:
        moved |= leaf1 != leaf2
    ids = np.flatnonzero(moved)
    return PartDiff(part, int(c1.shape[0]), int(ids.size), tuple(int(i) for i in ids[:10]), tuple(agreement))


def diff_structures(v1: int, s1: Structure, v2: int, s2: Structure) -> VersionDiff:
    """Per-item differences between two structures over the same item set."""
    k1, k2 = kind_of(s1), kind_of(s2)
    if (k1 == "codes") != (k2 == "codes"):
        raise GroveError(
            f"cannot diff version {v1} ({k1}) with version {v2} ({k2}): one is a tree index, the other path codes"
        )
    if s1.n_items != s2.n_items:
        raise GroveError(f"versions {v1} and {v2} index different item sets ({s1.n_items} vs {s2.n_items} items)")
    if isinstance(s1, PathCodes) and isinstance(s2, PathCodes):
        return VersionDiff(v1, v2, "codes", _diff_codes(s1, s2))
    if isinstance(s1, PathCodes) or isinstance(s2, PathCodes):
        raise GroveError(f"versions {v1} and {v2} cannot be compared: one is a tree index, the other path codes")
    t1 = s1.trees if isinstance(s1, Forest) else (s1,)
    t2 = s2.trees if isinstance(s2, Forest) else (s2,)
    parts = []
    for t in range(min(len(t1), len(t2))):
        leaf1, _, c1 = _item_codes(t1[t])
        leaf2, _, c2 = _item_codes(t2[t])
        parts.append(_compare(f"tree {t}", leaf1, leaf2, c1, c2))
    return VersionDiff(v1, v2, k1 if k1 == k2 else f"{k1}/{k2}", tuple(parts))


def _diff_codes(a: PathCodes, b: PathCodes) -> tuple[PartDiff, ...]:
    if a.depth != b.depth:
        raise GroveError(f"path codes of depth {a.depth} and {b.depth} cannot be compared")
    order_a = np.argsort(a.path_ids(), axis=1, kind="stable")  # (n, J): slots in path-id order
    order_b = np.argsort(b.path_ids(), axis=1, kind="stable")
    ca = np.take_along_axis(a.codes, order_a[:, :, None], axis=1).astype(np.int64)  # (n, J, D)
    cb = np.take_along_axis(b.codes, order_b[:, :, None], axis=1).astype(np.int64)
    parts = [_compare(f"slot {j}", None, None, ca[:, j], cb[:, j]) for j in range(min(a.n_paths, b.n_paths))]
    if a.n_paths == b.n_paths:
        whole = _compare("paths", None, None, ca.reshape(a.n_items, -1), cb.reshape(b.n_items, -1))
        parts.append(PartDiff("paths", whole.n_items, whole.n_moved, whole.sample, ()))
    return tuple(parts)
