"""Efficiency–accuracy curves: Recall@k against users per second as the beam varies (issue 7.2).

    python -m benchmarks.curves                                   # ml-1m-subset, tdm + two-tower
    python -m benchmarks.curves --dataset ml-latest-small --methods tdm jtm dr
    python -m benchmarks.curves --quick                           # a minute; numbers meaningless

For each method in ``--methods``: its lifecycle up to one trained index (TDM/JTM/DeFoRec:
category tree -> train -> relearn -> train; DR: random codes -> train -> one EM round (E + M step)
-> train; RecForest: construct -> train), then Recall@k and
users/s of its beam search on the test users for every beam in ``--beams`` (batch 256,
``--threads`` CPU threads, median of ``--repeats`` timed passes after a warm-up; recall from the
same results). Beside them, over the SAME two-tower embeddings (user tower = query, item matrix =
base): exact search (a matrix product + topk, the two-tower brute force), FAISS HNSW (M=32,
efSearch swept) and FAISS IVF-Flat (nlist = 4 sqrt(N), nprobe swept), inner product. FAISS is
an optional benchmark dependency (``pip install faiss-cpu``); without it those curves are
skipped and the JSON says so.

Training configs are benchmarks.quality's (or its QUICK caps with ``--quick``), with
``--max-samples`` capping the training windows of the tree scorers (CPU time: TDM's attention
scores every (behaviour, node) pair, ~300 samples/s on 2 cores).

Writes ``benchmarks/results/curves_<dataset>.json`` and ``curves_<dataset>.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from benchmarks.machine import machine_info
from benchmarks.quality import CONFIGS, QUICK, RESULTS, find_data_dir, load_data
from models.method import config_from_dict
from models.metrics import per_user_metrics
from models.registry import get_method

TREE_METHODS = ("tdm", "jtm", "deforec")


def recall_at(items: np.ndarray, held_out, k: int) -> float:
    """Mean Recall@k of (U, >=k) ranked items against the held-out truth (seen items kept)."""
    rows = per_user_metrics(items[:, :k], k, held_out.truth_offsets, held_out.truth_items,
                            held_out.seen_offsets, held_out.seen_items)
    return float(np.mean(rows["recall"]))


def timed(search, hist: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Median users/s of ``search(batch)`` over all users in batches of 256, and the items."""
    def one_pass():
        out = [search(hist[i:i + 256]) for i in range(0, hist.shape[0], 256)]
        return torch.cat(out)

    items = one_pass()  # warm-up (and the results)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - start)
    return hist.shape[0] / statistics.median(times), items


def method_curve(name: str, data, beams, k: int, cfg: dict, repeats: int) -> list[dict]:
    """Train ``name`` once, then one point per beam."""
    method = get_method(name)
    config = config_from_dict(method.config_cls, cfg)
    built = method.construct(config, data, 0)
    built = method.train(config, built, data, 0)
    if name in TREE_METHODS or method.relearns:  # the relearnt index is the one the papers report
        built = method.train(config, method.relearn(config, built, data, 1000), data, 1)
    searcher = method.searcher(config, built, "cpu")
    hist = torch.as_tensor(data.test.histories).long()
    points = []
    for beam in beams:
        ups, items = timed(lambda h: searcher.search(h, k, beam)[1], hist, repeats)
        points.append({"beam": beam, "users_per_s": ups, "recall": recall_at(items.numpy(), data.test, k)})
        print(f"  {name} beam {beam}: recall@{k} {points[-1]['recall']:.4f}, {ups:,.0f} users/s", flush=True)
    return points


