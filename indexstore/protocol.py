"""The evaluation protocol of docs/PROTOCOL.md: positives, a user-disjoint split, training windows and
held-out halves -> `SplitData`.

1. A positive is an interaction with rating >= ``positive_rating`` (every interaction when the
   dataset has no rating, or when ``positive_rating`` is None).
2. Users with >= ``min_positives`` positives are kept; disjoint valid/test users are drawn at
   random with the seed, the rest train (`split_users`).
3. Each user's positives are ordered by (timestamp, file order). A training sample is every
   positive of a training user preceded by >= ``min_behaviours`` positives; its behaviours are the
   preceding <= 69 positives, nearest first, PAD-padded (`build_split_data`).
4. A held-out user's first floor(n/2) positives are the input / S(u), the rest G(u).

Everything is vectorised over all positives (no loop per user); training windows and histories
are contiguous 69-entry slices of one padded array (see `_Windows`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .interactions import Interactions
from .samples import MAX_BEHAVIOURS, PAD, HeldOutUsers, SplitData, TrainingSamples

ROLES = ("train", "valid", "test")
PROTOCOL_VERSION = 1


@dataclass(frozen=True, eq=False)
class SplitAssignment:
    """Role of every kept user.

    users : (u,) int32 -- dense user ids, ascending.
    roles : (u,) str -- 'train' | 'valid' | 'test'.
    config : dict -- every parameter of the split (stored with it, JSON-serialisable).
    """

    users: np.ndarray
    roles: np.ndarray
    config: dict = field(default_factory=dict)

    def role_users(self, role: str) -> np.ndarray:
        """(n,) int32 users of one role, ascending."""
        return self.users[self.roles == role]

    def counts(self) -> dict[str, int]:
        return {r: int(np.count_nonzero(self.roles == r)) for r in ROLES}


def positive_mask(inter: Interactions, positive_rating: float | None) -> np.ndarray:
    """(n,) bool: rating >= positive_rating; all True without ratings or threshold."""
    if inter.rating is None or positive_rating is None:
        return np.ones(len(inter), dtype=bool)
    return inter.rating >= np.float32(positive_rating)


def _held_out_sizes(
    n_kept: int, valid_fraction: float, test_fraction: float, n_valid: int | None, n_test: int | None
) -> tuple[int, int]:
    """Numbers of valid / test users: absolute counts if given, else rounded fractions of the
    kept users, at least 1 each while at least one training user remains."""
    for name, frac in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise InputError(f"{name} must be in [0, 1), got {frac}")
    sizes = []
    for absolute, frac in ((n_valid, valid_fraction), (n_test, test_fraction)):
        if absolute is not None:
            if absolute < 0:
                raise InputError(f"held-out user count must be >= 0, got {absolute}")
            sizes.append(int(absolute))
        else:
            want = int(round(frac * n_kept))
            sizes.append(max(want, 1) if frac > 0 and n_kept >= 3 else want)
    n_v, n_t = sizes
    if n_v + n_t >= n_kept:
        raise InputError(f"{n_v} valid + {n_t} test users leave no training user among the {n_kept} users kept")
    return n_v, n_t


def split_users(
    inter: Interactions,
    *,
    positive_rating: float | None = 4.0,
    min_positives: int = 10,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    n_valid: int | None = None,
    n_test: int | None = None,
) -> SplitAssignment:
    """Assign kept users to train / valid / test.

    Parameters
    ----------
    inter : Interactions
    positive_rating : rating threshold of a positive (None: every interaction is positive).
    min_positives : a user is kept when it has at least this many positives.
    valid_fraction, test_fraction : held-out shares of the kept users (ignored where
        ``n_valid`` / ``n_test`` give absolute counts).
    seed : seeds the random draw of held-out users.

    Returns
    -------
    SplitAssignment of the kept users (ascending) and a config recording every parameter.
    """
    pos = positive_mask(inter, positive_rating)
    per_user = np.bincount(inter.user[pos], minlength=inter.n_users)  # (U,)
    kept = np.flatnonzero(per_user >= min_positives).astype(np.int32)
    if kept.shape[0] == 0:
        raise InputError(
            f"no user has >= {min_positives} positives "
            f"(rating >= {positive_rating}); lower min_positives or positive_rating"
        )
    n_v, n_t = _held_out_sizes(kept.shape[0], valid_fraction, test_fraction, n_valid, n_test)
    perm = np.random.default_rng(seed).permutation(kept.shape[0])
    roles = np.full(kept.shape[0], "train", dtype="<U5")
    roles[perm[:n_v]] = "valid"
    roles[perm[n_v : n_v + n_t]] = "test"
    config = {
        "protocol": PROTOCOL_VERSION,
        "positive_rating": None if positive_rating is None or inter.rating is None else float(positive_rating),
        "min_positives": int(min_positives),
        "valid_fraction": float(valid_fraction),
        "test_fraction": float(test_fraction),
        "n_valid": n_v,
        "n_test": n_t,
        "n_train": int(kept.shape[0] - n_v - n_t),
        "seed": int(seed),
        "n_positives": int(per_user[kept].sum()),
    }
    return SplitAssignment(kept, roles, config)


class _Windows:
    """Behaviour windows read as slices of one padded, reversed array.

    Each user's positives are laid out after a gap of 69 PADs: ``[PAD*69, items of user 0,
    PAD*69, items of user 1, ...]``, then reversed into ``sequence``. The window before global
    position ``e`` of user ``u`` (its nearest behaviour is items[e-1]) is the contiguous slice of
    69 entries of ``sequence`` from ``start = M - 1 - q`` with q = e - 1 + 69 (u + 1), the padded
    position of items[e-1]; the gap supplies the padding when the user has fewer than 69 earlier
    positives, so no masking is needed.
    """

    def __init__(self, items: np.ndarray, user_sorted: np.ndarray, n_users: int):
        w = MAX_BEHAVIOURS
        padded = np.full(items.shape[0] + w * n_users, PAD, dtype=np.int32)  # (M = P + 69 U,)
        padded[np.arange(items.shape[0]) + w * (user_sorted.astype(np.int64) + 1)] = items
        self.sequence = np.ascontiguousarray(padded[::-1])

    def starts(self, ends: np.ndarray, users: np.ndarray) -> np.ndarray:
        """(n,) int64 start in ``sequence`` of the windows before ``ends`` (n,) of ``users`` (n,)."""
        q = ends.astype(np.int64) - 1 + MAX_BEHAVIOURS * (users.astype(np.int64) + 1)
        return self.sequence.shape[0] - 1 - q

    def take(self, ends: np.ndarray, users: np.ndarray) -> np.ndarray:
        """(n, 69) int32 windows, nearest first, before ``ends`` (n,) of ``users`` (n,)."""
        view = np.lib.stride_tricks.sliding_window_view(self.sequence, MAX_BEHAVIOURS)
        return np.ascontiguousarray(view[self.starts(ends, users)])


def _csr(items: np.ndarray, row_starts: np.ndarray, take: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR pair (offsets (r+1,), values (sum take,)): row i = items[row_starts[i] : + take[i]]."""
    offsets = np.zeros(take.shape[0] + 1, dtype=np.int64)
    np.cumsum(take, out=offsets[1:])
    idx = np.repeat(row_starts - offsets[:-1], take) + np.arange(offsets[-1])  # (nnz,)
    return offsets, items[idx].astype(np.int32)


