"""Protocol (docs/PROTOCOL.md): positives, user-disjoint split, training windows nearest first,
first/second half of held-out users; checked on a hand-made example and against a per-user
reference on random data."""

from __future__ import annotations

import time

import numpy as np
import pytest

from grove.indexstore.errors import InputError
from grove.indexstore.interactions import Interactions
from grove.indexstore.protocol import SplitAssignment, build_split_data, positive_mask, split_users
from grove.indexstore.readers import read_interactions
from grove.indexstore.samples import MAX_BEHAVIOURS, PAD, TrainingSamples


def _inter(user, item, ts, rating=None, n_users=None, n_items=None):
    user = np.asarray(user, np.int32)
    item = np.asarray(item, np.int32)
    n_users = n_users or int(user.max()) + 1
    n_items = n_items or int(item.max()) + 1
    return Interactions(
        user,
        item,
        np.asarray(ts, np.int64),
        None if rating is None else np.asarray(rating, np.float32),
        None,
        np.arange(n_users).astype(str),
        np.arange(n_items).astype(str),
    )


def _hand_made():
    # user 0 (train): positives by time 10,11,12,13 (file order shuffled, ts tie at 12 kept in
    # file order: item 12 before item 22); a rating-2 interaction is not a positive.
    # user 1 (valid): 5 positives -> history 2, truth 3.  user 2 (test): 4 positives.
    rows = [
        (0, 13, 40, 5),
        (0, 10, 10, 4),
        (0, 12, 30, 5),
        (0, 22, 30, 4),
        (0, 99, 20, 2),
        (0, 11, 20, 4),
        (1, 1, 1, 5),
        (1, 2, 2, 5),
        (1, 3, 3, 5),
        (1, 4, 4, 5),
        (1, 5, 5, 5),
        (2, 7, 9, 4),
        (2, 6, 8, 4),
        (2, 8, 10, 4),
        (2, 9, 11, 4),
    ]
    u, i, t, r = zip(*rows)
    inter = _inter(u, i, t, r, n_items=100)
    assign = SplitAssignment(np.array([0, 1, 2], np.int32), np.array(["train", "valid", "test"]), {})
    return inter, assign


def test_windows_on_hand_made_example():
    inter, assign = _hand_made()
    data = build_split_data(inter, assign, 100, None, "hand", "s")
    # time order of user 0's positives: 10, 11, 12, 22, 13
    np.testing.assert_array_equal(data.train.targets, [11, 12, 22, 13])
    np.testing.assert_array_equal(data.train.users, [0, 0, 0, 0])
    b = data.train.take(np.arange(len(data.train)))
    assert b.shape == (4, MAX_BEHAVIOURS) and b.dtype == np.int32
    np.testing.assert_array_equal(
        b[:, :5], [[10, PAD, PAD, PAD, PAD], [11, 10, PAD, PAD, PAD], [12, 11, 10, PAD, PAD], [22, 12, 11, 10, PAD]]
    )
    assert (b[:, 5:] == PAD).all()
    np.testing.assert_array_equal(data.train_offsets, [0, 5])
    np.testing.assert_array_equal(data.train_items, [10, 11, 12, 22, 13])
    # popularity from training positives only
    assert data.item_popularity[10] == 1 and data.item_popularity[1] == 0 and data.item_popularity[99] == 0
    # held-out halves: floor(5/2) = 2 history items
    v = data.valid
    np.testing.assert_array_equal(v.users, [1])
    np.testing.assert_array_equal(v.seen()[0], [1, 2])
    np.testing.assert_array_equal(v.truth()[0], [3, 4, 5])
    np.testing.assert_array_equal(v.histories[0, :3], [2, 1, PAD])
    np.testing.assert_array_equal(data.test.seen()[0], [6, 7])
    np.testing.assert_array_equal(data.test.truth()[0], [8, 9])
    assert (data.item_category == -1).all() and data.n_items == 100


