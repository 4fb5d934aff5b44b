"""Where the GPU beam search spends its time (issue 7.4's follow-up): kernel profile, TDM scorer
chunk sweep, batch sweep.

    python -m benchmarks.gpu_profile              # 10^6 items, batch 1024, on CUDA when present
    python -m benchmarks.gpu_profile --quick      # 10^4 items, batch 128: a smoke run

Same indexes, weights and histories as `benchmarks.gpu` (its ``build_tdm`` / ``build_recforest``
/ ``searchers``), on one device (CUDA when available, else the CPU). Three measurements:

* **profile**: `torch.profiler` over one search of the whole batch for each index; the ops that
  took the most device time (self time; CPU time without CUDA), as a table.
* **TDM chunk sweep**: `TDMScorer.score` splits each level's users into chunks of at most
  ``max_elements`` activation floats (the default is `grove.models.node_scorer.default_chunk_elements`: up to
  2**28 on CUDA, 2**20 on the CPU; before this sweep the CUDA default was 2**24). Users/s for each value of
  ``--max-elements``, and the share of the default's top-k items each returns (chunking must not
  change the results: anything below 1 is a bug).
* **batch sweep**: users/s of both indexes at each ``--batches`` size (is the device saturated?).

Every timing: a warm-up search of 64 users, then the median of ``--repeats`` timed searches
(CUDA synchronised). Writes ``results/gpu_profile.json`` and ``.md`` (``gpu_profile_quick.*``
with ``--quick``).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch

from benchmarks.gpu import HIST, build_recforest, build_tdm, overlap, searchers, timed_searches
from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from benchmarks.timing import at_least
from grove.models.node_scorer import default_chunk_elements

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def with_max_elements(searcher, max_elements: int):
    """The TDM searcher with its scorer's ``score`` chunk bound set to ``max_elements``."""
    searcher.scorer.score_chunk_elements = max_elements  # its own copy (`searchers` deep-copies)
    return searcher


def profile_table(search, hist, k: int, beam: int, device: torch.device, rows: int) -> str:
    """One profiled search of the batch: the ``rows`` ops with the most self device time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    search(hist[:64], k, beam)  # warm-up outside the profile
    with profile(activities=acts) as prof:
        search(hist, k, beam)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# GPU beam search profile ({res['items']:,} items, device {res['device']}, batch {res['batch']}, "
        f"beam {res['beam']}, k {res['k']})",
        "",
        f"Machine: {m['cpu_count']} CPU cores, GPU: {m['gpu'] or 'none (CPU run)'}; torch {m['torch']}. "
        f"Median of {res['repeats']} runs after a warm-up. Command: `{res['command']}`.",
        "",
        "## TDM scorer chunk (max_elements)",
        "",
        "| max_elements | users/s | median s | top-k overlap with the default |",
        "|---|---|---|---|",
    ]
    for r in res["tdm_chunks"]:
        lines.append(
            f"| 2^{int(np.log2(r['max_elements']))} | {r['users_per_s']:.1f} | {r['median_s']:.3f} | "
            f"{r['overlap_with_default']:.3f} |"
        )
    lines += ["", "## Batch size", "", "| index | batch | users/s | median s |", "|---|---|---|---|"]
    for r in res["batches"]:
        lines.append(f"| {r['index']} | {r['batch']} | {r['users_per_s']:.1f} | {r['median_s']:.3f} |")
    for index, table in res["profiles"].items():
        lines += ["", f"## Profile: {index}, one search of batch {res['batch']}", "", "```", table, "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--batch", type=at_least(1), default=1024)
    ap.add_argument("--beam", type=int, default=50)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--trees", type=int, default=4, help="RecForest trees")
    ap.add_argument("--repeats", type=at_least(1), default=5)
    ap.add_argument("--max-elements", type=int, nargs="+", default=[1 << 22, 1 << 24, 1 << 26, 1 << 28])
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--rows", type=int, default=15, help="profile table rows")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--quick", action="store_true", help="10^4 items, batch 128, 2 runs")
    ap.add_argument("--out-dir", default=str(RESULTS))
    a = ap.parse_args(argv)
    if a.quick:
        a.items, a.batch, a.repeats = min(a.items, 10_000), min(a.batch, 128), min(a.repeats, 2)
        a.batches = [b for b in a.batches if b <= 256] or [a.batch]
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    default_me = default_chunk_elements(device)
    if default_me not in a.max_elements:
        a.max_elements.append(default_me)
    hist = torch.as_tensor(np.random.default_rng(1).integers(0, a.items, (max(a.batch, *a.batches), HIST)))
    res = {
        "command": " ".join(["python -m benchmarks.gpu_profile", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "device": str(device),
        "items": a.items,
        "batch": a.batch,
        "beam": a.beam,
        "k": a.k,
        "trees": a.trees,
        "repeats": a.repeats,
        "default_max_elements": default_me,
        "tdm_chunks": [],
        "batches": [],
        "profiles": {},
    }
    built = {"tdm": build_tdm(a.items, 0), "recforest": build_recforest(a.items, a.trees, 0, device.type)}
    print(f"built TDM and {a.trees}-tree RecForest over {a.items:,} items", flush=True)
    h = hist[: a.batch].to(device)
    items_at = {}
    for me in sorted(a.max_elements):
        s = with_max_elements(searchers("tdm", built["tdm"], device), me)
        out = timed_searches(s.search, h, a.k, a.beam, a.repeats, device)
        items_at[me] = out["items"]
        res["tdm_chunks"].append(
            {
                "max_elements": me,
                "users_per_s": out["users_per_s"],
                "median_s": out["median_s"],
                "seconds": out["seconds"],
            }
        )
        print(f"tdm max_elements 2^{int(np.log2(me))}: {out['users_per_s']:.1f} users/s", flush=True)
    for r in res["tdm_chunks"]:
        r["overlap_with_default"] = overlap(items_at[default_me], items_at[r["max_elements"]])
    for index in ("tdm", "recforest"):
        s = searchers(index, built[index], device)
        for b in a.batches:
            out = timed_searches(s.search, hist[:b].to(device), a.k, a.beam, a.repeats, device)
            res["batches"].append(
                {
                    "index": index,
                    "batch": b,
                    "users_per_s": out["users_per_s"],
                    "median_s": out["median_s"],
                    "seconds": out["seconds"],
                }
            )
            print(f"{index} batch {b}: {out['users_per_s']:.1f} users/s", flush=True)
        res["profiles"][index] = profile_table(s.search, h, a.k, a.beam, device, a.rows)
        print(res["profiles"][index], flush=True)
    out_dir = pathlib.Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_and_markdown(out_dir / ("gpu_profile_quick" if a.quick else "gpu_profile"), res, markdown)
    return res


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    t0 = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - t0:.1f}s", flush=True)
    exit_quietly(0)
