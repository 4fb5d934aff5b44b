"""Deep Retrieval search: exact beam search on known models, the inverted index, the searcher."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from grove.indexstore.errors import GroveError, StateError, StructureError
from grove.indexstore.structures import PathCodes
from grove.models.dr.em import random_codes
from grove.models.dr.method import DRConfig, DRMethod, DRSearcher, new_net
from grove.models.dr.network import StructureModel
from grove.models.dr.search import PathIndex, beam_search, dedup_rows, path_ids_of
from grove.models.method import Built, state_to_bytes


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a shared 2-core machine run faster on one thread; restored after the test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def all_paths(k: int, d: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(k), repeat=d)), dtype=torch.long)  # (K^D, D)


def enumerate_log_probs(model: StructureModel, u: torch.Tensor) -> torch.Tensor:
    """(B, K^D) log p(c|u) of every path, in path-id order."""
    paths = all_paths(model.arity, model.depth)
    with torch.no_grad():
        return model.path_log_prob(u, paths[None].expand(u.shape[0], -1, -1))


def test_beam_search_exact_on_factorised_model():
    """Per-layer distributions independent of user and prefix (output weights zero, biases
    known): p(c) = prod_d softmax(b_d)[c_d], and beam search returns the exact top-B paths."""
    torch.manual_seed(0)
    k, d, beam = 5, 3, 7
    model = StructureModel(k, d, dim=8, hidden=8)
    biases = [torch.randn(k) * 2 for _ in range(d)]
    with torch.no_grad():
        for layer, b in zip(model.layers, biases):
            layer.out.weight.zero_()
            layer.out.bias.copy_(b)
    u = torch.randn(4, 8)
    paths, logp = beam_search(model, u, beam)
    logs = [torch.log_softmax(b, 0) for b in biases]
    grid = all_paths(k, d)
    exact = sum(logs[i][grid[:, i]] for i in range(d))  # (K^D,) known log-probs
    top, idx = torch.topk(exact, beam)
    for row in range(4):
        assert paths[row].tolist() == grid[idx].tolist()
        torch.testing.assert_close(logp[row], top)


def test_beam_search_exact_when_beam_covers_all_prefixes():
    """With B >= K^(D-1) no prefix is ever dropped, so any model's top-B paths come back."""
    torch.manual_seed(1)
    k, d = 4, 3
    model = StructureModel(k, d, dim=6, hidden=10)
    u = torch.randn(5, 6)
    beam = k ** (d - 1)
    paths, logp = beam_search(model, u, beam)
    exact = enumerate_log_probs(model, u)
    top, idx = torch.topk(exact, beam, dim=1)
    torch.testing.assert_close(logp, top)
    ids = path_ids_of(paths, k)  # sum_d c_d * K^(D-1-d), the enumeration order
    assert torch.equal(ids, idx)


def test_beam_larger_than_grid_is_padded():
    model = StructureModel(2, 2, dim=4, hidden=4)
    paths, logp = beam_search(model, torch.randn(3, 4), beam=6)
    assert paths.shape == (3, 6, 2) and logp.shape == (3, 6)
    assert (paths[:, 4:] == -1).all() and torch.isinf(logp[:, 4:]).all()
    assert (path_ids_of(paths, 2)[:, 4:] == -1).all() and (path_ids_of(paths, 2)[:, :4] >= 0).all()
    assert torch.isfinite(logp[:, :4]).all()


def test_inverted_index_round_trip():
    codes = random_codes(300, 3, 3, 3, seed=0)  # 27 paths, ~33 items each
    index = PathIndex(codes)
    got = {v: set() for v in range(300)}
    for p, lo, hi in zip(index.path_ids.tolist(), index.offsets[:-1].tolist(), index.offsets[1:].tolist()):
        for v in index.items[lo:hi].tolist():
            got[v].add(p)
    assert got == {v: set(r) for v, r in enumerate(codes.path_ids().tolist())}
    assert int(index.path_sizes().sum()) == 300 * 3


