"""One (dataset, seed): every method's lifecycle in memory through `grove.models.lifecycle` (the seeds
the flows use), each trained model evaluated with `grove.models.evaluation_passes.evaluate_version` (flat
``metric@k[/filtered]/tag`` keys), and the CPU speed of each lifecycle's final model."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile
import time
import traceback

import numpy as np
import torch

from benchmarks.quality.data import load_data, target_coverage
from benchmarks.quality.settings import KS
from benchmarks.timing import median_seconds
from grove.indexstore.structures import Forest
from grove.models.lifecycle import Recipe, advance, build
from grove.models.method import Built, resolve_device
from grove.models.registry import get_method


def _key(row) -> str:
    """A metric row's flat key: ``name@k[/filtered]/tag``, tag = 'exact' or 'b<beam>'."""
    tag = "exact" if row.beam is None else f"b{row.beam}"
    return f"{row.name}@{row.k}" + ("/filtered" if row.filtered else "") + f"/{tag}"


def evaluate_model(searcher, held, beams, brute_force: bool) -> dict:
    """Every metric of one trained model on the held-out users (`evaluate_version`: the model over
    every item, then each beam unless ``brute_force``), as flat ``name@k[/filtered]/tag`` keys;
    users/s as ``users_per_s_<device>/tag`` and candidates as ``candidates/tag``."""
    from grove.models.evaluation_passes import evaluate_version

    rows = evaluate_version(
        searcher, held, role="test", ks=KS, beams=() if brute_force else tuple(beams), exhaustive=True
    )
    out: dict = {}
    dev = searcher.device.type
    for r in rows:
        tag = "exact" if r.beam is None else f"b{r.beam}"
        if r.name == "users_per_second":
            out[f"users_per_s_{dev}/{tag}"] = r.value
        elif r.name == "candidates":
            out[f"candidates/{tag}"] = r.value
        else:
            out[_key(r)] = r.value
    return out


def cpu_speed(
    make_searcher, held, beams, brute_force: bool, threads: int, repeats: int, batch: int = 256, k: int = 50
) -> dict:
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
                sec = median_seconds(lambda b=beam: searcher.search(hist, k, b), repeats)
                out[f"users_per_s_cpu256/b{beam}"] = batch / sec
        # exhaustive scoring of an index is warmed up by the beam runs above
        sec = median_seconds(lambda: searcher.exhaustive(hist, k), repeats, warmup=brute_force)
        out["users_per_s_cpu256/exact"] = batch / sec
        return out
    finally:
        torch.set_num_threads(old)


def n_train_samples(cfg, n: int) -> int:
    """Samples one `train` call processes with ``cfg`` on ``n`` windows."""
    if getattr(cfg, "max_samples", 0):
        n = min(n, cfg.max_samples)
    total = cfg.epochs * n
    if getattr(cfg, "max_steps", 0):
        total = min(total, cfg.max_steps * cfg.batch_size)
    return total


