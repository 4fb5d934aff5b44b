"""A version's lifecycle, written once: what made a version (`Recipe`), how it is read back
(`load`), the verbs that each write one version (`construct`, `train`, `relearn`) or its
metrics (`evaluate`), the order of a cycle or a retrain (`Plan`) and the runner that walks a
plan through a set of step functions (`run_plan`).

Everything that makes or reads a version goes through here: the flows' steps and Prefect
tasks, the CLI, `Retriever.load`, the benchmarks. Each verb takes a `Store` and references
(index name, version id, dataset name), loads what it needs, runs one method verb and writes
ONE new version whose parent is the version it started from.

Recipe (``versions.config`` in the store)::

    {"method": "tdm", "config": {...the method's frozen config...}, "step": "train", "round": 1}

plus ``"workers": N`` for a step run by N data-parallel workers (`grove.models.distributed`).

Seeds: ``construct`` uses the config's seed; ``train`` at round r uses seed + r; ``relearn``
into round r uses seed + 1000 r (`Recipe.seed`; 1000 keeps the two streams apart). `build` and
`advance` are the same verbs in memory (the quality benchmark runs whole lifecycles so).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from grove.indexstore.entities import MetricRow, VersionInfo
from grove.indexstore.errors import GroveError, StateError, StoreBusyError
from grove.indexstore.samples import SplitData
from grove.indexstore.staging import DEFAULT_WRITE_WAIT, WRITE_WAIT_ENV
from grove.indexstore.store import Store
from grove.models.distributed import world
from grove.models.method import Built, Method, MethodConfig, Searcher, check_memory, config_from_dict, resolve_device
from grove.models.precision import check_compile_mode, precision_dtype
from grove.models.registry import get_method

STEPS = ("construct", "train", "relearn")


@dataclass(frozen=True)
class Recipe:
    """What made a version: the method, its typed config, the step and the round."""

    method: str
    config: MethodConfig
    step: str = "construct"
    round: int = 0
    workers: int = 1  # data-parallel workers of the step (weights differ from one worker's)

    @classmethod
    def new(cls, method: str, values: dict[str, Any] | None = None) -> Recipe:
        """A construct recipe from config values (unknown fields refused, naming the known)."""
        return cls(method, config_from_dict(get_method(method).config_cls, values))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recipe:
        """The recipe stored with a version (``versions.config``)."""
        if "method" not in data:
            raise GroveError(f"a version's recipe names no method: {data!r}")
        return cls(
            data["method"],
            config_from_dict(get_method(data["method"]).config_cls, data.get("config", {}), stored=True),
            str(data.get("step", "construct")),
            int(data.get("round", 0)),
            int(data.get("workers", 1)),
        )

    def to_json(self) -> dict[str, Any]:
        out = {"method": self.method, "config": self.config.to_dict(), "step": self.step, "round": self.round}
        return out | ({"workers": self.workers} if self.workers > 1 else {})

    @property
    def seed(self) -> int:
        """The seed of this recipe's step (module docstring): the one place the rule is written."""
        base = int(self.config.seed)
        if self.step == "relearn":
            return base + 1000 * self.round
        return base + self.round if self.step == "train" else base

    def then(self, step: str) -> Recipe:
        """The recipe of the version ``step`` makes from this one (relearning starts a round)."""
        if step not in STEPS[1:]:
            raise GroveError(f"a version can be followed by {' or '.join(STEPS[1:])}, not {step!r}")
        return dataclasses.replace(self, step=step, round=self.round + (step == "relearn"), workers=world()[1])

    @property
    def device(self) -> torch.device:
        """The device the recipe's verbs run on ('auto' resolved)."""
        return resolve_device(getattr(self.config, "device", "cpu"))

    @property
    def note(self) -> str:
        return self.step if self.step == "construct" else f"{self.step} round {self.round}"


@dataclass(frozen=True)
class Loaded:
    """A stored version read back: its record, method, recipe and `Built` (structure + artifacts)."""

    info: VersionInfo
    method: Method[Any]
    recipe: Recipe
    built: Built
    dataset: str
    split: str


def load(store: Store, version_id: int) -> Loaded:
    """Read a version (hashes verified by the store) with its method and recipe."""
    info, structure, artifacts = store.read_version(version_id)
    if info.dataset is None or info.split is None:
        raise StateError(f"version {version_id} names no dataset and split: it was not made by a lifecycle")
    recipe = Recipe.from_json(info.config)
    return Loaded(info, get_method(recipe.method), recipe, Built(structure, artifacts), info.dataset, info.split)


