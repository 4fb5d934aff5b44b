"""Beam search (TDM Algorithm 1, batched) against brute force; exhaustive against a sort."""

import numpy as np
import pytest
import torch

from grove.indexstore.errors import GroveError
from grove.indexstore.structures import Tree
from grove.models.beam_search import DotScorer, TableScorer, beam_search, exhaustive, max_heap_table, top_items
from grove.models.tree_builders import category_tree, kmeans_tree, recforest_tree, tree_tensors


def _brute(tree: Tree, table: torch.Tensor, k: int):
    """Top-k distinct items by best leaf score, by a plain per-user sort (reference)."""
    leaves = torch.as_tensor(np.array(tree.leaves))
    items = torch.as_tensor(np.array(tree.item))[leaves]
    out_s, out_i = [], []
    for row in table[:, leaves]:
        best = {}
        for s, it in zip(row.tolist(), items.tolist()):
            best[it] = max(best.get(it, -np.inf), s)
        ranked = sorted(best.items(), key=lambda p: -p[1])[:k]
        ranked += [(-1, -np.inf)] * (k - len(ranked))
        out_i.append([p[0] for p in ranked])
        out_s.append([p[1] for p in ranked])
    return torch.tensor(out_s, dtype=torch.float32), torch.tensor(out_i)


def _heap_case(tree: Tree, b: int, seed: int):
    tt = tree_tensors(tree)
    g = torch.Generator().manual_seed(seed)
    table = max_heap_table(tt, torch.rand(b, tree.n_nodes, generator=g))
    return tt, table


TREES = {
    "binary_mixed_depth": lambda: category_tree(np.arange(77) % 5, 2, seed=0),
    "k3_mixed": lambda: category_tree(np.zeros(10, np.int64), 3, seed=0),
    "k4_kmeans": lambda: kmeans_tree(np.random.default_rng(0).standard_normal((150, 4)).astype(np.float32), 4, iters=3),
    "recforest_dups": lambda: recforest_tree(
        np.random.default_rng(1).standard_normal((40, 4)).astype(np.float32), 3, iters=3
    ),
    "ragged": lambda: Tree.from_parents(
        [-1, 0, 0, 0, 1, 1, 2, 6, 6, 6, 4, 4], [-1, -1, -1, 3, -1, 5, -1, 0, 1, 2, 4, 6], 7, 3
    ),
}


@pytest.mark.parametrize("name", sorted(TREES))
@pytest.mark.parametrize("k,beams", [(1, (1, 2)), (5, (5, 7, 40)), (10, (10, 16))])
def test_max_heap_scorer_gives_exact_topk(name, k, beams):
    tree = TREES[name]()
    tt, table = _heap_case(tree, 6, seed=k)
    ref_s, ref_i = _brute(tree, table, k)
    # an item with c leaves can fill c beam slots: exactness needs beam >= k * max copies
    copies = int(np.bincount(tree.item[tree.leaves]).max())
    for beam in sorted({b * copies for b in beams}):
        s, i = beam_search(tt, TableScorer(table), 6, k, beam)
        assert s.shape == (6, k) and i.shape == (6, k)
        assert torch.equal(i, ref_i), (name, k, beam)
        assert torch.allclose(s, ref_s)


def test_exhaustive_equals_direct_sort_with_chunks():
    tree = recforest_tree(np.random.default_rng(3).standard_normal((30, 4)).astype(np.float32), 4, iters=3)
    tt = tree_tensors(tree)
    table = torch.randn(5, tree.n_nodes, generator=torch.Generator().manual_seed(0))
    ref_s, ref_i = _brute(tree, table, 8)
    for chunk in (1, 7, 10_000):
        s, i = exhaustive(tt, TableScorer(table), 5, 8, chunk=chunk)
        assert torch.equal(i, ref_i) and torch.allclose(s, ref_s)


def test_fixed_shape_padding_when_fewer_items():
    tree = category_tree(np.zeros(4, np.int64), 2, seed=0)
    tt, table = _heap_case(tree, 3, seed=0)
    for s, i in (beam_search(tt, TableScorer(table), 3, 10, 4), exhaustive(tt, TableScorer(table), 3, 10)):
        assert s.shape == (3, 10) and i.shape == (3, 10)
        assert (i[:, 4:] == -1).all() and torch.isneginf(s[:, 4:]).all()
        assert (torch.sort(i[:, :4], dim=1).values == torch.arange(4)).all()
    one = category_tree(np.zeros(1, np.int64), 2, seed=0)  # a root-only tree
    s, i = beam_search(tree_tensors(one), lambda r, n: torch.zeros(r.shape), 2, 3, 1)
    assert i.tolist() == [[0, -1, -1]] * 2


def test_k_larger_than_beam_collects_last_level():
    # complete 4-ary tree of 64 leaves; beam 2 < k = 8 <= beam*K: still returns 8 items
    tree = recforest_tree(np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32), 4, iters=2)
    torch.manual_seed(0)
    tt = tree_tensors(tree)
    scorer = DotScorer(torch.randn(3, 5), torch.randn(tree.n_nodes, 5))
    s, i = beam_search(tt, scorer, 3, 8, 2)
    assert (i >= 0).all() and (s[:, :-1] >= s[:, 1:]).all()
    assert all(len(set(row)) == 8 for row in i.tolist())


def test_beam_search_recall_floor_with_dot_scorer():
    # node vectors = mean of the leaf vectors below: beam search approximates brute force well
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((512, 8)).astype(np.float32)
    tree = kmeans_tree(emb, 2, seed=0, iters=5)
    tt = tree_tensors(tree)
    node_vec = torch.zeros(tree.n_nodes, 8)
    node_vec[tt.leaves] = torch.from_numpy(emb)[tt.item[tt.leaves]]
    for lv in range(tree.depth - 1, -1, -1):
        nodes = torch.nonzero((tt.level == lv) & ~tt.is_leaf).squeeze(1)
        node_vec[nodes] = node_vec[tt.children[nodes]].mean(1)
    users = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    scorer = DotScorer(users, node_vec)
    _, ref = exhaustive(tt, scorer, 32, 10)
    _, got = beam_search(tt, scorer, 32, 10, 40)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), ref.tolist())])
    assert recall >= 0.8


def test_top_items_dedups_and_misuse_raises():
    s, i = top_items(torch.tensor([[0.1, 0.9, 0.5, 0.7]]), torch.tensor([[2, 2, 3, -1]]), 3)
    assert i.tolist() == [[2, 3, -1]] and s[0, :2].tolist() == pytest.approx([0.9, 0.5])
    tt = tree_tensors(category_tree(np.zeros(8, np.int64), 2, seed=0))

    def f(r, n):
        return torch.zeros(r.shape)

    for bad in (dict(k=0, beam=2), dict(k=2, beam=0)):
        with pytest.raises(GroveError):
            beam_search(tt, f, 2, **bad)
    with pytest.raises(GroveError):
        exhaustive(tt, f, 2, 3, chunk=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    tree = TREES["k4_kmeans"]()
    tt, table = _heap_case(tree, 4, seed=2)
    cpu = beam_search(tt, TableScorer(table), 4, 5, 6)
    gpu = beam_search(tree_tensors(tree, "cuda"), TableScorer(table.cuda()), 4, 5, 6)
    assert torch.equal(cpu[1], gpu[1].cpu()) and torch.allclose(cpu[0], gpu[0].cpu())
