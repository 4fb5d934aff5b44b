"""Raw item ids <-> dense item ids of one dataset, the one mapper the store, the retriever and the
service use.

A dataset numbers its items densely (``0 .. n-1``); people and clients use the raw ids of the
source file. `ItemIds` keeps the raw ids as one numpy string array and a sorted copy, so a batch
of raw ids maps to dense ids with one `np.searchsorted` (no Python dict of n strings: at 10^7
items a dict costs several GB, the arrays a few hundred MB).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class ItemIds:
    """raw : (n,) str, the raw id of every dense item (dense id = position)."""

    def __init__(self, raw: np.ndarray):
        self.raw = np.asarray(raw, dtype=str)
        self._order = np.argsort(self.raw, kind="stable")  # (n,) dense ids in raw-id order
        self._sorted = self.raw[self._order]  # (n,) raw ids, sorted

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def dense(self, raw: Iterable) -> np.ndarray:
        """(m,) int64 dense ids of raw ids (any values, compared as stripped strings), -1 where
        unknown."""
        query = np.asarray([str(r).strip() for r in raw], dtype=str)
        if query.size == 0 or self._sorted.size == 0:
            return np.full(query.shape[0], -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, query), self._sorted.size - 1)
        return np.where(self._sorted[pos] == query, self._order[pos], -1).astype(np.int64)

    def raw_of(self, dense: np.ndarray | Sequence[int]) -> np.ndarray:
        """Raw ids of dense ids (any shape), "" where the id is padding (< 0)."""
        dense = np.asarray(dense, dtype=np.int64)
        if self.raw.size == 0:
            return np.full(dense.shape, "", dtype=str)
        return np.where(dense >= 0, self.raw[np.maximum(dense, 0)], "")
