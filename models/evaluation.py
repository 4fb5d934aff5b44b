"""Evaluate a `Searcher` on held-out users (docs/PROTOCOL.md §4-6).

One search per batch at ``max(ks)`` answers every cut-off: the metrics @k read the first k
columns of the same ranked list, so P/R/F/NDCG/Novelty at 10 and 50 cost one search.

Filtering seen items (TDM Table 2, "interacted items"): a searcher cannot be told what to leave
out, so for a batch we ask for ``max(ks) + max_u |S(u)|`` items (capped at n_items), drop the
items of S(u) (the user's whole first half, not only the 69 behaviours fed to the model) and keep
the first ``max(ks)`` of what is left, order preserved. A beam searcher whose beam is smaller
than the number asked for may return a padded list; then the filtered list is shorter and
precision counts the padding as misses. Pass a beam at least as large as that if it matters.

Timing covers the searcher's calls only (with a CUDA synchronise), not the metric arithmetic.

A version's evaluation (every beam, the exhaustive reference, fidelity) is assembled from
these searches in `grove.models.evaluation_passes`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from grove.indexstore.errors import InputError
from grove.indexstore.samples import HeldOutUsers
from grove.models.limits import check_evaluation
from grove.models.method import Searcher
from grove.models.metrics import METRIC_NAMES, in_sets, per_user_metrics
from grove.models.metrics import fidelity as fidelity_ratio
from grove.models.progress import Progress


@dataclass(frozen=True)
class MetricValue:
    """One metric row; the fields mirror the store's ``metrics`` table."""

    role: str  # 'valid' | 'test'
    name: str  # 'precision' | 'recall' | 'f1' | 'ndcg' | 'novelty' | 'fidelity'
    k: int
    value: float
    beam: int | None  # None for exhaustive search
    filtered: bool  # seen items removed from the list
    note: str | None = None


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one evaluation plus the search's speed.

    rows : every (name, k) metric as a `MetricValue`.
    users_per_second : held-out users answered per second of search time.
    mean_candidates : mean candidate items per user, when the searcher reports it (forests, DR).
    """

    rows: tuple[MetricValue, ...]
    role: str
    n_users: int
    beam: int | None
    filtered: bool
    search_seconds: float
    users_per_second: float
    mean_candidates: float | None = None

    def value(self, name: str, k: int) -> float:
        for row in self.rows:
            if row.name == name and row.k == k:
                return row.value
        raise KeyError(f"no metric {name}@{k} in this result")

    def as_dict(self) -> dict[str, float]:
        """``{"recall@10": 0.12, ...}``."""
        return {f"{r.name}@{r.k}": r.value for r in self.rows}

    def table(self) -> str:
        """A small text table: one line per k, one column per metric (percent)."""
        ks = sorted({r.k for r in self.rows})
        head = "k".rjust(5) + "".join(n.rjust(11) for n in METRIC_NAMES)
        lines = [head]
        for k in ks:
            vals = "".join(f"{100 * self.value(n, k):10.2f}%" for n in METRIC_NAMES)
            lines.append(str(k).rjust(5) + vals)
        how = "exhaustive" if self.beam is None else f"beam {self.beam}"
        lines.append(
            f"{self.n_users} {self.role} users, {how}, filtered={self.filtered}, {self.users_per_second:,.0f} users/s"
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class FidelityResult:
    """Beam search against the same model scoring every item: ratios[k] = recall ratio @k."""

    beam_result: EvalResult
    exhaustive_result: EvalResult
    ratios: dict[int, float]

    def rows(self) -> list[MetricValue]:
        r = self.beam_result
        return [MetricValue(r.role, "fidelity", k, v, r.beam, r.filtered) for k, v in sorted(self.ratios.items())]


def check_args(held_out: HeldOutUsers, ks, beam: int, batch_size: int) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) <= 0:
        raise InputError(f"every k must be a positive integer, got ks={ks}")
    if beam <= 0:
        raise InputError(f"beam must be a positive integer, got {beam}")
    if batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size}")
    if len(held_out) == 0:
        raise InputError("there are no held-out users to evaluate")
    check_evaluation(ks, (int(beam),))  # k <= MAX_K, beam <= MAX_BEAM: the lists are (users, max k)
    return ks


def drop_seen(items: np.ndarray, seen_offsets: np.ndarray, seen_items: np.ndarray, k: int) -> np.ndarray:
    """Remove each user's seen items from a ranked list, keeping order; first k kept, -1 padded.

    items : (B, m) int -- ranked lists, -1 padded.  seen_offsets (B+1,), seen_items : CSR of S(u).
    Returns (B, k) int64.
    """
    items = np.asarray(items, dtype=np.int64)
    b, m = items.shape
    keep = (items >= 0) & ~in_sets(items, seen_offsets, seen_items)  # (B, m)
    cols = np.arange(m)[None, :]
    order = np.argsort(np.where(keep, cols, m + cols), axis=1, kind="stable")  # kept first, in order
    out = np.take_along_axis(np.where(keep, items, -1), order, axis=1)[:, :k]
    if out.shape[1] < k:
        out = np.concatenate([out, np.full((b, k - out.shape[1]), -1, dtype=np.int64)], axis=1)
    return out


def _fix_width(items: np.ndarray, k: int) -> np.ndarray:
    """(B, m) -> (B, k): cut or pad with -1 (a searcher should already return k columns)."""
    if items.shape[1] >= k:
        return items[:, :k]
    pad = np.full((items.shape[0], k - items.shape[1]), -1, dtype=np.int64)
    return np.concatenate([items, pad], axis=1)


class Lists(NamedTuple):
    """What one search over held-out users gives (`search_lists`, `search_chunk`).

    kept : (U, k) int64 ranked lists as found, -1 padded.
    filtered : (U, k) int64 with each user's seen items removed, or None when not asked for.
    seconds : time spent inside the searcher.
    mean_candidates : user-weighted mean of ``searcher.last_candidates()``, or None.
    """

    kept: np.ndarray
    filtered: np.ndarray | None
    seconds: float
    mean_candidates: float | None


def search_chunk(
    searcher: Searcher,
    held_out: HeldOutUsers,
    lo: int,
    hi: int,
    k: int,
    beam: int | None,
    filtered: bool = True,
    device: str | torch.device | None = None,
) -> Lists:
    """One batch of `search_lists`: the held-out users ``[lo, hi)`` in ONE search call; lists
    (hi - lo, k). A distributed evaluation runs the same batches through this function on its
    workers (`grove.flows.batch_retrieve`), so its lists are those of `search_lists`, bit for bit."""
    dev = torch.device(device) if device is not None else searcher.device
    offs = np.asarray(held_out.seen_offsets[lo : hi + 1], dtype=np.int64)  # (b+1,)
    want = k
    if filtered:
        want = int(min(k + np.diff(offs).max(initial=0), max(searcher.n_items, k)))
    batch = torch.as_tensor(np.asarray(held_out.histories[lo:hi]), dtype=torch.int64).to(dev)  # (b, 69)
    start = time.perf_counter()
    if beam is None:
        _, found = searcher.exhaustive(batch, want)
    else:
        _, found = searcher.search(batch, want, beam)
    if found.is_cuda:
        torch.cuda.synchronize(found.device)
    seconds = time.perf_counter() - start
    lists = found.detach().cpu().numpy().astype(np.int64)  # (b, want)
    out = None
    if filtered:
        out = drop_seen(lists, offs - offs[0], held_out.seen_items[offs[0] : offs[-1]], k)
    return Lists(_fix_width(lists, k), out, seconds, searcher.last_candidates())


class ListsBuilder:
    """The lists of every user, put together from batches (`search_chunk` results) in any order;
    the candidates' mean is weighted by users, summed in the order of ``add`` calls."""

    def __init__(self, n_users: int, k: int, filtered: bool):
        self.kept = np.full((n_users, k), -1, dtype=np.int64)
        self.filtered = np.full((n_users, k), -1, dtype=np.int64) if filtered else None
        self.seconds, self._cand_sum, self._cand_users = 0.0, 0.0, 0

    def add(self, lo: int, part: Lists) -> None:
        hi = lo + part.kept.shape[0]
        self.kept[lo:hi] = part.kept
        if self.filtered is not None and part.filtered is not None:
            self.filtered[lo:hi] = part.filtered
        self.seconds += part.seconds
        if part.mean_candidates is not None:
            self._cand_sum += part.mean_candidates * (hi - lo)
            self._cand_users += hi - lo

    def result(self, seconds: float | None = None) -> Lists:
        """The lists; ``seconds`` replaces the summed searcher time (a pool of workers)."""
        cand = self._cand_sum / self._cand_users if self._cand_users else None
        return Lists(self.kept, self.filtered, self.seconds if seconds is None else seconds, cand)


