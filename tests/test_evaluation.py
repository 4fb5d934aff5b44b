"""evaluate() / fidelity() on deterministic searchers with hand-computed metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grove.indexstore.errors import InputError
from grove.indexstore.samples import HeldOutUsers, pad_histories
from grove.models.evaluation import drop_seen, evaluate, fidelity
from grove.models.method import Searcher
from grove.models.metrics import ranking_metrics


def csr(rows):
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    items = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if rows else np.zeros(0, np.int64)
    return offsets, items


def held_out(seen_rows, truth_rows) -> HeldOutUsers:
    so, si = csr(seen_rows)
    to, ti = csr(truth_rows)
    return HeldOutUsers(np.arange(len(seen_rows), dtype=np.int32), pad_histories(seen_rows), so, si, to, ti)


class OrderSearcher(Searcher):
    """Every user gets the same ranking: items ascending (search) or descending (exhaustive).
    Records the k it was asked for; reports `beam` candidates per user."""

    def __init__(self, n_items: int):
        self.n_items, self.device, self.asked = n_items, torch.device("cpu"), []

    def _ranked(self, histories, k, order):
        b = histories.shape[0]
        items = torch.full((b, k), -1, dtype=torch.int64)
        m = min(k, self.n_items)
        items[:, :m] = order[:m]
        scores = torch.where(items >= 0, -torch.arange(k, dtype=torch.float32), float("-inf"))
        self.asked.append(k)
        return scores, items

    def search(self, histories, k, beam):
        self._beam = beam
        return self._ranked(histories, k, torch.arange(self.n_items))

    def exhaustive(self, histories, k):
        self._beam = None
        return self._ranked(histories, k, torch.arange(self.n_items - 1, -1, -1))

    def last_candidates(self):
        return None if self._beam is None else float(self._beam)


SEEN = [[1, 0], [3], [], [6, 7, 8]]
TRUTH = [[2, 5], [0, 9], [1], [9, 4]]
N_ITEMS = 10


def test_unfiltered_metrics_exact():
    res = evaluate(OrderSearcher(N_ITEMS), held_out(SEEN, TRUTH), ks=(2, 4), beam=5, role="valid")
    # @2 every list is [0, 1]: hits A:0, B:1 (item 0), C:1 (item 1), D:0
    assert res.value("precision", 2) == pytest.approx((0 + 0.5 + 0.5 + 0) / 4)
    assert res.value("recall", 2) == pytest.approx((0 + 0.5 + 1 + 0) / 4)
    # @4 lists [0, 1, 2, 3]: A hits 2 (rank 2); novelty A = |{2,3}|/4, B = |{0,1,2}|/4
    assert res.value("recall", 4) == pytest.approx((0.5 + 0.5 + 1 + 0) / 4)
    assert res.value("novelty", 4) == pytest.approx((2 / 4 + 3 / 4 + 1 + 1) / 4)
    assert {r.role for r in res.rows} == {"valid"} and {r.beam for r in res.rows} == {5}
    assert len(res.rows) == 2 * 6 and not any(r.filtered for r in res.rows)
    assert res.n_users == 4 and res.mean_candidates == 5.0 and res.users_per_second > 0
    assert "recall" in res.table()


def test_filter_seen_removes_seen_and_matches_metrics_on_filtered_lists():
    searcher = OrderSearcher(N_ITEMS)
    h = held_out(SEEN, TRUTH)
    res = evaluate(searcher, h, ks=(2, 4), beam=5, filter_seen=True)
    assert searcher.asked == [4 + 3]  # k + the largest |S(u)| of the batch
    lists = np.array([[2, 3, 4, 5], [0, 1, 2, 4], [0, 1, 2, 3], [0, 1, 2, 3]])
    for k in (2, 4):
        want = ranking_metrics(lists, k, h.truth_offsets, h.truth_items, h.seen_offsets, h.seen_items)
        for name, value in want.items():
            assert res.value(name, k) == pytest.approx(value)
    assert res.value("novelty", 4) == 1.0
    assert res.value("recall", 4) == pytest.approx((1.0 + 0.5 + 1 + 0) / 4)
    assert all(r.filtered for r in res.rows)


def test_batch_size_does_not_change_results():
    h = held_out(SEEN, TRUTH)
    a = evaluate(OrderSearcher(N_ITEMS), h, ks=(3,), filter_seen=True, batch_size=1)
    b = evaluate(OrderSearcher(N_ITEMS), h, ks=(3,), filter_seen=True, batch_size=256)
    assert a.as_dict() == b.as_dict()


def test_k_beyond_catalogue_is_padded_and_counted_as_misses():
    res = evaluate(OrderSearcher(3), held_out([[5]], [[0, 1, 2]]), ks=(6,))
    assert res.value("precision", 6) == pytest.approx(3 / 6)
    assert res.value("recall", 6) == 1.0 and res.value("ndcg", 6) == pytest.approx(1.0)


def test_exhaustive_rows_have_no_beam_and_fidelity_is_recall_ratio():
    searcher, h = OrderSearcher(N_ITEMS), held_out(SEEN, TRUTH)
    full = evaluate(searcher, h, ks=(2,), exhaustive=True)
    assert {r.beam for r in full.rows} == {None} and full.mean_candidates is None
    # descending lists [9, 8]: B and D hit 9 -> recall (0 + 0.5 + 0 + 0.5) / 4
    assert full.value("recall", 2) == pytest.approx(0.25)
    fid = fidelity(searcher, h, ks=(2, 4), beam=7)
    # ascending @2 recall 0.375; descending @4 [9,8,7,6]: B, D hit 9 -> 0.25
    assert fid.ratios[2] == pytest.approx(0.375 / 0.25)
    assert fid.ratios[4] == pytest.approx(0.5 / 0.25)
    assert [(r.name, r.k, r.beam) for r in fid.rows()] == [("fidelity", 2, 7), ("fidelity", 4, 7)]


def test_drop_seen_keeps_order_and_pads():
    out = drop_seen(np.array([[5, 1, 2, -1], [3, 4, 5, 6]]), np.array([0, 2, 2]), np.array([1, 9]), 3)
    assert out.tolist() == [[5, 2, -1], [3, 4, 5]]


@pytest.mark.parametrize("kwargs", [dict(ks=()), dict(ks=(0, 10)), dict(beam=0), dict(batch_size=0)])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(InputError):
        evaluate(OrderSearcher(N_ITEMS), held_out(SEEN, TRUTH), **kwargs)


def test_no_users_raises():
    with pytest.raises(InputError, match="no held-out users"):
        evaluate(OrderSearcher(N_ITEMS), held_out(SEEN, TRUTH).subset(0))
