"""The measurements of `benchmarks.scale`, each run in a fresh worker process: k-means tree
builds, a JTM tree-learning round, a DR M-step sweep, a store round trip, tree search against
exhaustive scoring and the two-tower, and search growth side by side (see `benchmarks.scale`)."""

from __future__ import annotations

import cProfile
import os
import pstats
import resource
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.tree_build import DIM

K_SEARCH, BEAM, HIST = 50, 50, 69


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _profile(fn, top: int = 8) -> tuple[float, list[dict]]:
    """Run ``fn`` once under cProfile: (seconds, the ``top`` entries by own time)."""
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(fn)
    secs = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    return secs, [
        {"function": f"{Path(f).name}:{ln}:{name}", "calls": nc, "own_s": round(tt, 3), "cum_s": round(ct, 3)}
        for (f, ln, name), (cc, nc, tt, ct, _) in rows
    ]


def _embeddings(n: int, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _histories(n_users: int, n_items: int, seed: int):
    import numpy as np
    import torch

    return torch.as_tensor(np.random.default_rng(seed).integers(0, n_items, (n_users, HIST)))


def task_kmeans(spec: dict) -> dict:
    from grove.models.tree_builders import kmeans_tree

    x, k = _embeddings(spec["n"]), spec["k"]
    kmeans_tree(x[:2000], k, seed=0)  # warm-up
    base = _rss_mb()
    runs = _timed(lambda: kmeans_tree(x, k, seed=0), spec["runs"])
    out = {"base_rss_mb": base}
    if spec["profile"]:  # one more run under cProfile, kept out of the median (the profiler slows it)
        out["profile_seconds"], out["profile"] = _profile(lambda: kmeans_tree(x, k, seed=0))
    return {**out, "seconds": runs}


def task_jtm(spec: dict) -> dict:
    import numpy as np

    from grove.indexstore.samples import TrainingSamples
    from grove.models.jtm.hierarchical import HierarchicalScorer
    from grove.models.jtm.tree_learning import learn_tree
    from grove.models.tree_builders import category_tree
    from grove.models.tree_learning import layout_depth

    def setup(n, pairs, seed):
        rng = np.random.default_rng(seed)
        tree = category_tree(rng.integers(0, max(n // 100, 1), n), 2, seed=seed)
        samples = TrainingSamples.from_windows(
            rng.integers(0, n, (pairs, HIST)), rng.integers(0, n, pairs), np.zeros(pairs, np.int32)
        )
        return HierarchicalScorer(tree, dim=DIM), tree, samples

    warm = setup(1000, 20, 1)
    learn_tree(*warm, gap=spec["gap"])
    args = setup(spec["n"], spec["pairs"], 0)
    base = _rss_mb()
    runs = _timed(lambda: learn_tree(*args, gap=spec["gap"]), spec["runs"])
    depth, gap = layout_depth(spec["n"], 2), spec["gap"]
    cols = sum(2**j for l0 in range(0, depth, gap) for j in range(1, min(gap, depth - l0) + 1))
    return {
        "base_rss_mb": base,
        "seconds": runs,
        "pairs": spec["pairs"],
        "gap": gap,
        "scored_pairs": spec["pairs"] * cols,
    }


def task_mstep(spec: dict) -> dict:
    import numpy as np

    from grove.models.dr.em import _top_per_item, mstep, random_codes

    def setup(n, seed, pool=20):
        rng = np.random.default_rng(seed)
        # distinct paths per item (as the E-step's merged keys are): offsets of 7919 from a random base
        pid = (rng.integers(0, 100**3, (n, 1)) + 7919 * np.arange(pool)) % 100**3
        val = rng.random((n, pool))
        cands = _top_per_item(np.repeat(np.arange(n), pool), pid.ravel(), val.ravel(), n, pool)
        return cands, random_codes(n, 3, 100, 3, seed)

    mstep(*setup(1000, 1), 3e-5, 1, 0)  # warm-up
    cands, prev = setup(spec["n"], 0)
    base = _rss_mb()
    runs = _timed(lambda: mstep(cands, prev, 3e-5, spec["iters"], 0), spec["runs"])
    return {"base_rss_mb": base, "seconds": runs, "iters": spec["iters"], "pool": 20, "J": 3}


def task_store(spec: dict) -> dict:
    from benchmarks.store_roundtrip import balanced_tree, run_case
    from grove.indexstore.store import Store

    with tempfile.TemporaryDirectory(prefix="grove-scale-") as tmp:
        url = f"duckdb:///{tmp}/bench.duckdb"
        Store.init(url)
        store = Store.open(url)
        run_case(store, "warmup", balanced_tree(1000, spec["k"]), 1)
        tree = balanced_tree(spec["n"], spec["k"])
        base = _rss_mb()
        res = run_case(store, f"n{spec['n']}-k{spec['k']}", tree, spec["runs"])
    return {"base_rss_mb": base, "write_s": res["write_runs"], "read_s": res["read_runs"]}


def _per_call(fn, inputs: list) -> list[float]:
    """Seconds of ``fn(x)`` for every x (one call each)."""
    out = []
    for x in inputs:
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


def _tree_searcher(n: int, arity: int):
    """(TreeSearcher with an untrained TDMScorer dim 24 over a K = ``arity`` category tree of n
    items on CPU, its tree). Seeded: the same n gives the same tree and weights."""
    import numpy as np
    import torch

    from grove.models.node_scorer import TDMScorer
    from grove.models.tree_builders import category_tree
    from grove.models.tree_method import TreeSearcher

    torch.manual_seed(0)
    tree = category_tree(np.random.default_rng(0).integers(0, max(n // 100, 1), n), arity, seed=0)
    return TreeSearcher(TDMScorer(tree, dim=DIM), tree, torch.device("cpu")), tree


def task_search(spec: dict) -> dict:
    import torch

    from grove.models.baselines.two_tower import TwoTowerConfig, TwoTowerModel, TwoTowerSearcher

    n, torch_dev = spec["n"], torch.device("cpu")
    tdm, tree = _tree_searcher(n, spec["k"])
    tt = TwoTowerSearcher(TwoTowerModel(n, TwoTowerConfig(dim=DIM)), torch_dev)
    h = _histories(256, n, 1)
    singles = [h[i : i + 1] for i in range(spec["batch1_users"])]
    for fn in (lambda x: tdm.search(x, K_SEARCH, BEAM), lambda x: tt.search(x, K_SEARCH, BEAM)):
        fn(h[:8]), fn(h[:1])  # warm-up
    tdm.exhaustive(h[:1], K_SEARCH)
    base = _rss_mb()
    out = {
        "depth": tree.depth,
        "base_rss_mb": base,
        "tree_batch1_s": _per_call(lambda x: tdm.search(x, K_SEARCH, BEAM), singles),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch 1 again on one thread: no OpenMP barrier waits on a busy machine
    out["tree_batch1_1thread_s"] = _per_call(lambda x: tdm.search(x, K_SEARCH, BEAM), singles)
    out["tree_batch256_1thread_s"] = _per_call(lambda x: tdm.search(x, K_SEARCH, BEAM), [h] * spec["batch_runs"])
    torch.set_num_threads(threads)
    out["tree_batch256_s"] = _per_call(lambda x: tdm.search(x, K_SEARCH, BEAM), [h] * spec["batch_runs"])
    out["exhaustive_batch1_s"] = _per_call(lambda x: tdm.exhaustive(x, K_SEARCH), singles[: spec["exhaustive_users"]])
    out["two_tower_batch256_s"] = _per_call(lambda x: tt.search(x, K_SEARCH, BEAM), [h] * 5)
    out["two_tower_batch1_s"] = _per_call(lambda x: tt.search(x, K_SEARCH, BEAM), singles)
    if spec["profile"]:  # where the time goes: cProfile of 32 users, and the scorer's chunk size
        _, out["profile"] = _profile(lambda: tdm.search(h[:32], K_SEARCH, BEAM))
        out["chunk_diagnostic"] = _chunk_diagnostic(tdm, h[:64], spec["batch_runs"])
    return out


def _scored_per_user(searcher, h) -> int:
    """(user, node) pairs the scorer is asked for per user in one beam search of ``h``."""
    widths, score = [], searcher.scorer.score
    searcher.scorer.score = lambda hist, nodes, **kw: widths.append(nodes.shape[1]) or score(hist, nodes, **kw)
    try:
        searcher.search(h, K_SEARCH, BEAM)
    finally:
        del searcher.scorer.score  # back to the class method
    return sum(widths)


def task_growth(spec: dict) -> dict:
    """The growth target measured side by side: searchers over the smallest and the largest N
    live in ONE process and their timed calls alternate (lo, hi, hi, lo, lo, hi, ...), so the
    drift of a shared VM (the same call varies up to 2x over minutes) hits both sizes alike.
    Separate processes minutes apart gave 2.05x and 2.62x for the same code.

    Per mode (batch 256 / batch 1, torch's threads / one thread), ``runs`` timed calls per size;
    a batch-1 call is ``batch1_users`` single-user searches. Also counts the (user, node) pairs
    scored per user, whose ratio is the growth that depth alone predicts (the scorer's cost per
    pair does not depend on N)."""
    import torch

    lo, hi = spec["sizes"]
    srch = {n: _tree_searcher(n, spec["k"]) for n in (lo, hi)}
    hist = {n: _histories(256, n, 1) for n in (lo, hi)}
    for n in (lo, hi):  # warm-up
        srch[n][0].search(hist[n][:8], K_SEARCH, BEAM), srch[n][0].search(hist[n][:1], K_SEARCH, BEAM)
    out = {
        "sizes": [lo, hi],
        "depth": {str(n): srch[n][1].depth for n in (lo, hi)},
        "scored_pairs_per_user": {str(n): _scored_per_user(srch[n][0], hist[n][:1]) for n in (lo, hi)},
        "ms_per_user": {},
    }
    threads = torch.get_num_threads()
    nb1 = spec["batch1_users"]
    for mode in ("b256", "b256_1thread", "b1", "b1_1thread"):
        torch.set_num_threads(1 if mode.endswith("1thread") else threads)
        per = {lo: [], hi: []}
        for r in range(spec["runs"]):
            for n in (lo, hi) if r % 2 == 0 else (hi, lo):
                s, h = srch[n][0], hist[n]
                calls = [h] if mode.startswith("b256") else [h[i : i + 1] for i in range(nb1)]
                secs = sum(_per_call(lambda x, s=s: s.search(x, K_SEARCH, BEAM), calls))
                per[n].append(secs * 1e3 / (256 if mode.startswith("b256") else nb1))
        out["ms_per_user"][mode] = {str(n): per[n] for n in (lo, hi)}
    torch.set_num_threads(threads)
    return out


def _chunk_diagnostic(tdm, h, runs: int) -> dict:
    """ms per user of a 64-user beam search with `TDMScorer.score`'s former CUDA chunk
    (``max_elements`` 2**24 floats per intermediate) and its CPU default 2**20, on torch's threads
    and on 1: median of ``runs`` calls after a warm-up call, per setting. Why the CPU default is
    the smaller chunk."""
    import torch

    scorer, out, threads = tdm.scorer, {}, torch.get_num_threads()
    for th in (threads, 1):
        torch.set_num_threads(th)
        for me in (1 << 24, 1 << 20):
            scorer.score_chunk_elements = me  # this instance only
            secs = _med(_per_call(lambda x: tdm.search(x, K_SEARCH, BEAM), [h] * (runs + 1))[1:])  # 1st: warm-up
            out[f"threads_{th}_max_elements_2^{me.bit_length() - 1}"] = round(secs * 1e3 / h.shape[0], 2)
    torch.set_num_threads(threads)
    scorer.score_chunk_elements = None
    return out


TASKS = {
    "kmeans": task_kmeans,
    "jtm": task_jtm,
    "mstep": task_mstep,
    "store": task_store,
    "search": task_search,
    "growth": task_growth,
}


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def worker(spec: dict) -> dict:
    import torch

    load0 = os.getloadavg()
    out = TASKS[spec["task"]](spec)
    return {
        **out,
        "peak_rss_mb": _rss_mb(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [load0, os.getloadavg()],
    }