def search_lists(
    searcher: Searcher,
    held_out: HeldOutUsers,
    k: int,
    beam: int | None,
    filtered: bool = True,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    desc: str | None = None,
) -> Lists:
    """Run the searcher over every held-out user in batches, one search per batch (`search_chunk`).

    With ``filtered`` each batch asks for ``k + max |S(u)|`` items (capped at n_items), so the
    same ranked list gives both the list as found (its first k) and the list with each user's
    seen items removed (see the module docstring).

    Parameters
    ----------
    beam : int, or None for the searcher's exhaustive mode.
    device : where the histories go; default the searcher's device.
    desc : the progress line's label (default: "evaluate beam B" / "evaluate exhaustive").

    Returns
    -------
    `Lists` (kept (U, k), filtered (U, k) or None, seconds, mean_candidates).
    """
    n_users = len(held_out)
    lists = ListsBuilder(n_users, k, filtered)
    label = desc or ("evaluate exhaustive" if beam is None else f"evaluate beam {beam}")
    with Progress(label, total=n_users, unit="user") as progress:
        for lo in range(0, n_users, batch_size):
            hi = min(lo + batch_size, n_users)
            lists.add(lo, search_chunk(searcher, held_out, lo, hi, k, beam, filtered, device))
            progress.update(hi - lo)
    return lists.result()


