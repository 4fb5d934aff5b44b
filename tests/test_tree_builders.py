"""Tree builders: category tree, balanced k-means tree, RecForest complete tree, tree tensors."""

import numpy as np
import pytest
import torch

from grove.indexstore.errors import GroveError
from grove.indexstore.structures import Tree
from grove.models.tree_builders import (
    category_tree,
    complete_depth,
    kmeans_tree,
    recforest_tree,
    tightest_arity,
    tree_tensors,
)


def _leaf_order(tree: Tree) -> np.ndarray:
    """Items of the leaves read left to right (depth-first order of the K-way codes)."""
    leaves, items, paths = tree.leaf_paths()
    if paths.shape[1] == 0:  # a single-leaf tree
        return items
    # codes are padded with -1 below a leaf, so a shorter path sorts before longer ones
    order = np.lexsort(paths.T[::-1])
    return items[order]


def _sizes_below(tree: Tree) -> np.ndarray:
    """Number of leaves under every node."""
    count = tree.is_leaf.astype(np.int64)
    for lv in range(tree.depth, 0, -1):
        nodes = tree.nodes_at_level(lv)
        np.add.at(count, tree.parent[nodes], count[nodes])
    return count


@pytest.mark.parametrize("n,k", [(1, 2), (2, 2), (37, 2), (64, 2), (100, 3), (500, 18), (1000, 4)])
def test_category_tree_valid_contiguous(n, k):
    rng = np.random.default_rng(n)
    cat = rng.integers(-1, 6, n)
    tree = category_tree(cat, k, seed=1)
    assert tree.n_items == n and tree.arity == k
    assert np.array_equal(np.sort(tree.item[tree.leaves]), np.arange(n))  # every item once
    seq = cat[_leaf_order(tree)]
    runs = seq[np.r_[True, seq[1:] != seq[:-1]]]
    assert len(runs) == len(np.unique(cat))  # each category one contiguous run
    # siblings' subtree sizes differ by at most one (recursive equal split)
    sizes = _sizes_below(tree)
    ch = tree.children
    for node in np.flatnonzero(~tree.is_leaf):
        s = sizes[ch[node][ch[node] >= 0]]
        assert s.max() - s.min() <= 1


def test_category_tree_seed_changes_order_and_depth_layout():
    cat = np.repeat(np.arange(10), 30)
    a, b = category_tree(cat, 2, seed=0), category_tree(cat, 2, seed=0)
    c = category_tree(cat, 2, seed=1)
    assert a.equals(b) and not a.equals(c)
    # K >= 3 and N not a power of K: all leaves still at one depth (ceil(log_K N))
    t = category_tree(np.zeros(300, np.int64), 18, seed=0)
    assert set(t.level[t.leaves]) == {2}
    # K = 2: leaves at depths H-1 and H only
    t2 = category_tree(np.zeros(300, np.int64), 2, seed=0)
    assert set(t2.level[t2.leaves]) <= {8, 9}


@pytest.mark.parametrize("n,k", [(1, 2), (3, 2), (200, 2), (1000, 18), (333, 4)])
def test_kmeans_tree_valid_and_deterministic(n, k):
    x = np.random.default_rng(0).standard_normal((n, 6)).astype(np.float32)
    a = kmeans_tree(x, k, seed=5, iters=4)
    b = kmeans_tree(torch.from_numpy(x), k, seed=5, iters=4)
    assert a.equals(b)
    assert np.array_equal(np.sort(a.item[a.leaves]), np.arange(n))
    assert a.children.shape[1] == k


def test_kmeans_tree_groups_planted_clusters():
    # 8 tight blobs of 16 items, K=2: every blob must be exactly one subtree at level 3
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((8, 4)).astype(np.float32) * 50
    truth = np.repeat(np.arange(8), 16)
    perm = rng.permutation(128)
    x = centres[truth[perm]] + rng.standard_normal((128, 4)).astype(np.float32) * 0.1
    tree = kmeans_tree(x, 2, seed=0, iters=20)
    leaves, items, _ = tree.leaf_paths()
    anc = tree.ancestors_at(leaves, 3)
    for a in np.unique(anc):
        assert len(set(truth[perm][items[anc == a]])) == 1


@pytest.mark.parametrize("n,k", [(2, 2), (5, 2), (40, 3), (100, 18), (400, 18)])
def test_recforest_tree_complete(n, k):
    x = np.random.default_rng(n).standard_normal((n, 6)).astype(np.float32)
    tree = recforest_tree(x, k, seed=0, random_ratio=0.2, iters=4)
    h = tree.depth
    assert k ** (h - 1) < n <= k**h
    assert tree.leaves.size == k**h and set(tree.level[tree.leaves]) == {h}
    inner = ~tree.is_leaf
    assert ((tree.children[inner] >= 0).sum(1) == k).all()  # every internal node has K children
    assert np.array_equal(np.unique(tree.item[tree.leaves]), np.arange(n))  # every item >= 1 leaf


def test_recforest_seeds_differ_same_seed_same():
    x = np.random.default_rng(0).standard_normal((300, 6)).astype(np.float32)
    a = recforest_tree(x, 4, seed=0, iters=3)
    assert a.equals(recforest_tree(x, 4, seed=0, iters=3))
    assert not a.equals(recforest_tree(x, 4, seed=1, iters=3))


def test_tree_tensors_cached_and_consistent():
    tree = category_tree(np.arange(50) % 3, 3, seed=0)
    tt = tree_tensors(tree, "cpu")
    assert tree_tensors(tree, "cpu") is tt
    assert tt.children.shape == (tree.n_nodes, 3) and tt.children.dtype == torch.long
    assert np.array_equal(tt.is_leaf.numpy(), tree.is_leaf)
    assert sum(tt.inner_per_level) == int((~tree.is_leaf).sum())
    assert tt.depth == tree.depth


def test_builders_misuse_raises():
    with pytest.raises(GroveError):
        kmeans_tree(np.zeros((5, 2), np.float32), 1)
    with pytest.raises(GroveError):
        kmeans_tree(np.zeros(5, np.float32), 2)
    with pytest.raises(GroveError):
        category_tree(np.zeros(0, np.int64), 2)
    with pytest.raises(GroveError):
        recforest_tree(np.zeros((5, 2), np.float32), 2, random_ratio=1.5)


def test_tightest_arity_is_the_least_that_fits_and_matches_the_built_tree():
    # K^H >= n, and (K-1)^H < n unless K is already the least arity, 2
    for n in range(1, 2000):
        for depth in (1, 2, 3, 4):
            k = tightest_arity(n, depth)
            assert k**depth >= n and (k == 2 or (k - 1) ** depth < n), (n, depth, k)
    assert (tightest_arity(9724, 3), tightest_arity(9724, 4), complete_depth(9724, 18)) == (22, 10, 4)
    tree = recforest_tree(np.random.default_rng(0).normal(size=(90, 4)).astype(np.float32), 10, seed=0)
    assert tree.depth == complete_depth(90, 10) == 2 and int(tree.is_leaf.sum()) == 100
    with pytest.raises(GroveError):
        tightest_arity(10, 0)