def searcher(
    loaded: Loaded, device: str | torch.device | None = "auto", precision: str | None = None, compile: str | None = None
) -> Searcher:
    """The version's searcher on ``device``, refused before loading if it cannot fit there;
    searching in ``precision`` (default fp32, `grove.models.precision`) and compiled
    when asked: ``compile`` 'level' or 'search' (`Searcher.compile`)."""
    dev = resolve_device(device)
    precision = precision or "fp32"  # reduced precision is asked for explicitly
    precision_dtype(precision)  # unknown names are refused before anything loads
    check_compile_mode(compile)
    check_memory(loaded.method, loaded.recipe.config, loaded.built.structure.n_items, ("search",), dev)
    found = loaded.method.searcher(loaded.recipe.config, loaded.built, dev)
    found.set_precision(precision)
    if compile:
        found.compile(whole_search=compile == "search")
    return found


@functools.lru_cache(maxsize=4)
def _split_cached(url: str, dataset: str, split: str, stamp: str) -> SplitData:
    return Store.open(url).load_split(dataset, split)


def split_data(store: Store, dataset: str, split: str, config: MethodConfig) -> SplitData:
    """The split's arrays, cached per process (keyed by the dataset's creation stamp), with the
    training windows the config's ``min_behaviours`` keeps (a view of the cached windows)."""
    stamp = str(store.dataset(dataset).created_at)
    data = _split_cached(store.url, dataset, split, stamp)
    return data.with_min_behaviours(int(getattr(config, "min_behaviours", 1)))


def build(recipe: Recipe, data: SplitData) -> Built:
    """The initial index of a construct ``recipe`` on ``data``, in memory."""
    return get_method(recipe.method).construct(recipe.config, data, recipe.seed)


def advance(recipe: Recipe, built: Built, data: SplitData, step: str) -> tuple[Built, Recipe]:
    """``step`` ('train' or 'relearn') of the index ``built`` by ``recipe``, in memory: the new
    index and its recipe (seeded by `Recipe.seed`)."""
    nxt = recipe.then(step)
    method = get_method(nxt.method)
    if step == "relearn" and not method.relearns:
        raise GroveError(f"method {nxt.method!r} has no index to relearn")
    verb = method.train if step == "train" else method.relearn
    return verb(nxt.config, built, data, nxt.seed), nxt


def write(
    store: Store,
    index: str,
    recipe: Recipe,
    built: Built,
    dataset: str,
    split: str,
    parent: int | None,
    flow_run_id: str | None = None,
) -> VersionInfo:
    """Write the version a verb made. A store another process holds is waited for
    (``$GROVE_WRITE_WAIT`` seconds, default 600, with a progress line); if it is still held the
    result is saved to a staging file and the error names the command that writes it later."""
    version: dict[str, Any] = {
        "index_name": index,
        "method": recipe.method,
        "config": recipe.to_json(),
        "dataset": dataset,
        "split": split,
        "parent_id": parent,
        "note": recipe.note,
        "flow_run_id": flow_run_id,
    }
    try:
        wait = float(os.environ.get(WRITE_WAIT_ENV, DEFAULT_WRITE_WAIT))
    except ValueError:
        raise GroveError(f"{WRITE_WAIT_ENV}={os.environ[WRITE_WAIT_ENV]!r} is not a number of seconds") from None
    try:
        return store.write_version(structure=built.structure, artifacts=built.artifacts, wait=wait, **version)
    except StoreBusyError as exc:
        path = store.stage_version(version, built.structure, built.artifacts)
        raise StoreBusyError(
            f"{exc}; the {recipe.note} result of {index!r} is saved in {path}: write it "
            f"with `grove versions write-staged {path}`"
        ) from exc


def construct(
    store: Store, index: str, recipe: Recipe, dataset: str, split: str = "default", flow_run_id: str | None = None
) -> VersionInfo:
    """The initial index of ``recipe`` on ``dataset``/``split`` -> a new version (no parent).
    Refuses, before building anything, a version that could never be trained on its device."""
    data = construct_data(store, recipe, dataset, split)
    return write(store, index, recipe, build(recipe, data), dataset, split, None, flow_run_id)


def construct_data(store: Store, recipe: Recipe, dataset: str, split: str) -> SplitData:
    """The split a construct builds on, after what `construct` refuses before any work: an
    unknown dataset or split, sizes the method cannot take, a version that could never be
    trained on its device. (A construct in parts, `grove.flows.forest`, starts here too.)"""
    method = get_method(recipe.method)
    store.split(dataset, split)  # NotFoundError before any work
    n_items = store.dataset(dataset).n_items
    method.check_sizes(recipe.config, n_items)
    check_memory(method, recipe.config, n_items, ("construct", "train"), recipe.device)
    return split_data(store, dataset, split, recipe.config)


