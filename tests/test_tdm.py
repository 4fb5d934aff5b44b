"""TDM scorer (models.node_scorer) and its trainer (models.tree_training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grove.indexstore.samples import TrainingSamples
from grove.indexstore.structures import Tree
from grove.models.node_scorer import TDMScorer, node_rows_for, position_keys, transfer_weights, window_matrix
from grove.models.tree_training import LevelSampler, TrainOptions, negatives_per_level, train_scorer


def binary_tree(n: int, depth: int, perm=None) -> Tree:
    """Leaves at one depth; item perm[i] at the i-th leaf position."""
    paths = (np.arange(n)[:, None] >> np.arange(depth - 1, -1, -1)) & 1
    items = np.arange(n) if perm is None else np.asarray(perm)
    return Tree.from_paths(paths, items, n, 2)


def uneven_tree() -> Tree:
    """5 items, leaves on levels 2 and 3 (as a category tree over 5 items)."""
    parent = [-1, 0, 0, 1, 1, 2, 2, 3, 3]
    item = [-1, -1, -1, -1, 2, 3, 4, 0, 1]
    return Tree(np.array(parent), np.array(item), 5, 2)


def test_window_matrix_covers_69_columns_in_10_windows():
    w = window_matrix()
    assert w.shape == (69, 10)
    assert torch.equal(w.sum(0), torch.tensor([1, 1, 1, 2, 2, 2, 10, 10, 20, 20.0]))
    assert torch.equal(w.sum(1), torch.ones(69))


def test_layout_leaves_share_item_rows():
    t = uneven_tree()
    rows, n_int = node_rows_for(t)
    assert n_int == 4
    assert np.array_equal(rows[t.leaves], t.item[t.leaves])
    assert sorted(rows[~t.is_leaf]) == [5, 6, 7, 8]
    assert list(position_keys(t)) == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_scorer_shapes_and_padding_invariance():
    torch.manual_seed(0)
    t = binary_tree(32, 5)
    s = TDMScorer(t).eval()
    hist = torch.full((3, 69), -1, dtype=torch.long)
    hist[:, :7] = torch.randint(0, 32, (3, 7))
    nodes = torch.randint(0, t.n_nodes, (3, 11))
    with torch.inference_mode():
        base = s(hist, nodes)
        assert base.shape == (3, 11)
        # the padding's width does not matter, nor what the padded columns would "be"
        assert torch.allclose(s(hist[:, :7], nodes), base, atol=1e-6)
        junk = hist.clone()
        junk[:, 7:] = 10_000  # unknown ids are padding too
        assert torch.allclose(s(junk, nodes), base, atol=1e-6)
        # a row does not depend on the other rows (eval mode) nor on chunking
        assert torch.allclose(s(hist[1:2], nodes[1:2]), base[1:2], atol=1e-6)
        assert torch.allclose(s.score(hist, nodes, max_elements=1), base, atol=1e-6)
        # behaviours matter
        other = hist.clone()
        other[:, 0] = (hist[:, 0] + 1) % 32
        assert not torch.allclose(s(other, nodes), base)


def test_sampler_positives_are_ancestors_and_negatives_differ():
    t = binary_tree(64, 6, perm=np.random.default_rng(0).permutation(64))
    n_neg = negatives_per_level(t.level_counts(), base=2.0, growth=1.5)
    assert n_neg[0] == 0 and n_neg[1] == 1  # level 1 has 2 nodes: only one other to draw
    sampler = LevelSampler(t, n_neg, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    targets = torch.arange(64).repeat(20)
    nodes, labels, mask = sampler.sample(targets, gen)
    assert mask.all()
    nodes, labels = nodes.numpy(), labels.numpy()
    level = t.level[nodes]
    for lv in range(1, t.depth + 1):
        anc = t.ancestors_at(t.item_leaf[targets.numpy()], lv)
        cols = np.flatnonzero(level[0] == lv)
        pos_col = cols[labels[0, cols] == 1]
        assert len(pos_col) == 1 and len(cols) == 1 + n_neg[lv]
        assert np.array_equal(nodes[:, pos_col[0]], anc)
        neg = nodes[:, cols[labels[0, cols] == 0]]
        assert (t.level[neg] == lv).all()
        assert (neg != anc[:, None]).all()
    # negatives cover the other nodes of the last level (uniform draw)
    last_cols = (level[0] == t.depth) & (labels[0] == 0)
    last = nodes[:, last_cols]
    assert len(np.unique(last)) == 64


def test_sampler_masks_levels_below_a_shallow_leaf():
    t = uneven_tree()
    sampler = LevelSampler(t, negatives_per_level(t.level_counts(), 1.0, 1.0), torch.device("cpu"))
    nodes, labels, mask = sampler.sample(torch.tensor([2, 0]), torch.Generator().manual_seed(1))
    level3_pos = (t.level[nodes.numpy()] == 3) & (labels.numpy() == 1)
    # item 2 sits at level 2: no positive at level 3; item 0 sits at level 3
    assert not mask[0][torch.as_tensor(level3_pos[0])].any()
    assert mask[1][torch.as_tensor(level3_pos[1])].all()


def planted(n_items=32, n=1500, seed=0, width=20):
    """Users who like one of 4 item groups; targets and behaviours from the same group.
    Histories are ``width`` wide (the scorer accepts fewer than 69 columns) to keep tests fast."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 4, n)
    size = n_items // 4
    beh = rng.integers(0, size, (n, width)) + group[:, None] * size
    beh[np.arange(width) >= rng.integers(3, width, n)[:, None]] = -1
    tgt = rng.integers(0, size, n) + group * size
    return beh, tgt, group