def test_min_behaviours_and_long_sequences_truncate_to_69():
    n = 100
    inter = _inter(np.zeros(n), np.arange(n), np.arange(n), np.full(n, 5.0))
    assign = SplitAssignment(np.array([0], np.int32), np.array(["train"]), {})
    data = build_split_data(inter, assign, n, None, "d", "s", min_behaviours=6)
    np.testing.assert_array_equal(data.train.targets, np.arange(6, n))
    last = data.train.take([len(data.train) - 1])[0]  # target 99: behaviours 98 .. 30
    np.testing.assert_array_equal(last, np.arange(98, 98 - MAX_BEHAVIOURS, -1))
    with pytest.raises(InputError):
        build_split_data(inter, assign, n, None, "d", "s", min_behaviours=0)


def _reference(inter, assign, positive_rating, min_behaviours):
    """Per-user Python reference of the protocol."""
    pos = positive_mask(inter, positive_rating)
    seqs = {}
    for j in np.flatnonzero(pos)[np.lexsort((inter.ts[pos], inter.user[pos]))]:
        seqs.setdefault(int(inter.user[j]), []).append(int(inter.item[j]))
    windows, targets = [], []
    for u in assign.role_users("train"):
        s = seqs[int(u)]
        for k in range(min_behaviours, len(s)):
            w = s[max(0, k - MAX_BEHAVIOURS) : k][::-1]
            windows.append(w + [PAD] * (MAX_BEHAVIOURS - len(w)))
            targets.append(s[k])
    return seqs, np.array(windows).reshape(-1, MAX_BEHAVIOURS), np.array(targets)