def two_tower_curves(data, k: int, cfg: dict, repeats: int, faiss_params) -> dict:
    """Exact search and FAISS HNSW / IVF over the two-tower embeddings."""
    from models.two_tower import TwoTowerConfig, train_two_tower

    config = config_from_dict(TwoTowerConfig, cfg)
    model, _ = train_two_tower(data, config, torch.device("cpu"))
    model.eval()
    hist = torch.as_tensor(data.test.histories).long()
    with torch.inference_mode():
        item_mat = model.item_matrix().detach().float().contiguous()                  # (N, d)
        users = torch.cat([model.user(hist[i:i + 256]) for i in range(0, hist.shape[0], 256)])

    def exact(h):
        with torch.inference_mode():
            return (model.user(h) @ item_mat.T).topk(k, dim=1).indices

    ups, items = timed(exact, hist, repeats)
    out = {"exact": [{"param": None, "users_per_s": ups, "recall": recall_at(items.numpy(), data.test, k)}]}
    try:
        import faiss
    except ImportError:
        out["faiss"] = "not installed (pip install faiss-cpu)"
        return out
    base = item_mat.numpy().astype(np.float32)
    n, d = base.shape
    hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(base)
    nlist = max(1, int(4 * math.sqrt(n)))
    quant = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(base)
    ivf.add(base)
    for label, index, knob, values in (("hnsw", hnsw, "efSearch", faiss_params["ef"]),
                                       ("ivf", ivf, "nprobe", [p for p in faiss_params["nprobe"] if p <= nlist])):
        pts = []
        for v in values:
            setattr(index, knob, v) if label == "ivf" else setattr(index.hnsw, knob, v)

            def search(h, _index=index):
                with torch.inference_mode():
                    q = model.user(h).numpy().astype(np.float32)
                return torch.as_tensor(_index.search(q, k)[1])

            ups, items = timed(search, hist, repeats)
            pts.append({"param": v, "users_per_s": ups, "recall": recall_at(items.numpy(), data.test, k)})
            print(f"  two-tower {label} {knob}={v}: recall@{k} {pts[-1]['recall']:.4f}, {ups:,.0f} users/s",
                  flush=True)
        out[label] = pts
    del users
    return out


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in result["methods"].items():
        ax.plot([p["users_per_s"] for p in pts], [p["recall"] for p in pts], "o-", label=f"{name} (beam)")
    for label, pts in result["two_tower"].items():
        if isinstance(pts, list):
            ax.plot([p["users_per_s"] for p in pts], [p["recall"] for p in pts],
                    "s--" if label != "exact" else "k*", label=f"two-tower {label}", markersize=9 if label == "exact" else 5)
    ax.set_xscale("log")
    ax.set_xlabel("users per second (CPU, batch 256)")
    ax.set_ylabel(f"Recall@{result['k']}")
    ax.set_title(f"{result['dataset']}: efficiency vs accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-1m-subset")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--methods", nargs="+", default=["tdm"])
    p.add_argument("--beams", nargs="+", type=int, default=[1, 2, 5, 10, 20, 50, 100])
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--max-samples", type=int, default=30000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out-dir", default=str(RESULTS))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("GROVE_QUIET", "1")
    with tempfile.TemporaryDirectory() as work:
        data, meta = load_data(a.dataset, find_data_dir(a.dataset, a.data_dir), 0, work)
    repeats = 1 if a.quick else a.repeats
    configs = {}
    for name in a.methods + ["two_tower"]:
        cfg = {**CONFIGS[name], **(QUICK[name] if a.quick else {}), "device": "cpu"}
        if name in TREE_METHODS and not a.quick:
            cfg["max_samples"] = a.max_samples
        configs[name] = cfg
    result = {"dataset": a.dataset, "k": a.k, "beams": a.beams, "threads": a.threads, "repeats": repeats,
              "quick": a.quick, "configs": configs, "machine": machine_info(),
              "n_items": data.n_items, "test_users": len(data.test), **meta, "methods": {}}
    for name in a.methods:
        print(f"{name}: training", flush=True)
        result["methods"][name] = method_curve(name, data, a.beams, a.k, configs[name], repeats)
    print("two-tower: training", flush=True)
    result["two_tower"] = two_tower_curves(data, a.k, configs["two_tower"], repeats,
                                           {"ef": [16, 32, 64, 128, 256], "nprobe": [1, 2, 4, 8, 16, 32, 64]})
    result["load_after"] = os.getloadavg()
    out = os.path.join(a.out_dir, f"curves_{a.dataset}{'_quick' if a.quick else ''}")
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    plot(result, out + ".png")
    print(f"wrote {out}.json and {out}.png")
    return result


if __name__ == "__main__":
    from indexstore.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
