"""DeFoRec: sampled-softmax loss, softmax tree learning, the forest of every round."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_recforest import planted_split

from grove.indexstore.errors import StateError
from grove.indexstore.structures import Forest
from grove.models.deforec.method import DeFoRecConfig, DeFoRecMethod, DeFoRecSearcher
from grove.models.deforec.training import SoftmaxLevels
from grove.models.tree_builders import category_tree


def _config(**kw):
    base = dict(arity=2, negatives=8, gap=2, dim=8, epochs=3, batch_size=64, lr=1e-2, tree_samples=2000, device="cpu")
    base.update(kw)
    return DeFoRecConfig(**base)


def test_sampled_softmax_correction_and_loss():
    tree = category_tree(np.arange(16) % 4, arity=2, seed=0)  # 16 items, depth 4
    lv = SoftmaxLevels(tree, 5, torch.device("cpu"))
    sizes = tree.level_counts()
    # level 1 has 2 nodes: 1 negative (capped), q = 1, correction ln(1 * 1) = 0
    assert lv.correction[0] == 0 and lv.correction[1] == 0
    # level 4 (16 leaves): 5 negatives, q = 1/15 -> ln(5/15)
    a = lv.bounds[3]
    assert torch.isclose(lv.correction[a + 1], torch.tensor(np.log(5 / (sizes[4] - 1)), dtype=torch.float32))
    assert lv.correction[a] == 0  # the positive is not corrected
    gen = torch.Generator().manual_seed(0)
    nodes, _, mask = lv.sampler.sample(torch.tensor([0, 5, 9]), gen)
    logits = torch.zeros(nodes.shape)
    # equal logits: level loss = log(1 + sum_neg exp(-corr)) = log(1 + m_l * (c-1)/m_l) = log(c)
    expected = sum(np.log(s) for s in sizes[1:])
    assert torch.isclose(lv.loss(logits, mask), torch.tensor(expected, dtype=torch.float32), atol=1e-5)


@pytest.fixture(scope="module")
def rounds():
    data = planted_split(n_items=64, n_groups=8, n_users=80)
    method, cfg = DeFoRecMethod(), _config()
    built = method.construct(cfg, data, seed=0)
    built = method.train(cfg, built, data, seed=0)
    built = method.relearn(cfg, built, data, seed=0)
    built = method.train(cfg, built, data, seed=1)
    return data, method, cfg, built


def test_forest_keeps_every_round(rounds):
    data, method, cfg, built = rounds
    assert isinstance(built.structure, Forest) and len(built.structure) == 2
    assert {"weights_round0.pt", "weights_round1.pt"} <= set(built.artifacts)
    new = built.structure.trees[1]
    assert sorted(new.item[new.leaves].tolist()) == list(range(data.n_items))  # one leaf per item
    assert new.depth == 6 and len(new.leaves) == data.n_items


def test_search_fixed_shape_and_learns(rounds):
    data, method, cfg, built = rounds
    s = method.searcher(cfg, built, "cpu")
    hist = torch.as_tensor(data.test.histories, dtype=torch.long)
    scores, items = s.search(hist, k=8, beam=4)
    assert scores.shape == (30, 8) and items.dtype == torch.int64
    truth = data.test.truth()
    recall = np.mean([np.isin(items[i].numpy(), t).sum() / len(t) for i, t in enumerate(truth)])
    assert recall > 0.3  # chance: 8 of 64 items -> 0.125
    es, ei = s.exhaustive(hist, k=8)
    assert ei.shape == (30, 8)


def test_forest_beats_its_last_tree(rounds):
    data, method, cfg, built = rounds
    s = method.searcher(cfg, built, "cpu")
    one = DeFoRecSearcher(s.trees[-1:], s.scorers[-1:], s.discriminate, s.n_items, s.device)
    hist = torch.as_tensor(data.test.histories, dtype=torch.long)
    truth = data.test.truth()
    rec = lambda it: np.mean([np.isin(it[i].numpy(), t).sum() / len(t) for i, t in enumerate(truth)])  # noqa: E731
    _, fi = s.search(hist, k=16, beam=3)
    _, oi = one.search(hist, k=16, beam=3)
    assert s.last_candidates() > one.last_candidates()
    assert rec(fi) >= rec(oi)


def test_relearn_needs_trained_scorer_and_same_seed_same_tree():
    data = planted_split(n_items=32, n_groups=4, n_users=24)
    method, cfg = DeFoRecMethod(), _config(epochs=1)
    built = method.construct(cfg, data, seed=0)
    with pytest.raises(StateError, match="never trained"):
        method.relearn(cfg, built, data, seed=0)
    with pytest.raises(StateError, match="never trained"):
        method.searcher(cfg, built, "cpu")
    a = method.relearn(cfg, method.train(cfg, built, data, seed=0), data, seed=0)
    b = method.relearn(cfg, method.train(cfg, built, data, seed=0), data, seed=0)
    assert a.structure.trees[1].equals(b.structure.trees[1])