def test_matches_per_user_reference_on_random_data():
    rng = np.random.default_rng(3)
    n = 6000
    inter = _inter(
        rng.integers(0, 60, n),
        rng.integers(0, 300, n),
        rng.integers(0, 50, n),
        rng.integers(1, 6, n),
        n_users=60,
        n_items=300,
    )
    assign = split_users(inter, min_positives=5, seed=1)
    data = build_split_data(inter, assign, 300, np.arange(300, dtype=np.int32) % 7, "r", "s", min_behaviours=3)
    seqs, windows, targets = _reference(inter, assign, 4.0, 3)
    np.testing.assert_array_equal(data.train.take(np.arange(len(data.train))), windows)
    np.testing.assert_array_equal(data.train.targets, targets)
    for held in (data.valid, data.test):
        for row, u in enumerate(held.users):
            s = seqs[int(u)]
            np.testing.assert_array_equal(held.seen()[row], s[: len(s) // 2])
            np.testing.assert_array_equal(held.truth()[row], s[len(s) // 2 :])
            h = s[: len(s) // 2][-MAX_BEHAVIOURS:][::-1]
            np.testing.assert_array_equal(held.histories[row, : len(h)], h)
            assert (held.histories[row, len(h) :] == PAD).all()
    train_pos = np.concatenate([seqs[int(u)] for u in assign.role_users("train")])
    np.testing.assert_array_equal(data.item_popularity, np.bincount(train_pos, minlength=300))


def test_split_invariants_and_seed():
    rng = np.random.default_rng(0)
    n = 20000
    inter = _inter(
        rng.integers(0, 400, n), rng.integers(0, 500, n), rng.integers(0, 10**6, n), rng.integers(1, 6, n), n_users=400
    )
    a = split_users(inter, min_positives=20, seed=5)
    pos_per_user = np.bincount(inter.user[inter.rating >= 4], minlength=400)
    np.testing.assert_array_equal(a.users, np.flatnonzero(pos_per_user >= 20))
    roles = {r: set(a.role_users(r).tolist()) for r in ("train", "valid", "test")}
    assert not (roles["train"] & roles["valid"]) and not (roles["valid"] & roles["test"])
    assert not (roles["train"] & roles["test"])
    kept = len(a.users)
    assert a.counts()["valid"] == round(0.1 * kept) == a.counts()["test"]
    assert a.config["seed"] == 5 and a.config["min_positives"] == 20
    assert a.config["n_train"] + a.config["n_valid"] + a.config["n_test"] == kept
    b = split_users(inter, min_positives=20, seed=5)
    np.testing.assert_array_equal(a.roles, b.roles)
    c = split_users(inter, min_positives=20, seed=6)
    assert not np.array_equal(a.roles, c.roles)
    d = split_users(inter, min_positives=20, n_valid=3, n_test=4)
    assert d.counts()["valid"] == 3 and d.counts()["test"] == 4


def test_split_small_and_bad_cases():
    # 3 kept users: at least 1 valid and 1 test, one train
    inter = _inter(np.repeat([0, 1, 2, 3], 10), np.arange(40), np.arange(40), None)
    a = split_users(inter, min_positives=10)
    assert a.counts() == {"train": 2, "valid": 1, "test": 1}
    assert a.config["positive_rating"] is None  # no rating column: all positive
    with pytest.raises(InputError, match="no user has >= 11 positives"):
        split_users(inter, min_positives=11)
    with pytest.raises(InputError, match="no training user"):
        split_users(inter, n_valid=2, n_test=2)
    with pytest.raises(InputError, match="valid_fraction"):
        split_users(inter, valid_fraction=1.5)


@pytest.mark.dataset
def test_ml_1m_subset_counts(shared_datasets):
    inter = read_interactions(shared_datasets / "ml-1m-subset" / "ratings_users0001-2999.dat.gz")
    assign = split_users(inter)
    t = time.perf_counter()
    data = build_split_data(inter, assign, inter.n_items, None, "ml-1m-subset", "default")
    elapsed = time.perf_counter() - t
    n_pos = (
        data.train_offsets[-1]
        + data.valid.seen_offsets[-1]
        + data.valid.truth_offsets[-1]
        + data.test.seen_offsets[-1]
        + data.test.truth_offsets[-1]
    )
    assert n_pos == assign.config["n_positives"] == 278_865
    assert len(assign.users) == 2_966
    items = np.unique(
        np.concatenate(
            [
                data.train_items,
                data.valid.seen_items,
                data.valid.truth_items,
                data.test.seen_items,
                data.test.truth_items,
            ]
        )
    )
    assert len(items) == 3_395
    assert len(data.train) == data.train_offsets[-1] - assign.counts()["train"]
    assert elapsed < 5.0  # ~0.3 s measured; slack for a loaded 2-core machine


@pytest.mark.slow
def test_ten_million_positives_fit():
    """Scale check (issue 2): 10^7 interactions -> windows in int32, vectorised."""
    from grove.indexstore.synth import synthesize

    inter, _ = synthesize(10**6, 250_000, seed=0)
    assign = split_users(inter)
    t = time.perf_counter()
    data = build_split_data(inter, assign, inter.n_items, None, "big", "s")
    assert time.perf_counter() - t < 120
    assert len(data.train) > 5_000_000
    # windows are slices of one sequence: O(interactions) memory, not (n, 69)
    assert data.train.sequence.nbytes <= 4 * (len(inter) + MAX_BEHAVIOURS * inter.n_users)
    assert data.train.take(np.arange(3)).shape == (3, MAX_BEHAVIOURS)


@pytest.mark.parametrize("m", [1, 3, 6, 69])
def test_min_behaviours_after_loading_keeps_the_windows_the_protocol_keeps(m):
    """`SplitData.with_min_behaviours` (what a method's config applies to a loaded split) keeps
    exactly the windows `build_split_data` builds with that filter; also for `from_windows`
    samples, whose last window may end the sequence without padding."""
    rng = np.random.default_rng(4)
    n = 8000
    inter = _inter(
        rng.integers(0, 40, n), rng.integers(0, 200, n), rng.integers(0, 80, n), rng.integers(1, 6, n), 40, 200
    )
    assign = split_users(inter, min_positives=5, seed=2)
    every = build_split_data(inter, assign, 200, None, "r", "s")
    want = build_split_data(inter, assign, 200, None, "r", "s", min_behaviours=m)
    got = every.with_min_behaviours(m)
    np.testing.assert_array_equal(
        got.train.take(np.arange(len(got.train))), want.train.take(np.arange(len(want.train)))
    )
    np.testing.assert_array_equal(got.train.targets, want.train.targets)
    np.testing.assert_array_equal(got.train.users, want.train.users)
    windows = every.train.take(np.arange(len(every.train)))
    assert np.array_equal(every.train.behaviour_counts(), (windows >= 0).sum(1))
    explicit = TrainingSamples.from_windows(windows, every.train.targets, every.train.users)
    assert np.array_equal(explicit.behaviour_counts(), (windows >= 0).sum(1))
