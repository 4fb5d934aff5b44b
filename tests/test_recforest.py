"""RecForest: the decoder's cached beam search, the forest tables, training and retrieval."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import pytest
import torch

from grove.indexstore.errors import StateError, StructureError
from grove.indexstore.samples import HeldOutUsers, SplitData, TrainingSamples, pad_histories
from grove.indexstore.structures import Forest, Tree
from grove.models.method import Built
from grove.models.recforest.method import (
    RecForestConfig,
    RecForestMethod,
    duplicate_leaves_warning,
    svd_item_embeddings,
)
from grove.models.recforest.network import RecForestNet, beam_search_with_siblings, prefix_log_probs
from grove.models.recforest.search import ForestTables, RecForestSearcher, score_paths, tree_code_tables


def planted_split(n_items=60, n_groups=6, n_users=240, seq=12, seed=0) -> SplitData:
    """Users each like one group of items: histories and targets are drawn from it."""
    rng = np.random.default_rng(seed)
    group = np.arange(n_items) % n_groups
    members = [np.flatnonzero(group == g) for g in range(n_groups)]
    hist, targets, users, offsets, flat = [], [], [], [0], []
    for u in range(n_users):
        seqn = rng.choice(members[u % n_groups], size=seq)
        flat.extend(seqn)
        offsets.append(len(flat))
        for j in range(4, seq):
            hist.append(seqn[:j])
            targets.append(seqn[j])
            users.append(u)
    train = TrainingSamples.from_windows(pad_histories(hist), np.array(targets, np.int32), np.array(users, np.int32))

    def held(n, base):
        h, so, si, to, ti = [], [0], [], [0], []
        for u in range(n):
            items = rng.choice(members[u % n_groups], size=8, replace=False)
            h.append(items[:4])
            si.extend(items[:4])
            so.append(len(si))
            ti.extend(items[4:])
            to.append(len(ti))
        return HeldOutUsers(
            np.arange(base, base + n, dtype=np.int32),
            pad_histories(h),
            np.array(so),
            np.array(si),
            np.array(to),
            np.array(ti),
        )

    pop = np.bincount(np.array(flat), minlength=n_items)
    return SplitData(
        "synthetic",
        "default",
        n_items,
        group.astype(np.int32),
        pop,
        train,
        np.array(offsets),
        np.array(flat),
        held(30, n_users),
        held(30, n_users + 30),
    )


def complete_tree(n_items: int, arity: int, seed: int, order=None) -> Tree:
    """Items (in ``order``, default random) laid over a complete K-ary tree, duplicates random."""
    rng = np.random.default_rng(seed)
    depth = int(np.ceil(np.log(n_items) / np.log(arity) - 1e-9))
    n_leaves = arity**depth
    order = rng.permutation(n_items) if order is None else np.asarray(order)
    dups = rng.choice(n_items, n_leaves - n_items)
    pos = np.empty(n_items)
    pos[order] = np.arange(n_items)
    keys = np.concatenate([np.arange(n_items), pos[dups] + 0.5])  # a duplicate sits by its original
    items = np.concatenate([order, dups])[np.argsort(keys, kind="stable")]
    codes = np.arange(n_leaves)
    paths = (codes[:, None] // arity ** np.arange(depth - 1, -1, -1)) % arity
    return Tree.from_paths(paths, items, n_items, arity)


def test_cached_beam_search_matches_recomputation():
    torch.manual_seed(0)
    net = RecForestNet(40, 3, [4], hidden=32, heads=4).eval()
    hist = torch.randint(-1, 40, (6, 69))
    hist[:, 15:] = -1
    hist[3] = -1  # an empty history must work (prior)
    with torch.no_grad():
        mem = net.memories(hist)[0]
        c1, s1 = net.decoders[0].beam_search(mem, 9, use_cache=True)
        c2, s2 = net.decoders[0].beam_search(mem, 9, use_cache=False)
        tf = net.decoders[0].path_log_probs(mem, c1)
    assert c1.shape == (6, 9, 4) and s1.shape == (6, 9)
    assert torch.equal(c1, c2)
    assert torch.allclose(s1, s2, atol=1e-5)
    assert torch.allclose(tf, s1, atol=1e-5)  # teacher forcing scores the beam's paths alike
    assert torch.isfinite(s1).all()
    assert (s1[:, :-1] >= s1[:, 1:]).all()  # best first


def test_attention_split_into_chunks_gives_the_same_beam(monkeypatch):
    # large batches are split along the sequences (a CUDA grid axis holds 65,535 blocks)
    from grove.models.recforest import network

    torch.manual_seed(0)
    net = RecForestNet(40, 3, [4], hidden=32, heads=4).eval()
    hist = torch.randint(-1, 40, (6, 69))
    with torch.no_grad():
        mem = net.memories(hist)[0]
        whole = net.decoders[0].beam_search(mem, 9)
        monkeypatch.setattr(network, "ATTENTION_CHUNK", 7)  # 6 users x 9 paths = 54 sequences: 8 pieces
        pieces = net.decoders[0].beam_search(mem, 9)
    assert torch.equal(whole[0], pieces[0])
    torch.testing.assert_close(whole[1], pieces[1])


def test_expanding_every_leaf_equals_teacher_forcing_every_path():
    torch.manual_seed(2)
    net = RecForestNet(30, 3, [3], hidden=16, heads=2).eval()
    hist = torch.randint(-1, 30, (5, 69))
    hist[1] = -1
    with torch.no_grad():
        mem = net.memories(hist)[0]
        dec = net.decoders[0]
        expanded = dec.all_leaf_log_probs(mem)  # (5, 27) in leaf-code order
        codes = torch.arange(27)
        digits = ((codes[:, None] // 3 ** torch.arange(2, -1, -1)) % 3).expand(5, -1, -1)
        forced = dec.path_log_probs(mem, digits)
    assert expanded.shape == (5, 27)
    assert torch.allclose(expanded, forced, atol=1e-5)
    assert torch.allclose(expanded.exp().sum(1), torch.ones(5), atol=1e-5)


def test_scoring_paths_by_shared_prefix_equals_one_pass_per_path():
    """score_paths runs the decoder once per distinct (user, first H-1 codes); every path, siblings
    or not, repeated or not, in any order, gets the log-prob of its own teacher-forced pass."""
    torch.manual_seed(3)
    net = RecForestNet(30, 4, [3], hidden=16, heads=2).eval()
    hist = torch.randint(-1, 30, (5, 69))
    hist[2] = -1
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 64, (5, 40), generator=gen)
    codes[:, 20:30] = codes[:, :10] // 4 * 4 + torch.randint(0, 4, (5, 10), generator=gen)  # siblings
    codes[:, 30:] = codes[:, 5:15]  # repeats
    digits = (codes[..., None] // 4 ** torch.arange(2, -1, -1)) % 4
    with torch.no_grad():
        mem = net.memories(hist)[0]
        shared = score_paths(net.decoders[0], mem, digits)
        alone = net.decoders[0].path_log_probs(mem, digits)
        empty = score_paths(net.decoders[0], mem, digits[:, :0])
    assert shared.shape == (5, 40) and empty.shape == (5, 0)
    assert torch.allclose(shared, alone, atol=1e-5)


def test_cached_prefix_scoring_equals_teacher_forcing():
    """prefix_log_probs decodes only the distinct prefixes of the parents, with the cache, from the
    root or resumed below a beam search's complete level; every parent (repeated or not, any
    order) and each of its children get their teacher-forced log-probs (issue 29.3)."""
    torch.manual_seed(4)
    net = RecForestNet(30, 4, [4], hidden=16, heads=2).eval()
    hist = torch.randint(-1, 30, (5, 69))
    hist[3] = -1
    parents = torch.randint(0, 64, (5, 30), generator=torch.Generator().manual_seed(1))
    parents[:, 20:] = parents[:, :10]  # repeats
    dec = net.decoders[0]
    with torch.no_grad():
        mem = net.memories(hist)[0]
        head, last = prefix_log_probs(dec, mem, parents)
        leaves = parents[..., None] * 4 + torch.arange(4)  # (5, 30, 4) every child
        digits = (leaves[..., None] // 4 ** torch.arange(3, -1, -1)) % 4
        forced = dec.path_log_probs(mem, digits.reshape(5, -1, 4)).view(5, 30, 4)
        empty = prefix_log_probs(dec, mem, parents[:, :0])
        # resumed from a beam search's complete levels: the root (level 0), all 4 nodes of level 1
        levels = beam_search_with_siblings(dec, mem, 4)[4]
        assert [lv.children.shape[1] for lv in levels[:2]] == [1, 4]
        resumed = [prefix_log_probs(dec, mem, parents, lv) for lv in levels[:2]]
    assert head.shape == (5, 30) and last.shape == (5, 30, 4)
    assert torch.allclose(head[..., None] + last, forced, atol=1e-5)
    assert torch.allclose(head, torch.logsumexp(forced, dim=2), atol=1e-5)  # p(parent) = sum of its children
    for h, lp in resumed:
        assert torch.allclose(h[..., None] + lp, forced, atol=1e-5)
    assert empty[0].shape == (5, 0) and empty[1].shape == (5, 0, 4)


def test_beam_siblings_are_the_last_levels_children():
    """beam_search_with_siblings also returns every child of the last level's prefixes: the
    beam's own leaves among them with bit-identical scores, the others teacher-forced alike."""
    torch.manual_seed(5)
    net = RecForestNet(30, 3, [3], hidden=16, heads=2).eval()
    dec = net.decoders[0]
    with torch.no_grad():
        mem = net.memories(torch.randint(-1, 30, (4, 69)))[0]
        codes, scores, parents, children, _ = beam_search_with_siblings(dec, mem, 5)
        digits = torch.cat([parents[:, :, None].expand(-1, -1, 3, -1), torch.arange(3).expand(4, 5, 3)[..., None]], 3)
        forced = dec.path_log_probs(mem, digits.reshape(4, 15, 3)).view(4, 5, 3)
    assert parents.shape == (4, 5, 2) and children.shape == (4, 5, 3)
    assert torch.allclose(children, forced, atol=1e-5)
    leaf = (codes * 3 ** torch.arange(2, -1, -1)).sum(-1)  # (4, 5)
    sib = ((parents * 3 ** torch.arange(2, 0, -1)).sum(-1)[..., None] + torch.arange(3)).flatten(1)
    pos = (leaf[..., None] == sib[:, None, :]).float().argmax(-1)
    assert torch.equal(sib.gather(1, pos), leaf)
    assert torch.equal(children.flatten(1).gather(1, pos), scores)


