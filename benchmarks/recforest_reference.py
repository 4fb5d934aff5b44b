"""RecForest's search at batch 1 on the CPU: grove against a reference written the way the
official code searches (issue 29.3), side by side, rounds interleaved.

    python -m benchmarks.recforest_reference                    # 71,436 items, 1 tree/beam 20, 4 trees/beam 100
    python -m benchmarks.recforest_reference --items 5000 --users 3 --rounds 1    # a quick look
    python -m benchmarks.recforest_reference --compile          # grove compiled as well

The reference (`reference_search`) follows the official implementation's search as its paper
describes it, over grove's own network and trees so that both rank the same items:

* every tree's beam search runs level by level, and at every level the encoder runs over the
  history again and the decoder over the whole prefix of every beam (no cache of either);
* the union of the trees' items is ranked by sum_t log p_t(item), each (candidate, leaf) path
  scored by its own teacher-forced decoder pass (no sharing between sibling leaves), an item's
  leaves summed as grove does (`grove.models.recforest.search`).

grove's `RecForestSearcher` encodes once, decodes with a key/value cache, reuses the leaves its
beams scored (their siblings too) and scores the other leaves from their parents (one
teacher-forced pass per parent, or the parents' distinct prefixes with the cache). ``--compile``
also times grove's compiled search (`RecForestSearcher.compile`, compiled once in the warm-up:
encoder and beams as one graph, with one tree the final ranking too). Both run on the same
untrained paper-sized network (hidden 96, 2 + 2 layers, 4 heads) over complete 18-ary trees
built by Algorithm 2 from random 24-d item embeddings (untrained: the cost of a search does not
depend on the weights), with random 69-item histories, one torch thread, one user per call. Each
round times every implementation over all the users, one user after another (as a server takes
requests), the implementations' order alternating from round to round; ms/user is the median
over rounds of each round's mean, the ratio is taken within each round. (Alternating
implementations user by user instead starts every grove search with caches the reference has
just filled with its own data: a cold start rather than a server's steady state;
benchmarks/README.md gives both.) The first user's top-k of the two must agree (overlap >= 0.99,
checked; float sums differ only in the last bits).

Writes ``benchmarks/results/recforest_reference.json`` and ``.md`` (``_<tag>`` with ``--tag``).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np
import torch

from benchmarks.gpu import build_recforest, overlap
from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from benchmarks.timing import at_least
from grove.indexstore.structures import Forest
from grove.models.recforest.method import RecForestConfig, make_net
from grove.models.recforest.network import RecForestNet
from grove.models.recforest.search import ForestTables, RecForestSearcher
from grove.models.topk import ranked, unique_rows

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
HIST = 69


@torch.no_grad()
def reference_search(net: RecForestNet, tables: ForestTables, histories: torch.Tensor, k: int, beam: int):
    """(scores (U, k), items (U, k)) as the official search computes them (module doc)."""
    u = histories.shape[0]
    rows = torch.arange(u)[:, None]
    found = []
    for t, dec in enumerate(net.decoder_list()):
        codes = torch.zeros(u, 1, 0, dtype=torch.long)
        scores = torch.zeros(u, 1)
        for level in range(dec.depth):
            mem = net.memories(histories)[t]  # the encoder again, at every step
            prefix = torch.cat([codes, codes.new_zeros(u, codes.shape[1], 1)], dim=2)
            logp = dec.level_log_probs(mem, prefix)[:, :, level]  # the decoder over the whole prefix
            cand = (scores[:, :, None] + logp).reshape(u, -1)
            scores, idx = cand.topk(min(beam, cand.shape[1]), dim=1)
            parent, code = idx // dec.arity, idx % dec.arity
            codes = torch.cat([codes[rows, parent], code[:, :, None]], dim=2)
        found.append(tables.leaf_item[t][tables.to_codes(codes)])
    cand = unique_rows(torch.cat(found, dim=1))  # (U, C)
    mems = net.memories(histories)
    total = torch.zeros(cand.shape)
    for t, dec in enumerate(net.decoder_list()):
        leaves = tables.item_codes[t][cand.clamp(min=0)]  # (U, C, R)
        paths = tables.digits(leaves.reshape(u, -1), t)  # (U, C*R, H): every leaf its own pass
        lp = dec.path_log_probs(mems[t], paths).view(leaves.shape).masked_fill(leaves < 0, float("-inf"))
        total = total + torch.logsumexp(lp, dim=2)
    return ranked(total.masked_fill(cand < 0, float("-inf")), cand, k)


def side_by_side(
    net, tables, n_items: int, hist: torch.Tensor, k: int, beam: int, rounds: int, compiled: bool = False
) -> dict:
    """ms/user of each implementation per round, the users searched one at a time and one after
    another, the implementations' order alternating from round to round; with ``compiled``,
    grove's compiled search too (`RecForestSearcher.compile`, compiled once in the warm-up,
    outside the timing)."""
    grove = RecForestSearcher(net, tables, n_items, torch.device("cpu"))
    impls = {
        "grove": lambda h: grove.search(h, k, beam),
        "reference": lambda h: reference_search(net, tables, h, k, beam),
    }
    if compiled:
        fast = RecForestSearcher(net, tables, n_items, torch.device("cpu"))
        fast.compile()
        impls["grove compiled"] = lambda h: fast.search(h, k, beam)
    first = {name: f(hist[:1])[1] for name, f in impls.items()}  # warm-up, and the agreement check
    agree = min(overlap(first["reference"], first[name]) for name in impls if name != "reference")
    per_round: dict[str, list[float]] = {name: [] for name in impls}
    for r in range(rounds):
        for name in list(impls) if r % 2 == 0 else list(reversed(impls)):
            t = time.perf_counter()
            for i in range(hist.shape[0]):  # the users one after another, as a server takes them
                impls[name](hist[i : i + 1])
            per_round[name].append(1000 * (time.perf_counter() - t) / hist.shape[0])
    ratios = [ref / g for ref, g in zip(per_round["reference"], per_round["grove"])]
    row = {
        "ms_per_user": {name: statistics.median(v) for name, v in per_round.items()},
        "rounds_ms_per_user": per_round,
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "top_k_overlap": agree,
    }
    if compiled:
        row["ratio_compiled"] = statistics.median(
            ref / g for ref, g in zip(per_round["reference"], per_round["grove compiled"])
        )
    return row


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# RecForest search at batch 1: grove vs the official search's reference ({res['items']:,} items, "
        f"{res['arity']}-ary trees, k {res['k']})",
        "",
        f"Machine: {m['cpu_count']} CPU cores, {m['cpu_model']}, 1 torch thread; torch {m['torch']}; load average "
        f"before {tuple(round(x, 2) for x in m['load_average_before'])}. {res['users']} users, one per call, "
        f"{res['rounds']} rounds interleaved (median of the rounds' means). Command: `{res['command']}`.",
        "",
        "| trees | beam | reference ms/user | grove ms/user | reference / grove | rounds' ratios | top-k overlap |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        ratios = ", ".join(f"{x:.1f}" for x in r["ratios"])
        lines.append(
            f"| {r['trees']} | {r['beam']} | {r['ms_per_user']['reference']:.2f} | {r['ms_per_user']['grove']:.2f} "
            f"| {r['ratio']:.1f}x | {ratios} | {r['top_k_overlap']:.3f} |"
        )
    compiled = [r for r in res["rows"] if "ratio_compiled" in r]
    if compiled:
        lines += ["", "| trees | beam | grove compiled ms/user | reference / grove compiled |", "|---|---|---|---|"]
        for r in compiled:
            lines.append(
                f"| {r['trees']} | {r['beam']} | {r['ms_per_user']['grove compiled']:.2f} "
                f"| {r['ratio_compiled']:.1f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=at_least(2), default=71_436)
    ap.add_argument("--cases", nargs="+", default=["1:20", "4:100"], help="TREES:BEAM pairs")
    ap.add_argument("--k", type=at_least(1), default=50)
    ap.add_argument("--users", type=at_least(1), default=10, help="users per round, one per call")
    ap.add_argument("--rounds", type=at_least(1), default=5)
    ap.add_argument("--compile", action="store_true", help="also time grove's compiled search (compiled once)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out-dir", default=str(RESULTS))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cases = []
    for text in a.cases:
        trees, _, beam = text.partition(":")
        if not (trees.isdigit() and beam.isdigit() and int(trees) > 0 and int(beam) > 0):
            ap.error(f"--cases: expected TREES:BEAM with positive integers, got {text!r}")
        cases.append((int(trees), int(beam)))
    hist = torch.as_tensor(np.random.default_rng(1).integers(0, a.items, (a.users, HIST)))
    res = {
        "command": " ".join(
            ["python -m benchmarks.recforest_reference", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine_info(),
        "items": a.items,
        "arity": 18,
        "k": a.k,
        "users": a.users,
        "rounds": a.rounds,
        "rows": [],
    }
    forest, _ = build_recforest(a.items, max(t for t, _ in cases), 0, "cpu")  # trees 0.. of every case
    for trees, beam in cases:
        sub = Forest(forest.trees[:trees])
        torch.manual_seed(0)
        net = make_net(RecForestConfig(trees=trees), a.items, [t.depth for t in sub.trees]).eval()
        tables = ForestTables.from_forest(sub, "cpu")
        row = side_by_side(net, tables, a.items, hist, a.k, beam, a.rounds, a.compile)
        if row["top_k_overlap"] < 0.99:
            raise SystemExit(f"{trees} trees, beam {beam}: grove and the reference disagree ({row['top_k_overlap']})")
        res["rows"].append({"trees": trees, "beam": beam, **row})
        print(
            f"{trees} tree(s), beam {beam}: reference {row['ms_per_user']['reference']:.2f} ms/user, "
            f"grove {row['ms_per_user']['grove']:.2f} ({row['ratio']:.1f}x)"
            + (f", compiled {row['ms_per_user']['grove compiled']:.2f}" if a.compile else ""),
            flush=True,
        )
    name = "recforest_reference" + (f"_{a.tag}" if a.tag else "")
    write_json_and_markdown(pathlib.Path(a.out_dir) / name, res, markdown)
    print(markdown(res))
    return res


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
