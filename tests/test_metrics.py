"""Metric values on hand-made cases (exact numbers), docs/PROTOCOL.md §5-6."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grove.models.metrics import fidelity, first_occurrence, in_sets, per_user_metrics, ranking_metrics


def csr(rows):
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    items = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if rows else np.zeros(0, np.int64)
    return offsets, items


def test_in_sets_marks_members_and_never_padding():
    offs, items = csr([[3, 1], [], [0]])
    got = in_sets(np.array([[1, 2, -1], [1, 3, 0], [0, -1, 5]]), offs, items)
    assert got.tolist() == [[True, False, False], [False, False, False], [True, False, False]]


def test_first_occurrence_drops_repeats_and_padding():
    got = first_occurrence(np.array([[4, 2, 4, -1, 2], [1, 1, 1, 0, -1]]))
    assert got.tolist() == [[True, True, False, False, False], [True, False, False, True, False]]


def test_exact_values_two_users():
    retrieved = np.array([[1, 2, 3, -1], [5, 5, 6, 7]])
    truth = csr([[2, 9], [5, 6]])
    seen = csr([[1], [5]])
    m = per_user_metrics(retrieved, 4, *truth, *seen)
    d = [1 / math.log2(r + 2) for r in range(4)]
    # user 0: one hit (item 2) at rank 1 of 4, |G| = 2
    assert m["precision"][0] == pytest.approx(0.25)
    assert m["recall"][0] == pytest.approx(0.5)
    assert m["f1"][0] == pytest.approx(2 * 0.25 * 0.5 / 0.75)
    assert m["ndcg"][0] == pytest.approx(d[1] / (d[0] + d[1]))
    assert m["ndcg_returned"][0] == pytest.approx(d[1] / d[0])  # RecForest's: ideal = the one hit on top
    assert m["novelty"][0] == pytest.approx(2 / 4)  # 2 and 3 are new; 1 was seen; padding is not
    # user 1: the repeated 5 counts once; hits 5 (rank 0) and 6 (rank 2)
    assert m["precision"][1] == pytest.approx(0.5)
    assert m["recall"][1] == pytest.approx(1.0)
    assert m["ndcg"][1] == pytest.approx((d[0] + d[2]) / (d[0] + d[1]))
    assert m["ndcg_returned"][1] == pytest.approx((d[0] + d[2]) / (d[0] + d[1]))  # both of G returned: equal
    assert m["novelty"][1] == pytest.approx(2 / 4)
    avg = ranking_metrics(retrieved, 4, *truth, *seen)
    assert avg == pytest.approx({name: float(np.mean(v)) for name, v in m.items()})


def test_f_is_averaged_per_user_not_from_mean_precision_and_recall():
    # user 0: P = 1, R = 1 (F = 1); user 1: P = 1, R = 1/4 (F = 0.4)
    avg = ranking_metrics(np.array([[3], [5]]), 1, *csr([[3], [5, 6, 7, 8]]), *csr([[], []]))
    assert avg["precision"] == 1.0 and avg["recall"] == pytest.approx(0.625)
    assert avg["f1"] == pytest.approx(0.7)  # 2PR/(P+R) of the means would give 0.769


def test_cutoff_reads_only_first_k_columns():
    retrieved = np.array([[9, 8, 1, 2]])
    truth, seen = csr([[1, 2]]), csr([[]])
    m2 = ranking_metrics(retrieved, 2, *truth, *seen)
    m4 = ranking_metrics(retrieved, 4, *truth, *seen)
    assert m2["recall"] == 0.0 and m2["precision"] == 0.0 and m2["f1"] == 0.0 and m2["ndcg"] == 0.0
    assert m4["recall"] == 1.0 and m4["precision"] == 0.5


def test_ideal_ranking_has_ndcg_one():
    truth = csr([[4, 7, 9], [1, 2, 3, 5, 8, 11]])
    retrieved = np.array([[9, 4, 7, 0, 10], [1, 2, 3, 5, 8]])  # all of G first / k < |G| all hits
    m = per_user_metrics(retrieved, 5, *truth, *csr([[], []]))
    assert np.allclose(m["ndcg"], 1.0)
    assert m["recall"].tolist() == pytest.approx([1.0, 5 / 6])


def test_novelty_counts_unseen_real_items():
    retrieved = np.array([[1, 2, 3, 4], [1, -1, -1, -1]])
    seen = csr([[1, 2, 3, 4], [7]])
    m = per_user_metrics(retrieved, 4, *csr([[5], [5]]), *seen)
    assert m["novelty"].tolist() == [0.0, 0.25]


def test_empty_truth_gives_zero_recall_and_no_nan():
    m = per_user_metrics(np.array([[1, 2]]), 2, *csr([[]]), *csr([[]]))
    assert m["recall"][0] == 0.0 and m["ndcg"][0] == 0.0 and m["f1"][0] == 0.0


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        per_user_metrics(np.array([[1, 2]]), 3, *csr([[1]]), *csr([[]]))
    with pytest.raises(ValueError):
        in_sets(np.array([[1]]), np.array([0, 1, 2]), np.array([1, 2]))


def test_fidelity_ratio():
    assert fidelity(0.09, 0.1) == pytest.approx(0.9)
    assert fidelity(0.0, 0.0) == 1.0
    assert math.isnan(fidelity(0.1, 0.0))


def test_vectorised_matches_python_loop_on_random_lists():
    rng = np.random.default_rng(0)
    n_users, k, n_items = 40, 7, 30
    truth_rows = [rng.choice(n_items, rng.integers(1, 10), replace=False) for _ in range(n_users)]
    seen_rows = [rng.choice(n_items, rng.integers(0, 10), replace=False) for _ in range(n_users)]
    retrieved = np.stack([rng.choice(n_items, k, replace=False) for _ in range(n_users)])
    m = per_user_metrics(retrieved, k, *csr(truth_rows), *csr(seen_rows))
    for u in range(n_users):
        g, s, p = set(truth_rows[u]), set(seen_rows[u]), list(retrieved[u])
        hits = [int(x in g) for x in p]
        assert m["precision"][u] == pytest.approx(sum(hits) / k)
        assert m["recall"][u] == pytest.approx(sum(hits) / len(g))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(g), k)))
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        assert m["ndcg"][u] == pytest.approx(dcg / idcg)
        returned_idcg = sum(1 / math.log2(r + 2) for r in range(sum(hits)))  # RecForest appendix D
        assert m["ndcg_returned"][u] == pytest.approx(dcg / returned_idcg if sum(hits) else 0.0)
        assert m["ndcg_returned"][u] >= m["ndcg"][u] - 1e-12
        assert m["novelty"][u] == pytest.approx(len(set(p) - s) / k)
