"""The papers' variants (issue 30): the scorer's network, DeFoRec's hierarchical behaviours,
RecForest's δ, the training-window filters, and versions stored before these fields existed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_recforest import planted_split
from test_tdm import binary_tree

from grove.indexstore.store import Store
from grove.models.deforec.method import DeFoRecConfig, DeFoRecMethod
from grove.models.evaluation import evaluate
from grove.models.jtm.hierarchical import HierarchicalScorer
from grove.models.jtm.method import JTMConfig, JTMMethod
from grove.models.lifecycle import Recipe, split_data
from grove.models.node_scorer import TDMScorer, window_matrix
from grove.models.recforest.method import RecForestConfig
from grove.models.tdm.method import TDMConfig, TDMMethod
from grove.models.tree_builders import recforest_tree

TINY_TREE = {"dim": 8, "hidden": (16, 8), "max_samples": 1500, "batch_size": 64, "lr": 1e-2, "device": "cpu"}


def _history() -> torch.Tensor:
    hist = torch.full((3, 69), -1)
    hist[0, :5] = torch.tensor([1, 2, 3, 4, 5])
    hist[1, :30] = torch.randint(0, 16, (30,), generator=torch.Generator().manual_seed(0))
    hist[2, :1] = 7
    return hist


def test_average_network_is_the_window_mean_and_has_no_activation_unit():
    """'average': every behaviour weighs 1 (TDM DNN / JTM's supplement network); the logits are
    the MLP over [mean of each window's behaviours, node] computed literally."""
    torch.manual_seed(0)
    t = binary_tree(16, 4)
    s = TDMScorer(t, dim=6, hidden=(8, 4), network="average", batch_norm=False).eval()
    assert not any(k.startswith("act_") for k in s.state_dict())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in s.mlp)
    hist, nodes = _history(), torch.tensor([[1, 5, 20, 30], [2, 3, 4, 25], [0, 9, 17, 29]])
    got = s(hist, nodes)
    win = window_matrix()
    want = torch.empty(3, 4)
    with torch.no_grad():
        for u in range(3):
            vecs = []
            for w in range(win.shape[1]):
                cols = [j for j in range(69) if win[j, w] == 1 and hist[u, j] >= 0]
                acc = sum((s.emb.weight[hist[u, j]] for j in cols), torch.zeros(6))
                vecs.append(acc / max(len(cols), 1))
            for c in range(4):
                n = s.emb.weight[s.node_row[nodes[u, c]]]
                want[u, c] = s.mlp(torch.cat(vecs + [n]).unsqueeze(0))[0, 0]
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="network"):
        TDMScorer(t, network="transformer")


def test_average_hierarchical_scorer_shared_level_path_equals_per_node_path():
    """JTM's default scorer: behaviours mapped to each node's level; the one-level fast path (the
    beam search's) and the general per-node path give the same logits."""
    torch.manual_seed(1)
    t = binary_tree(32, 5)
    s = HierarchicalScorer(t, dim=6, hidden=(8, 4), network="average", batch_norm=False).eval()
    hist = torch.randint(-1, 32, (4, 69))
    level3 = torch.as_tensor(np.flatnonzero(t.level == 3))
    nodes = level3[torch.randint(0, len(level3), (4, 5))]
    assert torch.allclose(s(hist, nodes), s.forward_static(hist, nodes), atol=1e-6)


def test_each_method_defaults_to_its_papers_choices():
    tdm, jtm, dfr, rf = TDMConfig(), JTMConfig(), DeFoRecConfig(), RecForestConfig()
    assert (tdm.network, tdm.batch_norm, tdm.min_behaviours) == ("attention", True, 1)
    assert (jtm.network, jtm.batch_norm, jtm.min_behaviours) == ("average", False, 5)
    assert (dfr.network, dfr.batch_norm, dfr.hierarchical, dfr.min_behaviours) == ("attention", True, True, 1)
    assert rf.min_behaviours == 14
    t = binary_tree(16, 4)
    scorer = JTMMethod().make_scorer(jtm, t)
    assert isinstance(scorer, HierarchicalScorer) and scorer.network == "average" and scorer.act_in is None
    assert type(TDMMethod().make_scorer(tdm, t)) is TDMScorer
    with pytest.raises(ValueError, match="network"):
        JTMConfig(network="dnn")
    with pytest.raises(ValueError, match="min_behaviours"):
        RecForestConfig(min_behaviours=0)


def test_a_stored_config_without_the_new_fields_keeps_what_it_was_built_with():
    """Versions written before issue 30 have no network / hierarchical / min_behaviours fields:
    they are read back as what built them (TDM's attention network for JTM, the items themselves
    for DeFoRec, every window), while a new recipe takes the papers' defaults."""
    old = {k: v for k, v in JTMConfig().to_dict().items() if k not in ("network", "batch_norm", "min_behaviours")}
    stored = Recipe.from_json({"method": "jtm", "config": old}).config
    assert (stored.network, stored.batch_norm, stored.min_behaviours) == ("attention", True, 1)
    assert Recipe.new("jtm", {}).config.network == "average"
    written = Recipe.from_json({"method": "jtm", "config": JTMConfig(network="average").to_dict()}).config
    assert written == JTMConfig(network="average")  # a field that is there is kept
    dfr = {k: v for k, v in DeFoRecConfig().to_dict().items() if k != "hierarchical"}
    assert Recipe.from_json({"method": "deforec", "config": dfr}).config.hierarchical is False
    rf = {k: v for k, v in RecForestConfig().to_dict().items() if k != "min_behaviours"}
    assert Recipe.from_json({"method": "recforest", "config": rf}).config.min_behaviours == 1