def step_result(store: Store, old: Loaded, step: str) -> tuple[Built, Recipe]:
    """``step`` ('train' or 'relearn') of the stored version ``old``, computed but not written:
    the new index and its recipe. Data-parallel workers (`grove.flows.distributed_train`) all run
    this; rank 0 alone then `write`s."""
    config = old.recipe.then(step).config
    if step == "relearn":
        if not old.method.relearns:
            raise GroveError(f"method {old.recipe.method!r} has no index to relearn")
        if not old.built.artifacts:
            raise StateError(f"version {old.info.id} has no weights: train it before relearning")
    check_memory(old.method, config, old.built.structure.n_items, (step,), old.recipe.device)
    data = split_data(store, old.dataset, old.split, config)
    return advance(old.recipe, old.built, data, step)


def _advance(store: Store, version_id: int, step: str, flow_run_id: str | None) -> VersionInfo:
    old = load(store, version_id)
    built, recipe = step_result(store, old, step)
    return write(store, old.info.index_name, recipe, built, old.dataset, old.split, old.info.id, flow_run_id)


def train(store: Store, version_id: int, flow_run_id: str | None = None) -> VersionInfo:
    """Train the method's model for the version's structure -> a new version (same structure)."""
    return _advance(store, version_id, "train", flow_run_id)


def relearn(store: Store, version_id: int, flow_run_id: str | None = None) -> VersionInfo:
    """Learn a new index structure from a trained version -> a new version (next round)."""
    return _advance(store, version_id, "relearn", flow_run_id)


def evaluate(
    store: Store,
    version_id: int,
    role: str = "valid",
    ks: tuple[int, ...] = (10, 50),
    beams: tuple[int, ...] = (50,),
    max_users: int | None = None,
    device: str = "auto",
    exhaustive: bool | None = None,
    exhaustive_users: int | None = None,
) -> list[MetricRow]:
    """Metrics of a trained version on held-out users (`grove.models.evaluation_passes.evaluate_version`),
    appended to the store (never in place). Returns the rows."""
    from grove.models.evaluation_passes import evaluate_version  # heavy import only when evaluating

    loaded = load(store, version_id)
    held_out = split_data(store, loaded.dataset, loaded.split, loaded.recipe.config).held_out(role)
    if max_users:
        held_out = held_out.subset(max_users)
    rows = evaluate_version(
        searcher(loaded, device),
        held_out,
        role=role,
        ks=ks,
        beams=beams,
        exhaustive=exhaustive,
        exhaustive_users=exhaustive_users,
    )
    store.record_metrics(version_id, rows)
    return rows


# --------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class Plan:
    """An ordered list of steps: 'construct', 'train', 'relearn' (each writes a version from the
    last one) and 'evaluate' (the last version's metrics)."""

    steps: tuple[str, ...]

    @classmethod
    def cycle(cls, method: str, rounds: int) -> Plan:
        """construct -> train -> evaluate -> rounds x (relearn -> train -> evaluate): every relearnt
        index is trained and evaluated, so the last version is a trained one; methods whose index
        is not relearnt (baselines, RecForest) run construct -> train -> evaluate."""
        rounds = _rounds(method, rounds)
        return cls(("construct", "train", "evaluate") + ("relearn", "train", "evaluate") * rounds)

    @classmethod
    def retrain(cls, method: str, rounds: int, fresh: bool) -> Plan:
        """From a base version (or, ``fresh``, a new construct on new data): train -> rounds x
        (relearn -> train) -> evaluate the last version."""
        rounds = _rounds(method, rounds)
        return cls(("construct",) * fresh + ("train",) + ("relearn", "train") * rounds + ("evaluate",))


def _rounds(method: str, rounds: int) -> int:
    if rounds < 0:
        raise GroveError(f"rounds must be >= 0, got {rounds}")
    return rounds if get_method(method).relearns else 0


@dataclass(frozen=True)
class Ops:
    """The step functions a plan runs on: in-process (`grove.flows.ops.local_ops`) or as Prefect
    tasks (`grove.flows.ops.prefect_ops`). Each takes and returns references (version ids)."""

    construct: Callable[[], int]
    train: Callable[[int], int]
    relearn: Callable[[int], int]
    evaluate: Callable[[int], object]


def run_plan(plan: Plan, ops: Ops, start: int | None = None) -> list[int]:
    """Walk ``plan`` from version ``start`` (None: the plan constructs); returns the versions
    written, in order."""
    written: list[int] = []
    current = start
    for step in plan.steps:
        if step == "evaluate":
            if current is None:
                raise GroveError("a plan evaluates before any version exists")
            ops.evaluate(current)
            continue
        if step == "construct":
            current = ops.construct()
        elif current is None:
            raise GroveError(f"a plan {step}s before any version exists")
        else:
            current = getattr(ops, step)(current)
        written.append(current)
    return written
