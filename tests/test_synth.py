"""Synthetic generator: deterministic, well-formed, and with the planted structure visible in the
positives (consecutive items share clusters far more often than chance)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from grove.indexstore.errors import InputError
from grove.indexstore.protocol import positive_mask, split_users
from grove.indexstore.synth import default_branching, planted_hierarchy, synthesize


def test_deterministic_given_seed():
    a, ca = synthesize(2000, 300, seed=7)
    b, cb = synthesize(2000, 300, seed=7)
    for f in ("user", "item", "ts", "rating"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert list(ca.kept) == list(cb.kept)
    c, _ = synthesize(2000, 300, seed=8)
    assert len(c) != len(a) or not np.array_equal(c.item, a.item)


def test_shapes_ranges_and_categories():
    inter, cats = synthesize(3000, 400, seed=1, branching=(4, 3, 5))
    n = len(inter)
    assert inter.n_items == 3000 and inter.n_users == 400 and n >= 400 * 12
    assert inter.user.dtype == np.int32 and inter.item.dtype == np.int32 and inter.ts.dtype == np.int64
    assert inter.item.min() >= 0 and inter.item.max() < 3000
    assert set(np.unique(inter.rating).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    same_user = inter.user[1:] == inter.user[:-1]
    assert (np.diff(inter.ts)[same_user] > 0).all()  # strictly increasing per user
    h = planted_hierarchy(3000, 1, (4, 3, 5))
    expected = np.array([f"c{t}.{s % 3}" for t, s in zip(h.top, h.sub)], dtype=object)
    assert list(cats.kept) == list(expected)
    assert len(set(cats.kept)) == 12
    np.testing.assert_array_equal(cats.pair_item, np.arange(3000))
    # every leaf cluster holds items; the CSR covers each item once
    assert (np.diff(h.leaf_offsets) >= 1).all()
    np.testing.assert_array_equal(np.sort(h.leaf_items), np.arange(3000))


def test_planted_structure_is_visible_in_positives():
    inter, _ = synthesize(5000, 500, seed=2, branching=(8, 4, 4))
    h = planted_hierarchy(5000, 2, (8, 4, 4))
    pos = positive_mask(inter, 4.0)
    u, it = inter.user[pos], inter.item[pos]
    nxt = u[1:] == u[:-1]
    same_top = (h.top[it[1:]] == h.top[it[:-1]])[nxt].mean()
    same_leaf = (h.leaf[it[1:]] == h.leaf[it[:-1]])[nxt].mean()
    assert same_top > 0.8 and same_top > 4 * (1 / 8)  # chance is ~1/8
    assert same_leaf > 0.4
    # the positive filter removes most noise: low-rated events break continuity more often
    low = ~pos
    lu, li = inter.user, inter.item
    prev_same = np.r_[False, lu[1:] == lu[:-1]]
    cont_low = (h.top[li[1:]] == h.top[li[:-1]])[(low[1:]) & prev_same[1:]].mean()
    assert cont_low < same_top
    # Zipf-like popularity inside clusters: the top 10% items draw well over 10% of positives
    counts = np.sort(np.bincount(it, minlength=5000))[::-1]
    assert counts[:500].sum() > 0.3 * counts.sum()


def test_users_pass_protocol_filter():
    inter, _ = synthesize(1000, 200, seed=3)
    a = split_users(inter, seed=0)
    assert len(a.users) > 0.8 * 200


def test_bad_arguments():
    with pytest.raises(InputError, match="leaf clusters"):
        synthesize(10, 5, seed=0, branching=(4, 4, 4))
    with pytest.raises(InputError, match="branching"):
        synthesize(100, 5, seed=0, branching=(4, 4))
    with pytest.raises(InputError, match="min_length"):
        synthesize(100, 5, seed=0, min_length=50, mean_length=10)
    with pytest.raises(InputError):
        synthesize(0, 5, seed=0)
    assert default_branching(10**6) == (16, 16, 16) and default_branching(100) == (2, 2, 2)


def test_speed_medium():
    t = time.perf_counter()
    inter, cats = synthesize(100_000, 10_000, seed=0)
    assert time.perf_counter() - t < 10.0  # ~0.3 s measured
    assert len(cats.kept) == 100_000 and len(inter) > 100_000


@pytest.mark.slow
def test_speed_million_items_hundred_thousand_users():
    t = time.perf_counter()
    inter, cats = synthesize(10**6, 10**5, seed=0)
    assert time.perf_counter() - t < 60  # ~1.5 s measured on 2 loaded cores
    assert inter.n_items == 10**6 and inter.n_users == 10**5 and len(cats.kept) == 10**6
