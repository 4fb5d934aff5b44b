"""Serving speed of stored index versions side by side: users/s at each beam, the versions timed
in one process in alternating rounds, and each version's speed relative to the first, round by
round.

    python -m benchmarks.side_by_side a.duckdb:curves-tdm b.duckdb:curves-tdm --tag tdm_12k_vs_1ep
    python -m benchmarks.side_by_side grove.duckdb:movies:production grove.duckdb:movies@7 --beams 20 50

Why: on a shared VM the same computation runs at different speeds from one hour to the next (this
2-core VM drifted up to 2x over minutes), so two indexes timed in two runs can differ 2x for no
reason of theirs. Here every round times each version once, back to back, in an order rotated
from round to round; the ratio of two versions is taken within each round (same machine state)
and its median quoted. Each version is loaded as a server loads it (`Retriever.load`).

SPEC: ``FILE:INDEX`` (the production alias, else the newest version), ``FILE:INDEX@VERSION`` or
``FILE:INDEX:ALIAS``. Queries: the test users of the first version's dataset and split, read from
its store and repeated to whole batches of ``--batch`` rows; every version must index the same
number of items. Top ``--k`` per user, ``--threads`` torch threads, CPU.

Writes ``benchmarks/results/side_by_side[_<tag>].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

from benchmarks.curves import batch_rows
from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from benchmarks.quality import RESULTS
from benchmarks.timing import at_least


def parse_spec(spec: str) -> tuple[str, str, int | None, str | None]:
    """``FILE:INDEX[@VERSION|:ALIAS]`` -> (file, index, version, alias); SystemExit naming the spec."""
    file, sep, rest = spec.partition(":")
    if not sep or not file or not rest:
        raise SystemExit(f"{spec!r}: expected FILE:INDEX, FILE:INDEX@VERSION or FILE:INDEX:ALIAS")
    index, alias = rest.split(":", 1) if ":" in rest else (rest, None)
    version = None
    if "@" in index:
        index, _, text = index.partition("@")
        if not text.isdigit():
            raise SystemExit(f"{spec!r}: the version after '@' must be a number, got {text!r}")
        version = int(text)
    if not index or (alias is not None and not alias):
        raise SystemExit(f"{spec!r}: empty index or alias name")
    if not os.path.exists(file):
        raise SystemExit(f"{spec!r}: no such file {file!r}")
    return file, index, version, alias


def load(specs: list[str]) -> tuple[list[dict], object]:
    """Each spec's Retriever (label, file, version info) and the first version's split."""
    from grove.indexstore.errors import GroveError
    from grove.indexstore.store import Store
    from grove.models.retriever import Retriever

    loaded, data = [], None
    for spec in specs:
        file, index, version, alias = parse_spec(spec)
        store = Store.open(f"duckdb:///{os.path.abspath(file)}")
        try:
            retriever = Retriever.load(store, index, version=version, alias=alias, device="cpu")
            info = retriever.version
            if data is None:
                data = store.load_split(info.dataset, info.split)
        except GroveError as exc:
            raise SystemExit(f"{spec!r}: {exc}") from exc
        n_items = len(retriever.item_raw)
        if n_items != data.n_items:
            raise SystemExit(
                f"{spec!r}: indexes {n_items} items, the first version's split has {data.n_items}: "
                "side-by-side versions must serve the same item set"
            )
        loaded.append(
            {
                "spec": spec,
                "retriever": retriever,
                "index": index,
                "version": info.id,
                "method": info.method,
                "dataset": info.dataset,
                "split": info.split,
            }
        )
    return loaded, data


def time_side_by_side(
    searchers: list, rows: torch.Tensor, k: int, beam: int, batch: int, rounds: int
) -> list[list[float]]:
    """users/s of every searcher in every round: (rounds, V). Round r times the searchers in the
    order rotated by r, one pass over ``rows`` each, after one untimed pass of each."""

    def one_pass(s):
        for i in range(0, rows.shape[0], batch):
            s.search(rows[i : i + batch], k, beam)

    for s in searchers:
        one_pass(s)
    out = []
    for r in range(rounds):
        speeds = [0.0] * len(searchers)
        for j in range(len(searchers)):
            v = (j + r) % len(searchers)
            start = time.perf_counter()
            one_pass(searchers[v])
            speeds[v] = rows.shape[0] / (time.perf_counter() - start)
        out.append(speeds)
    return out


def summarise(speeds: list[list[float]]) -> list[dict]:
    """Per version: median users/s, and the median / min / max over rounds of its speed over the
    first version's in the same round."""
    rows = []
    for v in range(len(speeds[0])):
        ratios = [r[v] / r[0] for r in speeds]
        rows.append(
            {
                "users_per_s": statistics.median(r[v] for r in speeds),
                "ratio_to_first": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
        )
    return rows


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# Side by side: {', '.join(v['spec'] for v in result['versions'])}",
        "",
        f"{result['dataset']} split {result['split']}, {result['test_users']} test users repeated to whole "
        f"batches of {result['batch']}, top {result['k']}, {result['threads']} thread(s), CPU; "
        f"{result['rounds']} alternating rounds after a warm-up: users/s is each version's median over "
        "rounds, the ratio the median (min..max) over rounds of its speed over the first version's in "
        "the same round.",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, torch {m['torch']}, load average before "
        f"{m['load_average_before'][0]}.",
        "",
        "| version | method | beam | users/s | ratio to first |",
        "|---|---|---|---|---|",
    ]
    for beam in result["beams"]:
        for v, row in zip(result["versions"], result["by_beam"][str(beam)]):
            lines.append(
                f"| {v['spec']} (v{v['version']}) | {v['method']} | {beam} | {row['users_per_s']:,.0f} "
                f"| {row['ratio_to_first']:.3f} ({row['ratio_min']:.3f}..{row['ratio_max']:.3f}) |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("specs", nargs="+", metavar="SPEC", help="FILE:INDEX, FILE:INDEX@VERSION or FILE:INDEX:ALIAS")
    p.add_argument("--beams", nargs="+", type=at_least(1), default=[1, 20, 100])
    p.add_argument("--k", type=at_least(1), default=50)
    p.add_argument("--batch", type=at_least(1), default=256)
    p.add_argument("--rounds", type=at_least(1), default=7)
    p.add_argument("--threads", type=at_least(1), default=2)
    p.add_argument("--tag", default="")
    p.add_argument("--out-dir", default=str(RESULTS))
    a = p.parse_args(argv)
    if len(a.specs) < 2:
        raise SystemExit("give at least two versions to compare")
    torch.set_num_threads(a.threads)
    loaded, data = load(a.specs)
    hist = torch.as_tensor(np.asarray(data.test.histories)).long()
    rows = batch_rows(hist, a.batch)
    result = {
        "command": " ".join(["python -m benchmarks.side_by_side", *(sys.argv[1:] if argv is None else argv)]),
        "dataset": loaded[0]["dataset"],
        "split": loaded[0]["split"],
        "test_users": int(hist.shape[0]),
        "batch": a.batch,
        "k": a.k,
        "threads": a.threads,
        "rounds": a.rounds,
        "beams": a.beams,
        "machine": machine_info(),
        "versions": [{k: v for k, v in x.items() if k != "retriever"} for x in loaded],
        "by_beam": {},
        "speeds": {},
    }
    searchers = [x["retriever"].searcher for x in loaded]
    for beam in a.beams:
        speeds = time_side_by_side(searchers, rows, a.k, beam, a.batch, a.rounds)
        result["speeds"][str(beam)] = speeds
        result["by_beam"][str(beam)] = summary = summarise(speeds)
        print(
            f"beam {beam}: "
            + ", ".join(
                f"{x['spec']} {s['users_per_s']:,.0f} users/s ({s['ratio_to_first']:.3f}x)"
                for x, s in zip(loaded, summary)
            ),
            flush=True,
        )
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(a.out_dir, exist_ok=True)
    out = os.path.join(a.out_dir, "side_by_side" + (f"_{a.tag}" if a.tag else ""))
    write_json_and_markdown(out, result, markdown)
    print(f"wrote {out}.json and .md")
    return result


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
