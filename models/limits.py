"""The documented bounds of a query and of a build, checked before any work.

* k (items per list) <= the index's items and <= ``MAX_K``; an evaluation's cut-offs <= ``MAX_K``
  (they may exceed a small catalogue: its lists are padded);
* beam <= ``MAX_BEAM`` (the frontier a search keeps per level);
* a history of raw ids: <= ``MAX_HISTORY`` ids (the models read the newest 69; longer lists only
  cost lookups and, with ``exclude_seen``, filtering);
* a batch: <= ``MAX_BATCH`` histories per call (the service slices larger requests);
* a tree's arity <= the catalogue's items (more children than items are empty).

Memory that a build or search would need is checked separately (`grove.models.memory`).
"""

from __future__ import annotations

from grove.indexstore.errors import GroveError

MAX_K = 10_000
MAX_BEAM = 65_536
MAX_HISTORY = 100_000
MAX_BATCH = 4096


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise GroveError(f"{what} must be a positive integer, got {value!r}")
    return value


def check_query(k, beam, n_items: int) -> None:
    """k in [1, min(n_items, MAX_K)], beam in [1, MAX_BEAM]; GroveError naming the value."""
    _positive_int(k, "k")
    _positive_int(beam, "beam")
    if k > min(n_items, MAX_K):
        raise GroveError(
            f"k = {k:,} is more than the index's {n_items:,} items"
            if k > n_items
            else f"k = {k:,} is above the maximum of {MAX_K:,} items per list"
        )
    check_beam(beam)


def check_beam(beam) -> None:
    """beam in [1, MAX_BEAM]; GroveError naming the value."""
    _positive_int(beam, "beam")
    if beam > MAX_BEAM:
        raise GroveError(f"beam = {beam:,} is above the maximum of {MAX_BEAM:,}")


def check_evaluation(ks, beams) -> None:
    """An evaluation's cut-offs and beams: every k in [1, MAX_K], every beam in [1, MAX_BEAM]
    (None, the exhaustive reference, has no beam). Its lists are (users, max k) per pass: an
    unbounded k would allocate them before the first search."""
    if not ks:
        raise GroveError("an evaluation needs at least one k")
    for k in ks:
        _positive_int(k, "k")
        if k > MAX_K:
            raise GroveError(f"k = {k:,} is above the maximum of {MAX_K:,} items per list")
    for beam in beams:
        if beam is not None:
            check_beam(beam)


def check_histories(lengths: list[int]) -> None:
    """At most MAX_BATCH histories of at most MAX_HISTORY ids each."""
    if len(lengths) > MAX_BATCH:
        raise GroveError(f"a batch holds at most {MAX_BATCH:,} histories, got {len(lengths):,}")
    longest = max(lengths, default=0)
    if longest > MAX_HISTORY:
        raise GroveError(f"a history holds at most {MAX_HISTORY:,} item ids, got {longest:,}")


def check_arity(arity: int, n_items: int) -> None:
    """A tree's arity may not exceed the catalogue (2 at least)."""
    if arity > max(2, n_items):
        raise GroveError(f"arity = {arity:,} is more than the dataset's {n_items:,} items")
