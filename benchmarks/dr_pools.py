"""Why Deep Retrieval's EM can crowd the items onto a few paths: E-step pool diversity.

    python -m benchmarks.dr_pools                       # ml-1m-subset (K=50, D=3, J=3)
    python -m benchmarks.dr_pools --quick               # synthetic smoke run

The M-step (appendix Algorithm 2) can only put an item on one of its E-step candidate paths
(the best ``S`` of s[v, c] over the beams of its training users), so however large alpha is,
the items spread over at most the union of those pools. This script trains the structure model
from random codes for a small and a large amount of training, then for each E-step width S:
counts the distinct paths over all items' pools and over the test users' beams, runs one
M-step per alpha and retrains one epoch, and reports the top path, candidates per user and
recall@50 (beam 10 and 50) against the brute-force reference.

Writes ``benchmarks/results/dr_pools.json`` (or ``--out``), rewritten after every row.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np
import torch

from benchmarks.dr import DATASETS, beam_diversity, load_data, path_stats
from benchmarks.machine import machine_info
from benchmarks.output import write_json
from grove.models.dr.em import estep_scores, mstep, pool_coverage
from grove.models.dr.method import DRConfig, DRMethod, load_net
from grove.models.evaluation import evaluate
from grove.models.method import Built

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "dr_pools.json"


def retrieval(cfg: DRConfig, built: Built, data, beams=(10, 50)) -> dict:
    s = DRMethod().searcher(cfg, built, "cpu")
    out = {"bf_recall@50": evaluate(s, data.test, ks=(50,), exhaustive=True).value("recall", 50)}
    for b in beams:
        r = evaluate(s, data.test, ks=(50,), beam=b)
        out.update({f"recall@50_b{b}": r.value("recall", 50), f"candidates_b{b}": r.mean_candidates})
    out["distinct_paths_in_user_beams_b50"] = beam_diversity(s, data, 50)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-1m-subset", choices=["ml-1m-subset", "synthetic"])
    p.add_argument("--quick", action="store_true", help="synthetic 500 items, tiny training")
    p.add_argument("--arity", type=int, default=50)
    p.add_argument(
        "--trainings",
        nargs="*",
        default=["20000:1", "0:3"],
        help="MAX_SAMPLES:EPOCHS per structure model (0 = every window)",
    )
    p.add_argument("--estep-samples", type=int, default=50_000, help="windows scored in the E-step")
    p.add_argument("--widths", type=int, nargs="*", default=[20, 100], help="E-step S (= pool)")
    p.add_argument("--alphas", type=float, nargs="*", default=[3e-5, 3e-3])
    p.add_argument("--data-dir", default=str(DATASETS))
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    if a.quick:
        a.dataset, a.arity, a.trainings, a.estep_samples, a.widths = "synthetic", 10, ["2000:1"], 2000, [5]
    torch.manual_seed(0)
    data = load_data(a.dataset, 500, 500, 0, a.data_dir)
    result = {
        "dataset": a.dataset,
        "n_items": data.n_items,
        "n_train_samples": len(data.train),
        "settings": vars(a),
        "machine": machine_info(),
        "rows": [],
        "complete": False,
    }
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    m, dev = DRMethod(), torch.device("cpu")
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(len(data.train), min(a.estep_samples, len(data.train)), replace=False))
    pairs = data.train.subset(keep)
    for spec in a.trainings:
        cap, epochs = (int(x) for x in spec.split(":"))
        cfg = DRConfig(
            arity=a.arity,
            depth=3,
            n_paths=3,
            epochs=epochs,
            joint_epochs=min(2, epochs),
            max_samples=cap,
            device="cpu",
            seed=0,
        )
        t = time.perf_counter()
        start = m.train(cfg, m.construct(cfg, data, 0), data, 0)
        base = {
            "max_samples": cap,
            "epochs": epochs,
            "train_s": time.perf_counter() - t,
            "round0": retrieval(cfg, start, data),
        }
        net, _ = load_net(cfg, start, dev)
        one = DRConfig(**{**cfg.to_dict(), "epochs": 1, "joint_epochs": 0})  # the retrain after an M-step
        for width in a.widths:
            t = time.perf_counter()
            cands = estep_scores(net, pairs, data.n_items, width, width, 512, dev)
            cov = pool_coverage(cands, cfg.n_paths)
            pools = {
                "estep_width": width,
                "estep_s": time.perf_counter() - t,
                "items_with_candidates": cov.items,
                "distinct_paths_in_pools": cov.paths,
                "least_top_path": cov.least_top_path,
            }
            for alpha in a.alphas:
                codes = mstep(cands, start.structure, alpha, 4, 0)
                trained = m.train(one, Built(codes, dict(start.artifacts)), data, 1)
                row = {
                    **base,
                    **pools,
                    "alpha": alpha,
                    "after_mstep": path_stats(codes),
                    "retrained": retrieval(one, trained, data),
                }
                result["rows"].append(row)
                write_json(out, result)
                print({k: v for k, v in row.items() if k != "round0"}, flush=True)
    result["complete"] = True
    write_json(out, result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