def test_compiled_search_equals_eager():
    """RecForestSearcher.compile (issue 29.3), one tree: encoder, beams and final ranking as one
    graph, histories untrimmed, a batch of 7 padded to 8. A row whose beam items' other leaves
    lie under parents the level before the last did not step is ranked eagerly after the graph
    (as a forest's are); either way the same top-k as eager, scores up to float rounding."""
    torch.manual_seed(0)
    tree = complete_tree(50, 3, seed=1)  # 81 leaves: 31 duplicates, beside their originals
    net = RecForestNet(50, 3, [tree.depth], hidden=16, heads=2).eval()
    s = RecForestSearcher(net, ForestTables.from_forest(Forest([tree]), "cpu"), 50, torch.device("cpu"))
    hist = torch.randint(0, 50, (7, 69))
    hist[1] = -1  # an empty history: the padding path
    want = s.search(hist, k=10, beam=3)
    s.compile()
    got = s.search(hist, k=10, beam=3)
    assert torch.equal(want[1], got[1])
    torch.testing.assert_close(want[0], got[0], atol=1e-5, rtol=1e-5)
    padded = torch.cat([hist, hist.new_full((1, 69), -1)])
    with torch.no_grad():
        scores, items, resolved, _ = s._compiled_search(padded, 10, 3)[2]  # the graph compiled above
    resolved = resolved[:7]
    assert 0 < int(resolved.sum()) < 7  # both paths taken
    assert torch.equal(items[:7][resolved], want[1][resolved])
    torch.testing.assert_close(scores[:7][resolved], want[0][resolved], atol=1e-5, rtol=1e-5)
    s.leaf_scoring = "cached"  # the eager ranking's descent, compiled with symbolic widths
    got = s.search(hist, k=10, beam=3)
    assert torch.equal(want[1], got[1])
    torch.testing.assert_close(want[0], got[0], atol=1e-5, rtol=1e-5)