def retrieve_all(
    searcher: Searcher,
    held_out: HeldOutUsers,
    k: int,
    beam: int | None,
    filter_seen: bool = False,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, float, float | None]:
    """(items (U, k), seconds, mean_candidates) of `search_lists`: the lists with seen items
    removed when ``filter_seen``, else as found (then each batch asks for k items only)."""
    kept, filtered, seconds, cand = search_lists(searcher, held_out, k, beam, filter_seen, batch_size, device)
    return (kept if filtered is None else filtered), seconds, cand


def recall_of(items: np.ndarray, held_out: HeldOutUsers, k: int) -> float:
    """Mean Recall@k of ranked items (U, >= k), seen items kept (for curves and benchmarks)."""
    per_user = per_user_metrics(
        np.asarray(items)[:, :k],
        k,
        held_out.truth_offsets,
        held_out.truth_items,
        held_out.seen_offsets,
        held_out.seen_items,
    )
    return float(np.mean(per_user["recall"]))


def metric_rows(
    items: np.ndarray, held_out: HeldOutUsers, ks, role: str, beam: int | None, filtered: bool
) -> tuple[list[MetricValue], dict[int, np.ndarray]]:
    """The metric rows of ranked lists ``items`` (U, >= max(ks)), and the per-user recall
    {k: (U,)} (for fidelity on a sample of users)."""
    rows, recall = [], {}
    for k in sorted(set(ks)):
        per_user = per_user_metrics(
            items, k, held_out.truth_offsets, held_out.truth_items, held_out.seen_offsets, held_out.seen_items
        )
        rows += [
            MetricValue(role, name, k, float(per_user[name].mean()), beam, bool(filtered)) for name in METRIC_NAMES
        ]
        recall[k] = per_user["recall"]
    return rows, recall


