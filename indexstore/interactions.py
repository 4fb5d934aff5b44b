"""The in-memory data types of a dataset: its interactions with dense ids and raw-id maps, and
its items' categories. Plain numpy containers (no SQL, no parsing)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Interactions:
    """One dataset's interactions with dense ids.

    user, item : (n,) int32 -- dense ids in ``0..U-1`` / ``0..I-1``.
    ts : (n,) int64 -- epoch seconds.
    rating : (n,) float32 or None when the source has no rating column.
    behavior : (n,) object (str or None) or None when the source has no behaviour column.
    user_raw : (U,) str -- raw id of each dense user (sorted numerically if all numeric,
        else lexicographically); item_raw : (I,) str likewise.
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    rating: np.ndarray | None
    behavior: np.ndarray | None
    user_raw: np.ndarray
    item_raw: np.ndarray

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @property
    def n_users(self) -> int:
        return int(self.user_raw.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_raw.shape[0])


@dataclass(frozen=True, eq=False)
class ItemCategories:
    """Categories of a dataset's items.

    kept : (n_items,) object -- the one category kept per dense item (str), None if it has none.
    pair_item : (m,) int32, pair_category : (m,) object -- every (item, category) pair.
    """

    kept: np.ndarray
    pair_item: np.ndarray
    pair_category: np.ndarray