def test_full_beam_gives_every_path_and_probabilities_sum_to_one():
    torch.manual_seed(1)
    net = RecForestNet(10, 3, [2], hidden=16, heads=2).eval()
    with torch.no_grad():
        mem = net.memories(torch.randint(0, 10, (2, 69)))[0]
        codes, lp = net.decoders[0].beam_search(mem, 100)
    assert codes.shape == (2, 9, 2)
    assert torch.allclose(lp.exp().sum(1), torch.ones(2), atol=1e-5)


def test_code_tables_complete_tree_and_every_item_has_a_leaf():
    tree = complete_tree(20, 3, seed=0)
    leaf_item, item_codes = tree_code_tables(tree, 0)
    assert leaf_item.shape == (27,) and tree.depth == 3
    assert (item_codes[:, 0] >= 0).all()  # every item has >= 1 leaf
    valid = item_codes >= 0
    assert (leaf_item[item_codes[valid]] == np.nonzero(valid)[0]).all()
    assert valid.sum() == 27  # every leaf listed once


def test_incomplete_tree_is_refused():
    tree = Tree.from_parents([-1, 0, 0, 1, 1], [-1, -1, 2, 0, 1], 3, 2)  # leaves at depths 1, 2
    with pytest.raises(StructureError, match="not a complete"):
        tree_code_tables(tree, 0)


