"""Quality benchmark: every method against the two-tower brute force and Item-CF (issues 3, 4, 5, 7).

    python -m benchmarks.quality                                   # ml-1m-subset, seeds 0 1 2
    python -m benchmarks.quality --dataset ml-latest-small --seeds 0 1 2 --device auto
    python -m benchmarks.quality --dataset ml-1m-subset ml-latest-small --jobs 6   # parallel seeds
    python -m benchmarks.quality --quick                           # seconds-long smoke run
    python -m benchmarks.quality --merge A.json B.json --tag T     # one run's seeds, run apart
    python -m benchmarks.quality --combine A.json B.json --tag T   # runs of other methods/budgets: one table

For each dataset and seed: the ratings (and the genre file, for TDM's category tree) are imported
into a temporary DuckDB store (`flows.datasets.import_file`), split with the protocol
(`flows.datasets.split_dataset`, split seed = the run's seed: the spread over seeds covers both
the user split and the model initialisation) and loaded as `SplitData` (`Store.load_split`).
Without the store's packages (duckdb, sqlalchemy, alembic) the same readers and protocol
functions are called directly; the JSON says which path ran (``data_path``).
Every method then runs its lifecycle in-process (no Prefect), with the seeds `flows.steps` uses
(train: seed + round, relearn: seed + 1000 * round):

* TDM: category tree -> train ("initial tree"); k-means relearn -> train ("1 relearn").
* JTM: category tree -> train; 2 x (tree learning -> train): "initial", "1 relearn", "2 relearns".
* DeFoRec: category tree -> train = 1 tree; ``--deforec-rounds`` - 1 times (tree learning, append,
  train): the forest of every round, plus the last round's tree alone.
* RecForest: 4 trees built once over the two-tower item embeddings; the network trained for the
  first 1, 2 and 4 trees.
* DR: J = 1 and J = 3: random codes -> train, ``--dr-em`` x (E+M step -> train).
  DR's brute force (its softmax model over every item) is the ``exhaustive`` reference.
* Two-tower (exact top-k over all items) and Item-CF.

Evaluation (PROTOCOL.md): the split's test users, P/R/F/NDCG/Novelty @10, @20, @50, seen items
kept (main table) and filtered; each index at beams 20/50/100 (``--beams``) with fidelity =
recall(beam) / recall(same model scoring every item). Training samples/s = samples processed by
`train` (epochs x windows) / wall seconds of the call (on the training device). Search speed:
users/s of the evaluation on the evaluation device (whole test set, batches of 256), and, for the
first seed, users/s on the CPU at batch 256 with ``--cpu-threads`` threads (median of
``--speed-repeats`` runs after a warm-up, exhaustive scoring too), for the final model of
each lifecycle only (search cost depends on the index size, not on the training round).

Configs (full run; ``--quick`` caps everything, see QUICK) are in CONFIGS below and in the JSON.
They were chosen to converge on ml-1m-subset within the GPU budget: training loss flattens
after 3-4 epochs for the tree scorers and two-tower; DR gets the paper's 2 joint + 2 frozen
epochs and 3 EM rounds of 2 further epochs each.

Outputs ``benchmarks/results/quality_<dataset>.json`` (every seed's raw metrics, the
aggregates mean/std, configs, machine) and ``quality_<dataset>.md`` (tables, mean ± std).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

import numpy as np
import torch

from benchmarks.machine import machine_info
from benchmarks.timing import median_seconds

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA_DIRS = [ROOT.parent / "shared" / "datasets", ROOT / ".devcarry" / "quality" / "datasets"]

DATASETS = {
    "ml-1m-subset": ("ratings_users0001-2999.dat.gz", "movies.dat"),
    "ml-latest-small": ("ratings.csv", "movies.csv"),
}
KS = (10, 20, 50)
METHODS = ("tdm", "jtm", "deforec", "recforest", "dr", "two_tower", "itemcf")

# method -> config values (the method's frozen dataclass fields); "device" is set from --device.
CONFIGS: dict[str, dict] = {
    "tdm": {"arity": 2, "epochs": 4, "batch_size": 256, "lr": 1e-3, "lr_decay": 0.9, "kmeans_iters": 10},
    "jtm": {"arity": 2, "epochs": 4, "batch_size": 256, "lr": 1e-3, "lr_decay": 0.9, "gap": 7,
            "tree_samples": 100_000},
    "deforec": {"arity": 2, "negatives": 40, "gap": 7, "epochs": 3, "batch_size": 128, "lr": 1e-3,
                "lr_decay": 0.9, "tree_samples": 100_000},
    "recforest": {"arity": 18, "trees": 4, "hidden": 96, "epochs": 3, "batch_size": 256, "lr": 1e-3,
                  "embeddings": "two_tower", "pretrain_epochs": 4},
    "dr": {"arity": 50, "depth": 3, "epochs": 4, "joint_epochs": 2, "batch_size": 256, "lr": 1e-3,
           "alpha": 3e-3, "estep_beam": 100, "estep_pool": 100, "mstep_iters": 4},  # benchmarks.dr's operating point
    "two_tower": {"dim": 24, "epochs": 4, "negatives": 100, "batch_size": 256, "lr": 1e-3},
    "itemcf": {"neighbours": 100},
}
LIFECYCLE = {"deforec_rounds": 3, "recforest_trees": (1, 2, 4), "dr_paths": (1, 3), "dr_em_rounds": 3,
             "dr_em_epochs": 2, "jtm_relearns": 2}
# --quick: tiny caps so that a run takes a minute or two (numbers are meaningless)
QUICK = {
    "tdm": {"epochs": 1, "max_samples": 4000},
    "jtm": {"epochs": 1, "max_samples": 4000, "tree_samples": 4000},
    "deforec": {"epochs": 1, "max_samples": 4000, "tree_samples": 4000},
    "recforest": {"epochs": 1, "max_steps": 15, "pretrain_max_steps": 15},
    "dr": {"epochs": 1, "joint_epochs": 1, "max_samples": 4000},
    "two_tower": {"epochs": 1, "max_steps": 20},
    "itemcf": {},
}
QUICK_LIFECYCLE = {"deforec_rounds": 2, "recforest_trees": (1, 2), "dr_paths": (1, 3), "dr_em_rounds": 1,
                   "dr_em_epochs": 1, "jtm_relearns": 1}


# ------------------------------------------------------------------------------------ data
def find_data_dir(name: str, explicit: str | None) -> pathlib.Path:
    dirs = [pathlib.Path(explicit)] if explicit else DATA_DIRS
    for d in dirs:
        if (d / name / DATASETS[name][0]).exists():
            return d / name
    raise SystemExit(f"dataset {name} not found under {', '.join(map(str, dirs))}")


def target_coverage(data) -> dict:
    """How much training signal each item gets: training windows per item, and the share of items
    that are the target of no window, or of fewer than 5. An item that is rarely a target keeps a
    near-random leaf embedding, which a k-means relearn then clusters (see benchmarks/README.md)."""
    counts = np.bincount(np.asarray(data.train.targets), minlength=data.n_items)
    return {"windows_per_item": float(counts.sum() / max(1, data.n_items)),
            "median_targets_per_item": float(np.median(counts)),
            "items_never_target": float((counts == 0).mean()), "items_under_5_targets": float((counts < 5).mean())}


def load_data(name: str, folder: pathlib.Path, seed: int, workdir: str, url: str | None = None
              ) -> tuple[object, dict]:
    """SplitData of ``name`` split with ``seed`` (split ``seed<seed>``): through a DuckDB store
    (``url``, else a new one in ``workdir``; the dataset and split are reused when the store has
    them) when its packages are importable, else through the same readers and protocol functions."""
    ratings, items = (folder / f for f in DATASETS[name])
    try:
        from flows.datasets import import_file, split_dataset
        from indexstore.store import Store
    except ImportError as exc:  # store stack missing (e.g. a bare GPU machine)
        note = f"direct (readers + protocol; store unavailable: {exc})"
        from indexstore.protocol import build_split_data, split_users
        from indexstore.readers import read_interactions, read_item_categories

        inter = read_interactions(str(ratings))
        cats = read_item_categories(str(items), inter.item_raw, seed)
        kept = np.asarray(cats.kept, dtype=object)
        names = sorted({c for c in kept if c is not None})
        code = {c: i for i, c in enumerate(names)}
        codes = np.array([code.get(c, -1) if c is not None else -1 for c in kept], dtype=np.int32)
        data = build_split_data(inter, split_users(inter, seed=seed), len(inter.item_raw), codes, name,
                                f"seed{seed}")
        return data, {"data_path": note}
    url = url or f"duckdb:///{workdir}/quality_{name}.duckdb"
    Store.init(url)
    store = Store.open(url)
    if name not in {d.name for d in store.list_datasets()}:
        import_file(store, str(ratings), name, items=str(items), seed=0)
    if f"seed{seed}" not in {s.name for s in store.list_splits(name)}:
        split_dataset(store, name, f"seed{seed}", seed=seed)
    data = store.load_split(name, f"seed{seed}")
    return data, {"data_path": f"store ({url})"}


# ------------------------------------------------------------------------------ measuring
def _flatten(res, tag: str, out: dict) -> None:
    suffix = "/filtered" if res.filtered else ""
    for r in res.rows:
        out[f"{r.name}@{r.k}{suffix}/{tag}"] = r.value


def evaluate_model(searcher, held, beams, brute_force: bool) -> dict:
    """Every metric of one trained model on the held-out users, flat ``name@k[/filtered]/tag``
    keys; tag = 'exact' (brute force: the model over every item) or 'b<beam>'."""
    from models.evaluation import evaluate
    from models.metrics import fidelity

    out: dict = {}
    dev = searcher.device.type
    for filt in (False, True):
        res = evaluate(searcher, held, KS, exhaustive=True, filter_seen=filt, role="test")
        _flatten(res, "exact", out)
        if not filt:
            out[f"users_per_s_{dev}/exact"] = res.users_per_second
    if brute_force:
        return out
    for beam in beams:
        for filt in (False, True):
            res = evaluate(searcher, held, KS, beam=beam, filter_seen=filt, role="test")
            _flatten(res, f"b{beam}", out)
            if not filt:
                out[f"users_per_s_{dev}/b{beam}"] = res.users_per_second
                if res.mean_candidates is not None:
                    out[f"candidates/b{beam}"] = res.mean_candidates
        for k in KS:
            out[f"fidelity@{k}/b{beam}"] = fidelity(out[f"recall@{k}/b{beam}"], out[f"recall@{k}/exact"])
    return out


def cpu_speed(make_searcher, held, beams, brute_force: bool, threads: int, repeats: int,
              batch: int = 256, k: int = 50) -> dict:
    """Users/s on the CPU at batch ``batch``: median of ``repeats`` timed searches after a warm-up,
    for every beam and for exhaustive scoring (an index's exhaustive runs are warmed up by its beam
    runs)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        searcher = make_searcher("cpu")
        hist = torch.as_tensor(np.asarray(held.histories), dtype=torch.long)
        hist = torch.cat([hist] * (batch // len(hist) + 1))[:batch]
        out = {}

        if not brute_force:
            for beam in beams:
                sec = median_seconds(lambda: searcher.search(hist, k, beam), repeats)
                out[f"users_per_s_cpu256/b{beam}"] = batch / sec
        # exhaustive scoring of an index is warmed up by the beam runs above
        sec = median_seconds(lambda: searcher.exhaustive(hist, k), repeats, warmup=brute_force)
        out["users_per_s_cpu256/exact"] = batch / sec
        return out
    finally:
        torch.set_num_threads(old)


def n_train_samples(name: str, cfg, n: int) -> int:
    """Samples one `train` call processes with ``cfg`` on ``n`` windows."""
    if getattr(cfg, "max_samples", 0):
        n = min(n, cfg.max_samples)
    total = cfg.epochs * n
    if getattr(cfg, "max_steps", 0):
        total = min(total, cfg.max_steps * cfg.batch_size)
    return total


class Runner:
    """One (dataset, seed): runs every lifecycle, evaluates, returns rows."""

    def __init__(self, data, seed: int, device: str, beams, speed: bool, threads: int, repeats: int,
                 configs: dict, lifecycle: dict, test_users: int | None):
        self.data, self.seed, self.device, self.beams = data, seed, device, tuple(beams)
        self.speed, self.threads, self.repeats = speed, threads, repeats
        self.configs, self.life = configs, lifecycle
        self.held = data.test if not test_users else data.test.subset(test_users)
        self.rows: list[dict] = []

    def cfg(self, name: str, **extra):
        from models.method import config_from_dict
        from models.registry import get_method

        values = {**self.configs[name], "device": self.device, "seed": self.seed, **extra}
        return config_from_dict(get_method(name).config_cls, values)

    def timed(self, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out, time.perf_counter() - t

    def train(self, method, cfg, built, seed, name):
        trained, sec = self.timed(method.train, cfg, built, self.data, seed)
        return trained, {"train_seconds": sec,
                         "train_samples_per_s": n_train_samples(name, cfg, len(self.data.train)) / sec}

    def record(self, label: str, method_name: str, make_searcher, brute_force: bool = False,
               speed: bool = False, **info):
        from models.method import resolve_device

        t = time.perf_counter()
        searcher = make_searcher(resolve_device(self.device))
        row = {"model": label, "method": method_name, "seed": self.seed, **info,
               **evaluate_model(searcher, self.held, self.beams, brute_force)}
        if self.speed and speed:  # final model of each lifecycle (speed depends on size, not round)
            row.update(cpu_speed(make_searcher, self.held, self.beams, brute_force, self.threads, self.repeats))
        row["eval_seconds"] = time.perf_counter() - t
        self.rows.append(row)
        hb = max(self.beams)
        r = {k: row.get(k) for k in ("recall@10/exact", "recall@50/exact", f"recall@10/b{hb}", f"recall@50/b{hb}")}
        print(f"[seed {self.seed}] {label}: " + ", ".join(f"{k}={v:.4f}" for k, v in r.items() if v is not None),
              flush=True)

    # ----------------------------------------------------------------------- methods
    def tdm_like(self, name: str, relearns: int, label: str, relearn_label: str):
        from models.registry import get_method

        m, cfg = get_method(name), self.cfg(name)
        built, sec_c = self.timed(m.construct, cfg, self.data, self.seed)
        built, info = self.train(m, cfg, built, self.seed, name)
        self.record(f"{label} initial tree", name, lambda d, b=built: m.searcher(cfg, b, d), **info)
        for r in range(1, relearns + 1):
            built, sec = self.timed(m.relearn, cfg, built, self.data, self.seed + 1000 * r)
            built, info = self.train(m, cfg, built, self.seed + r, name)
            info["relearn_seconds"] = sec
            self.record(f"{label} {relearn_label} x{r}", name, lambda d, b=built: m.searcher(cfg, b, d),
                        speed=r == relearns, **info)

    def run_tdm(self):
        self.tdm_like("tdm", 1, "TDM", "k-means relearn")

    def run_jtm(self):
        self.tdm_like("jtm", self.life["jtm_relearns"], "JTM", "tree learning")

    def run_deforec(self):
        from models.registry import get_method

        m, cfg = get_method("deforec"), self.cfg("deforec")
        built = m.construct(cfg, self.data, self.seed)
        built, info = self.train(m, cfg, built, self.seed, "deforec")
        self.record("DeFoRec 1 tree (round 0)", "deforec", lambda d, b=built: m.searcher(cfg, b, d), **info)
        rounds = self.life["deforec_rounds"]
        for r in range(1, rounds):
            built, sec = self.timed(m.relearn, cfg, built, self.data, self.seed + 1000 * r)
            built, info = self.train(m, cfg, built, self.seed + r, "deforec")
            info["relearn_seconds"] = sec
            self.record(f"DeFoRec forest of {r + 1} trees", "deforec",
                        lambda d, b=built: m.searcher(cfg, b, d), speed=r == rounds - 1, **info)

        def last_tree(d, b=built):
            f = m.searcher(cfg, b, d)
            return type(f)(f.trees[-1:], f.scorers[-1:], f.discriminate, f.n_items, f.device)

        self.record(f"DeFoRec last tree alone (round {rounds - 1})", "deforec", last_tree)

    def run_recforest(self):
        from models.method import Built
        from models.registry import get_method
        from indexstore.structures import Forest

        trees = self.life["recforest_trees"]
        m, base = get_method("recforest"), self.cfg("recforest", trees=max(trees))
        full, sec_c = self.timed(m.construct, base, self.data, self.seed)
        for t in trees:
            cfg = self.cfg("recforest", trees=t)
            built = Built(Forest(full.structure.trees[:t]), full.artifacts)
            built, info = self.train(m, cfg, built, self.seed, "recforest")
            info["construct_seconds_all_trees"] = sec_c
            self.record(f"RecForest {t} tree{'s' if t > 1 else ''}", "recforest",
                        lambda d, b=built, c=cfg: m.searcher(c, b, d), speed=t in (1, max(trees)), **info)

    def run_dr(self):
        from models.registry import get_method

        m = get_method("dr")
        for j in self.life["dr_paths"]:
            cfg = self.cfg("dr", n_paths=j)
            built = m.construct(cfg, self.data, self.seed)
            built, info = self.train(m, cfg, built, self.seed, "dr")
            em_cfg = self.cfg("dr", n_paths=j, epochs=self.life["dr_em_epochs"])
            relearn_s = 0.0
            for r in range(1, self.life["dr_em_rounds"] + 1):
                built, sec = self.timed(m.relearn, em_cfg, built, self.data, self.seed + 1000 * r)
                relearn_s += sec
                built, info = self.train(m, em_cfg, built, self.seed + r, "dr")
            sizes = np.unique(built.structure.path_ids().reshape(-1), return_counts=True)[1]
            info.update(relearn_seconds=relearn_s, top_path=int(sizes.max()), nonempty_paths=int(sizes.size))
            self.record(f"DR J={j} (brute force = its softmax model)", "dr",
                        lambda d, b=built, c=cfg: m.searcher(c, b, d), speed=True, **info)

    def run_two_tower(self):
        from models.registry import get_method

        m, cfg = get_method("two_tower"), self.cfg("two_tower")
        built = m.construct(cfg, self.data, self.seed)
        built, info = self.train(m, cfg, built, self.seed, "two_tower")
        self.record("Two-tower (brute force)", "two_tower", lambda d, b=built: m.searcher(cfg, b, d),
                    brute_force=True, speed=True, **info)

    def run_itemcf(self):
        from models.registry import get_method

        m, cfg = get_method("itemcf"), self.cfg("itemcf")
        built = m.construct(cfg, self.data, self.seed)
        built, sec = self.timed(m.train, cfg, built, self.data, self.seed)
        self.record("Item-CF", "itemcf", lambda d, b=built: m.searcher(cfg, b, d), brute_force=True,
                    speed=True, build_seconds=sec)


def run_one(job: dict) -> dict:
    """Worker: one (dataset, seed). Returns {"rows": [...], "errors": [...], ...}."""
    if job["quiet"]:  # parallel workers: tagged progress lines, at most one a minute per worker
        os.environ.setdefault("GROVE_PROGRESS_PREFIX", f"[{job['dataset']} seed {job['seed']}] ")
        os.environ.setdefault("GROVE_PROGRESS_INTERVAL", "60")
    torch.set_num_threads(job["threads_train"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data, info = load_data(job["dataset"], pathlib.Path(job["folder"]), job["seed"], tmp)
    info.update(n_items=int(data.n_items), train_windows=len(data.train), test_users=len(data.test),
                valid_users=len(data.valid), train_users=int(len(data.train_offsets) - 1), **target_coverage(data))
    runner = Runner(data, job["seed"], job["device"], job["beams"], job["speed"], job["cpu_threads"],
                    job["repeats"], job["configs"], job["lifecycle"], job["test_users"])
    errors, seconds = [], {}
    for name in job["methods"]:
        t = time.perf_counter()
        try:
            getattr(runner, f"run_{name}")()
        except Exception as exc:  # one method's failure must not lose the others' figures
            traceback.print_exc()
            errors.append({"method": name, "seed": job["seed"], "error": f"{type(exc).__name__}: {exc}"})
        seconds[name] = time.perf_counter() - t
        print(f"[{job['dataset']} seed {job['seed']}] {name} done in {seconds[name]:.1f}s", flush=True)
    return {"dataset": job["dataset"], "seed": job["seed"], "rows": runner.rows, "errors": errors,
            "method_seconds": seconds, "seconds": time.perf_counter() - start, "data": info}


# ----------------------------------------------------------------------------- reporting
def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and (sample) std over seeds of every numeric field, per model label, in run order."""
    order, groups = [], {}
    for r in rows:
        if r["model"] not in groups:
            order.append(r["model"])
            groups[r["model"]] = []
        groups[r["model"]].append(r)
    out = []
    for label in order:
        g = groups[label]
        agg = {"model": label, "method": g[0]["method"], "seeds": [r["seed"] for r in g]}
        keys = [k for k in g[0] if k not in ("model", "method", "seed")]
        for k in keys:
            vals = [r[k] for r in g if isinstance(r.get(k), (int, float)) and r.get(k) is not None]
            if not vals:
                continue
            agg[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                      "n": len(vals)}
        out.append(agg)
    return out


MERGE_MUST_MATCH = ("dataset", "quick", "configs", "lifecycle")
MERGE_SETTINGS_MUST_MATCH = ("overrides", "beams", "ks", "test_users")


def read_matching(paths: list[pathlib.Path], keys: tuple, settings_keys: tuple) -> list[dict]:
    """The quality results at ``paths``; ValueError naming the file and field when one is not
    readable or differs from the first in a top-level ``keys`` or a ``settings_keys`` field."""
    res = []
    for path in paths:
        try:
            res.append(json.loads(pathlib.Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable quality result ({exc})") from exc
    first = res[0]
    for path, r in zip(paths[1:], res[1:]):
        for key in keys:
            if r.get(key) != first.get(key):
                raise ValueError(f"{path}: {key} differs from {paths[0]} ({r.get(key)!r} against {first.get(key)!r})")
        for key in settings_keys:
            if r["settings"].get(key) != first["settings"].get(key):
                raise ValueError(f"{path}: settings.{key} {r['settings'].get(key)!r} differs from "
                                 f"{first['settings'].get(key)!r} in {paths[0]}")
    return res


def merge_results(paths: list[pathlib.Path]) -> dict:
    """One result from runs of the same dataset, configs and lifecycle whose seeds ran apart (in
    parallel, on two machines, or after a stop): rows, per-seed data and seconds joined, the
    aggregate recomputed. Raises ValueError naming the file and field when the runs differ in
    what they measured (dataset, configs, lifecycle, overrides, beams, ks, test users, methods)
    or when a seed comes twice."""
    res = read_matching(paths, MERGE_MUST_MATCH, MERGE_SETTINGS_MUST_MATCH + ("methods",))
    first = res[0]
    seeds = [s for r in res for s in r["settings"]["seeds_done"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed comes twice among {[str(p) for p in paths]}: seeds {seeds}")
    rows = [row for r in res for row in r["rows"]]
    asked = {s for r in res for s in r["settings"]["seeds"]}  # complete: every seed any run asked for is done
    return {**first, "command": " ; ".join(r["command"] for r in res), "complete": asked <= set(seeds),
            "merged_from": [str(p) for p in paths], "machines": [r["machine"] for r in res],
            "settings": {**first["settings"], "seeds": seeds, "seeds_done": seeds},
            "per_seed_data": [d for r in res for d in r["per_seed_data"]],
            "seconds": {"per_seed": {k: v for r in res for k, v in r["seconds"]["per_seed"].items()}},
            "errors": [e for r in res for e in r["errors"]], "aggregate": aggregate(rows), "rows": rows}


COMBINE_MUST_MATCH = ("dataset", "quick")
COMBINE_SETTINGS_MUST_MATCH = ("beams", "ks", "test_users")
BASELINES = ("two_tower", "itemcf")  # rows that no lifecycle field changes


def method_budget(result: dict, method: str) -> str:
    """The ``--set`` overrides of ``method`` in a run, as ``field=value ...`` ('' = CONFIGS sizes)."""
    return " ".join(o.split(".", 1)[1] for o in result["settings"].get("overrides", []) if o.startswith(method + "."))


def combine_results(paths: list[pathlib.Path]) -> dict:
    """One table from runs of one dataset that measured different methods or budgets (issue 7.1's
    "one table" when the methods ran apart, as they must on a 2-core CPU).

    A row is keyed by its model label, its method's config and, for the indexes, the lifecycle.
    Rows of one key from several runs join their seeds (mean ± std over all of them). A (key,
    seed) that two runs both measured (the baselines that every run repeats, on the same split) is
    kept once, from the first run given; how far the repeat differs is recorded under
    ``repeats`` (recall@10/@50, exact), since thread counts can change a float reduction and so
    a tie in the ranking. A label that comes under two configs gets its method's overrides in
    brackets (``[full size]`` for none), as does every row of a method that ran with overrides.
    Raises ValueError naming the file and field when the runs differ in dataset, beams, ks or
    test users, or when one seed's split differs (its training windows, test users or items)."""
    res = read_matching(paths, COMBINE_MUST_MATCH, COMBINE_SETTINGS_MUST_MATCH)
    first = res[0]
    splits: dict[int, tuple[str, dict]] = {}  # seed -> (file, its data): one split per seed
    for path, r in zip(paths, res):
        for d in r.get("per_seed_data", []):
            data = {k: d.get(k) for k in ("train_windows", "test_users", "n_items")}
            seen = splits.setdefault(d["seed"], (str(path), data))
            if seen[1] != data:
                raise ValueError(f"{path}: seed {d['seed']}'s split {data} differs from {seen[1]} in {seen[0]}")

    def key_of(r: dict, row: dict) -> tuple:
        m = row["method"]
        life = None if m in BASELINES else json.dumps(r.get("lifecycle"), sort_keys=True)
        return row["model"], json.dumps(r["configs"].get(m), sort_keys=True, default=str), life

    labels: dict[str, set] = {}
    for r in res:
        for row in r["rows"]:
            labels.setdefault(row["model"], set()).add(key_of(r, row))
    rows, where, repeats, told = [], {}, [], {}
    for path, r in zip(paths, res):
        for row in r["rows"]:
            key = key_of(r, row)
            if (key, row["seed"]) in where:
                kept = where[(key, row["seed"])]
                diff = {k: abs(row[k] - kept[k]) for k in ("recall@10/exact", "recall@50/exact")
                        if isinstance(row.get(k), (int, float)) and isinstance(kept.get(k), (int, float))}
                repeats.append({"model": row["model"], "seed": row["seed"], "file": str(path), "abs_diff": diff})
                continue
            out = dict(row)
            budget = method_budget(r, row["method"])
            if budget or len(labels[row["model"]]) > 1:
                out["model"] = f"{row['model']} [{budget or 'full size'}]"
            if told.setdefault(out["model"], key) != key:
                raise ValueError(f"{path}: rows {out['model']!r} come under two configs or lifecycles "
                                 f"that the same overrides name; combine those runs apart")
            where[(key, row["seed"])] = out
            rows.append(out)
    seeds = sorted({row["seed"] for row in rows})
    return {**first, "command": "python -m benchmarks.quality --combine " + " ".join(map(str, paths)),
            "complete": all(r.get("complete") for r in res), "combined_from": [str(p) for p in paths],
            "machines": [r["machine"] for r in res],
            "runs": [{"file": str(p), "command": r["command"], "methods": r["settings"].get("methods"),
                      "seeds": r["settings"].get("seeds_done", r["settings"].get("seeds")),
                      "complete": r.get("complete", True), "overrides": r["settings"].get("overrides"),
                      "configs": r.get("configs"), "lifecycle": r.get("lifecycle"), "speed_runs": speed_runs(r)}
                     for p, r in zip(paths, res)],
            "configs": None, "lifecycle": None,  # per run: see "runs"
            "settings": {**first["settings"], "seeds": seeds, "seeds_done": seeds, "overrides": [],
                         "methods": sorted({row["method"] for row in rows}), "tag": "combined"},
            "per_seed_data": [{"seed": s, **splits[s][1]} for s in sorted(splits)],
            "seconds": {"per_run": [r.get("seconds") for r in res]},
            "errors": [e for r in res for e in r["errors"]], "repeats": repeats,
            "aggregate": aggregate(rows), "rows": rows}


def speed_runs(result: dict) -> list[int] | None:
    """[timed runs per CPU speed figure, per exact-scoring figure] of a run that measured CPU speed
    (None for ``--no-speed``); files written before the exact column had its own count timed it once."""
    if not any(k.startswith("users_per_s_cpu256/") for row in result["rows"] for k in row):
        return None
    s = result["settings"]
    return [s["speed_repeats"], s.get("exact_speed_repeats", 1)]


def speed_caption(result: dict) -> str:
    """How many timed runs each CPU speed figure is the median of. A combined table whose runs
    timed differently says so and lists each run's counts under "Runs combined"."""
    runs = result.get("runs")
    counts = {tuple(c) for c in ([r.get("speed_runs") for r in runs] if runs else [speed_runs(result)]) if c}
    if len(counts) == 1:
        (n, exact), = counts
        return f"median of {n} runs after a warm-up (exact: {exact})"
    if not counts:  # --no-speed everywhere (or a combined file from before the per-run record)
        return "median of timed runs after a warm-up (no run here records its count)"
    return "median of several runs after a warm-up, as many as each run's line under 'Runs combined' says"


def _pm(agg: dict, key: str, pct: bool = True, digits: int = 2) -> str:
    v = agg.get(key)
    if v is None:
        return "–"
    scale = 100.0 if pct else 1.0
    if v["n"] > 1:
        return f"{scale * v['mean']:.{digits}f} ± {scale * v['std']:.{digits}f}"
    return f"{scale * v['mean']:.{digits}f}"


def _num(agg: dict, key: str) -> str:
    v = agg.get(key)
    if v is None:
        return "–"
    m = v["mean"]
    return f"{m:,.0f}" if m >= 100 else f"{m:,.1f}"


def headline(agg: dict, beam: int) -> str:
    """The tag of a row's headline figures: the index's beam search, or exact for brute force."""
    return f"b{beam}" if f"recall@10/b{beam}" in agg else "exact"


def overrides_sentence(overrides: list[str]) -> str:
    """The header's word on ``--set``: config overrides make a budgeted run; ``life.*`` overrides
    only choose which lifecycle steps run (``life.recforest_trees=[4]``), the configs stay at their
    ``CONFIGS`` sizes unless a config override says otherwise."""
    cfg = [o for o in overrides if not o.startswith("life.")]
    life = [o for o in overrides if o.startswith("life.")]
    return ((f" Config overrides (a budgeted run): `{' '.join(cfg)}`." if cfg else "")
            + (f" Lifecycle overrides: `{' '.join(life)}`"
               + ("" if cfg else " (every config at its `CONFIGS` size)") + "." if life else ""))


def markdown(result: dict) -> str:
    agg, beams = result["aggregate"], result["settings"]["beams"]
    hb = max(beams)
    m = result["machine"]
    combined = bool(result.get("combined_from"))
    lines = [f"# Quality on {result['dataset_label']}",
             "",
             f"{result['data']['train_windows']:,} training windows, {result['data']['test_users']} test users, "
             f"{result['data']['n_items']:,} items"
             + (f" ({result['data']['windows_per_item']:.1f} training windows per item; "
                f"{100 * result['data']['items_never_target']:.0f}% of the items are the target of no window, "
                f"{100 * result['data']['items_under_5_targets']:.0f}% of fewer than 5)"
                if "windows_per_item" in result["data"] else "")
             + f"; seeds{' (all rows)' if combined else ''} "
             f"{result['settings'].get('seeds_done', result['settings']['seeds'])} (split and model)"
             + ("" if result.get("complete", True) else " (a run below was cut short: its finished seeds only)"
                if combined else " (run not finished: seeds done so far)") + "; "
             f"mean ± std over seeds, percent. Machine: {m['gpu'] or 'no GPU'}, {m['cpu_count']} CPU cores "
             f"({m['cpu_model']}), torch {m['torch']}. Command: `{result['command']}`."
             + overrides_sentence(result["settings"].get("overrides", [])),
             "",
             f"## Test users, seen items kept; indexes at beam {hb}, baselines exact",
             ""]
    if combined:  # rows of several runs: each row says its seeds; the runs' budgets below the table
        lines += ["| model | seeds | P@10 | R@10 | F@10 | NDCG@10 | P@50 | R@50 | F@50 | NDCG@50 | NDCG@20 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| model | P@10 | R@10 | F@10 | NDCG@10 | P@50 | R@50 | F@50 | NDCG@50 | NDCG@20 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
    for a in agg:
        t = headline(a, hb)
        cells = [_pm(a, f"{n}@{k}/{t}") for k in (10, 50) for n in ("precision", "recall", "f1", "ndcg")]
        seeds = [",".join(map(str, a["seeds"]))] if combined else []
        lines.append(f"| {a['model']} | " + " | ".join(seeds + cells + [_pm(a, f'ndcg@20/{t}')]) + " |")
    if combined:
        lines += ["", "Runs combined (each method's overrides; none = the `CONFIGS` sizes):", ""]
        lines += [f"- `{pathlib.Path(r['file']).name}`: {', '.join(r['methods'] or [])}, seeds {r['seeds']}"
                  + ("" if r.get("complete", True) else " (cut short)")
                  + (f", `{' '.join(r['overrides'])}`" if r["overrides"] else "")
                  + (f"; CPU speed: median of {r['speed_runs'][0]} runs (exact: {r['speed_runs'][1]})"
                     if r.get("speed_runs") else "") for r in result["runs"]]
        reps = result.get("repeats", [])
        if reps:
            worst = max((v for rep in reps for v in rep["abs_diff"].values()), default=0.0)
            again = sorted({rep["model"] for rep in reps})
            lines += ["", f"{len(reps)} (row, seed) pairs were measured again by a later run (rows: "
                      f"{', '.join(again)}); the first run's row is kept, and the repeats' exhaustive R@10/R@50 "
                      f"differ from it by at most {100 * worst:.2f} points."]
    lines += ["", "## Seen items filtered (TDM Table 2 style), same beams", "",
              "| model | P@10 | R@10 | P@50 | R@50 | NDCG@20 | Novelty@10 (kept) |", "|---|---|---|---|---|---|---|"]
    for a in agg:
        t = headline(a, hb)
        cells = [_pm(a, f"{n}@{k}/filtered/{t}") for k in (10, 50) for n in ("precision", "recall")]
        lines.append(f"| {a['model']} | " + " | ".join(cells + [_pm(a, f'ndcg@20/filtered/{t}'),
                                                                _pm(a, f'novelty@10/{t}')]) + " |")
    lines += ["", "## Fidelity: recall(beam) / recall(same model, every item); the model's exhaustive recall",
              "", "| model | R@10 exact | R@50 exact | " + " | ".join(
                  f"fid@10 b{b} | fid@50 b{b}" for b in beams) + " | cand./user b" + str(hb) + " |",
              "|---|---|---|" + "---|---|" * len(beams) + "---|"]
    for a in agg:
        if headline(a, hb) == "exact":
            continue
        cells = [_pm(a, "recall@10/exact"), _pm(a, "recall@50/exact")]
        cells += [_pm(a, f"fidelity@{k}/b{b}", pct=False, digits=3) for b in beams for k in (10, 50)]
        cells.append(_num(a, f"candidates/b{hb}"))
        lines.append(f"| {a['model']} | " + " | ".join(cells) + " |")
    dev = "cuda" if m["gpu"] else "cpu"
    lines += ["", f"## Speed: training samples/s ({result['settings']['device']}), search users/s",
              "",
              f"CPU columns: batch 256, {result['settings']['cpu_threads']} threads, {speed_caption(result)}, "
              "first seed, final model of each lifecycle. "
              f"'eval {dev.upper()}' columns: the whole test-set evaluation in batches of 256 on {dev.upper()}.",
              "",
              "| model | train samples/s | " + " | ".join(f"CPU b{b}" for b in beams) + " | CPU exact | "
              + " | ".join(f"eval {dev.upper()} b{b}" for b in beams) + f" | eval {dev.upper()} exact |",
              "|---|---|" + "---|" * (2 * len(beams) + 2)]
    for a in agg:
        cells = [_num(a, "train_samples_per_s")] + [_num(a, f"users_per_s_cpu256/b{b}") for b in beams]
        cells += [_num(a, "users_per_s_cpu256/exact")] + [_num(a, f"users_per_s_{dev}/b{b}") for b in beams]
        cells.append(_num(a, f"users_per_s_{dev}/exact"))
        lines.append(f"| {a['model']} | " + " | ".join(cells) + " |")
    if result["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e['method']} seed {e['seed']}: {e['error']}" for e in result["errors"]]
    return "\n".join(lines) + "\n"


def apply_override(configs: dict, life: dict, item: str) -> None:
    """``tdm.max_samples=30000`` -> configs["tdm"]["max_samples"] = 30000; ``life.X=V`` -> the lifecycle.
    The method's config class checks the field name when the run builds it; a bad key fails here."""
    key, sep, raw = item.partition("=")
    name, dot, field = key.partition(".")
    if not sep or not dot or not field:
        raise SystemExit(f"--set {item!r}: expected METHOD.FIELD=VALUE")
    if name != "life" and name not in configs:
        raise SystemExit(f"--set {item!r}: unknown method {name!r} (known: {', '.join(configs)}, life)")
    if name == "life" and field not in life:
        raise SystemExit(f"--set {item!r}: unknown lifecycle field {field!r} (known: {', '.join(life)})")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if name == "life":
        life[field] = tuple(value) if isinstance(value, list) else value
    else:
        from models.method import config_from_dict
        from models.registry import get_method

        from indexstore.errors import GroveError

        try:  # an unknown field or a bad value fails now, not after the earlier methods ran
            config_from_dict(get_method(name).config_cls, {**configs[name], field: value})
        except GroveError as exc:
            raise SystemExit(f"--set {item!r}: {exc}") from exc
        configs[name][field] = value


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", nargs="+", default=["ml-1m-subset"], choices=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--device", default="auto", help="training and evaluation device (auto: CUDA if present)")
    p.add_argument("--beams", nargs="+", type=int, default=[20, 50, 100])
    p.add_argument("--cpu-threads", type=int, default=2, help="threads of the CPU speed measurement")
    p.add_argument("--speed-repeats", type=int, default=5, help="timed runs per speed figure (median)")
    p.add_argument("--train-threads", type=int, default=0,
                   help="torch threads of training and evaluation (0: the cores over the parallel jobs); "
                        "1 when other jobs share the cores: 2 OpenMP threads on a busy 2-core machine run 5-10x slower")
    p.add_argument("--no-speed", action="store_true", help="skip the CPU speed measurement")
    p.add_argument("--jobs", type=int, default=1, help="(dataset, seed) runs in parallel processes")
    p.add_argument("--quick", action="store_true", help="tiny caps everywhere: a smoke run, not figures")
    p.add_argument("--test-users", type=int, default=0, help="evaluate the first N test users only (0: all)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset folders")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--set", nargs="+", default=[], metavar="METHOD.FIELD=VALUE",
                   help="override a config field (tdm.max_samples=30000) or the lifecycle (life.jtm_relearns=1); "
                        "values are JSON, else text")
    p.add_argument("--tag", default="", help="results go to quality_<dataset>_<tag>.* (a run under other budgets)")
    p.add_argument("--merge", nargs="+", default=[], metavar="RESULT.json",
                   help="join the seeds of finished runs (same dataset, configs, methods) into quality_<dataset>_<tag>.*; "
                        "runs nothing")
    p.add_argument("--combine", nargs="+", default=[], metavar="RESULT.json",
                   help="one table from runs of one dataset that measured different methods or budgets "
                        "(rows keyed by model and config, seeds joined, repeated baselines kept once); runs nothing")
    a = p.parse_args(argv)
    if a.merge and a.combine:
        p.exit(2, "quality: --merge and --combine are two different joins; give one\n")
    if a.merge or a.combine:
        flag, join, inputs = (("--merge", merge_results, a.merge) if a.merge
                              else ("--combine", combine_results, a.combine))
        try:
            merged = join([pathlib.Path(f) for f in inputs])
        except ValueError as exc:
            p.exit(2, f"quality {flag}: {exc}\n")
        stem = pathlib.Path(a.out_dir) / (f"quality_{merged['dataset']}" + ("_quick" if merged["quick"] else "")
                                          + (f"_{a.tag}" if a.tag else ""))
        if str(stem) + ".json" in {str(pathlib.Path(f)) for f in inputs}:
            p.exit(2, f"quality {flag}: the output {stem}.json is one of the inputs; give another --tag\n")
        stem.parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(f"{stem}.json").write_text(json.dumps(merged, indent=1, default=float))
        pathlib.Path(f"{stem}.md").write_text(markdown(merged))
        print(markdown(merged))
        return {merged["dataset"]: merged}
    configs = {k: dict(v) for k, v in CONFIGS.items()}
    life = dict(LIFECYCLE)
    if a.quick:
        for k, v in QUICK.items():
            configs[k].update(v)
        life.update(QUICK_LIFECYCLE)
        a.speed_repeats = min(a.speed_repeats, 1)
        a.test_users = a.test_users or 64
    for item in a.set:
        apply_override(configs, life, item)
    cores = os.cpu_count() or 2
    jobs = []
    for ds in a.dataset:
        folder = find_data_dir(ds, a.data_dir)
        for i, seed in enumerate(a.seeds):
            jobs.append({"dataset": ds, "folder": str(folder), "seed": seed, "device": a.device,
                         "beams": a.beams, "speed": (i == 0 and not a.no_speed), "cpu_threads": a.cpu_threads,
                         "repeats": a.speed_repeats, "configs": configs, "lifecycle": life,
                         "test_users": a.test_users or None, "methods": a.methods, "quiet": a.jobs > 1,
                         "threads_train": a.train_threads or max(1, cores // max(1, min(a.jobs, len(a.dataset) * len(a.seeds))))})
    start = time.perf_counter()
    command = "python -m benchmarks.quality " + " ".join(argv if argv is not None else sys.argv[1:])
    out_dir = pathlib.Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def write(outs: list[dict], final: bool) -> dict:
        """Results of the runs so far, per dataset: JSON + Markdown (rewritten after every serial
        run, so that a run cut short keeps the seeds it finished; ``complete`` says which)."""
        results = {}
        for ds in a.dataset:
            mine = [o for o in outs if o["dataset"] == ds]
            if not mine:
                continue
            rows = [r for o in mine for r in o["rows"]]
            result = {
                "dataset": ds, "dataset_label": "ML-1M subset" if ds == "ml-1m-subset" else "MovieLens latest-small",
                "command": command, "quick": a.quick, "machine": machine_info(), "complete": final,
                "settings": {"overrides": a.set, "tag": a.tag, "seeds": a.seeds, "seeds_done": [o["seed"] for o in mine],
                             "beams": a.beams, "ks": list(KS), "device": a.device, "cpu_threads": a.cpu_threads,
                             "speed_repeats": a.speed_repeats, "exact_speed_repeats": a.speed_repeats, "jobs": a.jobs,
                             "test_users": a.test_users or "all", "methods": a.methods},
                "configs": configs, "lifecycle": {k: list(v) if isinstance(v, tuple) else v for k, v in life.items()},
                "data": mine[0]["data"],
                "per_seed_data": [{"seed": o["seed"], **o["data"]} for o in mine],
                "seconds": {"wall_all_datasets": time.perf_counter() - start,
                            "per_seed": {str(o["seed"]): {"total": o["seconds"], **o["method_seconds"]} for o in mine}},
                "errors": [e for o in mine for e in o["errors"]],
                "key_format": "metric@k[/filtered]/tag, tag = 'exact' (the model over every item) or 'b<beam>'",
                "aggregate": aggregate(rows), "rows": rows,
            }
            stem = f"quality_{ds}" + ("_quick" if a.quick else "") + (f"_{a.tag}" if a.tag else "")
            (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float))
            (out_dir / f"{stem}.md").write_text(markdown(result))
            results[ds] = result
        return results

    outs = []
    if a.jobs > 1:  # results rewritten as each (dataset, seed) run ends: a run cut short keeps them
        with ProcessPoolExecutor(max_workers=a.jobs, mp_context=get_context("spawn")) as pool:
            for done in as_completed([pool.submit(run_one, j) for j in jobs]):
                outs.append(done.result())
                write(outs, final=False)
    else:
        for j in jobs:
            outs.append(run_one(j))
            write(outs, final=False)
    results = write(outs, final=True)
    for result in results.values():
        print(markdown(result))
    wall = time.perf_counter() - start
    print(f"total {wall:.0f}s", flush=True)
    return results


if __name__ == "__main__":
    from indexstore.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