def evaluate(
    searcher: Searcher,
    held_out: HeldOutUsers,
    ks=(10, 50),
    beam: int = 50,
    filter_seen: bool = False,
    batch_size: int = 256,
    exhaustive: bool = False,
    role: str = "test",
    device: str | torch.device | None = None,
) -> EvalResult:
    """Precision / recall / F / NDCG / novelty @ every k in ``ks``, averaged over users.

    Parameters
    ----------
    searcher : a loaded `Searcher` (any method, baselines included).
    held_out : the valid or test users of a split.
    ks : cut-offs; one search at max(ks) serves all of them.
    beam : beam width of the search (ignored, and stored as None, when ``exhaustive``).
    filter_seen : drop the user's seen items S(u) before cutting at k (see module docstring).
    exhaustive : use the searcher's brute-force mode instead of beam search.
    role : 'valid' or 'test', written on every row.
    device : where histories are sent; default the searcher's device.

    Returns
    -------
    EvalResult with len(ks) * 5 rows.
    """
    ks = check_args(held_out, ks, 1 if exhaustive else beam, batch_size)
    used_beam = None if exhaustive else int(beam)
    items, seconds, cand = retrieve_all(searcher, held_out, max(ks), used_beam, filter_seen, batch_size, device)
    rows, _ = metric_rows(items, held_out, ks, role, used_beam, filter_seen)
    n = len(held_out)
    return EvalResult(tuple(rows), role, n, used_beam, bool(filter_seen), seconds, n / max(seconds, 1e-9), cand)


def evaluate_both(
    searcher: Searcher,
    held_out: HeldOutUsers,
    ks=(10, 50),
    beam: int | None = 50,
    batch_size: int = 256,
    role: str = "test",
    device: str | torch.device | None = None,
) -> tuple[EvalResult, EvalResult, dict[int, np.ndarray]]:
    """`evaluate` with seen items kept and filtered from ONE search per batch (beam None:
    exhaustive). Returns (kept, filtered, per-user recall {k: (U,)} of the kept lists).
    The speed of both results is that of the one search (at k + the most seen items)."""
    ks = check_args(held_out, ks, 1 if beam is None else beam, batch_size)
    return both_results(
        search_lists(searcher, held_out, max(ks), beam, True, batch_size, device), held_out, ks, beam, role
    )


def both_results(
    lists: Lists, held_out: HeldOutUsers, ks: tuple[int, ...], beam: int | None, role: str
) -> tuple[EvalResult, EvalResult, dict[int, np.ndarray]]:
    """`evaluate_both`'s results from the lists of its one search."""
    kept, filtered, seconds, cand = lists
    assert filtered is not None  # asked for
    n, speed = len(held_out), len(held_out) / max(seconds, 1e-9)
    kept_rows, recall = metric_rows(kept, held_out, ks, role, beam, False)
    filtered_rows, _ = metric_rows(filtered, held_out, ks, role, beam, True)
    return (
        EvalResult(tuple(kept_rows), role, n, beam, False, seconds, speed, cand),
        EvalResult(tuple(filtered_rows), role, n, beam, True, seconds, speed, cand),
        recall,
    )


def fidelity(
    searcher: Searcher,
    held_out: HeldOutUsers,
    ks=(10, 50),
    beam: int = 50,
    filter_seen: bool = False,
    batch_size: int = 256,
    role: str = "test",
    device: str | torch.device | None = None,
) -> FidelityResult:
    """Recall of beam search divided by recall of the same model scoring every item, per k.

    Runs `evaluate` twice (beam, then exhaustive) with the same arguments.
    """
    common = dict(ks=ks, filter_seen=filter_seen, batch_size=batch_size, role=role, device=device)
    beam_res = evaluate(searcher, held_out, beam=beam, **common)
    full_res = evaluate(searcher, held_out, beam=beam, exhaustive=True, **common)
    ratios = {
        k: fidelity_ratio(beam_res.value("recall", k), full_res.value("recall", k))
        for k in sorted(set(int(k) for k in ks))
    }
    return FidelityResult(beam_res, full_res, ratios)


# ------------------------------------------------------------------ a version's evaluation
EXHAUSTIVE_MAX_ITEMS = 100_000


def wants_exhaustive(n_items: int, exhaustive: bool | None) -> bool:
    """``exhaustive`` if given, else whether the catalogue has at most EXHAUSTIVE_MAX_ITEMS."""
    return exhaustive if exhaustive is not None else n_items <= EXHAUSTIVE_MAX_ITEMS
