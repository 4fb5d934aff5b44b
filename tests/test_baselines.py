"""Two-tower (YouTube product-DNN) and Item-CF baselines on planted-cluster data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grove.indexstore.errors import GroveError, StateError
from grove.indexstore.samples import HeldOutUsers, SplitData, TrainingSamples, pad_histories
from grove.models.baselines.flat import flat_tree
from grove.models.baselines.item_cf import ItemCFConfig, ItemCFMethod, build_neighbours
from grove.models.baselines.two_tower import TwoTowerConfig, TwoTowerMethod, train_two_tower
from grove.models.evaluation import evaluate
from grove.models.method import Built, Searcher, config_from_dict

N_CLUSTERS, CLUSTER = 4, 15
N_ITEMS = N_CLUSTERS * CLUSTER


def csr(rows):
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return offsets, np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])


def split_from_sequences(train_seqs, held_seqs, n_items) -> SplitData:
    """Protocol by hand: sliding windows for training users, half/half for held-out users."""
    beh, tgt, usr = [], [], []
    for u, seq in enumerate(train_seqs):
        for t in range(1, len(seq)):
            beh.append(seq[:t]), tgt.append(seq[t]), usr.append(u)
    samples = TrainingSamples.from_windows(pad_histories(beh), np.array(tgt, np.int32), np.array(usr, np.int32))
    seen = [s[: len(s) // 2] for s in held_seqs]
    truth = [s[len(s) // 2 :] for s in held_seqs]
    held = HeldOutUsers(np.arange(len(held_seqs), dtype=np.int32), pad_histories(seen), *csr(seen), *csr(truth))
    train_off, train_items = csr(train_seqs)
    pop = np.bincount(train_items, minlength=n_items).astype(np.int64)
    return SplitData(
        "planted", "default", n_items, np.full(n_items, -1, np.int32), pop, samples, train_off, train_items, held, held
    )


def planted(seed=0, n_train=240, n_held=40, length=12) -> SplitData:
    """Each user draws ``length`` distinct items from one of 4 clusters of 15 items."""
    rng = np.random.default_rng(seed)

    def user():
        c = rng.integers(N_CLUSTERS)
        return (c * CLUSTER + rng.permutation(CLUSTER)[:length]).astype(np.int64)

    return split_from_sequences([user() for _ in range(n_train)], [user() for _ in range(n_held)], N_ITEMS)


class PopularitySearcher(Searcher):
    """Most popular training items for everyone (the reference a learnt model must beat)."""

    def __init__(self, popularity):
        self.n_items, self.device = len(popularity), torch.device("cpu")
        self.order = torch.as_tensor(np.argsort(-popularity, kind="stable"))

    def search(self, histories, k, beam):
        items = self.order[:k].expand(histories.shape[0], k)
        return -torch.arange(k, dtype=torch.float32).expand_as(items), items

    def exhaustive(self, histories, k):
        return self.search(histories, k, 1)


SMALL_TT = TwoTowerConfig(dim=16, hidden=(32,), negatives=20, epochs=8, batch_size=128, lr=5e-3, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train ~10x faster on one thread when the 2 cores are shared (OpenMP spinning);
    restored afterwards, so nothing is set globally."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> SplitData:
    return planted()


@pytest.fixture(scope="module")
def two_tower_built(data) -> Built:
    method = TwoTowerMethod()
    return method.train(SMALL_TT, method.construct(SMALL_TT, data, 0), data, seed=0)


def test_flat_tree_holds_every_item_under_the_root():
    tree = flat_tree(5)
    assert tree.n_nodes == 6 and tree.arity == 5 and tree.depth == 1
    assert sorted(tree.item[tree.leaves].tolist()) == list(range(5))


def test_two_tower_beats_popularity_by_a_wide_margin(data, two_tower_built):
    searcher = TwoTowerMethod().searcher(SMALL_TT, two_tower_built, "cpu")
    tt = evaluate(searcher, data.test, ks=(10,))
    pop = evaluate(PopularitySearcher(data.item_popularity), data.test, ks=(10,))
    # within-cluster ranking gives recall ~ 10/15; popularity / random ~ 10/60
    assert tt.value("recall", 10) > 0.5
    assert tt.value("recall", 10) > 2.5 * pop.value("recall", 10)
    filtered = evaluate(searcher, data.test, ks=(10,), filter_seen=True)
    assert filtered.value("recall", 10) > 0.85 and filtered.value("novelty", 10) == 1.0


def test_two_tower_windows_pooling_learns_too(data):
    cfg = TwoTowerConfig(**{**SMALL_TT.to_dict(), "pooling": "windows", "sampler": "uniform"})
    method = TwoTowerMethod()
    searcher = method.searcher(cfg, method.train(cfg, Built(flat_tree(N_ITEMS)), data, 0))
    assert searcher.items.shape == (N_ITEMS, 16)
    assert evaluate(searcher, data.test, ks=(10,)).value("recall", 10) > 0.5


def test_two_tower_same_seed_same_weights_and_store_round_trip(data, two_tower_built):
    model, emb = train_two_tower(data, SMALL_TT, "cpu")
    again = TwoTowerMethod().train(SMALL_TT, Built(flat_tree(N_ITEMS)), data, seed=0)
    a = TwoTowerMethod().searcher(SMALL_TT, two_tower_built)
    b = TwoTowerMethod().searcher(SMALL_TT, Built(flat_tree(N_ITEMS), dict(again.artifacts)))
    assert np.array_equal(a.items.numpy(), emb)
    h = torch.as_tensor(data.test.histories[:8]).long()
    sa, ia = a.search(h, 10, beam=1)
    sb, ib = b.exhaustive(h, 10)
    assert torch.equal(ia, ib) and torch.allclose(sa, sb)


def test_two_tower_empty_history_and_k_beyond_catalogue(two_tower_built):
    searcher = TwoTowerMethod().searcher(SMALL_TT, two_tower_built)
    h = torch.full((3, 69), -1, dtype=torch.int64)
    h[0, :2] = torch.tensor([3, 4])
    scores, items = searcher.search(h, N_ITEMS + 5, beam=10)
    assert items.shape == (3, N_ITEMS + 5) and scores.shape == (3, N_ITEMS + 5)
    assert (items[:, N_ITEMS:] == -1).all() and torch.isinf(scores[:, N_ITEMS:]).all()
    assert all(sorted(row.tolist()) == list(range(N_ITEMS)) for row in items[:, :N_ITEMS])
    assert torch.equal(items[1], items[2])  # empty histories get the model's prior ranking


def test_misuse_raises(data):
    method = TwoTowerMethod()
    with pytest.raises(StateError):
        method.searcher(SMALL_TT, method.construct(SMALL_TT, data, 0))
    with pytest.raises(GroveError):
        config_from_dict(TwoTowerConfig, {"pooling": "sum"})
    assert config_from_dict(TwoTowerConfig, {"hidden": [8, 4]}).hidden == (8, 4)
    with pytest.raises(GroveError):
        method.train(SMALL_TT, Built(flat_tree(N_ITEMS + 1)), data, 0)
    searcher = ItemCFMethod().searcher(
        ItemCFConfig(device="cpu"), ItemCFMethod().train(ItemCFConfig(device="cpu"), Built(flat_tree(N_ITEMS)), data, 0)
    )
    with pytest.raises(GroveError):
        searcher.search(torch.zeros((1, 69), dtype=torch.int64), 0, beam=5)
    with pytest.raises(GroveError):
        searcher.search(torch.zeros((1, 69), dtype=torch.int64), 5, beam=0)


def test_itemcf_exact_cosine_on_hand_made_users():
    # users {0,1}, {0,2}, {0,1,2}, {3}: |U0|=3, |U1|=2, |U2|=2, co(0,1)=2, co(0,2)=2, co(1,2)=1
    seqs = [np.array(s) for s in ([0, 1], [2, 0], [0, 1, 2], [3])]
    data = split_from_sequences(seqs, seqs, 4)
    table = build_neighbours(data, ItemCFConfig(neighbours=2, device="cpu"))
    assert table.neighbours[0].tolist() in ([1, 2], [2, 1])
    assert table.similarity[0].tolist() == pytest.approx([2 / math.sqrt(6)] * 2)
    assert table.neighbours[1].tolist() == [0, 2]
    assert table.similarity[1].tolist() == pytest.approx([2 / math.sqrt(6), 1 / 2])
    assert table.neighbours[3].tolist() == [-1, -1] and table.similarity[3].tolist() == [0.0, 0.0]
    assert table.popularity.tolist() == [3, 2, 2, 1]


def test_itemcf_neighbours_are_cluster_mates_and_blocks_do_not_matter(data):
    big = build_neighbours(data, ItemCFConfig(neighbours=20, device="cpu"))
    tiny = build_neighbours(data, ItemCFConfig(neighbours=20, pair_budget=500, dense_budget=3 * N_ITEMS, device="cpu"))
    assert torch.equal(big.neighbours, tiny.neighbours) and torch.allclose(big.similarity, tiny.similarity)
    nb = big.neighbours.numpy()
    real = nb >= 0
    assert real.sum(axis=1).min() >= CLUSTER - 1  # every cluster mate co-occurs somewhere
    cluster = np.arange(N_ITEMS) // CLUSTER
    assert (cluster[nb[real]] == np.repeat(cluster, real.sum(axis=1))).all()


def test_itemcf_retrieves_cluster_and_fills_with_popularity(data):
    cfg = ItemCFConfig(neighbours=20, device="cpu")
    method = ItemCFMethod()
    built = method.train(cfg, method.construct(cfg, data, 0), data, 0)
    assert method.relearn(cfg, built, data, 0) is built and not method.relearns
    searcher = method.searcher(cfg, built)
    res = evaluate(searcher, data.test, ks=(10,), filter_seen=True)
    assert res.value("recall", 10) > 0.85
    h = torch.full((2, 69), -1, dtype=torch.int64)
    h[0, 0] = 0  # one behaviour in cluster 0
    scores, items = searcher.search(h, N_ITEMS + 3, beam=1)
    assert items.shape == (2, N_ITEMS + 3) and (items[:, N_ITEMS:] == -1).all()
    assert set(items[0, : CLUSTER - 1].tolist()) == set(range(1, CLUSTER))  # its co-occurring items first
    order = np.argsort(-data.item_popularity, kind="stable")
    assert items[1, :N_ITEMS].tolist() == order.tolist()  # empty history: popularity order