def _held_out(
    role_users: np.ndarray, items: np.ndarray, starts: np.ndarray, counts: np.ndarray, windows: _Windows
) -> HeldOutUsers:
    """First floor(n/2) positives -> histories + S(u), the rest -> G(u)."""
    n = counts[role_users]
    half = n // 2
    seen_off, seen = _csr(items, starts[role_users], half)
    truth_off, truth = _csr(items, starts[role_users] + half, n - half)
    histories = windows.take(starts[role_users] + half, role_users)
    return HeldOutUsers(role_users.astype(np.int32), histories, seen_off, seen, truth_off, truth)


def build_split_data(
    inter: Interactions,
    assignment: SplitAssignment,
    n_items: int,
    item_category_codes: np.ndarray | None,
    dataset: str,
    split: str,
    *,
    positive_rating: float | None = 4.0,
    min_behaviours: int = 1,
) -> SplitData:
    """Training windows and held-out users of a split.

    Parameters
    ----------
    inter : the dataset's interactions.
    assignment : roles of the kept users (`split_users` or the store).
    n_items : number of dense items.
    item_category_codes : (n_items,) int32 category code per item, -1 none (None: all -1).
    dataset, split : names carried into SplitData.
    positive_rating : must match the split's (its config records it).
    min_behaviours : a training target needs at least this many preceding positives
        (1 by default; JTM uses 6, RecForest 15).

    Returns
    -------
    SplitData (see samples.py for shapes).
    """
    pos = np.flatnonzero(positive_mask(inter, positive_rating))
    # order positives by (user, ts, file order): lexsort is stable, so file order breaks ties
    order = pos[np.lexsort((inter.ts[pos], inter.user[pos]))]
    return split_data_from_positives(
        inter.user[order],
        inter.item[order],
        inter.n_users,
        assignment,
        n_items,
        item_category_codes,
        dataset,
        split,
        min_behaviours=min_behaviours,
    )


