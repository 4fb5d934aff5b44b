"""Deep Retrieval M-step (appendix Algorithm 2) and initial assignment, on hand-made score tables."""

from __future__ import annotations

import numpy as np
import pytest

from grove.indexstore.errors import GroveError
from grove.indexstore.structures import PathCodes
from grove.models.dr.em import (
    CandidateScores,
    _top_per_item,
    mstep,
    pool_coverage,
    pool_warning,
    random_codes,
    size_penalty,
)

K, D = 4, 3  # 64 paths; path ids 0..63


def table(rows: list[list[tuple[int, float]]]) -> CandidateScores:
    """Per-item [(path id, s[v, c])] -> CandidateScores (best first within an item)."""
    item = np.concatenate([np.full(len(r), v) for v, r in enumerate(rows)]).astype(np.int64)
    pid = np.array([p for r in rows for p, _ in r], dtype=np.int64)
    val = np.array([s for r in rows for _, s in r], dtype=np.float64)
    return _top_per_item(item, pid, val, len(rows), 1000)


def members(codes: PathCodes, path_id: int) -> set[int]:
    return set(np.flatnonzero((codes.path_ids() == path_id).any(axis=1)).tolist())


# Six items all like path 0 (log-ratio r_v over a private alternative path 10+v with s = 1).
# Penalised best response: v joins path 0 when r_v > alpha * (Δf(|c|) - Δf(0)); for these r the
# equilibrium is unique: alpha 0 -> all six; 0.1 -> {0,1,2}; 0.5 -> {0,1}; 5 -> {0}.
R = [20.0, 9.0, 3.0, 1.0, 0.5, 0.2]
OVERFULL = table([[(0, float(np.exp(r))), (10 + v, 1.0)] for v, r in enumerate(R)])


@pytest.mark.parametrize("alpha, kept", [(0.0, {0, 1, 2, 3, 4, 5}), (0.1, {0, 1, 2}), (0.5, {0, 1}), (5.0, {0})])
def test_overfull_path_loses_weakest_items_as_alpha_grows(alpha, kept):
    prev = random_codes(len(R), 1, K, D, seed=0)
    for seed in range(3):  # the equilibrium does not depend on the visiting order
        out = mstep(OVERFULL, prev, alpha=alpha, iters=5, seed=seed)
        assert members(out, 0) == kept
        others = sorted(set(range(len(R))) - kept)
        # the evicted items sit on their private alternative path, with its score
        assert out.path_ids()[others, 0].tolist() == [10 + v for v in others]
        np.testing.assert_allclose(out.scores[others, 0], 1.0)


def test_size_penalty_is_marginal_quartic():
    s = np.arange(6)
    np.testing.assert_allclose(size_penalty(s, 2.0), 2.0 * ((s + 1) ** 4 - s**4) / 4)


def test_without_penalty_picks_top_j_scores():
    rng = np.random.default_rng(1)
    rows = [
        [(int(p), float(x)) for p, x in zip(rng.choice(64, 6, replace=False), rng.random(6) + 0.1)] for _ in range(30)
    ]
    out = mstep(table(rows), random_codes(30, 3, K, D, seed=1), alpha=0.0, iters=3, seed=0)
    for v, r in enumerate(rows):
        best = sorted(r, key=lambda t: -t[1])[:3]
        assert out.path_ids()[v].tolist() == [p for p, _ in best]
        np.testing.assert_allclose(out.scores[v], [x for _, x in best], rtol=1e-6)


def test_j_paths_distinct_and_short_items_fall_back_to_previous_paths():
    rng = np.random.default_rng(2)
    rows = [
        [(int(p), float(rng.random() + 0.1)) for p in rng.choice(64, rng.integers(0, 5), replace=False)]
        for _ in range(40)
    ]  # 0..4 candidates per item, J = 3
    prev = random_codes(40, 3, K, D, seed=3)
    out = mstep(table(rows), prev, alpha=1e-3, iters=4, seed=0)
    assert out.codes.shape == (40, 3, D) and out.arity == K
    ids = out.path_ids()
    assert all(len(set(r)) == 3 for r in ids.tolist())  # PathCodes also validates this
    for v, r in enumerate(rows):
        allowed = {p for p, _ in r} | (set(prev.path_ids()[v].tolist()) if len(r) < 3 else set())
        assert set(ids[v].tolist()) <= allowed
        if len(r) >= 3:  # enough candidates: scored paths only
            assert (out.scores[v] > 0).all()


def test_mstep_is_seeded_and_validates_iters():
    rng = np.random.default_rng(4)
    rows = [[(int(p), float(rng.random())) for p in rng.choice(64, 8, replace=False)] for _ in range(50)]
    prev = random_codes(50, 2, K, D, seed=0)
    a = mstep(table(rows), prev, alpha=0.05, iters=3, seed=7)
    b = mstep(table(rows), prev, alpha=0.05, iters=3, seed=7)
    assert a.equals(b)
    with pytest.raises(GroveError, match="iterations"):
        mstep(table(rows), prev, alpha=0.05, iters=0, seed=7)


def test_random_codes_distinct_seeded_and_in_range():
    a = random_codes(500, 3, 3, 2, seed=5)  # 9 paths, 3 per item: many collisions to redraw
    assert a.codes.shape == (500, 3, 2) and a.codes.min() >= 0 and a.codes.max() < 3
    assert all(len(set(r)) == 3 for r in a.path_ids().tolist())
    assert a.equals(random_codes(500, 3, 3, 2, seed=5))
    assert not a.equals(random_codes(500, 3, 3, 2, seed=6))
    full = random_codes(20, 4, 2, 2, seed=0)  # J = K^D: every item takes all four paths
    assert all(sorted(r) == [0, 1, 2, 3] for r in full.path_ids().tolist())
    with pytest.raises(GroveError, match="K\\^D"):
        random_codes(5, 5, 2, 2, seed=0)


def test_shared_pools_bound_the_top_path_whatever_alpha():
    """Every item offered the same 3 paths (a popularity-only structure model): 90 items x J=2
    slots over 3 paths -> some path holds >= 60 items; the M-step meets the bound at a large
    alpha and cannot beat it, and the coverage check says so. Personal pools raise no warning."""
    rng = np.random.default_rng(3)
    shared = table([[(p, float(x)) for p, x in zip((5, 9, 40), rng.random(3) + 0.1)] for _ in range(90)])
    cov = pool_coverage(shared, n_paths=2)
    assert (cov.items, cov.paths, cov.least_top_path) == (90, 3, 60)
    out = mstep(shared, random_codes(90, 2, K, D, seed=0), alpha=1.0, iters=4, seed=0)
    sizes = np.unique(out.path_ids(), return_counts=True)[1]
    assert sizes.max() == cov.least_top_path
    message = pool_warning(cov, n_items=90)
    assert message and "3 distinct paths" in message and ">= 60 items" in message
    assert pool_warning(cov, n_items=6001) is None  # 60 items is 1% of this corpus: not flagged

    personal = table([[(v, 1.0), (v + 30, 0.5)] for v in range(30)])
    assert pool_coverage(personal, n_paths=2).least_top_path == 1  # 60 paths for 60 slots
    assert pool_warning(pool_coverage(personal, n_paths=2), n_items=30) is None
