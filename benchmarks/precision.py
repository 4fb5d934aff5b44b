"""Reduced-precision search against fp32 on trained indexes (issue 29.1): how many of the fp32
top-k items each precision returns (overlap@k), the recall@k of each, and the users/s.

    python -m benchmarks.precision a.duckdb b.duckdb --device cuda
    python -m benchmarks.precision a.duckdb --device cpu --precisions fp32 bf16 --quick

Every index of the given stores whose name starts with ``curves-`` (what ``benchmarks.curves
--train-only --store F`` writes; ``--indexes`` names others) is loaded the way a server loads it
(`Retriever.load`, the newest version made by a train step) once per variant: each precision of
``--precisions``, and for TDM/JTM also compiled (``--compile``). Queries: the test users of the
version's split, searched in batches of ``--batch`` at beam ``--beam``, top ``--k``. overlap@k is
the mean share of a user's fp32 eager items that the variant also returns; the recall change is
variant minus fp32, in points. users/s is the median of ``--repeats`` passes after one untimed
pass (which compiles).

Writes ``benchmarks/results/precision[_<tag>].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

from benchmarks.gpu import overlap
from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from benchmarks.quality import RESULTS
from benchmarks.timing import at_least
from grove.indexstore.errors import StateError
from grove.indexstore.store import Store
from grove.models.evaluation import recall_of
from grove.models.lifecycle import Recipe
from grove.models.retriever import Retriever

COMPILABLE = ("tdm", "jtm")


def search_all(retriever: Retriever, hist: torch.Tensor, k: int, beam: int, batch: int) -> torch.Tensor:
    """Top-k items (U, k) of every row of ``hist``, in batches, on the retriever's device."""
    out = []
    for i in range(0, hist.shape[0], batch):
        _, items = retriever.searcher.search(hist[i : i + batch].to(retriever.device), k, beam)
        out.append(items.cpu())
    return torch.cat(out)


def timed(retriever: Retriever, hist: torch.Tensor, a) -> tuple[torch.Tensor, list[float]]:
    """(items, seconds of each timed pass) after one untimed pass."""
    items = search_all(retriever, hist, a.k, a.beam, a.batch)
    runs = []
    for _ in range(a.repeats):
        if retriever.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        search_all(retriever, hist, a.k, a.beam, a.batch)
        if retriever.device.type == "cuda":
            torch.cuda.synchronize()
        runs.append(time.perf_counter() - t)
    return items, runs


def measure_index(url: str, index: str, a) -> list[dict]:
    store = Store.open(url)
    info = newest_trained(store, index)
    data = store.load_split(info.dataset, info.split)
    hist = torch.as_tensor(np.asarray(data.test.histories)).long()
    if a.quick:
        hist = hist[: min(hist.shape[0], 2 * a.batch)]
    rows, reference = [], None
    variants: list[tuple[str, str | None]] = [(p, None) for p in a.precisions]
    if a.compile and info.method in COMPILABLE:
        variants += [(p, "level") for p in a.precisions]
    for precision, compiled in variants:
        r = Retriever.load(store, index, version=info.id, device=a.device, precision=precision, compile=compiled)
        items, runs = timed(r, hist, a)
        if reference is None:
            reference = items  # the first variant is fp32 eager (checked in main)
        rows.append(
            {
                "store": os.path.basename(url),
                "index": index,
                "version": info.id,
                "method": info.method,
                "precision": precision,
                "compiled": compiled,
                "users": int(hist.shape[0]),
                "overlap": overlap(reference, items),
                "recall": recall_of(items.numpy(), _users(data.test, hist.shape[0]), a.k),
                "users_per_s": hist.shape[0] / statistics.median(runs),
                "seconds": runs,
            }
        )
        rows[-1]["recall_change_points"] = 100 * (rows[-1]["recall"] - rows[0]["recall"])
        print(
            f"{index} {precision} {compiled or 'eager'}: overlap@{a.k} {rows[-1]['overlap']:.4f}, "
            f"recall@{a.k} {rows[-1]['recall']:.4f}, {rows[-1]['users_per_s']:.1f} users/s",
            flush=True,
        )
        del r
    return rows


def newest_trained(store: Store, index: str):
    """The newest version of ``index`` made by a train step (a store whose relearn has not been
    trained yet still measures its last trained index); StateError if none."""
    for info in reversed(store.list_versions(index)):
        if Recipe.from_json(info.config).step == "train":
            return info
    raise StateError(f"index {index!r} has no trained version")


def _users(held_out, n: int):
    """The first ``n`` users of ``held_out`` (all of them when n is its size)."""
    return held_out if n >= len(held_out) else held_out.subset(n)


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# Reduced-precision search on trained indexes ({res['device']}, beam {res['beam']}, k {res['k']}, "
        f"batch {res['batch']})",
        "",
        f"Machine: {m['cpu_count']} CPU cores ({m['torch_threads']} torch threads), GPU: {m['gpu'] or 'none'}; "
        f"torch {m['torch']}; load average before {tuple(round(x, 2) for x in m['load_average_before'])}. "
        f"Median of {res['repeats']} passes over the test users after one untimed pass. Command: `{res['command']}`.",
        "",
        f"| index | method | precision | compiled | users | overlap@{res['k']} with fp32 | recall@{res['k']} "
        "| change (points) | users/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['index']} | {r['method']} | {r['precision']} | {r['compiled'] or 'no'} | {r['users']} "
            f"| {r['overlap']:.4f} | {r['recall']:.4f} | {r['recall_change_points']:+.2f} | {r['users_per_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+", help="DuckDB store files")
    ap.add_argument("--indexes", nargs="+", default=None, help="index names (default: every curves-* index)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"], help="the first must be fp32")
    ap.add_argument("--compile", action="store_true", help="also the compiled search of TDM/JTM indexes")
    ap.add_argument("--k", type=at_least(1), default=50)
    ap.add_argument("--beam", type=at_least(1), default=50)
    ap.add_argument("--batch", type=at_least(1), default=1024)
    ap.add_argument("--repeats", type=at_least(1), default=5)
    ap.add_argument("--quick", action="store_true", help="two batches of test users, for a rehearsal")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out-dir", default=str(RESULTS))
    a = ap.parse_args(argv)
    if a.precisions[0] != "fp32":
        raise SystemExit("--precisions: the first must be fp32 (the reference of the overlap)")
    res = {
        "command": " ".join(["python -m benchmarks.precision", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "device": a.device,
        "k": a.k,
        "beam": a.beam,
        "batch": a.batch,
        "repeats": a.repeats,
        "rows": [],
    }
    for path in a.stores:
        if not os.path.exists(path):
            raise SystemExit(f"no such store file {path!r}")
        url = f"duckdb:///{os.path.abspath(path)}"
        names = a.indexes or [row[0] for row in Store.open(url).list_indexes() if row[0].startswith("curves-")]
        for index in names:
            try:
                res["rows"] += measure_index(url, index, a)
            except StateError as exc:  # e.g. a store whose training has not finished
                print(f"{path}: {index} skipped: {exc}", flush=True)
    name = "precision" + (f"_{a.tag}" if a.tag else "") + ("_quick" if a.quick else "")
    write_json_and_markdown(__import__("pathlib").Path(a.out_dir) / name, res, markdown)
    print(markdown(res))
    return res


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