def samples_of(beh, tgt) -> TrainingSamples:
    return TrainingSamples.from_windows(beh, tgt, np.zeros(len(tgt), np.int32))


def test_same_seed_same_weights():
    t = binary_tree(32, 5)
    beh, tgt, _ = planted(n=100)
    opts = TrainOptions(epochs=1, batch_size=50, seed=3)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        s = TDMScorer(t, dim=8, hidden=(16, 8))
        train_scorer(s, t, samples_of(beh, tgt), opts, torch.device("cpu"))
        states.append(s.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_training_learns_planted_groups():
    """After a short training the target's leaf outranks most leaves of other groups."""
    torch.manual_seed(0)
    t = binary_tree(32, 5, perm=np.random.default_rng(1).permutation(32))
    beh, tgt, _ = planted(n=1200)
    s = TDMScorer(t, dim=8, hidden=(32, 16))
    stats = train_scorer(
        s, t, samples_of(beh, tgt), TrainOptions(epochs=6, batch_size=100, lr=1e-2, seed=0), torch.device("cpu")
    )
    assert stats["samples_per_s"] > 0 and stats["steps"] == 6 * 12
    hb, ht, group = planted(n=200, seed=9)
    leaves = torch.as_tensor(t.leaves.copy()).expand(200, -1)
    with torch.inference_mode():
        scores = s(torch.as_tensor(hb), leaves)
    top = t.item[t.leaves][scores.topk(8, dim=1).indices.numpy()]  # (200, 8) items
    hit = (top // 8 == group[:, None]).mean()
    assert hit > 0.8  # random: 0.25


def test_transfer_keeps_items_and_network():
    torch.manual_seed(0)
    old_t, new_t = binary_tree(16, 4), binary_tree(16, 4, perm=np.arange(16)[::-1])
    old = TDMScorer(old_t, dim=8)
    new = TDMScorer(new_t, dim=8)
    transfer_weights(new, old.state_dict(), old_t, new_t, keep_nodes_by_path=True)
    assert torch.equal(new.emb.weight, old.emb.weight)  # same shape of tree: every row carried
    fresh = TDMScorer(new_t, dim=8)
    before = fresh.emb.weight[16:].clone()
    transfer_weights(fresh, old.state_dict(), old_t, new_t, keep_nodes_by_path=False)
    assert torch.equal(fresh.emb.weight[:16], old.emb.weight[:16])
    assert torch.equal(fresh.emb.weight[16:], before)
    assert torch.equal(fresh.mlp[0].weight, old.mlp[0].weight)


def test_negatives_explicit_counts_checked():
    sizes = np.array([1, 2, 4, 8])
    assert list(negatives_per_level(sizes, 1, 1, explicit=(5, 2, 3))) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        negatives_per_level(sizes, 1, 1, explicit=(1,))


def test_scorer_matches_a_naive_per_pair_computation():
    """The factorised activation unit (three terms, one GEMM) and the trimmed padding give the
    same logits as TDM Figure 2 computed literally pair by pair."""
    torch.manual_seed(0)
    t = binary_tree(16, 4)
    s = TDMScorer(t, dim=6, hidden=(8, 4)).eval()
    hist = torch.full((3, 69), -1)
    hist[0, :5] = torch.tensor([1, 2, 3, 4, 5])
    hist[1, :30] = torch.randint(0, 16, (30,))
    hist[2, :1] = 7
    nodes = torch.tensor([[1, 5, 20, 30], [2, 3, 4, 25], [0, 9, 17, 29]])
    got = s(hist, nodes)
    win = window_matrix()
    want = torch.empty(3, 4)
    with torch.no_grad():
        for u in range(3):
            for c in range(4):
                n = s.emb.weight[s.node_row[nodes[u, c]]]
                vecs = []
                for w in range(win.shape[1]):
                    cols = [j for j in range(69) if win[j, w] == 1 and hist[u, j] >= 0]
                    acc = torch.zeros(6)
                    for j in cols:
                        b = s.emb.weight[hist[u, j]]
                        h = s.act_in(torch.cat([b, b * n, n]))
                        a = s.act_out(torch.where(h >= 0, h, h * s.act_prelu.slope))
                        acc += a * b
                    vecs.append(acc / max(len(cols), 1))
                want[u, c] = s.mlp(torch.cat(vecs + [n]).unsqueeze(0))[0, 0]
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("hierarchical", [False, True])
def test_chunked_training_forward_gives_the_same_logits_and_gradients(hierarchical):
    """Training on CPU runs the activation unit in checkpointed user chunks
    (``train_chunk_elements``): logits and every parameter's gradient equal the one-piece pass."""
    from grove.models.jtm.hierarchical import HierarchicalScorer

    t = binary_tree(32, 5)
    torch.manual_seed(1)
    hist = torch.randint(-1, 32, (7, 69))
    nodes = torch.randint(0, t.n_nodes, (7, 9))
    grads = []
    for chunk in (1 << 30, 9 * 69 * 36 * 2):  # one piece; chunks of 2 users (4 chunks, last of 1)
        torch.manual_seed(0)
        s = HierarchicalScorer(t, dim=6, hidden=(8, 4)) if hierarchical else TDMScorer(t, dim=6, hidden=(8, 4))
        s.train_chunk_elements = chunk
        logits = s(hist, nodes)
        logits.pow(2).sum().backward()
        grads.append(
            (
                logits.detach(),
                {k: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone() for k, p in s.named_parameters()},
            )
        )
    (l0, g0), (l1, g1) = grads
    assert torch.allclose(l0, l1, atol=1e-6)
    assert g0.keys() == g1.keys()
    # float noise relative to the largest gradient (the bias before batch norm has a ~0 gradient)
    scale = max(float(g.abs().max()) for g in g0.values())
    for k in g0:
        assert (g0[k] - g1[k]).abs().max() <= 1e-4 * g0[k].abs().max() + 1e-6 * scale, k
