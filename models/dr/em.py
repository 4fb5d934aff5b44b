"""Deep Retrieval's EM path learning (paper §3.1-3.2, appendix Algorithm 2).

E-step (`estep_scores`): for every training sample (x_i, y_i) a beam search of width S gives the
top-S paths c and p(c|x_i); the scores s[v, c] = sum_{i: y_i = v} p(c|x_i) are accumulated
sparsely, batch by batch, as (item, path) keys -> summed probability (never a dense
(items x K^D) table). Each item keeps its best ``pool`` paths as candidates.

M-step (`mstep`): Algorithm 2, coordinate descent on the penalised objective with
f(|c|) = |c|^4 / 4. For item v and slot j the penalised score of a candidate c is

    log(s[v, c] + sum) - alpha * (f(|c| + 1) - f(|c|)),   sum = s of the slots chosen before j,

as written in Algorithm 2 (the N_v factor of Eq. 8 is not applied there, and we follow the
algorithm). Items whose candidates are fewer than J also get their previous paths as candidates
(score 0), so every item keeps J distinct paths; an item with no training sample therefore stays
on the least crowded of its previous paths.

Sequential dependence: an item's choice changes the path sizes the next item sees, so the items
are visited one at a time (a seeded random order per iteration, so low ids get no advantage); the
work per item is a few numpy operations over its <= pool candidates: O(iters * V * J * S).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from grove.indexstore.errors import GroveError
from grove.indexstore.samples import TrainingSamples
from grove.indexstore.structures import PathCodes
from grove.models.distributed import gather, mine, world
from grove.models.dr.network import DRNet
from grove.models.dr.search import beam_search, path_ids_of
from grove.models.progress import Progress

_REDUCE_EVERY = 1 << 22  # pending (key, prob) pairs before a merge, bounds E-step memory


@dataclass(frozen=True, eq=False)
class CandidateScores:
    """Per-item candidate paths, CSR, best first within an item.

    offsets : (n_items+1,) int64; path_ids : (nnz,) int64; scores : (nnz,) float64 s[v, c].
    """

    offsets: np.ndarray
    path_ids: np.ndarray
    scores: np.ndarray

    def row(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[v], self.offsets[v + 1]
        return self.path_ids[lo:hi], self.scores[lo:hi]


def _merge(keys: list[np.ndarray], vals: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sum values of equal keys: concatenated chunks -> (sorted distinct keys, sums)."""
    k, v = np.concatenate(keys), np.concatenate(vals)
    uniq, inv = np.unique(k, return_inverse=True)
    return uniq, np.bincount(inv, weights=v, minlength=uniq.shape[0])


