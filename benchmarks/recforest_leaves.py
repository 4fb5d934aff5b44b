"""RecForest's final ranking: how the candidates' leaves missing from a tree's beam are scored.

    python -m benchmarks.recforest_leaves                      # three corpus sizes, one thread
    python -m benchmarks.recforest_leaves --cases 3615:100:64  # items:beam:batch

Every candidate item is scored by sum_t log p_t(item) over all trees, and p_t(item) sums over the
item's leaves, so the leaves that tree t's beam did not reach must be scored too:
``teacher`` forces the paths through the decoder, one pass per distinct parent prefix (an item's
copies sit on sibling leaves; distinct parents x H token steps per user),
``cached`` decodes the parents level by level with the cache over their distinct prefixes (at most
sum_l min(K^l, parents) steps, H calls), ``expand`` expands the whole tree with the cache (one step
per internal node, 1 + K + ... + K^(H-1)), ``auto`` (the default) takes cached over teacher when
it saves more tokens than its extra calls cost (``EXPAND_MARGIN``, ``STEP_TOKENS``).
Untrained 4-tree forests of 18-ary trees over random
embeddings (cost does not depend on training), 69-item histories, k = 50; users/s of one search
of the batch, the modes alternating, median of ``--repeats`` after a warm-up. The three modes must
return the same items (checked). Writes ``results/recforest_leaves.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from benchmarks.gpu import build_recforest, searchers
from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from benchmarks.quality import RESULTS
from grove.models.recforest.search import EXPAND_MARGIN, STEP_TOKENS

MODES = ("teacher", "cached", "expand", "auto")


def run_case(items: int, beam: int, batch: int, trees: int, repeats: int) -> dict:
    searcher = searchers("recforest", build_recforest(items, trees, 0, "cpu"), torch.device("cpu"))
    hist = torch.randint(0, items, (batch, 69), generator=torch.Generator().manual_seed(0))
    searcher.search(hist, k=50, beam=beam)  # warm-up
    times, out = {m: [] for m in MODES}, {}
    for _ in range(repeats):
        for mode in MODES:
            searcher.leaf_scoring = mode
            start = time.perf_counter()
            out[mode] = searcher.search(hist, k=50, beam=beam)
            times[mode].append(time.perf_counter() - start)
    same = all(torch.equal(out["teacher"][1], out[m][1]) for m in MODES)
    ups = {m: batch / statistics.median(v) for m, v in times.items()}
    return {
        "items": items,
        "beam": beam,
        "batch": batch,
        "trees": trees,
        "depth": searcher.tables.depths[0],
        "candidates_per_user": searcher.last_candidates(),
        "users_per_s": ups,
        "runs_s": times,
        "same_items": same,
        "auto_over_teacher": ups["auto"] / ups["teacher"],
    }


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# RecForest final ranking: teacher forcing vs cached prefixes vs tree expansion",
        "",
        f"Machine: {m['cpu_count']} cores ({m['cpu_model']}), torch {m['torch']}, {res['threads']} thread(s); "
        f"load average {m.get('load_average_before')}. {res['trees']} trees, 18-ary, k 50, median of {res['repeats']} "
        f"after a warm-up, modes alternating. EXPAND_MARGIN = {res['expand_margin']}, "
        f"STEP_TOKENS = {res.get('step_tokens')}. Command: `{res['command']}`.",
        "",
        "| items | depth | beam | batch | candidates/user | teacher users/s | cached users/s | expand users/s "
        "| auto users/s | auto / teacher | same items |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in res["cases"]:
        u = c["users_per_s"]
        lines.append(
            f"| {c['items']:,} | {c['depth']} | {c['beam']} | {c['batch']} | {c['candidates_per_user']:.0f} | "
            f"{u['teacher']:.2f} | {u['cached']:.2f} | {u['expand']:.2f} | {u['auto']:.2f} | "
            f"{c['auto_over_teacher']:.2f}x | "
            f"{c['same_items']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--cases", nargs="+", default=["3615:100:64", "9724:100:64", "10000:50:16"], help="ITEMS:BEAM:BATCH"
    )
    ap.add_argument("--trees", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", default=str(RESULTS))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cases = []
    for spec in a.cases:
        try:
            items, beam, batch = (int(x) for x in spec.split(":"))
        except ValueError:
            ap.exit(2, f"recforest_leaves: --cases {spec!r}: expected ITEMS:BEAM:BATCH\n")
        cases.append(run_case(items, beam, batch, a.trees, a.repeats))
        print(json.dumps({k: v for k, v in cases[-1].items() if k != "runs_s"}, default=float), flush=True)
    res = {
        "command": "python -m benchmarks.recforest_leaves " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "threads": a.threads,
        "trees": a.trees,
        "repeats": a.repeats,
        "expand_margin": EXPAND_MARGIN,
        "step_tokens": STEP_TOKENS,
        "cases": cases,
    }
    write_json_and_markdown(os.path.join(a.out_dir, "recforest_leaves"), res, markdown)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
