"""Datasets and splits in the store: exact round trips, immutability, load_split."""

from __future__ import annotations

import numpy as np
import pytest

from grove.indexstore.errors import GroveError, NotFoundError
from grove.indexstore.interactions import Interactions, ItemCategories
from grove.indexstore.protocol import split_users
from grove.indexstore.store import Store


@pytest.fixture
def store(store_url) -> Store:
    Store.init(store_url)
    return Store.open(store_url)


def small_interactions(seed: int = 0, n_users: int = 40, n_items: int = 30, per_user: int = 15):
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(n_users, dtype=np.int32), per_user)
    item = rng.integers(0, n_items, user.size).astype(np.int32)
    item[:n_items] = np.arange(n_items)  # every item used at least once
    ts = np.tile(np.arange(per_user, dtype=np.int64) * 60, n_users) + 1_000_000
    rating = rng.choice(np.array([3.0, 4.0, 5.0], np.float32), user.size)
    behavior = np.where(rng.random(user.size) < 0.5, "click", "buy").astype(object)
    inter = Interactions(
        user,
        item,
        ts,
        rating,
        behavior,
        np.array([f"u{i}" for i in range(n_users)]),
        np.array([f"i{i}" for i in range(n_items)]),
    )
    kept = np.array([None if i % 7 == 0 else f"cat{i % 3}" for i in range(n_items)], dtype=object)
    pair_item = np.array([i for i in range(n_items) if kept[i] is not None], dtype=np.int32)
    cats = ItemCategories(kept, pair_item, kept[pair_item])
    return inter, cats


def test_dataset_round_trip_exact(store):
    inter, cats = small_interactions()
    info = store.import_dataset("toy", inter, cats, source="test", meta={"a": 1})
    assert (info.n_users, info.n_items, info.n_interactions, info.meta) == (40, 30, 600, {"a": 1})
    back = store.load_interactions("toy")
    for col in ("user", "item", "ts", "rating", "user_raw", "item_raw"):
        assert np.array_equal(getattr(back, col), getattr(inter, col)), col
    assert list(back.behavior) == list(inter.behavior)
    codes, names = store.item_categories("toy")
    assert list(names) == ["cat0", "cat1", "cat2"]
    assert np.array_equal(codes == -1, np.array([k is None for k in cats.kept]))
    assert np.array_equal(store.item_dense_ids("toy", ["i3", "nope", "i29"]), [3, -1, 29])
    with pytest.raises(GroveError, match="already exists"):
        store.import_dataset("toy", inter, cats)
    assert [d.name for d in store.list_datasets()] == ["toy"]


def test_dataset_without_rating_or_categories(store):
    inter, _ = small_interactions()
    bare = Interactions(inter.user, inter.item, inter.ts, None, None, inter.user_raw, inter.item_raw)
    store.import_dataset("bare", bare)
    back = store.load_interactions("bare")
    assert back.rating is None and back.behavior is None
    assert (store.item_categories("bare")[0] == -1).all()


def test_split_round_trip_and_load(store):
    inter, cats = small_interactions()
    store.import_dataset("toy", inter, cats)
    assignment = split_users(inter, positive_rating=4.0, min_positives=5, seed=3)
    info = store.write_split("toy", "default", assignment, {"note": "t"})
    assert info.n_train + info.n_valid + info.n_test == assignment.users.size
    assert info.config["note"] == "t"
    with pytest.raises(GroveError, match="already has a split"):
        store.write_split("toy", "default", assignment, {})
    data = store.load_split("toy", "default")
    assert data.n_items == 30 and len(data.train) > 0
    assert len(data.valid) == info.n_valid and len(data.test) == info.n_test
    assert data.item_category.shape == (30,)
    with pytest.raises(NotFoundError, match="no split"):
        store.load_split("toy", "other")
    with pytest.raises(NotFoundError, match="unknown dataset"):
        store.load_interactions("nope")
