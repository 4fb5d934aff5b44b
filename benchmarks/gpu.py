"""GPU benchmark (issues 7.4, 29.1): batched beam search on CUDA against the CPU, users per second,
in fp32 and in reduced precision, eager and compiled.

    python -m benchmarks.gpu                     # 10^6 items, batch 1024, every device present
    python -m benchmarks.gpu --quick             # 10^4 items, batch 128, 2 runs: a smoke run
    python -m benchmarks.gpu --devices cuda --precisions fp32 bf16 fp16 --compile

Three indexes over the same synthetic corpus of N items:

* **TDM**: a binary category tree (random categories of ~100 items, TDM §3.5 construction) with
  the TDM attention scorer (dim 24, untrained: search cost does not depend on the weights);
  `TreeSearcher.search` = TDM Algorithm 1 for the whole batch, one scorer call per level.
* **RecForest**: 4 complete 18-ary trees (appendix Algorithm 2 over random 24-d embeddings,
  seeds 0..3) and the paper-sized transformer (hidden 96), untrained; `RecForestSearcher.search`
  = a beam search per tree's decoder, union of the trees' items, ranked by the summed log p.
* **DR**: random path codes (K=100, D=3, J=3) and DR's default network, untrained;
  `DRSearcher.search` = beam search over the grid, the paths' items, softmax rerank.

The same weights and histories (random item ids, 69 behaviours) run on every device, by default
in batches of ``--batch`` (1024) users on both, so the ratio compares the same work.
``--cpu-batch N`` makes the CPU search only the first N users of the batch, for a quicker look
(on the 2-core VM at 10^6 items a 1024-user batch takes ~10 s for TDM and ~49 s for the 4-tree
RecForest; at 256 users the CPU served 21% (TDM) and 42% (RecForest) more users/s, so only the
same batch gives a fair ratio). Per device, index and variant: a warm-up
search of 64 users, then ``--repeats`` timed searches of the whole batch
(CUDA timings are synchronised); users/s = batch / median seconds.

Variants: every precision of ``--precisions`` (`grove.models.precision`; the CPU runs fp32
only unless ``--cpu-precisions`` says more) and, for TDM, with ``--compile`` its compiled
per-level scoring ("level", `TreeSearcher.compile`) and with ``--whole-search`` its whole search
compiled ("search": CUDA graphs on CUDA), in each of ``--compile-precisions``; compilation
happens in the warm-up and is reported apart. The JSON keeps how many of the CPU's fp32 top-k
items each row returns and how many of its own device's fp32 eager top-k (float arithmetic
differs in the last bits, so a tied score may rank differently; on these untrained indexes scores
are close together, so reduced precision swaps more near-ties than on trained ones:
`benchmarks.precision` measures trained indexes).
Without CUDA the script runs its CPU half, says so on stdout and records ``"gpu": null``.

Writes ``benchmarks/results/gpu.json`` and ``gpu.md`` (``gpu_quick.*`` with ``--quick``;
``gpu_<tag>.*`` with ``--tag``).
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import statistics
import sys
import time

import numpy as np
import torch

from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from benchmarks.timing import at_least

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
DIM = 24
HIST = 69


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_searches(search, hist: torch.Tensor, k: int, beam: int, repeats: int, device, small: bool = True) -> dict:
    """Warm-up on 64 users (unless not ``small``: a whole-search graph is compiled per batch
    size) and on the whole batch (a compiled search compiles there), then ``repeats`` timed
    searches of the whole batch."""
    t = time.perf_counter()
    if small:
        search(hist[:64], k, beam)
    search(hist, k, beam)
    _sync(device)
    warmup = time.perf_counter() - t
    runs, items = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        _, items = search(hist, k, beam)
        _sync(device)
        runs.append(time.perf_counter() - t)
    med = statistics.median(runs)
    return {
        "seconds": runs,
        "median_s": med,
        "users_per_s": hist.shape[0] / med,
        "warmup_s": warmup,
        "items": items.cpu(),
    }


def batch1_latency(search, hist: torch.Tensor, k: int, beam: int, n: int, device) -> dict:
    """p50 / p99 milliseconds of ``n`` one-user searches (the first n rows), after 3 untimed."""
    for i in range(3):
        search(hist[i : i + 1], k, beam)
    _sync(device)
    ms = []
    for i in range(n):
        t = time.perf_counter()
        search(hist[i % hist.shape[0] : i % hist.shape[0] + 1], k, beam)
        _sync(device)
        ms.append(1000 * (time.perf_counter() - t))
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean fraction of row i of ``a``'s items (-1 = padding) that row i of ``b`` also holds."""
    fr = []
    for x, y in zip(a.tolist(), b.tolist()):
        xs = {v for v in x if v >= 0}
        fr.append(len(xs & set(y)) / max(len(xs), 1))
    return float(np.mean(fr))


