"""TDM and JTM end to end on planted synthetic data: construct -> train -> relearn -> train.

Invariants: the relearnt tree is valid (every item at exactly one leaf; k-means siblings
balanced; JTM's leaves all at depth ceil(log_K n)), relearning is repeatable (same model, same
seed, same tree), and the trained indexes reach a recall floor far above random."""

from __future__ import annotations

import math

import pytest

from grove.indexstore.store import Store
from grove.models.evaluation import evaluate
from grove.models.lifecycle import split_data
from grove.models.method import config_from_dict
from grove.models.registry import get_method
from grove.models.tdm.method import TDMConfig

N_ITEMS = 256
# small and fast on 2 CPU cores; batch 64 and lr 1e-2 give enough steps to learn in seconds
TINY = {
    "epochs": 2,
    "dim": 8,
    "hidden": [16, 8],
    "max_samples": 2000,
    "neg_base": 1.0,
    "lr": 1e-2,
    "batch_size": 64,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def data(make_synth_store):
    url = make_synth_store("trees", n_items=N_ITEMS, n_users=400, seed=1)
    return split_data(Store.open(url), "synth", "default", TDMConfig())


def one_leaf_per_item(tree) -> bool:
    items = tree.item[tree.leaves]
    return sorted(items.tolist()) == list(range(tree.n_items))


@pytest.mark.parametrize(
    "name,extra",
    [
        ("tdm", {}),
        # JTM's tree learning scores every node d levels down for each pair: minutes on 2 cores;
        # its fast invariants are in tests/test_jtm.py
        pytest.param("jtm", {"tree_samples": 1500}, marks=pytest.mark.slow),
    ],
)
def test_cycle_learns_and_relearns_a_valid_tree(data, name, extra):
    method = get_method(name)
    config = config_from_dict(method.config_cls, {**TINY, **extra})
    first = method.train(config, method.construct(config, data, 0), data, 0)
    relearnt = method.relearn(config, first, data, 1000)
    again = method.relearn(config, first, data, 1000)
    assert relearnt.structure.equals(again.structure)  # same model + seed -> same tree
    assert "weights.pt" not in relearnt.artifacts  # a relearnt tree must be trained before search
    tree = relearnt.structure
    assert one_leaf_per_item(tree) and not tree.equals(first.structure)
    if name == "jtm":
        assert set(tree.level[tree.leaves].tolist()) == {math.ceil(math.log2(N_ITEMS))}
    else:  # balanced k-means: leaf depths differ by at most one
        depths = tree.level[tree.leaves]
        assert depths.max() - depths.min() <= 1
    second = method.train(config, relearnt, data, 1)
    random_recall = 10 / N_ITEMS
    for built in (first, second):
        res = evaluate(method.searcher(config, built, "cpu"), data.valid, ks=(10,), beam=50)
        assert res.value("recall", 10) > 2.5 * random_recall, (name, res.value("recall", 10))
