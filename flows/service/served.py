"""The served version: one immutable `ServedIndex` (a loaded `Retriever` and what /health
reports), and how a micro-batch of queries is answered on it (one raw-id lookup, one retrieve
per (beam, exclude_seen) group)."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from grove.indexstore.store import Store
from grove.models.limits import MAX_BATCH
from grove.models.retriever import Retriever


@dataclass(frozen=True, eq=False)
class ServedIndex:
    """One loaded version, immutable: retriever (with its raw-id mapper) + what /health reports."""

    retriever: Retriever
    metrics: list[dict]
    loaded_at: float

    @property
    def version(self) -> int:
        return int(self.retriever.version.id)


def load_served(
    url: str,
    index: str,
    version: int | None = None,
    alias: str | None = None,
    device: str = "auto",
    precision: str | None = None,
    compile: str | None = None,
) -> ServedIndex:
    """Load a version (explicit, or the one ``alias`` points to) with its metrics, searched in
    ``precision`` and compiled when asked (`grove.models.retriever.Retriever.load`)."""
    store = Store.open(url, check=False)
    retriever = Retriever.load(
        store, index, version=version, alias=alias, device=device, precision=precision, compile=compile
    )
    metrics = [_metric_dict(r) for r in store.metrics(retriever.version.id)]
    return ServedIndex(retriever, metrics, time.time())


def _metric_dict(r) -> dict:
    return {
        "role": r.role,
        "name": r.name,
        "k": r.k,
        "beam": r.beam,
        "filtered": bool(r.filtered),
        "value": float(r.value),
    }


# ------------------------------------------------------------------------------ batching
@dataclass(eq=False)
class Query:
    """One request in the queue. histories: list of raw-id lists (strings)."""

    histories: list[list[str]]
    k: int
    beam: int
    exclude_seen: bool
    future: Future = field(default_factory=Future)


@dataclass(frozen=True)
class Answer:
    version: int
    items: list[list[str]]
    scores: list[list[float]]
    unknown: int


def answer_batch(served: ServedIndex, batch: list[Query]) -> list[Answer]:
    """Serve several queries on one version: one id lookup, one retrieve per (beam, seen) group."""
    lengths = [len(h) for q in batch for h in q.histories]  # per history
    dense = served.retriever.item_ids.dense(x for q in batch for h in q.histories for x in h)  # (total ids,)
    ends = np.cumsum(lengths)
    rows = np.split(dense, ends[:-1]) if lengths else []  # one array per history
    per_query_rows, start = [], 0
    for q in batch:
        per_query_rows.append(rows[start : start + len(q.histories)])
        start += len(q.histories)
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(batch)
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, q in enumerate(batch):
        groups.setdefault((q.beam, q.exclude_seen), []).append(i)
    for (beam, seen), members in groups.items():
        k = max(batch[i].k for i in members)
        hist = [r[r >= 0].tolist() for i in members for r in per_query_rows[i]]
        scores, items = _retrieve_chunked(served.retriever, hist, k, beam, seen)
        at = 0
        for i in members:
            n = len(batch[i].histories)
            results[i] = (scores[at : at + n, : batch[i].k], items[at : at + n, : batch[i].k])
            at += n
    out = []
    for qrows, (scores, items) in zip(per_query_rows, results):
        unknown = int(sum(int((r < 0).sum()) for r in qrows))
        out.append(Answer(served.version, *_to_json_lists(served, scores, items), unknown))
    return out


def _retrieve_chunked(retriever: Retriever, hist: list, k: int, beam: int, seen: bool):
    """`Retriever.retrieve` in chunks of at most its MAX_BATCH histories -> (B, k) arrays."""
    parts = [
        retriever.retrieve(hist[lo : lo + MAX_BATCH], k, beam, exclude_seen=seen)
        for lo in range(0, len(hist), MAX_BATCH)
    ]
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _to_json_lists(served: ServedIndex, scores: np.ndarray, items: np.ndarray):
    """(B, k) arrays -> lists of raw ids and float scores, padding (-1 / -inf) trimmed."""
    valid = items >= 0  # (B, k); padding is always at the end of a row
    names = served.retriever.item_ids.raw_of(items)
    counts = valid.sum(axis=1).tolist()
    return (
        [row[:c] for row, c in zip(names.tolist(), counts)],
        [row[:c] for row, c in zip(scores.astype(float).tolist(), counts)],
    )
