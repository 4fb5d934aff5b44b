"""The metrics a version gets when it is evaluated: for every beam, P/R/F/NDCG/Novelty @k with
seen items kept and filtered, users per second; once, the exhaustive (brute-force) scores of the
same model; and fidelity = recall(beam) / recall(exhaustive) per k and beam."""
from __future__ import annotations

from indexstore.entities import MetricRow
from indexstore.samples import HeldOutUsers
from models.evaluation import MetricValue, evaluate
from models.method import Searcher
from models.metrics import fidelity as fidelity_ratio


def _row(v: MetricValue) -> MetricRow:
    return MetricRow(role=v.role, name=v.name, k=v.k, value=v.value, beam=v.beam,
                     filtered=v.filtered, note=v.note)


def evaluate_version(searcher: Searcher, held_out: HeldOutUsers, role: str = "valid",
                     ks: tuple[int, ...] = (10, 50), beams: tuple[int, ...] = (50,),
                     fidelity: bool = True) -> list[MetricRow]:
    """Every metric row of one evaluation, ready for `Store.record_metrics`."""
    rows: list[MetricRow] = []
    full = evaluate(searcher, held_out, ks, exhaustive=True, role=role) if fidelity else None
    if full is not None:
        rows += [_row(v) for v in full.rows]
    kmax = max(ks)
    for beam in beams:
        kept = evaluate(searcher, held_out, ks, beam, filter_seen=False, role=role)
        filtered = evaluate(searcher, held_out, ks, beam, filter_seen=True, role=role)
        rows += [_row(v) for v in kept.rows + filtered.rows]
        rows.append(MetricRow(role, "users_per_second", kmax, kept.users_per_second, beam, False,
                              note=f"{kept.n_users} users"))
        if kept.mean_candidates is not None:
            rows.append(MetricRow(role, "candidates", kmax, kept.mean_candidates, beam, False))
        if full is not None:
            rows += [MetricRow(role, "fidelity", k, fidelity_ratio(kept.value("recall", k),
                                                                   full.value("recall", k)), beam, False)
                     for k in sorted(set(ks))]
    return rows
