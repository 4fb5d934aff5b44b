"""Invariants of Tree, Forest and PathCodes: validation on build, derived arrays, exports."""

import networkx as nx
import numpy as np
import pytest

from grove.indexstore.errors import StructureError
from grove.indexstore.structures import Forest, PathCodes, Tree, kind_of


def complete_tree(depth: int, k: int, n_items: int | None = None) -> Tree:
    leaves = k**depth
    paths = np.stack(np.unravel_index(np.arange(leaves), (k,) * depth), axis=1)
    n = n_items or leaves
    return Tree.from_paths(paths, np.arange(leaves) % n, n, k)


def test_from_paths_builds_breadth_first_complete_tree():
    t = complete_tree(3, 2)
    assert t.n_nodes == 15 and t.depth == 3 and t.arity == 2
    assert np.all(t.parent[1:] < np.arange(1, 15)) and np.all(np.diff(t.parent[1:]) >= 0)
    assert t.level_counts().tolist() == [1, 2, 4, 8]
    leaves, items, paths = t.leaf_paths()
    # a leaf's path is its K-way code; following children from the root by the code reaches it
    for leaf, path in zip(leaves, paths):
        node = 0
        for c in path:
            node = t.children[node, c]
        assert node == leaf


def test_from_parents_renumbers_any_order_and_keeps_structure():
    # root 3 -> (0, 4), 0 -> (1, 2), leaves 1, 2, 4 hold items 0, 1, 2
    parent = np.array([3, 0, 0, -1, 3])
    item = np.array([-1, 0, 1, -1, 2])
    t = Tree.from_parents(parent, item, n_items=3)
    assert t.parent[0] == -1 and t.arity == 2
    assert sorted(t.item[t.leaves].tolist()) == [0, 1, 2]
    assert t.level[t.item_leaf].tolist() == [2, 2, 1]  # leaves at mixed depths
    g = t.to_networkx()
    assert nx.is_arborescence(g) and g.number_of_nodes() == 5


@pytest.mark.parametrize(
    "parent,item,message",
    [
        ([-1, 2, 1], [-1, 0, 1], "breadth-first"),  # cycle between 1 and 2
        ([-1, -1, 0], [-1, 0, 1], "second root"),  # two roots
        ([-1, 0, 5], [-1, 0, 1], "parent 5"),  # orphan: parent out of range
        ([-1, 0, 1, 0], [-1, -1, 0, 1], "breadth-first"),  # not breadth-first
        ([-1, 0, 0], [-1, 0, 0], "item 1 is not reachable"),  # an item without a leaf
        ([-1, 0, 0], [3, 0, 1], "internal node 0"),  # item on an internal node
        ([-1, 0, 0], [-1, 0, -1], "leaf node 2"),  # leaf without item
    ],
)
def test_broken_trees_are_refused(parent, item, message):
    with pytest.raises(StructureError, match=message):
        Tree(np.array(parent), np.array(item), n_items=2, arity=2)


def test_from_parents_detects_cycle_and_orphans():
    with pytest.raises(StructureError, match="cycle|not reachable"):
        Tree.from_parents([-1, 2, 1], [-1, 0, 1], n_items=2)
    with pytest.raises(StructureError, match="exactly one root"):
        Tree.from_parents([-1, -1], [0, 1], n_items=2)


def test_arity_is_enforced():
    with pytest.raises(StructureError, match="more than K=2"):
        Tree(np.array([-1, 0, 0, 0]), np.array([-1, 0, 1, 2]), n_items=3, arity=2)


def test_structures_are_immutable():
    t = complete_tree(2, 2)
    with pytest.raises(ValueError):
        t.parent[1] = 0
    with pytest.raises(AttributeError):  # frozen dataclass
        t.arity = 3


def test_items_at_several_leaves_and_item_leaf_is_first():
    t = complete_tree(2, 2, n_items=3)  # leaf 3 duplicates item 0
    assert np.bincount(t.item[t.leaves]).tolist() == [2, 1, 1]
    assert t.item_leaf[0] == t.leaves[0]


def test_ancestors_at_levels():
    t = complete_tree(3, 2)
    leaves = t.leaves
    for lv in range(4):
        anc = t.ancestors_at(leaves, lv)
        assert np.all(t.level[anc] == lv)
        assert np.array_equal(t.node_paths[anc][:, :lv], t.node_paths[leaves][:, :lv])
    assert t.ancestors_at(np.array([-1]), 1).tolist() == [-1]


def test_forest_requires_one_item_set():
    a, b = complete_tree(2, 2), complete_tree(3, 2)
    with pytest.raises(StructureError, match="different item sets"):
        Forest((a, b))
    f = Forest((a, complete_tree(1, 4)))
    assert len(f) == 2 and f.n_items == 4 and kind_of(f) == "forest"
    assert f.to_networkx().number_of_nodes() == a.n_nodes + 5


def test_path_codes_validation_and_ids():
    codes = np.array([[[0, 1], [1, 0]], [[1, 1], [0, 0]]])
    pc = PathCodes(codes, np.ones((2, 2)), arity=2)
    assert pc.n_items == 2 and pc.n_paths == 2 and pc.depth == 2 and kind_of(pc) == "codes"
    assert pc.path_ids().tolist() == [[1, 2], [3, 0]]
    with pytest.raises(StructureError, match="out of range"):
        PathCodes(np.array([[[0, 2]]]), np.zeros((1, 1)), arity=2)
    with pytest.raises(StructureError, match="two identical paths"):
        PathCodes(np.array([[[0, 1], [0, 1]]]), np.zeros((1, 2)), arity=2)
    with pytest.raises(StructureError, match="scores must have shape"):
        PathCodes(codes, np.zeros((2, 3)), arity=2)


def test_equality_helpers():
    assert complete_tree(2, 2).equals(complete_tree(2, 2))
    assert not complete_tree(2, 2).equals(complete_tree(1, 4))
