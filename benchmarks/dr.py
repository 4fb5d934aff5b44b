"""Deep Retrieval benchmark: recall, fidelity, candidates, path sizes, EM rounds, search speed.

    python -m benchmarks.dr                                   # synthetic planted hierarchy
    python -m benchmarks.dr --dataset ml-1m-subset --device cuda

For J = 1 and J = 3 (alpha = ``--alpha``): construct (random codes) -> train, then ``--rounds``
times relearn (E + M step) -> train; after every train the test users are evaluated: recall@10
and @50 of beam search (softmax rerank of the B paths' items), of DR's brute-force reference
(the softmax model scoring every item), fidelity = their ratio, candidates per user, the top path
size (items on the most crowded path) and the number of non-empty paths. A beam sweep on the
final J=3 model shows candidates per user against recall (the paper sizes B so that the
candidates are 5-10x the final k).
Alpha sweep: from the J=3 model after round 0, one relearn with each alpha in ``--alphas`` gives
the top path size; one train more gives the recall. Search speed: users per second of
`DRSearcher.search` (and of the beam search alone) at batch 256 on CPU.

Writes ``benchmarks/results/dr.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np
import torch

from benchmarks.machine import machine_info
from benchmarks.output import write_json
from benchmarks.timing import median_seconds
from grove.indexstore.protocol import build_split_data, split_users
from grove.indexstore.samples import SplitData
from grove.models.dr.method import DRConfig, DRMethod
from grove.models.dr.search import beam_search, path_ids_of
from grove.models.evaluation import evaluate
from grove.models.method import Built
from grove.models.metrics import fidelity

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "dr.json"
DATASETS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets"


def load_data(name: str, items: int, users: int, seed: int, data_dir=DATASETS) -> SplitData:
    """ml-1m-subset through the readers and the protocol, or a synthetic planted hierarchy."""
    if name == "ml-1m-subset":
        from grove.indexstore.readers import read_interactions

        inter = read_interactions(pathlib.Path(data_dir) / name / "ratings_users0001-2999.dat.gz")
    else:
        from grove.indexstore.synth import synthesize

        inter, _ = synthesize(items, users, seed)
    assign = split_users(inter, seed=seed)
    return build_split_data(inter, assign, inter.n_items, None, name, "default")


def path_stats(codes) -> dict:
    sizes = np.unique(codes.path_ids().reshape(-1), return_counts=True)[1]
    return {"top_path": int(sizes.max()), "nonempty_paths": int(sizes.size), "mean_path_size": float(sizes.mean())}


@torch.no_grad()
def beam_diversity(searcher, data: SplitData, beam: int) -> int:
    """Distinct paths over all test users' B-path beams: B when every user gets the same beam
    (a structure model that learnt only popularity), up to users x B when beams are personal."""
    u = searcher.net.encode(torch.as_tensor(np.asarray(data.test.histories), dtype=torch.long))
    paths, logp = beam_search(searcher.net.structure, u, beam)  # (users, B, D), (users, B)
    return int(torch.unique(path_ids_of(paths, searcher.codes.arity)[torch.isfinite(logp)]).numel())


def measure(cfg: DRConfig, built: Built, data: SplitData, beam: int, device: str) -> dict:
    """Test-set recall@10/@50 of beam search and of the brute-force reference, fidelity, candidates."""
    s = DRMethod().searcher(cfg, built, device)
    res = evaluate(s, data.test, ks=(10, 50), beam=beam)
    bf = evaluate(s, data.test, ks=(10, 50), exhaustive=True)
    out = {
        "beam": beam,
        "candidates": res.mean_candidates,
        **path_stats(built.structure),
        "distinct_paths_in_user_beams": beam_diversity(s, data, beam),
    }
    for k in (10, 50):
        r, rb = res.value("recall", k), bf.value("recall", k)
        out.update(
            {
                f"recall@{k}": r,
                f"precision@{k}": res.value("precision", k),
                f"bf_recall@{k}": rb,
                f"fidelity@{k}": fidelity(r, rb),
            }
        )
    return out


def em_run(
    cfg: DRConfig, data: SplitData, rounds: int, beam: int, device: str, seed: int, label: str
) -> tuple[list[dict], list[Built]]:
    """Round 0 = random codes trained; rounds 1..n = relearn + train. Returns rows and builts."""
    m = DRMethod()
    t = time.perf_counter()
    built = m.train(cfg, m.construct(cfg, data, seed), data, seed)
    rows, builts = (
        [{"round": 0, "train_s": time.perf_counter() - t, **measure(cfg, built, data, beam, device)}],
        [built],
    )
    print(label, rows[-1], flush=True)
    for r in range(1, rounds + 1):
        t = time.perf_counter()
        built = m.relearn(cfg, built, data, seed + r)
        t_relearn = time.perf_counter() - t
        built = m.train(cfg, built, data, seed + r)
        rows.append(
            {
                "round": r,
                "relearn_s": t_relearn,
                "train_s": time.perf_counter() - t - t_relearn,
                **measure(cfg, built, data, beam, device),
            }
        )
        builts.append(built)
        print(label, rows[-1], flush=True)
    return rows, builts


def alpha_sweep(
    cfg: DRConfig, start: Built, data: SplitData, alphas: list[float], beam: int, device: str, seed: int
) -> list[dict]:
    m, rows = DRMethod(), []
    for a in alphas:
        c = DRConfig(**{**cfg.to_dict(), "alpha": a})
        relearnt = m.relearn(c, start, data, seed + 1)
        row = {"alpha": a, "after_mstep": path_stats(relearnt.structure)}
        row.update(measure(c, m.train(c, relearnt, data, seed + 1), data, beam, device))
        rows.append(row)
        print("alpha", row, flush=True)
    return rows


@torch.no_grad()
def search_speed(cfg: DRConfig, built: Built, data: SplitData, beam: int, batch: int = 256, repeats: int = 5) -> dict:
    """Users per second on CPU at ``batch`` users: full search and the beam search alone."""
    s = DRMethod().searcher(cfg, built, "cpu")
    h = torch.as_tensor(np.resize(np.asarray(data.test.histories), (batch, 69))).long()
    u = s.net.encode(h)

    full = batch / median_seconds(lambda: s.search(h, 50, beam), repeats)  # warm-up + median
    only = batch / median_seconds(lambda: beam_search(s.net.structure, u, beam), repeats)
    return {
        "batch": batch,
        "beam": beam,
        "k": 50,
        "users_per_s": full,
        "beam_only_users_per_s": only,
        "threads": torch.get_num_threads(),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="synthetic", choices=["synthetic", "ml-1m-subset"])
    p.add_argument("--items", type=int, default=2000, help="synthetic items")
    p.add_argument("--users", type=int, default=2000, help="synthetic users")
    p.add_argument("--arity", type=int, default=None, help="K (default 50 for ml-1m-subset, 20 synthetic)")
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--joint-epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--beam", type=int, default=50)
    p.add_argument(
        "--beams",
        type=int,
        nargs="*",
        default=[5, 10, 25, 100],
        help="beam sweep on the final J=3 model (candidates vs recall)",
    )
    p.add_argument("--alpha", type=float, default=3e-5)
    p.add_argument("--alphas", type=float, nargs="*", default=[0.0, 3e-7, 3e-5])
    p.add_argument("--max-samples", type=int, default=0)
    p.add_argument("--estep-beam", type=int, default=DRConfig.estep_beam, help="S: paths per sample in the E-step")
    p.add_argument("--estep-pool", type=int, default=DRConfig.estep_pool, help="candidate paths kept per item")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=str(DATASETS), help="folder holding ml-1m-subset/")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    data = load_data(a.dataset, a.items, a.users, a.seed, a.data_dir)
    arity = a.arity or (50 if a.dataset == "ml-1m-subset" else 20)
    base = DRConfig(
        arity=arity,
        depth=a.depth,
        n_paths=3,
        epochs=a.epochs,
        joint_epochs=a.joint_epochs,
        alpha=a.alpha,
        max_samples=a.max_samples,
        estep_beam=a.estep_beam,
        estep_pool=a.estep_pool,
        device=a.device,
        seed=a.seed,
    )
    result = {
        "dataset": a.dataset,
        "n_items": data.n_items,
        "n_train_samples": len(data.train),
        "n_test_users": len(data.test),
        "machine": machine_info(),
        "config": base.to_dict(),
        "filtered": False,
        "runs": {},
    }
    t0 = time.perf_counter()
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(complete: bool = False) -> None:  # after every stage: a run cut short keeps its rows
        result.update(complete=complete, total_s=time.perf_counter() - t0)
        write_json(out, result)

    builts = {}
    for j in (1, 3):
        cfg = DRConfig(**{**base.to_dict(), "n_paths": j})
        result["runs"][f"J={j}"], builts[j] = em_run(cfg, data, a.rounds, a.beam, a.device, a.seed, f"J={j}")
        save()
    result["alpha_sweep"] = alpha_sweep(base, builts[3][0], data, a.alphas, a.beam, a.device, a.seed)
    save()
    result["beam_sweep_J=3"] = [measure(base, builts[3][-1], data, b, a.device) for b in a.beams]
    result["search_speed_cpu"] = search_speed(base, builts[3][-1], data, a.beam)
    save(complete=True)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