def _config(**kw):
    base = dict(
        arity=3,
        trees=2,
        hidden=32,
        heads=4,
        encoder_layers=1,
        decoder_layers=1,
        ff=64,
        dropout=0.0,
        epochs=3,
        batch_size=128,
        lr=3e-3,
        embeddings="svd",
        device="cpu",
    )
    base.update(kw)
    return RecForestConfig(**base)


def _forest(data, seed=0):
    # trees that keep each group together (different orders within groups per tree)
    rng = np.random.default_rng(seed)
    trees = []
    for t in range(2):
        order = np.lexsort((rng.random(data.n_items), data.item_category))
        trees.append(complete_tree(data.n_items, 3, seed + t, order=order))
    return Forest(tuple(trees))


def _recall(items, data, k):
    truth = data.test.truth()
    return float(np.mean([np.isin(items[i, :k], t).sum() / len(t) for i, t in enumerate(truth)]))


@pytest.fixture(scope="module")
def trained():
    data = planted_split()
    method = RecForestMethod()
    built = method.train(_config(), Built(_forest(data)), data, seed=0)
    return data, method, built


def test_training_learns_and_search_is_fixed_shape(trained):
    data, method, built = trained
    s = method.searcher(_config(), built, "cpu")
    hist = torch.as_tensor(data.test.histories, dtype=torch.long)
    scores, items = s.search(hist, k=10, beam=6)
    assert scores.shape == (30, 10) and items.shape == (30, 10)
    assert scores.dtype == torch.float32 and items.dtype == torch.int64
    assert _recall(items.numpy(), data, 10) > 0.5  # planted groups of 10 items: chance is ~0.17
    big_s, big_i = s.search(hist, k=200, beam=6)  # more than the candidates: padded
    assert (big_i[:, -1] == -1).all() and torch.isinf(big_s[:, -1]).all()
    for row in items.numpy():  # no duplicates
        row = row[row >= 0]
        assert len(np.unique(row)) == len(row)


def test_search_scores_equal_exhaustive_scores(trained):
    data, method, built = trained
    s = method.searcher(_config(), built, "cpu")
    hist = torch.as_tensor(data.test.histories, dtype=torch.long)
    es, ei = s.exhaustive(hist, k=data.n_items)
    bs, bi = s.search(hist, k=10, beam=6)
    full = torch.full((30, data.n_items), float("nan"))
    full.scatter_(1, ei, es)
    found = bi >= 0
    assert torch.allclose(bs[found], full.gather(1, bi.clamp(min=0))[found], atol=1e-4)
    # a beam as wide as the leaves finds the exhaustive top-k
    ws, wi = s.search(hist, k=10, beam=27)
    assert torch.allclose(ws, es[:, :10], atol=1e-4)


def test_final_ranking_by_expansion_equals_teacher_forcing(trained):
    data, method, built = trained
    hist = torch.as_tensor(data.test.histories, dtype=torch.long)
    s = method.searcher(_config(), built, "cpu")
    out = {}
    for mode in ("expand", "teacher", "cached", "auto"):
        s.leaf_scoring = mode
        out[mode] = s.search(hist, k=10, beam=4)
    for mode in ("teacher", "cached", "auto"):
        assert torch.equal(out["expand"][1], out[mode][1])
        assert torch.allclose(out["expand"][0], out[mode][0], atol=1e-5)


