"""The steps of a learning cycle as plain functions over store references.

Each step takes references (store URL, index name, version id, dataset name), loads what it
needs through the store API, runs one method verb and writes ONE new version whose parent is
the version it started from. Prefect tasks (`flows.tasks`) wrap these; tests and `--local`
runs call them directly. Nothing here holds the store open between calls.

Version config JSON (``versions.config``)::

    {"method": "tdm", "config": {...the method's frozen config...}, "step": "train", "round": 1}
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from indexstore.errors import GroveError, StateError
from indexstore.samples import SplitData
from indexstore.store import Store
from models.method import Built, MethodConfig, check_memory, config_from_dict, resolve_device
from models.registry import get_method


@dataclass(frozen=True)
class StepResult:
    """What a step hands to the next one: a reference, never tensors."""

    version_id: int
    seconds: float


@functools.lru_cache(maxsize=4)
def _split_cached(url: str, dataset: str, split: str, min_behaviours: int, stamp: str) -> SplitData:
    return Store.open(url).load_split(dataset, split, min_behaviours=min_behaviours)


def load_split(store: Store, dataset: str, split: str, config: MethodConfig) -> SplitData:
    """The split's arrays, cached per process (keyed by the dataset's creation stamp)."""
    stamp = str(store.dataset(dataset).created_at)
    min_beh = int(getattr(config, "min_behaviours", 1))
    return _split_cached(store.url, dataset, split, min_beh, stamp)


def method_config(method_name: str, values: dict[str, Any] | None) -> MethodConfig:
    """The method's typed config from a dict (unknown fields refused)."""
    return config_from_dict(get_method(method_name).config_cls, values)


def config_device(config: MethodConfig):
    """The device a config's verbs run on ('auto' resolved)."""
    return resolve_device(getattr(config, "device", "cpu"))


def _version_config(method_name: str, config: MethodConfig, step: str, round_: int) -> dict:
    return {"method": method_name, "config": config.to_dict(), "step": step, "round": round_}


def construct(url: str, index: str, method_name: str, config_values: dict | None, dataset: str,
              split: str = "default", flow_run_id: str | None = None) -> StepResult:
    """Initial index of ``method_name`` on ``dataset``/``split`` -> a new version (no parent)."""
    start = time.perf_counter()
    store = Store.open(url)
    method = get_method(method_name)
    config = method_config(method_name, config_values)
    store.split(dataset, split)  # NotFoundError before any work
    # refuse a version that could never be trained here, before building anything
    check_memory(method, config, store.dataset(dataset).n_items, ("construct", "train"), config_device(config))
    data = load_split(store, dataset, split, config)
    built = method.construct(config, data, config.seed)
    info = store.write_version(index, method_name, built.structure,
                               _version_config(method_name, config, "construct", 0),
                               dataset=dataset, split=split, artifacts=built.artifacts,
                               note="construct", flow_run_id=flow_run_id)
    return StepResult(info.id, time.perf_counter() - start)


def _load(store: Store, version_id: int):
    info, structure, artifacts = store.read_version(version_id)
    method = get_method(info.method)
    config = config_from_dict(method.config_cls, info.config.get("config", {}))
    return info, method, config, Built(structure, artifacts)


def train(url: str, version_id: int, flow_run_id: str | None = None) -> StepResult:
    """Train the method's model for the version's structure -> a new version (same structure)."""
    start = time.perf_counter()
    store = Store.open(url)
    info, method, config, built = _load(store, version_id)
    check_memory(method, config, built.structure.n_items, ("train",), config_device(config))
    data = load_split(store, info.dataset, info.split, config)
    round_ = int(info.config.get("round", 0))
    trained = method.train(config, built, data, config.seed + round_)
    new = store.write_version(info.index_name, info.method, trained.structure,
                              _version_config(info.method, config, "train", round_),
                              dataset=info.dataset, split=info.split, parent_id=info.id,
                              artifacts=trained.artifacts, note=f"train round {round_}",
                              flow_run_id=flow_run_id)
    return StepResult(new.id, time.perf_counter() - start)


def relearn(url: str, version_id: int, flow_run_id: str | None = None) -> StepResult:
    """Learn a new index structure from a trained version -> a new version."""
    start = time.perf_counter()
    store = Store.open(url)
    info, method, config, built = _load(store, version_id)
    if not method.relearns:
        raise GroveError(f"method {info.method!r} has no index to relearn")
    if not built.artifacts:
        raise StateError(f"version {version_id} has no weights: train it before relearning")
    check_memory(method, config, built.structure.n_items, ("relearn",), config_device(config))
    data = load_split(store, info.dataset, info.split, config)
    round_ = int(info.config.get("round", 0)) + 1
    learnt = method.relearn(config, built, data, config.seed + 1000 * round_)
    new = store.write_version(info.index_name, info.method, learnt.structure,
                              _version_config(info.method, config, "relearn", round_),
                              dataset=info.dataset, split=info.split, parent_id=info.id,
                              artifacts=learnt.artifacts, note=f"relearn round {round_}",
                              flow_run_id=flow_run_id)
    return StepResult(new.id, time.perf_counter() - start)


def evaluate(url: str, version_id: int, role: str = "valid", ks: tuple[int, ...] = (10, 50),
             beams: tuple[int, ...] = (50,), max_users: int | None = None, device: str = "auto",
             exhaustive: bool | None = None, exhaustive_users: int | None = None) -> list[dict]:
    """Metrics of a trained version on held-out users, appended to the store (never in place).

    For each beam: P/R/F/NDCG/Novelty @k with and without filtering seen items; with
    ``exhaustive`` (None: for catalogues of at most
    `models.evaluation_suite.EXHAUSTIVE_MAX_ITEMS` items) also the exhaustive (same model,
    every item) recall, on ``exhaustive_users`` users if given, and recall(beam)/recall(bf).
    Returns the metric rows as dicts (for the Prefect table artifact).
    """
    from models.evaluation_suite import evaluate_version  # heavy import only when evaluating

    store = Store.open(url)
    info, method, config, built = _load(store, version_id)
    data = load_split(store, info.dataset, info.split, config)
    held_out = data.held_out(role)
    if max_users:
        held_out = held_out.subset(max_users)
    check_memory(method, config, built.structure.n_items, ("search",), resolve_device(device))
    searcher = method.searcher(config, built, resolve_device(device))
    rows = evaluate_version(searcher, held_out, role=role, ks=ks, beams=beams, exhaustive=exhaustive,
                            exhaustive_users=exhaustive_users)
    store.record_metrics(version_id, rows)
    return [r if isinstance(r, dict) else r.__dict__ for r in rows]