def test_items_of_matches_numpy_union_and_is_distinct():
    codes = random_codes(200, 3, 3, 2, seed=1)  # 9 paths: items repeat across a user's paths
    index = PathIndex(codes)
    rng = np.random.default_rng(0)
    paths = torch.tensor(rng.integers(0, 3, size=(6, 4, 2)))
    paths[2, 1:] = -1  # fewer paths for one user
    cands = index.items_of(paths)
    pid = codes.path_ids()
    for row in range(6):
        ids = {int(p[0]) * 3 + int(p[1]) for p in paths[row].tolist() if p[0] >= 0}
        want = sorted(set(np.flatnonzero(np.isin(pid, list(ids)).any(axis=1)).tolist()))
        got = cands[row][cands[row] >= 0].tolist()
        assert got == want
    assert torch.equal(dedup_rows(torch.tensor([[3, -1, 3, 1]])), torch.tensor([[1, 3, -1, -1]]))


def trained_searcher(n_items=40, k_arity=3, depth=2, j=2, seed=0) -> tuple[DRConfig, Built]:
    """A randomly initialised net stored as weights (search logic does not need training)."""
    torch.manual_seed(seed)
    cfg = DRConfig(arity=k_arity, depth=depth, n_paths=j, dim=8, hidden=8, estep_pool=4, device="cpu")
    net = new_net(cfg, n_items)
    state = {"model": net.state_dict(), "epochs_done": 0, "n_items": n_items}
    codes = random_codes(n_items, j, k_arity, depth, seed)
    return cfg, Built(codes, {"weights.pt": state_to_bytes(state)})


def histories(n=7, n_items=40, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    h = torch.full((n, 69), -1, dtype=torch.long)
    for i in range(n):
        ln = int(rng.integers(0, 10))  # includes an empty history
        h[i, :ln] = torch.tensor(rng.integers(0, n_items, ln))
    return h


def test_search_fixed_shapes_padding_and_candidates():
    cfg, built = trained_searcher()
    s = DRMethod().searcher(cfg, built)
    assert isinstance(s, DRSearcher) and s.last_candidates() is None
    scores, items = s.search(histories(), k=50, beam=1)  # one path holds < 50 items
    assert scores.shape == (7, 50) and items.shape == (7, 50)
    assert scores.dtype == torch.float32 and items.dtype == torch.long
    found = (items >= 0).sum(1)
    assert (found < 50).all() and torch.isinf(scores[items < 0]).all()
    assert s.last_candidates() == pytest.approx(float(found.float().mean()))
    for row in items.tolist():  # best first, distinct
        row = [v for v in row if v >= 0]
        assert len(row) == len(set(row))
    assert (scores[:, :-1] >= scores[:, 1:]).logical_or(torch.isinf(scores[:, 1:])).all()


def test_full_beam_search_equals_exhaustive():
    """beam = K^D retrieves every path, so every item is a candidate: fidelity 1."""
    cfg, built = trained_searcher()
    s = DRMethod().searcher(cfg, built)
    h = histories()
    sc, it = s.search(h, k=10, beam=3**2)
    ex_sc, ex_it = s.exhaustive(h, k=10)
    assert torch.equal(it, ex_it)
    torch.testing.assert_close(sc, ex_sc)
    assert s.last_candidates() == 40


def test_exhaustive_is_the_softmax_top_k():
    cfg, built = trained_searcher()
    s = DRMethod().searcher(cfg, built)
    h = histories()
    with torch.no_grad():
        logits = s.net.softmax.logits(s.net.encode(h))
    sc, it = s.exhaustive(h, k=45)  # k > n_items: padded
    top, idx = torch.topk(logits, 40, dim=1)
    assert torch.equal(it[:, :40], idx) and (it[:, 40:] == -1).all()
    torch.testing.assert_close(sc[:, :40], top)


def test_misuse_raises():
    cfg, built = trained_searcher()
    with pytest.raises(StateError, match="never trained"):
        DRMethod().searcher(cfg, Built(built.structure, {}))
    with pytest.raises(StructureError, match="config says"):
        DRMethod().searcher(DRConfig(arity=4, depth=2, n_paths=2, estep_pool=4), built)
    s = DRMethod().searcher(cfg, built)
    with pytest.raises(GroveError):
        s.search(histories(), k=0, beam=2)
    with pytest.raises(GroveError, match="n_paths"):
        DRConfig(arity=2, depth=1, n_paths=3)
    with pytest.raises(GroveError, match="alpha"):
        DRConfig(alpha=-1.0)
    assert isinstance(built.structure, PathCodes)