def test_forest_beats_one_tree_of_the_same_forest(trained):
    data, method, built = trained
    hist = torch.as_tensor(data.test.histories, dtype=torch.long)
    forest_s = method.searcher(_config(), built, "cpu")
    # the same trained model restricted to tree 0
    net = copy.deepcopy(forest_s.net)
    net.decoders = net.decoders[:1]
    tables = ForestTables.from_forest(Forest(built.structure.trees[:1]), "cpu")
    one_s = RecForestSearcher(net, tables, data.n_items, torch.device("cpu"))
    _, fi = forest_s.search(hist, k=10, beam=4)
    _, oi = one_s.search(hist, k=10, beam=4)
    assert forest_s.last_candidates() > one_s.last_candidates()
    assert _recall(fi.numpy(), data, 10) > _recall(oi.numpy(), data, 10)


def test_same_seed_same_result_and_round_trip(trained):
    data, method, built = trained
    cfg = _config(max_steps=6)
    one = method.train(cfg, Built(built.structure), data, seed=0)
    again = method.train(cfg, Built(built.structure), data, seed=0)
    hist = torch.as_tensor(data.test.histories[:8], dtype=torch.long)
    a = method.searcher(cfg, one, "cpu").search(hist, 5, 5)
    b = method.searcher(cfg, again, "cpu").search(hist, 5, 5)
    assert torch.equal(a[1], b[1]) and torch.allclose(a[0], b[0])


def test_gradients_are_bitwise_reproducible_on_several_threads():
    """Same seed, same weights: the backward pass of one batch gives the same gradients bit for bit
    every time, at a size (batch 256, hidden 96, K=18) where CPU kernels split work over threads.
    Advanced indexing of the code table did not: its backward adds rows with atomics on several
    threads, and two trainings with one seed drifted apart."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(2, old))
    try:
        torch.manual_seed(0)
        net = RecForestNet(500, 18, [3, 3], 96, 4, 1, 1, 192, 0.0)
        hist = torch.randint(-1, 500, (256, 40))
        codes = [torch.randint(0, 18, (256, 3)) for _ in range(2)]

        def grads():
            net.zero_grad()
            net.loss(hist, codes).backward()
            # the item table's gradient is sparse: compare what SparseAdam applies (coalesced)
            return {
                k: (p.grad.coalesce().to_dense() if p.grad.is_sparse else p.grad).clone()
                for k, p in net.named_parameters()
            }

        first = grads()
        for _ in range(3):
            again = grads()
            assert all(torch.equal(first[k], again[k]) for k in first), [
                k for k in first if not torch.equal(first[k], again[k])
            ]
    finally:
        torch.set_num_threads(old)


def test_untrained_version_refuses_search():
    data = planted_split(n_users=12)
    with pytest.raises(StateError, match="never trained"):
        RecForestMethod().searcher(_config(), Built(_forest(data)), "cpu")


def test_svd_embeddings_shape_and_seed():
    data = planted_split(n_users=24)
    a = svd_item_embeddings(data, 8, seed=3)
    b = svd_item_embeddings(data, 8, seed=3)
    assert a.shape == (60, 8) and np.array_equal(a, b)


def test_config_validation():
    with pytest.raises(ValueError):
        RecForestConfig(hidden=30, heads=4)
    with pytest.raises(ValueError):
        RecForestConfig(embeddings="nope")
    assert dataclasses.asdict(RecForestConfig())["arity"] == 18


def test_duplicate_leaves_warning_names_arities_that_fit():
    # ml-latest-small: 18^4 = 104,976 leaves for 9,724 items
    message = duplicate_leaves_warning(9724, 18)
    assert "10.8 per item" in message and "22 (depth 3, 1.10" in message and "10 (depth 4, 1.03" in message
    assert duplicate_leaves_warning(3615, 18) is None  # ml-1m-subset: 5,832 leaves, 1.6 per item


def test_construct_warns_when_the_trees_are_mostly_copies():
    data = planted_split(n_users=24)  # 60 items
    with pytest.warns(UserWarning, match=r"16-ary tree over 60 items .* 4\.3 per item"):
        built = RecForestMethod().construct(_config(arity=16, trees=1), data, seed=0)
    assert built.structure.trees[0].arity == 16  # a warning, not a refusal: the forest is built
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RecForestMethod().construct(_config(arity=8, trees=1), data, seed=0)  # 64 leaves: fits
