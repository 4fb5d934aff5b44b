"""Batch retrieval: the searcher of a job over many users, loaded once per process.

`grove retrieve --users FILE | --split NAME` and a distributed `grove eval` hand chunks of users
to `BatchSearcher` objects, in this process or one per Ray actor (`grove.flows.batch_retrieve`). A
`SearcherSpec` is what a process needs to load the version itself: a store URL it can read,
the index and an explicit version id (an alias is resolved once, by the driver, so that an alias
moved during the job cannot split it between two versions).

Two kinds of chunk, one loaded version:

* `BatchSearcher.retrieve`: histories of raw item ids (CSR, oldest first, as `Retriever.retrieve_raw`
  takes them) -> `TopK`, fixed shape ``(B, k)`` best first, padded -inf / -1 / "";
  `TopK.rows` flattens it to (user, rank, item, score) rows without the padding;
* `BatchSearcher.lists`: a batch of held-out users of an evaluation
  (`grove.models.evaluation.search_chunk`), the same lists as the in-process evaluation.

A user's result depends on the chunk it is searched in only through the number of items a
search asks for (``k`` + the longest history of the chunk with ``exclude_seen``); the jobs cut
the users into the same chunks wherever they run, so a Ray run writes the in-process run's rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from grove.indexstore.errors import GroveError
from grove.indexstore.samples import HeldOutUsers
from grove.indexstore.store import Store
from grove.models.evaluation import Lists, search_chunk
from grove.models.limits import MAX_BATCH, check_query
from grove.models.retriever import Retriever


@dataclass(frozen=True)
class SearcherSpec:
    """How a process loads the version (picklable: sent to every Ray actor).

    url : store URL, readable where the searcher runs (made absolute by the driver).
    index, version : the index and its explicit version id.
    device : 'auto', 'cpu', 'cuda' (a Ray actor given a GPU sees it as 'cuda').
    threads : torch threads of the process (None: leave torch's setting).
    """

    url: str
    index: str
    version: int
    device: str = "auto"
    threads: int | None = None


@dataclass(frozen=True)
class Query:
    """The query-time knobs of a retrieval job: items per user, beam, drop the history's items."""

    k: int = 10
    beam: int = 50
    exclude_seen: bool = False

    def check(self, n_items: int, batch_size: int) -> None:
        """k, beam (`grove.models.limits.check_query`) and the users per search call."""
        check_query(self.k, self.beam, n_items)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 0 < batch_size <= MAX_BATCH:
            raise GroveError(f"batch size must be an integer in [1, {MAX_BATCH:,}], got {batch_size!r}")


@dataclass(frozen=True)
class TopK:
    """One chunk's results, fixed shape: scores (B, k) float32, items (B, k) int64 dense ids,
    raw (B, k) str raw ids -- best first, padded -inf / -1 / ""; unknown: raw ids of the
    histories that the dataset does not know (dropped, counted)."""

    scores: np.ndarray
    items: np.ndarray
    raw: np.ndarray
    unknown: int

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(user (n,) int64 row of the chunk, rank (n,) int32 from 1, item (n,) str raw id,
        score (n,) float32) of every found item, users in chunk order, best first."""
        found = self.items >= 0  # padding is at the end of each row
        user, col = np.nonzero(found)
        return user.astype(np.int64), (col + 1).astype(np.int32), self.raw[found], self.scores[found]


class BatchSearcher:
    """A version loaded once (`Retriever.load`), answering chunk after chunk."""

    def __init__(self, spec: SearcherSpec):
        if spec.threads is not None:
            torch.set_num_threads(spec.threads)
        start = time.perf_counter()
        store = Store.open(spec.url, check=False)
        self.retriever = Retriever.load(store, spec.index, version=spec.version, device=spec.device)
        self.load_seconds = time.perf_counter() - start
        self.spec = spec

    @property
    def n_items(self) -> int:
        return self.retriever.n_items

    def retrieve(self, offsets: np.ndarray, raw: np.ndarray, query: Query) -> TopK:
        """Top-k of a chunk of B users.

        Parameters
        ----------
        offsets : (B+1,) int64 -- user u's history is ``raw[offsets[u]:offsets[u+1]]``.
        raw : (nnz,) raw item ids (str or int), oldest first within each history.
        query : k, beam, exclude_seen.
        """
        ids = self.retriever.item_ids.dense(raw) if len(raw) else np.zeros(0, dtype=np.int64)  # (nnz,), -1 unknown
        cuts = np.asarray(offsets[1:-1], dtype=np.int64)
        histories = [row[row >= 0] for row in np.split(ids, cuts)] if len(offsets) > 1 else []
        scores, items = self.retriever.retrieve(histories, query.k, query.beam, query.exclude_seen)
        return TopK(scores, items, self.retriever.item_ids.raw_of(items), int((ids < 0).sum()))

    def lists(self, held_out: HeldOutUsers, lo: int, hi: int, k: int, beam: int | None) -> Lists:
        """The evaluation lists of held-out users ``[lo, hi)`` (`grove.models.evaluation.search_chunk`)."""
        return search_chunk(self.retriever.searcher, held_out, lo, hi, k, beam, True)
