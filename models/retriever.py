"""`Retriever`: loads one index version from the store onto a device and answers top-k queries.

Lifecycle: ``Retriever.load(store, index, version=..., alias=...)`` reads the structure, config
and weights (hashes verified by the store) into memory and lets go of the store file, so a
DuckDB writer is never blocked by a serving process. ``retrieve`` then runs without the store.

Histories come in *time order* (oldest first), as dense item ids (``retrieve``) or as the
dataset's raw ids (``retrieve_raw``). Unknown ids are dropped and counted, never a crash.
An empty history is served from the prior: the model is queried with an all-padding input
(for TDM this is the tree's answer for a user with no behaviour: the popular branches it learnt).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from grove.indexstore.errors import GroveError
from grove.indexstore.item_ids import ItemIds
from grove.indexstore.samples import MAX_BEHAVIOURS, pad_histories
from grove.models import lifecycle
from grove.models.limits import check_histories, check_query
from grove.models.method import Searcher


@dataclass(frozen=True)
class RawResult:
    """Result of `Retriever.retrieve_raw`: raw ids (None where padded), scores, dropped ids."""

    items: list[list[str | None]]
    scores: np.ndarray
    unknown: int


class Retriever:
    """A loaded index version. Build with `Retriever.load`, not the constructor.

    version : the `VersionInfo`; searcher : its `Searcher`; item_ids : the dataset's raw <->
    dense item id mapper (`grove.indexstore.item_ids.ItemIds`)."""

    def __init__(self, version, searcher: Searcher, item_ids: ItemIds, load_seconds: float):
        self.version = version
        self.searcher = searcher
        self.item_ids = item_ids
        self.load_seconds = load_seconds
        self.n_items = len(item_ids)

    @property
    def item_raw(self) -> np.ndarray:
        """(n_items,) str raw id of every dense item."""
        return self.item_ids.raw

    @classmethod
    def load(
        cls,
        store,
        index: str,
        version: int | None = None,
        alias: str | None = None,
        device: str | None = "auto",
        precision: str | None = None,
        compile: str | None = None,
    ) -> Retriever:
        """Load ``index`` at an explicit version, an alias, or (neither) production / newest, to
        search on ``device`` in ``precision`` (`grove.models.precision`; default fp32), compiled
        when asked: ``compile`` 'level' (each level's scoring) or 'search' (the whole search, CUDA
        graphs on CUDA), TDM and JTM only (`grove.models.tree_method.TreeSearcher.compile`)."""
        start = time.perf_counter()
        info = store.resolve(index, version=version, alias=alias)
        loaded = lifecycle.load(store, info.id)
        searcher = lifecycle.searcher(loaded, device, precision, compile)
        return cls(loaded.info, searcher, store.item_ids(info.dataset), time.perf_counter() - start)

    @property
    def device(self) -> torch.device:
        return self.searcher.device

    # ---------------------------------------------------------------------------- queries
    def retrieve(self, histories, k: int, beam: int, exclude_seen: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items for a batch of users.

        Parameters
        ----------
        histories : list of time-ordered dense item id sequences (any length, may be empty),
            or a (B, L) int array padded with -1.
        k, beam : result size and beam width (both > 0).
        exclude_seen : drop items of the history from the result.

        Returns
        -------
        scores : (B, k) float32, best first, -inf where padded.
        items : (B, k) int64 dense item ids, -1 where padded.
        """
        check_query(k, beam, self.n_items)
        check_histories([len(h) for h in histories])
        rows = [np.asarray([i for i in h if i >= 0], dtype=np.int64) for h in histories]
        for h in rows:
            if h.size and (h.max() >= self.n_items):
                raise GroveError(f"item id {int(h.max())} is out of range [0, {self.n_items})")
        if not rows:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        padded = torch.from_numpy(pad_histories(rows, MAX_BEHAVIOURS).astype(np.int64)).to(self.device)
        extra = max((len(h) for h in rows), default=0) if exclude_seen else 0
        want = min(k + extra, self.n_items)
        with torch.inference_mode():
            found_scores, found_items = self.searcher.search(padded, want, beam)
        scores, items = found_scores.float().cpu().numpy(), found_items.cpu().numpy().astype(np.int64)
        if exclude_seen:
            scores, items = _drop_seen(scores, items, rows)
        return _fit(scores, items, k)

    def retrieve_raw(self, histories: list[list[str]], k: int, beam: int, exclude_seen: bool = False) -> RawResult:
        """Like `retrieve`, with the dataset's raw item ids in and out. Unknown raw ids are dropped
        (their count is returned and warned about)."""
        check_query(k, beam, self.n_items)
        check_histories([len(h) for h in histories])
        ids = [self.item_ids.dense(h) for h in histories]
        unknown = int(sum(int((row < 0).sum()) for row in ids))
        if unknown:
            warnings.warn(f"{unknown} unknown item id(s) in the histories were ignored", stacklevel=2)
        scores, items = self.retrieve([row[row >= 0] for row in ids], k, beam, exclude_seen)
        names = self.item_ids.raw_of(items)
        raw = [[str(n) if i >= 0 else None for n, i in zip(nrow, irow)] for nrow, irow in zip(names, items)]
        return RawResult(raw, scores, unknown)


def _drop_seen(scores: np.ndarray, items: np.ndarray, rows: list[np.ndarray]):
    """Mask items present in each row's history; keep order of the rest."""
    b, w = items.shape
    seen = np.zeros((b, w), dtype=bool)
    for i, h in enumerate(rows):  # histories are short (<= a few hundred): one isin per user
        if h.size:
            seen[i] = np.isin(items[i], h)
    keep = (~seen) & (items >= 0)
    order = np.argsort(~keep, axis=1, kind="stable")  # kept entries first, original order
    items = np.take_along_axis(np.where(keep, items, -1), order, axis=1)
    scores = np.take_along_axis(np.where(keep, scores, -np.inf), order, axis=1)
    return scores, items


def _fit(scores: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut or pad to exactly (B, k)."""
    b, w = items.shape
    if w >= k:
        return scores[:, :k].astype(np.float32), items[:, :k]
    pad_s = np.full((b, k - w), -np.inf, dtype=np.float32)
    pad_i = np.full((b, k - w), -1, dtype=np.int64)
    return np.concatenate([scores.astype(np.float32), pad_s], 1), np.concatenate([items, pad_i], 1)