def split_data_from_positives(
    user_sorted: np.ndarray,
    items: np.ndarray,
    n_users: int,
    assignment: SplitAssignment,
    n_items: int,
    item_category_codes: np.ndarray | None,
    dataset: str,
    split: str,
    *,
    min_behaviours: int = 1,
) -> SplitData:
    """`build_split_data` from the positives alone, already ordered by (user, time, file order):
    user_sorted (P,) and items (P,) dense ids (the store reads them so, sorted by its engine)."""
    if min_behaviours < 1:
        raise InputError(f"min_behaviours must be >= 1, got {min_behaviours}")
    bad = set(np.unique(assignment.roles).tolist()) - set(ROLES)
    if bad:
        raise InputError(f"unknown split roles {sorted(bad)}; expected {', '.join(ROLES)}")
    if assignment.users.size and (assignment.users.min() < 0 or assignment.users.max() >= n_users):
        raise InputError(f"split users out of range 0..{n_users - 1}")
    user_sorted, items = np.asarray(user_sorted, dtype=np.int32), np.asarray(items, dtype=np.int32)  # (P,)
    counts = np.bincount(user_sorted, minlength=n_users).astype(np.int64)  # (U,)
    starts = np.zeros(n_users, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    role_of = np.full(n_users, -1, dtype=np.int8)
    for code, role in enumerate(ROLES):
        role_of[assignment.users[assignment.roles == role]] = code
    train_users = np.flatnonzero(role_of == 0).astype(np.int32)
    windows = _Windows(items, user_sorted, n_users)
    train = _training_samples(user_sorted, items, starts, role_of, min_behaviours, windows)
    train_off, train_items = _csr(items, starts[train_users], counts[train_users])
    popularity = np.bincount(train_items, minlength=n_items).astype(np.int64)
    if item_category_codes is None:
        item_category_codes = np.full(n_items, -1, dtype=np.int32)
    return SplitData(
        dataset=dataset,
        split=split,
        n_items=int(n_items),
        item_category=np.asarray(item_category_codes, dtype=np.int32),
        item_popularity=popularity,
        train=train,
        train_offsets=train_off,
        train_items=train_items,
        valid=_held_out(np.flatnonzero(role_of == 1), items, starts, counts, windows),
        test=_held_out(np.flatnonzero(role_of == 2), items, starts, counts, windows),
    )


def _training_samples(
    user_sorted: np.ndarray,
    items: np.ndarray,
    starts: np.ndarray,
    role_of: np.ndarray,
    min_behaviours: int,
    windows: _Windows,
) -> TrainingSamples:
    """Every training positive with >= min_behaviours preceding positives of its user."""
    rank = np.arange(user_sorted.shape[0], dtype=np.int64) - starts[user_sorted]  # (P,) preceding
    sample = np.flatnonzero((role_of[user_sorted] == 0) & (rank >= min_behaviours))  # (n,)
    users = user_sorted[sample]
    return TrainingSamples(
        windows.sequence, windows.starts(sample, users), items[sample].astype(np.int32), users.astype(np.int32)
    )
