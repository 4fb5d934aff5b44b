"""The metrics a version gets when it is evaluated: for every beam, P/R/F/NDCG/Novelty @k with
seen items kept and filtered (one search serves both), users per second; and, where the
catalogue allows, the exhaustive (brute-force) scores of the same model and fidelity =
recall(beam) / recall(exhaustive) per k and beam.

The exhaustive reference scores every item for every user: O(items) per user, about 14 s per
user at 10^6 items on a 2-core CPU (benchmarks/README.md, scale). It runs by default only up to
``EXHAUSTIVE_MAX_ITEMS`` items; above, ask for it (``exhaustive=True``) and give it a sample of
users (``exhaustive_users``): fidelity then compares the beam's and the exhaustive recall on the
same sampled users.
"""
from __future__ import annotations

from indexstore.entities import MetricRow
from indexstore.samples import HeldOutUsers
from models.evaluation import MetricValue, evaluate, evaluate_both
from models.method import Searcher
from models.metrics import fidelity as fidelity_ratio

EXHAUSTIVE_MAX_ITEMS = 100_000


def _row(v: MetricValue, note: str | None = None) -> MetricRow:
    return MetricRow(role=v.role, name=v.name, k=v.k, value=v.value, beam=v.beam,
                     filtered=v.filtered, note=note or v.note)


def wants_exhaustive(searcher: Searcher, exhaustive: bool | None) -> bool:
    """``exhaustive`` if given, else whether the catalogue has at most EXHAUSTIVE_MAX_ITEMS."""
    return exhaustive if exhaustive is not None else searcher.n_items <= EXHAUSTIVE_MAX_ITEMS


def evaluate_version(searcher: Searcher, held_out: HeldOutUsers, role: str = "valid",
                     ks: tuple[int, ...] = (10, 50), beams: tuple[int, ...] = (50,),
                     exhaustive: bool | None = None, exhaustive_users: int | None = None) -> list[MetricRow]:
    """Every metric row of one evaluation, ready for `Store.record_metrics`.

    Parameters
    ----------
    exhaustive : compute the exhaustive reference and fidelity; None: when the catalogue has at
        most EXHAUSTIVE_MAX_ITEMS items.
    exhaustive_users : run the reference on the first N users only (None: all of ``held_out``);
        its rows then carry the note "N users".
    """
    rows: list[MetricRow] = []
    full, sample = None, len(held_out)
    if wants_exhaustive(searcher, exhaustive):
        sample = min(len(held_out), exhaustive_users or len(held_out))
        full = evaluate(searcher, held_out.subset(sample), ks, exhaustive=True, role=role)
        note = f"{sample} users" if sample < len(held_out) else None
        rows += [_row(v, note) for v in full.rows]
    kmax = max(ks)
    for beam in beams:
        kept, filtered, recall = evaluate_both(searcher, held_out, ks, beam, role=role)
        rows += [_row(v) for v in kept.rows + filtered.rows]
        rows.append(MetricRow(role, "users_per_second", kmax, kept.users_per_second, beam, False,
                              note=f"{kept.n_users} users"))
        if kept.mean_candidates is not None:
            rows.append(MetricRow(role, "candidates", kmax, kept.mean_candidates, beam, False))
        if full is not None:
            rows += [MetricRow(role, "fidelity", k, fidelity_ratio(float(recall[k][:sample].mean()),
                                                                   full.value("recall", k)), beam, False)
                     for k in sorted(set(ks))]
    return rows