def test_an_old_jtm_version_still_searches_with_its_attention_weights():
    data = planted_split(n_items=32, n_groups=4, n_users=60)
    m = JTMMethod()
    built_with = JTMConfig(**TINY_TREE, network="attention", batch_norm=True)
    built = m.train(built_with, m.construct(built_with, data, 0), data, 0)
    old = {k: v for k, v in built_with.to_dict().items() if k not in ("network", "batch_norm", "min_behaviours")}
    config = Recipe.from_json({"method": "jtm", "config": old}).config
    scores, items = m.searcher(config, built, "cpu").search(torch.as_tensor(data.test.histories[:4]), 5, 8)
    want = m.searcher(built_with, built, "cpu").search(torch.as_tensor(data.test.histories[:4]), 5, 8)
    assert torch.equal(items, want[1]) and torch.equal(scores, want[0])


@pytest.mark.parametrize("hierarchical", [True, False])
def test_deforec_scores_nodes_with_the_behaviours_ancestors(hierarchical):
    """With hierarchical behaviours a level-l logit sees a behaviour only through its ancestor at
    level l: swapping a behaviour for another item under the same level-l node leaves the
    level-l logits as they are and changes the leaves' (the items themselves: both change)."""
    data = planted_split(n_items=32, n_groups=4, n_users=60)
    m = DeFoRecMethod()
    cfg = DeFoRecConfig(
        arity=2, negatives=8, dim=8, epochs=3, batch_size=64, lr=1e-2, hierarchical=hierarchical, device="cpu"
    )
    built = m.train(cfg, m.construct(cfg, data, 0), data, 0)
    searcher = m.searcher(cfg, built, "cpu")
    (scorer,), tree = searcher.scorers, searcher.trees[0]
    assert isinstance(scorer, HierarchicalScorer) is hierarchical
    leaf = tree.item_leaf
    a = int(np.flatnonzero(tree.level[tree.leaves] == tree.depth)[0])
    item_a = int(tree.item[tree.leaves][a])
    parent = tree.parent[leaf[item_a]]
    item_b = int(next(tree.item[c] for c in tree.children[parent] if c >= 0 and tree.item[c] != item_a))
    hist = torch.full((2, 69), -1)
    hist[:, :3] = torch.tensor([[item_a, 3, 4], [item_b, 3, 4]])
    upper = torch.as_tensor(np.flatnonzero(tree.level == tree.depth - 1)).expand(2, -1)
    leaves = torch.as_tensor(np.flatnonzero(tree.level == tree.depth)).expand(2, -1)
    with torch.no_grad():
        up, low = scorer(hist, upper), scorer(hist, leaves)
    assert torch.allclose(up[0], up[1]) is hierarchical
    assert not torch.allclose(low[0], low[1])
    scores, items = searcher.search(torch.as_tensor(data.test.histories), 10, 16)
    assert items.shape == (len(data.test.histories), 10) and (items >= 0).all()
    res = evaluate(searcher, data.test, ks=(10,), beam=16)
    assert res.value("recall", 10) > 0.8  # it learns: random lists of 10 hold 10/32 of G(u)


def test_delta_zero_is_algorithm_2_as_printed():
    """δ = 0: every split is balanced k-means on what D0 leaves, so planted clusters of K^(H-1)
    items each stay whole under one level-1 node; a random fraction δ > 0 scatters them."""
    rng = np.random.default_rng(0)
    k, per = 4, 16  # 4 clusters of 16 items: n = 64 = K^3, D0 is empty at every split
    centres = rng.standard_normal((k, 6)).astype(np.float32) * 50
    truth = np.repeat(np.arange(k), per)
    x = centres[truth] + rng.standard_normal((k * per, 6)).astype(np.float32) * 0.1

    def clusters_under_level1(tree) -> list[int]:
        leaves, items, _ = tree.leaf_paths()
        anc = tree.ancestors_at(leaves, 1)
        return [len(set(truth[items[anc == a]])) for a in np.unique(anc)]

    for seed in range(3):
        assert clusters_under_level1(recforest_tree(x, k, seed=seed, random_ratio=0.0, iters=10)) == [1] * k
        assert max(clusters_under_level1(recforest_tree(x, k, seed=seed, random_ratio=0.5, iters=10))) > 1


def test_window_filter_reaches_the_training_windows(make_synth_store):
    """A config's min_behaviours filters the windows the lifecycle trains on: JTM's default keeps
    windows of >= 6 interactions (5 behaviours and the target), TDM's every window."""
    store = Store.open(make_synth_store("windows", n_items=120, n_users=150, seed=3))
    every = split_data(store, "synth", "default", TDMConfig())
    jtm = split_data(store, "synth", "default", JTMConfig())
    rf = split_data(store, "synth", "default", RecForestConfig())

    def lengths(d):
        return (d.train.take(np.arange(len(d.train))) >= 0).sum(1)

    assert lengths(every).min() == 1 and lengths(jtm).min() == 5 and lengths(rf).min() == 14
    assert len(rf.train) < len(jtm.train) < len(every.train)
    assert np.array_equal(np.sort(lengths(every)[lengths(every) >= 5]), np.sort(lengths(jtm)))