def build_tdm(n: int, seed: int):
    from grove.models.node_scorer import TDMScorer
    from grove.models.tree_builders import category_tree

    tree = category_tree(np.random.default_rng(seed).integers(0, max(n // 100, 1), n), 2, seed=seed)
    torch.manual_seed(seed)
    return tree, TDMScorer(tree, dim=DIM)


def build_recforest(n: int, trees: int, seed: int, device: str):
    from grove.indexstore.structures import Forest
    from grove.models.recforest.method import RecForestConfig, make_net
    from grove.models.tree_builders import recforest_tree

    emb = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    forest = Forest(tuple(recforest_tree(emb, 18, seed=seed * 1000 + t, device=device) for t in range(trees)))
    torch.manual_seed(seed)
    net = make_net(RecForestConfig(trees=trees), n, [t.depth for t in forest.trees])
    return forest, net


def build_dr(n: int, seed: int):
    from grove.models.dr.em import random_codes
    from grove.models.dr.method import DRConfig, new_net

    config = DRConfig()
    codes = random_codes(n, config.n_paths, config.arity, config.depth, seed)
    torch.manual_seed(seed)
    return codes, new_net(config, n)


def build(index: str, n: int, trees: int, device: str):
    if index == "tdm":
        return build_tdm(n, 0)
    if index == "recforest":
        return build_recforest(n, trees, 0, device)
    return build_dr(n, 0)


def searchers(index: str, built, device: torch.device, precision: str = "fp32", compiled: str = ""):
    from grove.models.dr.method import DRSearcher
    from grove.models.recforest.search import ForestTables, RecForestSearcher
    from grove.models.tree_method import TreeSearcher

    if index == "tdm":
        tree, scorer = built
        s = TreeSearcher(copy.deepcopy(scorer), tree, device)
    elif index == "recforest":
        forest, net = built
        s = RecForestSearcher(
            copy.deepcopy(net).to(device), ForestTables.from_forest(forest, device), forest.n_items, device
        )
    else:
        codes, net = built
        s = DRSearcher(copy.deepcopy(net).to(device).eval(), codes, device)
    s.set_precision(precision)
    if compiled:
        s.compile(whole_search=compiled == "search")
    return s


def variants(index: str, device: str, a) -> list[tuple[str, bool]]:
    """(precision, compiled) pairs timed for ``index`` on ``device``; compiled is "" (eager),
    "level" (`TreeSearcher.compile`) or "search" (``compile(whole_search=True)``)."""
    precisions = a.precisions if device == "cuda" else a.cpu_precisions
    out = [(p, "") for p in precisions]
    chosen = [p for p in precisions if a.compile_precisions is None or p in a.compile_precisions]
    if a.compile and index == "tdm":
        out += [(p, "level") for p in chosen]
    if a.whole_search and index == "tdm":
        out += [(p, "search") for p in chosen]
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# Beam search, CUDA vs CPU ({res['items']:,} items, CUDA batch {res['batch']}, "
        f"CPU batch {res['cpu_batch']}, "
        f"beam {res['beam']}, k {res['k']})",
        "",
        f"Machine: {m['cpu_count']} CPU cores ({m['torch_threads']} torch threads), "
        f"GPU: {m['gpu'] or 'none (CUDA not available: CPU half only)'}; torch {m['torch']}; "
        f"load average before {tuple(round(x, 2) for x in m['load_average_before'])}. "
        f"Median of {res['repeats']} runs after a warm-up. Command: `{res['command']}`.",
        "",
        "| index | device | precision | compiled | users/s | median s per batch | runs (s) | warm-up s "
        "| top-k overlap with CPU fp32 | with this device's fp32 | batch-1 p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(v):
        return "–" if v is None else f"{v:.3f}"

    def latency(v):
        return "–" if not v else f"{v['p50_ms']:.2f} / {v['p99_ms']:.2f}"

    for r in res["rows"]:
        runs = ", ".join(f"{s:.3f}" for s in r["seconds"])
        lines.append(
            f"| {r['index']} | {r['device']} | {r['precision']} | {r['compiled'] or 'no'} "
            f"| {r['users_per_s']:.1f} | {r['median_s']:.4f} | {runs} | {r['warmup_s']:.1f} "
            f"| {ratio(r['overlap_with_cpu'])} | {ratio(r['overlap_with_fp32'])} | {latency(r['batch1_latency'])} |"
        )
    for index, times in res["speedup_cuda_over_cpu"].items():
        lines.append(f"\n{index}: CUDA fp32 eager serves {times:.1f}x the CPU's users per second.")
    if not res["speedup_cuda_over_cpu"]:
        lines.append(
            "\nNo CUDA device: the CUDA half was not run."
            if m["gpu"] is None
            else "\nOne device only (--devices): no ratio."
        )
    lines.append("\nBuild seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res["build_seconds"].items()) + ".")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument(
        "--batch", type=at_least(1), default=1024, help="users per search (on the CPU too unless --cpu-batch)"
    )
    ap.add_argument(
        "--cpu-batch",
        type=at_least(1),
        default=None,
        help="users per search on the CPU, the first rows of the same histories (default: --batch)",
    )
    ap.add_argument("--beam", type=int, default=50)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--trees", type=int, default=4, help="RecForest trees")
    ap.add_argument("--repeats", type=at_least(1), default=5)
    ap.add_argument("--indexes", nargs="+", default=["tdm", "recforest", "dr"], choices=["tdm", "recforest", "dr"])
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"], help="precisions timed on CUDA")
    ap.add_argument("--cpu-precisions", nargs="+", default=["fp32"], help="precisions timed on the CPU")
    ap.add_argument("--compile", action="store_true", help="also time TDM's compiled per-level scoring")
    ap.add_argument(
        "--whole-search", action="store_true", help="also time TDM's whole search compiled (CUDA graphs on CUDA)"
    )
    ap.add_argument(
        "--compile-precisions", nargs="+", default=None, help="the precisions compiled (default: every one timed)"
    )
    ap.add_argument("--latency", type=int, default=0, help="also time this many one-user searches per row (p50/p99 ms)")
    ap.add_argument("--cpu-threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="10^4 items, batch 128, 2 runs (numbers mean little)")
    ap.add_argument("--tag", default="", help="results go to gpu_<tag>.*")
    ap.add_argument("--out-dir", default=str(RESULTS))
    a = ap.parse_args(argv)
    if a.quick:
        a.items, a.batch, a.repeats = min(a.items, 10_000), min(a.batch, 128), min(a.repeats, 2)
    a.cpu_batch = min(a.cpu_batch or a.batch, a.batch)
    if a.cpu_threads:
        torch.set_num_threads(a.cpu_threads)
    devices = a.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: torch sees no CUDA device")
    if not torch.cuda.is_available():
        print("CUDA not available: running the CPU half only", flush=True)
    build_dev = "cuda" if "cuda" in devices else "cpu"
    hist = torch.as_tensor(np.random.default_rng(1).integers(0, a.items, (a.batch, HIST)))
    res = {
        "command": " ".join(["python -m benchmarks.gpu", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "items": a.items,
        "batch": a.batch,
        "beam": a.beam,
        "cpu_batch": a.cpu_batch,
        "k": a.k,
        "repeats": a.repeats,
        "trees": a.trees,
        "build_seconds": {},
        "rows": [],
        "speedup_cuda_over_cpu": {},
    }
    for index in a.indexes:
        t = time.perf_counter()
        built = build(index, a.items, a.trees, build_dev)
        res["build_seconds"][index] = time.perf_counter() - t
        print(f"{index}: built in {res['build_seconds'][index]:.1f}s", flush=True)
        timed = {}
        for dev in devices:
            device = torch.device(dev)
            rows = hist if device.type == "cuda" else hist[: a.cpu_batch]
            for precision, compiled in variants(index, dev, a):
                s = searchers(index, built, device, precision, compiled)
                out = timed_searches(s.search, rows, a.k, a.beam, a.repeats, device, small=compiled != "search")
                if a.latency:
                    out["latency"] = batch1_latency(s.search, rows, a.k, a.beam, a.latency, device)
                timed[dev, precision, compiled] = out
                print(
                    f"{index} on {dev} {precision} {compiled or 'eager'}: {out['users_per_s']:.1f} users/s "
                    f"(median {out['median_s']:.4f}s, warm-up {out['warmup_s']:.1f}s)",
                    flush=True,
                )
                del s
        for (dev, precision, compiled), out in timed.items():
            cpu = timed.get(("cpu", "fp32", ""))
            own = timed.get((dev, "fp32", ""))
            res["rows"].append(
                {
                    "index": index,
                    "device": dev,
                    "precision": precision,
                    "compiled": compiled,
                    "batch": a.batch if dev == "cuda" else a.cpu_batch,
                    "users_per_s": out["users_per_s"],
                    "median_s": out["median_s"],
                    "seconds": out["seconds"],
                    "warmup_s": out["warmup_s"],
                    "batch1_latency": out.get("latency"),
                    "overlap_with_cpu": None
                    if cpu is None or dev == "cpu"
                    else overlap(cpu["items"], out["items"][: a.cpu_batch]),
                    "overlap_with_fp32": None
                    if own is None or (precision, compiled) == ("fp32", "")
                    else overlap(own["items"], out["items"]),
                }
            )
        if ("cpu", "fp32", "") in timed and ("cuda", "fp32", "") in timed:
            res["speedup_cuda_over_cpu"][index] = (
                timed["cuda", "fp32", ""]["users_per_s"] / timed["cpu", "fp32", ""]["users_per_s"]
            )
        out_dir = pathlib.Path(a.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        name = "gpu" + (f"_{a.tag}" if a.tag else "") + ("_quick" if a.quick else "")
        write_json_and_markdown(out_dir / name, res, markdown)  # after every index: a cut run keeps its rows
    print(markdown(res))
    return res


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
