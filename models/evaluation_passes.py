"""A version's evaluation as independent search passes, put together into its metric rows.

The metrics a version gets when it is evaluated: for every beam, P/R/F/NDCG/Novelty @k with
seen items kept and filtered (one search serves both), users per second; and, where the
catalogue allows, the exhaustive (brute-force) scores of the same model and fidelity =
recall(beam) / recall(exhaustive) per k and beam.

The exhaustive reference scores every item for every user: O(items) per user, seconds per user
at 10^6 items on a CPU (benchmarks/README.md, scale). It runs by default only up to
``EXHAUSTIVE_MAX_ITEMS`` items; above, ask for it (``exhaustive=True``) and give it a sample of
users (``exhaustive_users``): fidelity then compares the beam's and the exhaustive recall on the
same sampled users.

One evaluation = `plan` (the `SearchPass` es: the reference, then one per beam) -> the searches
(`Searches`: `local_searches` in this process, a pool of Ray actors in `grove.flows.batch_retrieve`,
or one Prefect task per pass in `grove.flows.ops`) -> `pass_result` per pass (its rows; plain data) ->
`assemble` (fidelity, every row in order). Whoever searches, the rows are the same value for
value; only users/s differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from grove.indexstore.entities import MetricRow
from grove.indexstore.samples import HeldOutUsers
from grove.models import memory
from grove.models.evaluation import Lists, MetricValue, both_results, check_args, search_lists, wants_exhaustive
from grove.models.method import Searcher
from grove.models.metrics import fidelity as fidelity_ratio


@dataclass(frozen=True)
class SearchPass:
    """One search of an evaluation: the first ``users`` held-out users, at ``beam`` (None:
    the exhaustive reference), seen items kept and filtered from the same lists."""

    users: int
    beam: int | None


# (held_out, k, passes) -> one `Lists` per pass, in order: who runs the searches
Searches = Callable[[HeldOutUsers, int, Sequence[SearchPass]], list[Lists]]


@dataclass(frozen=True)
class PassResult:
    """The rows of one pass (kept and filtered metrics, users/s, candidates) and the mean
    recall@k of its kept lists on the first ``sample`` users, those the reference scores."""

    beam: int | None
    rows: tuple[MetricRow, ...]
    sample_recall: dict[int, float]


def plan(
    n_items: int,
    held_out: HeldOutUsers,
    ks: tuple[int, ...],
    beams: tuple[int, ...],
    exhaustive: bool | None = None,
    exhaustive_users: int | None = None,
) -> list[SearchPass]:
    """The passes of an evaluation (arguments checked): the reference first when ``exhaustive``
    (None: the catalogue's size, `grove.models.evaluation.wants_exhaustive`) says so, then each beam."""
    passes: list[SearchPass] = []
    if wants_exhaustive(n_items, exhaustive):
        sample = reference_users(held_out, exhaustive_users)
        check_args(held_out.subset(sample), ks, 1, 256)
        passes.append(SearchPass(sample, None))
    for beam in beams:
        check_args(held_out, ks, beam, 256)
        passes.append(SearchPass(len(held_out), int(beam)))
    if passes:  # every pass's kept and filtered (users, max k) int64 lists are held until assembled
        kmax = max(int(k) for k in ks)
        memory.require(
            sum(2 * p.users * kmax * 8 for p in passes),
            "cpu",
            f"the ranked lists of {len(passes)} evaluation pass(es) of {len(held_out):,} users at k = {kmax:,}",
        )
    return passes


def reference_users(held_out: HeldOutUsers, exhaustive_users: int | None) -> int:
    """How many (first) held-out users the exhaustive reference scores."""
    return min(len(held_out), exhaustive_users or len(held_out))


def local_searches(searcher: Searcher, batch_size: int = 256, device: str | torch.device | None = None) -> Searches:
    """The passes run one after the other by `search_lists` in this process."""

    def run(held_out: HeldOutUsers, k: int, passes: Sequence[SearchPass]) -> list[Lists]:
        return [search_lists(searcher, held_out.subset(p.users), k, p.beam, True, batch_size, device) for p in passes]

    return run


def pass_result(
    p: SearchPass, lists: Lists, held_out: HeldOutUsers, ks: tuple[int, ...], role: str, sample: int
) -> PassResult:
    """One pass's rows from its lists; the reference's carry the note "N users" when it saw
    fewer users than the beams."""
    ks = tuple(int(k) for k in ks)
    kmax = max(ks)
    kept, filtered, recall = both_results(lists, held_out.subset(p.users), ks, p.beam, role)
    note = f"{p.users} users" if p.beam is None and p.users < len(held_out) else None
    rows = [_row(v, note) for v in kept.rows + filtered.rows]
    rows.append(
        MetricRow(role, "users_per_second", kmax, kept.users_per_second, p.beam, False, f"{kept.n_users} users")
    )
    if p.beam is not None and kept.mean_candidates is not None:
        rows.append(MetricRow(role, "candidates", kmax, kept.mean_candidates, p.beam, False))
    return PassResult(p.beam, tuple(rows), {k: float(recall[k][:sample].mean()) for k in sorted(set(ks))})


def assemble(results: Sequence[PassResult], ks: tuple[int, ...]) -> list[MetricRow]:
    """Every row of the evaluation: the reference's (if any), then per beam its rows and (with a
    reference) fidelity = recall(beam) / recall(exhaustive) per k, on the reference's users."""
    reference = next((r for r in results if r.beam is None), None)
    full = {} if reference is None else {r.k: r.value for r in reference.rows if r.name == "recall" and not r.filtered}
    rows = list(reference.rows) if reference is not None else []
    for res in results:
        if res.beam is None:
            continue
        rows += res.rows
        if reference is not None:
            role = res.rows[0].role
            rows += [
                MetricRow(role, "fidelity", k, fidelity_ratio(res.sample_recall[k], full[k]), res.beam, False)
                for k in sorted(set(int(k) for k in ks))
            ]
    return rows


def evaluate_searches(
    searches: Searches,
    n_items: int,
    held_out: HeldOutUsers,
    role: str = "valid",
    ks: tuple[int, ...] = (10, 50),
    beams: tuple[int, ...] = (50,),
    exhaustive: bool | None = None,
    exhaustive_users: int | None = None,
) -> list[MetricRow]:
    """Every metric row of one evaluation with the searches run by ``searches`` (all passes
    handed over at once, so a pool of workers loads the version once for all of them)."""
    passes = plan(n_items, held_out, ks, beams, exhaustive, exhaustive_users)
    if not passes:
        return []
    ks = tuple(int(k) for k in ks)
    sample = reference_users(held_out, exhaustive_users)
    found = searches(held_out, max(ks), passes)
    return assemble([pass_result(p, lists, held_out, ks, role, sample) for p, lists in zip(passes, found)], ks)


def evaluate_version(
    searcher: Searcher,
    held_out: HeldOutUsers,
    role: str = "valid",
    ks: tuple[int, ...] = (10, 50),
    beams: tuple[int, ...] = (50,),
    exhaustive: bool | None = None,
    exhaustive_users: int | None = None,
) -> list[MetricRow]:
    """Every metric row of one evaluation in this process, ready for `Store.record_metrics`.

    Parameters
    ----------
    exhaustive : compute the exhaustive reference and fidelity; None: when the catalogue has at
        most EXHAUSTIVE_MAX_ITEMS items.
    exhaustive_users : run the reference on the first N users only (None: all of ``held_out``);
        its rows then carry the note "N users".
    """
    return evaluate_searches(
        local_searches(searcher), searcher.n_items, held_out, role, ks, beams, exhaustive, exhaustive_users
    )


def _row(v: MetricValue, note: str | None = None) -> MetricRow:
    return MetricRow(
        role=v.role, name=v.name, k=v.k, value=v.value, beam=v.beam, filtered=v.filtered, note=note or v.note
    )
