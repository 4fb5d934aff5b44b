"""JTM's hierarchical scorer and tree learning (Algorithm 2) on a planted problem: after a short
training, tree learning puts the items of one interest group under one subtree, every item on
exactly one leaf at depth ceil(log_K n), and the capacity rebalance never overfills a node."""

from __future__ import annotations

import numpy as np
import torch
from test_tdm import binary_tree, planted, samples_of

from grove.models.jtm.hierarchical import HierarchicalScorer
from grove.models.jtm.tree_learning import learn_tree
from grove.models.tree_learning import assign_with_capacity
from grove.models.tree_training import TrainOptions, train_scorer


def test_tree_learning_groups_the_planted_interests():
    torch.manual_seed(0)
    t = binary_tree(32, 5, perm=np.random.default_rng(1).permutation(32))  # groups scattered
    beh, tgt, _ = planted(n=1200)
    s = HierarchicalScorer(t, dim=8, hidden=(32, 16))
    train_scorer(
        s, t, samples_of(beh, tgt), TrainOptions(epochs=6, batch_size=100, lr=1e-2, seed=0), torch.device("cpu")
    )
    new = learn_tree(s, t, samples_of(beh, tgt), gap=2, seed=0)
    assert sorted(new.item[new.leaves].tolist()) == list(range(32))
    assert set(new.level[new.leaves].tolist()) == {5}

    # the 4 groups of 8 items: each group's items share one ancestor at level 2 (4 such nodes)
    def spread(tree) -> int:  # level-2 subtrees the groups' items fall into (4 = perfect)
        anc = tree.ancestors_at(tree.item_leaf, 2)
        return sum(len(set(anc[g * 8 : (g + 1) * 8].tolist())) for g in range(4))

    assert spread(new) <= 8 < spread(t), (spread(new), spread(t))
    assert learn_tree(s, t, samples_of(beh, tgt), gap=2, seed=0).equals(new)  # repeatable


def test_capacity_rebalance_keeps_previous_choice_first_and_never_overfills():
    # 6 items under one parent with 2 children of capacity 3; all prefer child 0
    weights = torch.tensor([[-1.0, -5.0]] * 6)
    weights[5] = torch.tensor([-0.5, -9.0])  # item 5 has the best weight for child 0
    counts = torch.ones(6)
    parent = torch.zeros(6, dtype=torch.long)
    old = torch.tensor([0, 1, 1, 1, 1, -1])  # item 0 was in child 0 before
    child = assign_with_capacity(weights, torch.arange(6), counts, parent, old, capacity=3)
    assert torch.bincount(child, minlength=2).tolist() == [3, 3]
    assert child[0] == 0 and child[5] == 0  # previous assignment kept first, then the best weight