@torch.no_grad()
def estep_scores(
    net: DRNet, samples: TrainingSamples, n_items: int, beam: int, pool: int, batch_size: int, device: torch.device
) -> CandidateScores:
    """Accumulate s[v, c] over training samples with a width-``beam`` search per sample.

    Parameters
    ----------
    samples : the training windows (histories) and targets y_i.
    beam : S, paths per sample; pool : candidate paths kept per item (best first).

    Returns
    -------
    CandidateScores over ``n_items`` items (items without samples have no candidates).

    Among data-parallel workers each searches every N-th batch (`grove.models.distributed.mine`);
    their summed (item, path) tables are gathered, so every worker returns the same scores.
    """
    st = net.structure
    n_space = st.arity**st.depth
    if n_items * n_space >= 2**62:
        raise GroveError(f"n_items * K^D = {n_items} * {n_space} is too large for 64-bit path keys")
    net.eval()
    keys, vals, pending = [], [], 0
    n, workers = len(samples), world()[1]
    with Progress("dr e-step", total=-(-n // workers), unit="sample") as prog:  # rank 0's share
        for i, lo in enumerate(range(0, n, batch_size)):
            if not mine(i):
                continue
            hist = torch.tensor(samples.take(slice(lo, lo + batch_size)), dtype=torch.long, device=device)
            paths, logp = beam_search(st, net.encode(hist), beam)  # (b, S, D), (b, S)
            ok = torch.isfinite(logp)
            pid = path_ids_of(paths, st.arity)  # (b, S)
            tgt = torch.tensor(samples.targets[lo : lo + batch_size], dtype=torch.long, device=device)
            key = tgt[:, None] * n_space + pid
            keys.append(key[ok].cpu().numpy())
            vals.append(logp[ok].exp().double().cpu().numpy())
            pending += keys[-1].shape[0]
            if pending > _REDUCE_EVERY:  # fold the pending chunks into one sorted table
                k, v = _merge(keys, vals)
                keys, vals, pending = [k], [v], k.shape[0]
            prog.update(hist.shape[0])
    key, val = _merge(keys, vals) if keys else (np.zeros(0, np.int64), np.zeros(0))
    if workers > 1:  # every worker's table, summed again
        key, val = _merge([gather(torch.from_numpy(key)).numpy()], [gather(torch.from_numpy(val)).numpy()])
    if key.shape[0] == 0:
        return CandidateScores(np.zeros(n_items + 1, np.int64), np.zeros(0, np.int64), np.zeros(0))
    return _top_per_item(key // n_space, key % n_space, val, n_items, pool)


def _top_per_item(item: np.ndarray, pid: np.ndarray, val: np.ndarray, n_items: int, pool: int) -> CandidateScores:
    """Keep the ``pool`` best paths of every item, best first, as CSR."""
    order = np.lexsort((-val, item))
    item, pid, val = item[order], pid[order], val[order]
    counts = np.bincount(item, minlength=n_items)
    first = np.concatenate([[0], np.cumsum(counts)])[:-1]
    rank = np.arange(item.shape[0]) - first[item]
    keep = rank < pool
    counts = np.bincount(item[keep], minlength=n_items)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return CandidateScores(offsets, pid[keep].astype(np.int64), val[keep])


@dataclass(frozen=True)
class PoolCoverage:
    """How many paths the E-step offers the M-step: ``items`` with at least one candidate,
    ``paths`` distinct paths over all their pools, ``n_paths`` = J."""

    items: int
    paths: int
    n_paths: int

    @property
    def least_top_path(self) -> int:
        """No assignment can do better: the items' J slots fill at most ``paths`` paths, so
        some path holds at least ceil(items * J / paths) of them (pigeonhole)."""
        return -(-self.items * self.n_paths // max(self.paths, 1)) if self.items else 0


# `pool_warning` fires when least_top_path exceeds both this share of the corpus and this many
# items (small corpora cluster into a few paths by design: that is not crowding)
CROWDED_SHARE, CROWDED_MIN = 0.01, 50


def pool_coverage(cands: CandidateScores, n_paths: int) -> PoolCoverage:
    return PoolCoverage(int((np.diff(cands.offsets) > 0).sum()), int(np.unique(cands.path_ids).size), n_paths)


def pool_warning(cov: PoolCoverage, n_items: int) -> str | None:
    """A message when the E-step pools force crowded paths, else None.

    The M-step only moves an item to one of its candidate paths, so if every user's beam holds
    the same few paths (a structure model that has learnt popularity only, e.g. after a small
    fraction of an epoch) every item gets the same pool and no alpha can spread the items out:
    beam search then lands on paths holding a large share of the corpus. Measured on
    ml-1m-subset (benchmarks/README.md, dr_pools): a model trained on 20,000 windows left 55
    distinct paths in the pools of 2,837 items (top path >= 155), three epochs over all windows
    739 at S = 20."""
    floor = cov.least_top_path
    if floor <= max(CROWDED_SHARE * n_items, CROWDED_MIN):
        return None
    return (
        f"DR E-step: the candidate pools of {cov.items} items hold only {cov.paths} distinct "
        f"paths, so every assignment puts >= {floor} items on some path "
        f"({100 * floor / n_items:.1f}% of {n_items}); train the structure model longer before "
        f"relearning, or raise estep_beam / estep_pool"
    )


def _with_fallback(cands: CandidateScores, prev: PathCodes) -> CandidateScores:
    """Add an item's previous paths (score 0) where it has fewer than J candidates."""
    j = prev.n_paths
    counts = np.diff(cands.offsets)
    short = np.flatnonzero(counts < j)
    if short.size == 0:
        return cands
    prev_ids = prev.path_ids()
    item = np.concatenate([np.repeat(np.arange(prev.n_items), counts), np.repeat(short, j)])
    pid = np.concatenate([cands.path_ids, prev_ids[short].reshape(-1)])
    val = np.concatenate([cands.scores, np.zeros(short.size * j)])
    # drop the previous paths an item already has as candidates (keep the scored copy)
    order = np.lexsort((-val, pid, item))
    item, pid, val = item[order], pid[order], val[order]
    dup = np.zeros(item.shape[0], bool)
    dup[1:] = (item[1:] == item[:-1]) & (pid[1:] == pid[:-1])
    item, pid, val = item[~dup], pid[~dup], val[~dup]
    return _top_per_item(item, pid, val, prev.n_items, np.iinfo(np.int64).max)


def size_penalty(size: np.ndarray, alpha: float) -> np.ndarray:
    """alpha * (f(s+1) - f(s)) with f(s) = s^4/4: the cost of adding one item to a path of size s."""
    s = size.astype(np.float64)
    return alpha * ((s + 1.0) ** 4 - s**4) / 4.0


def mstep(cands: CandidateScores, prev: PathCodes, alpha: float, iters: int, seed: int) -> PathCodes:
    """Penalised coordinate descent (Algorithm 2) -> a new `PathCodes` with J distinct paths/item.

    Parameters
    ----------
    cands : per-item candidate paths with scores s[v, c] (from `estep_scores`).
    prev : the current assignment (gives J, D, K and the fallback candidates).
    alpha : penalty factor; iters : T coordinate-descent sweeps (3-5 in the paper); seed : item order.

    Returns
    -------
    PathCodes with scores = s[v, pi_j(v)] of the chosen paths (0 for fallback paths).
    """
    if iters < 1:
        raise GroveError(f"M-step iterations must be >= 1, got {iters}")
    cands = _with_fallback(cands, prev)
    n_items, j_paths = prev.n_items, prev.n_paths
    uniq, local = np.unique(cands.path_ids, return_inverse=True)  # compact path ids
    sizes = np.zeros(uniq.shape[0], dtype=np.int64)  # running |c| over compact ids
    assign = np.full((n_items, j_paths), -1, dtype=np.int64)  # compact id of pi_j(v)
    chosen_s = np.zeros((n_items, j_paths))
    rng = np.random.default_rng(seed)
    tiny = np.finfo(np.float64).tiny
    off, scores = cands.offsets, cands.scores
    with Progress("dr m-step", total=iters * n_items, unit="item") as prog:
        for t in range(iters):
            for v in rng.permutation(n_items):
                lo, hi = off[v], off[v + 1]
                c, s = local[lo:hi], scores[lo:hi]  # (S_v,) candidates of v
                free = np.ones(hi - lo, dtype=bool)
                total = 0.0
                for j in range(j_paths):
                    if t > 0:
                        sizes[assign[v, j]] -= 1  # take v out of its old j-th path
                    pen = np.log(np.maximum(s + total, tiny)) - size_penalty(sizes[c], alpha)
                    best = int(np.argmax(np.where(free, pen, -np.inf)))
                    free[best] = False
                    assign[v, j], chosen_s[v, j] = c[best], s[best]
                    total += s[best]
                    sizes[c[best]] += 1
            prog.update(n_items)
    return PathCodes(_decode(uniq[assign], prev.arity, prev.depth), chosen_s, prev.arity)


def _decode(path_ids: np.ndarray, arity: int, depth: int) -> np.ndarray:
    """(..., ) int64 path ids -> (..., D) codes (inverse of `PathCodes.path_ids`)."""
    w = arity ** np.arange(depth - 1, -1, -1, dtype=np.int64)
    return (path_ids[..., None] // w) % arity


def random_codes(n_items: int, n_paths: int, arity: int, depth: int, seed: int) -> PathCodes:
    """Initial assignment: J distinct uniformly random paths per item (seeded)."""
    n_space = arity**depth
    if n_paths > n_space:
        raise GroveError(f"J={n_paths} paths per item need K^D >= J, but K^D = {n_space}")
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n_space, size=(n_items, n_paths), dtype=np.int64)
    for _ in range(100):  # redraw duplicated slots; converges in a few rounds
        s = np.sort(ids, axis=1)
        bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1)) if n_paths > 1 else np.zeros(0, int)
        if bad.size == 0:
            break
        ids[bad, 1:] = rng.integers(0, n_space, size=(bad.size, n_paths - 1))
    else:  # tiny spaces (J close to K^D): a distinct sample per item
        ids = np.stack([rng.choice(n_space, n_paths, replace=False) for _ in range(n_items)])
    return PathCodes(_decode(ids, arity, depth), np.zeros((n_items, n_paths)), arity)
