"""Top-k retrieval metrics of docs/PROTOCOL.md, vectorised over users.

For a user u with retrieved list P(u) (the first k columns of a ``(U, >=k)`` array, best first,
``-1`` padded), ground truth G(u) and behaviour set S(u) (both CSR pairs ``offsets (U+1,)``,
``items (nnz,)``):

* Precision@k = |P∩G| / k  (padding counts as a miss: the list is judged at its nominal size)
* Recall@k    = |P∩G| / |G|
* F@k         = 2PR / (P+R), 0 when P = R = 0
* NDCG@k      = DCG / IDCG with binary relevance, DCG = Σ_j hit_j / log2(j+2) over ranks
  j = 0..k-1 and IDCG the DCG of min(|G|, k) hits at the top (so a perfect list scores 1)
* NDCG_returned@k = DCG / the DCG of the *returned* list in its ideal order, |P∩G| hits at the
  top (RecForest, appendix D: "ranking all the returned items according to relevance scores in
  a descending order"), 0 without a hit. It judges only the order of what was returned, not
  how much of G it holds: >= NDCG, equal when min(|G|, k) hits are returned. RecForest's
  Table 6 reports this one; grove reports both, under these two names, and never mixes them.
* Novelty@k   = |P \\ S| / k

Every metric is computed per user and then averaged over users without weights (docs/PROTOCOL.md
§5). F is therefore the mean of the per-user F values, not 2·mean(P)·mean(R)/(…): the TDM
paper's table (P 11.87%, R 8.71%, F 7.96%) is only consistent with the per-user mean.

Choices where the papers are silent:
* An item repeated within one user's list counts once (its first occurrence); later copies are
  neither hits nor novel. Searchers should not repeat items, but forests' unions could.
* A user with an empty G (cannot happen under the protocol: >= 10 positives, half held out)
  gets Recall = NDCG = 0.

Set membership is sorting-based: a (user, item) pair is encoded as the int64 key
``user * width + item`` and looked up with `np.isin` against the keys of the CSR set.
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ("precision", "recall", "f1", "ndcg", "ndcg_returned", "novelty")


def _row_ids(offsets: np.ndarray) -> np.ndarray:
    """CSR offsets (U+1,) -> (nnz,) int64 row id of every entry."""
    counts = np.diff(np.asarray(offsets, dtype=np.int64)).astype(np.int64)
    return np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)


def in_sets(retrieved: np.ndarray, offsets: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Whether each retrieved item lies in its user's CSR set.

    Parameters
    ----------
    retrieved : (U, k) int -- item ids, ``-1`` (or any negative) for padding.
    offsets : (U+1,) int, items : (nnz,) int -- the CSR sets, row u is user u's set.

    Returns
    -------
    (U, k) bool -- False at padding.
    """
    retrieved = np.asarray(retrieved, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    n_users = retrieved.shape[0]
    if np.asarray(offsets).shape[0] != n_users + 1:
        raise ValueError(
            f"offsets has {np.asarray(offsets).shape[0]} entries for {n_users} users (expected {n_users + 1})"
        )
    width = int(max(retrieved.max(initial=-1), items.max(initial=-1))) + 2
    valid = retrieved >= 0
    rows = np.arange(n_users, dtype=np.int64)[:, None]
    keys = rows * width + np.where(valid, retrieved, width - 1)  # width-1 never occurs in sets
    set_keys = _row_ids(offsets) * width + items
    return np.isin(keys, set_keys) & valid


def first_occurrence(retrieved: np.ndarray) -> np.ndarray:
    """(U, k) bool: True where the entry is a real item seen for the first time in its row."""
    retrieved = np.asarray(retrieved, dtype=np.int64)
    if retrieved.shape[1] == 0:
        return np.zeros(retrieved.shape, dtype=bool)
    order = np.argsort(retrieved, axis=1, kind="stable")  # equal items keep rank order
    srt = np.take_along_axis(retrieved, order, axis=1)
    dup_sorted = np.zeros(srt.shape, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return (retrieved >= 0) & ~dup


def _discounts(k: int) -> np.ndarray:
    """(k,) float64: 1 / log2(rank + 2) for ranks 0..k-1."""
    return 1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0)


def per_user_metrics(
    retrieved: np.ndarray,
    k: int,
    truth_offsets: np.ndarray,
    truth_items: np.ndarray,
    seen_offsets: np.ndarray,
    seen_items: np.ndarray,
) -> dict[str, np.ndarray]:
    """Precision, recall, F, NDCG and novelty @k of every user.

    Parameters
    ----------
    retrieved : (U, m) int, m >= k -- best first, -1 padded; only the first k columns count.
    k : int -- the cut-off (the denominator of precision and novelty).
    truth_offsets, truth_items : CSR of G(u).  seen_offsets, seen_items : CSR of S(u).

    Returns
    -------
    dict name -> (U,) float64 for every name in `METRIC_NAMES`.
    """
    retrieved = np.asarray(retrieved, dtype=np.int64)
    if k <= 0 or retrieved.ndim != 2 or retrieved.shape[1] < k:
        raise ValueError(f"need a (users, >= k) array and k > 0, got shape {retrieved.shape} and k={k}")
    top = retrieved[:, :k]  # (U, k)
    fresh = first_occurrence(top)  # (U, k): real, not a repeat
    hits = in_sets(top, truth_offsets, truth_items) & fresh  # (U, k)
    n_hits = hits.sum(axis=1).astype(np.float64)
    n_truth = np.diff(np.asarray(truth_offsets, dtype=np.int64)).astype(np.float64)
    precision = n_hits / k
    recall = np.divide(n_hits, n_truth, out=np.zeros_like(n_hits), where=n_truth > 0)
    denom = precision + recall
    f1 = np.divide(2.0 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    disc = _discounts(k)
    dcg = hits.astype(np.float64) @ disc
    top_dcg = np.concatenate([[0.0], np.cumsum(disc)])  # (k+1,): DCG of j hits on top
    ideal = top_dcg[np.minimum(n_truth, k).astype(np.int64)]
    ndcg = np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)
    returned_ideal = top_dcg[n_hits.astype(np.int64)]  # the returned list's own hits on top
    ndcg_returned = np.divide(dcg, returned_ideal, out=np.zeros_like(dcg), where=returned_ideal > 0)
    novel = fresh & ~in_sets(top, seen_offsets, seen_items)
    novelty = novel.sum(axis=1) / float(k)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "ndcg": ndcg,
        "ndcg_returned": ndcg_returned,
        "novelty": novelty,
    }


def ranking_metrics(
    retrieved: np.ndarray,
    k: int,
    truth_offsets: np.ndarray,
    truth_items: np.ndarray,
    seen_offsets: np.ndarray,
    seen_items: np.ndarray,
) -> dict[str, float]:
    """The user-averaged metrics @k (see `per_user_metrics` for the arguments)."""
    per_user = per_user_metrics(retrieved, k, truth_offsets, truth_items, seen_offsets, seen_items)
    return {name: float(v.mean()) if v.size else 0.0 for name, v in per_user.items()}


def fidelity(recall_beam: float, recall_exhaustive: float) -> float:
    """recall of beam search / recall of the same model scoring every item (docs/PROTOCOL.md §6).

    Returns 1.0 when both recalls are 0 (beam search lost nothing) and NaN when only the
    exhaustive recall is 0 (the ratio is undefined; a beam list can hit by luck what the model's
    true top-k misses).
    """
    if recall_exhaustive <= 0.0:
        return 1.0 if recall_beam <= 0.0 else float("nan")
    return float(recall_beam) / float(recall_exhaustive)
