"""The arrays a split hands to the models: training windows and held-out users.

These are plain numpy containers (no SQL, no torch). `Store.load_split` builds them from the
stored interactions and user roles following docs/PROTOCOL.md.

Conventions
-----------
* Behaviour sequences are fixed-width ``(n, MAX_BEHAVIOURS)`` int32 arrays, **nearest first**:
  column 0 is the most recent behaviour before the target, padded with ``PAD = -1`` at the end.
  (TDM's time windows [1,1,1,2,2,2,10,10,20,20] then read columns 0, 1, 2, 3-4, ...)
* Variable-length sets (a user's full history, ground truth) are CSR pairs
  ``(offsets (u+1,), items (nnz,))``; time order is kept inside each row (oldest first).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

MAX_BEHAVIOURS = 69
PAD = -1


def csr_rows(offsets: np.ndarray, items: np.ndarray) -> list[np.ndarray]:
    """Split a CSR pair into a list of per-row arrays (for small data and tests)."""
    return [items[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def pad_histories(histories: list, width: int = MAX_BEHAVIOURS) -> np.ndarray:
    """Time-ordered histories (oldest first, any length) -> (B, width) int32, nearest first,
    keeping the last ``width`` behaviours, padded with PAD."""
    out = np.full((len(histories), width), PAD, dtype=np.int32)
    for i, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)[-width:][::-1]
        out[i, : h.shape[0]] = h
    return out


@dataclass(frozen=True, eq=False)
class TrainingSamples:
    """Sliding windows over training users' positives, kept without materialising them.

    A window is 69 consecutive entries of one shared int32 array, so n windows cost O(n) memory
    (an (n, 69) int32 array would be 276 bytes per window, gigabytes for the millions of windows
    of a 10^6-item corpus). `take` builds the (b, 69) windows of a batch.

    sequence : (M,) int32 -- every training user's positives laid out newest first, each user
        followed by 69 PADs (see `grove.indexstore.protocol`), so a window never reads another user.
    starts : (n,) int64 -- window i is ``sequence[starts[i] : starts[i] + 69]``, nearest first.
    targets : (n,) int32 -- the item that follows the behaviours.
    users : (n,) int32 -- the dense user of each sample.
    """

    sequence: np.ndarray
    starts: np.ndarray
    targets: np.ndarray
    users: np.ndarray

    @classmethod
    def from_windows(cls, behaviours: np.ndarray, targets: np.ndarray, users: np.ndarray) -> TrainingSamples:
        """Samples from explicit (n, <= 69) windows, nearest first, PAD-padded (small data,
        tests): padded to 69 columns and stored back to back."""
        beh = np.asarray(behaviours)
        if beh.ndim != 2 or beh.shape[1] > MAX_BEHAVIOURS:
            raise ValueError(f"behaviours must be (n, <= {MAX_BEHAVIOURS}), got {beh.shape}")
        beh = np.pad(beh.astype(np.int32), ((0, 0), (0, MAX_BEHAVIOURS - beh.shape[1])), constant_values=PAD)
        return cls(
            beh.reshape(-1),
            np.arange(beh.shape[0], dtype=np.int64) * MAX_BEHAVIOURS,
            np.asarray(targets, dtype=np.int32),
            np.asarray(users, dtype=np.int32),
        )

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def take(self, idx) -> np.ndarray:
        """(len(idx), 69) int32 windows of samples ``idx`` (any int array or slice)."""
        view = np.lib.stride_tricks.sliding_window_view(self.sequence, MAX_BEHAVIOURS)
        return np.ascontiguousarray(view[self.starts[idx]])

    def subset(self, idx: np.ndarray) -> TrainingSamples:
        """The samples ``idx`` (sharing ``sequence``: no window is copied)."""
        return TrainingSamples(self.sequence, self.starts[idx], self.targets[idx], self.users[idx])

    def behaviour_counts(self) -> np.ndarray:
        """(n,) int64: the behaviours of every window (<= 69), from the PADs that end each user's
        run in ``sequence`` (no (n, 69) array is built)."""
        # every user's run ends in 69 PADs (windows of `from_windows` may not: the end bounds them)
        pads = np.append(np.flatnonzero(self.sequence == PAD), self.sequence.shape[0])
        return np.minimum(pads[np.searchsorted(pads, self.starts)] - self.starts, MAX_BEHAVIOURS)


@dataclass(frozen=True, eq=False)
class HeldOutUsers:
    """Validation or test users: first half of their positives is input, second half truth.

    users : (u,) int32
    histories : (u, 69) int32 -- the last 69 of the first half, nearest first, PAD-padded.
    seen_offsets, seen_items : CSR of the whole first half (oldest first): S(u) for Novelty and
        for filtering seen items.
    truth_offsets, truth_items : CSR of the second half: G(u).
    """

    users: np.ndarray
    histories: np.ndarray
    seen_offsets: np.ndarray
    seen_items: np.ndarray
    truth_offsets: np.ndarray
    truth_items: np.ndarray

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def truth(self) -> list[np.ndarray]:
        return csr_rows(self.truth_offsets, self.truth_items)

    def seen(self) -> list[np.ndarray]:
        return csr_rows(self.seen_offsets, self.seen_items)

    def subset(self, n: int) -> HeldOutUsers:
        """The first n users (for quick evaluation)."""
        n = min(n, len(self))
        so, to = self.seen_offsets[: n + 1], self.truth_offsets[: n + 1]
        return HeldOutUsers(
            self.users[:n], self.histories[:n], so, self.seen_items[: so[-1]], to, self.truth_items[: to[-1]]
        )


@dataclass(frozen=True, eq=False)
class SplitData:
    """Everything a method needs from a stored split.

    n_items : number of dense items of the dataset.
    item_category : (n_items,) int32 -- the one category kept per item, -1 if none.
    item_popularity : (n_items,) int64 -- positives per item among training users.
    train : TrainingSamples
    train_offsets, train_items : CSR of each training user's positives, oldest first
        (for Item-CF and co-occurrence statistics).
    valid, test : HeldOutUsers
    """

    dataset: str
    split: str
    n_items: int
    item_category: np.ndarray
    item_popularity: np.ndarray
    train: TrainingSamples
    train_offsets: np.ndarray
    train_items: np.ndarray
    valid: HeldOutUsers
    test: HeldOutUsers

    def with_min_behaviours(self, min_behaviours: int) -> SplitData:
        """This split with only the training windows of >= ``min_behaviours`` behaviours (the
        protocol's filter applied afterwards: the same windows `build_split_data` keeps with it,
        up to the 69-behaviour cap); itself for 1, which every window meets."""
        if min_behaviours <= 1:
            return self
        keep = np.flatnonzero(self.train.behaviour_counts() >= min(min_behaviours, MAX_BEHAVIOURS))
        return dataclasses.replace(self, train=self.train.subset(keep))

    def held_out(self, role: str) -> HeldOutUsers:
        if role not in ("valid", "test"):
            raise ValueError(f"role must be 'valid' or 'test', got {role!r}")
        return self.valid if role == "valid" else self.test