class Runner:
    """One (dataset, seed): runs every lifecycle, evaluates, returns rows."""

    def __init__(
        self,
        data,
        seed: int,
        device: str,
        beams,
        speed: bool,
        threads: int,
        repeats: int,
        configs: dict,
        lifecycle: dict,
        test_users: int | None,
    ):
        self.data, self.seed, self.device, self.beams = data, seed, device, tuple(beams)
        self.speed, self.threads, self.repeats = speed, threads, repeats
        self.configs, self.life = configs, lifecycle
        self.held = data.test if not test_users else data.test.subset(test_users)
        self.rows: list[dict] = []

    def recipe(self, name: str, **extra) -> Recipe:
        """The construct recipe of ``name`` at this run's config, device and seed."""
        return Recipe.new(name, {**self.configs[name], "device": self.device, "seed": self.seed, **extra})

    def timed(self, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out, time.perf_counter() - t

    def data_for(self, recipe: Recipe):
        """The split with the training windows ``recipe``'s config keeps (``min_behaviours``)."""
        return self.data.with_min_behaviours(int(getattr(recipe.config, "min_behaviours", 1)))

    def train(self, recipe: Recipe, built: Built) -> tuple[Built, Recipe, dict]:
        data = self.data_for(recipe)
        (trained, nxt), sec = self.timed(advance, recipe, built, data, "train")
        return (
            trained,
            nxt,
            {"train_seconds": sec, "train_samples_per_s": n_train_samples(nxt.config, len(data.train)) / sec},
        )

    def relearn(self, recipe: Recipe, built: Built) -> tuple[Built, Recipe, float]:
        (relearnt, nxt), sec = self.timed(advance, recipe, built, self.data_for(recipe), "relearn")
        return relearnt, nxt, sec

    def record(
        self,
        label: str,
        recipe: Recipe,
        built: Built,
        brute_force: bool = False,
        speed: bool = False,
        searcher_of=None,
        **info,
    ):
        """Evaluate (and with ``speed`` time on the CPU) the index ``built`` by ``recipe``;
        ``searcher_of(searcher)`` narrows its searcher (DeFoRec's last tree alone)."""
        method = get_method(recipe.method)

        def make_searcher(device):
            searcher = method.searcher(recipe.config, built, resolve_device(device))
            return searcher_of(searcher) if searcher_of else searcher

        t = time.perf_counter()
        row = {
            "model": label,
            "method": recipe.method,
            "seed": self.seed,
            **info,
            **evaluate_model(make_searcher(self.device), self.held, self.beams, brute_force),
        }
        if self.speed and speed:  # final model of each lifecycle (speed depends on size, not round)
            row.update(cpu_speed(make_searcher, self.held, self.beams, brute_force, self.threads, self.repeats))
        row["eval_seconds"] = time.perf_counter() - t
        self.rows.append(row)
        hb = max(self.beams)
        r = {k: row.get(k) for k in ("recall@10/exact", "recall@50/exact", f"recall@10/b{hb}", f"recall@50/b{hb}")}
        print(
            f"[seed {self.seed}] {label}: " + ", ".join(f"{k}={v:.4f}" for k, v in r.items() if v is not None),
            flush=True,
        )

    # ----------------------------------------------------------------------- methods
    def tdm_like(self, name: str, relearns: int, label: str, relearn_label: str):
        recipe = self.recipe(name)
        built, recipe, info = self.train(recipe, build(recipe, self.data_for(recipe)))
        self.record(f"{label} initial tree", recipe, built, **info)
        for r in range(1, relearns + 1):
            built, recipe, sec = self.relearn(recipe, built)
            built, recipe, info = self.train(recipe, built)
            self.record(
                f"{label} {relearn_label} x{r}", recipe, built, speed=r == relearns, relearn_seconds=sec, **info
            )

    def run_tdm(self):
        self.tdm_like("tdm", 1, "TDM", "k-means relearn")

    def run_jtm(self):
        self.tdm_like("jtm", self.life["jtm_relearns"], "JTM", "tree learning")

    def run_deforec(self):
        recipe = self.recipe("deforec")
        built, recipe, info = self.train(recipe, build(recipe, self.data_for(recipe)))
        self.record("DeFoRec 1 tree (round 0)", recipe, built, **info)
        rounds = self.life["deforec_rounds"]
        for r in range(1, rounds):
            built, recipe, sec = self.relearn(recipe, built)
            built, recipe, info = self.train(recipe, built)
            self.record(
                f"DeFoRec forest of {r + 1} trees", recipe, built, speed=r == rounds - 1, relearn_seconds=sec, **info
            )

        def last_tree(f):
            return type(f)(f.trees[-1:], f.scorers[-1:], f.discriminate, f.n_items, f.device)

        self.record(f"DeFoRec last tree alone (round {rounds - 1})", recipe, built, searcher_of=last_tree)

    def run_recforest(self):
        trees = self.life["recforest_trees"]
        base = self.recipe("recforest", trees=max(trees))
        full, sec_c = self.timed(build, base, self.data_for(base))
        for t in trees:
            recipe = self.recipe("recforest", trees=t)
            built, recipe, info = self.train(recipe, Built(Forest(full.structure.trees[:t]), full.artifacts))
            self.record(
                f"RecForest {t} tree{'s' if t > 1 else ''}",
                recipe,
                built,
                speed=t in (1, max(trees)),
                construct_seconds_all_trees=sec_c,
                **info,
            )

    def run_dr(self):
        for j in self.life["dr_paths"]:
            recipe = self.recipe("dr", n_paths=j)
            built, recipe, info = self.train(recipe, build(recipe, self.data_for(recipe)))
            # the EM rounds train with their own epochs: the same recipe with that config
            recipe = dataclasses.replace(
                recipe, config=self.recipe("dr", n_paths=j, epochs=self.life["dr_em_epochs"]).config
            )
            relearn_s = 0.0
            for _ in range(self.life["dr_em_rounds"]):
                built, recipe, sec = self.relearn(recipe, built)
                relearn_s += sec
                built, recipe, info = self.train(recipe, built)
            sizes = np.unique(built.structure.path_ids().reshape(-1), return_counts=True)[1]
            info.update(relearn_seconds=relearn_s, top_path=int(sizes.max()), nonempty_paths=int(sizes.size))
            self.record(f"DR J={j} (brute force = its softmax model)", recipe, built, speed=True, **info)

    def run_two_tower(self):
        recipe = self.recipe("two_tower")
        built, recipe, info = self.train(recipe, build(recipe, self.data_for(recipe)))
        self.record("Two-tower (brute force)", recipe, built, brute_force=True, speed=True, **info)

    def run_itemcf(self):
        recipe = self.recipe("itemcf")
        data = self.data_for(recipe)
        (built, recipe), sec = self.timed(advance, recipe, build(recipe, data), data, "train")
        self.record("Item-CF", recipe, built, brute_force=True, speed=True, build_seconds=sec)


def run_one(job: dict) -> dict:
    """Worker: one (dataset, seed). Returns {"rows": [...], "errors": [...], ...}."""
    if job["quiet"]:  # parallel workers: tagged progress lines, at most one a minute per worker
        os.environ.setdefault("GROVE_PROGRESS_PREFIX", f"[{job['dataset']} seed {job['seed']}] ")
        os.environ.setdefault("GROVE_PROGRESS_INTERVAL", "60")
    torch.set_num_threads(job["threads_train"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data, info = load_data(job["dataset"], pathlib.Path(job["folder"]), job["seed"], tmp)
    info.update(
        n_items=int(data.n_items),
        train_windows=len(data.train),
        test_users=len(data.test),
        valid_users=len(data.valid),
        train_users=int(len(data.train_offsets) - 1),
        **target_coverage(data),
    )
    runner = Runner(
        data,
        job["seed"],
        job["device"],
        job["beams"],
        job["speed"],
        job["cpu_threads"],
        job["repeats"],
        job["configs"],
        job["lifecycle"],
        job["test_users"],
    )
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
    return {
        "dataset": job["dataset"],
        "seed": job["seed"],
        "rows": runner.rows,
        "errors": errors,
        "method_seconds": seconds,
        "seconds": time.perf_counter() - start,
        "data": info,
    }
