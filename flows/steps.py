"""The steps of a cycle over a store URL: each opens the store, runs one verb of the lifecycle
(`models.lifecycle`) and returns a reference, never tensors. Prefect tasks (`flows.tasks`)
wrap these; `--local` runs and tests call them directly. Nothing here holds the store open
between calls.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from indexstore.store import Store
from models import lifecycle


@dataclass(frozen=True)
class StepResult:
    """What a step hands to the next one: a reference, never tensors."""

    version_id: int
    seconds: float


def construct(
    url: str,
    index: str,
    method_name: str,
    config_values: dict | None,
    dataset: str,
    split: str = "default",
    flow_run_id: str | None = None,
) -> StepResult:
    """Initial index of ``method_name`` on ``dataset``/``split`` -> a new version (no parent)."""
    start = time.perf_counter()
    recipe = lifecycle.Recipe.new(method_name, config_values)
    info = lifecycle.construct(Store.open(url), index, recipe, dataset, split, flow_run_id)
    return StepResult(info.id, time.perf_counter() - start)


def train(url: str, version_id: int, flow_run_id: str | None = None) -> StepResult:
    """Train the method's model for the version's structure -> a new version (same structure)."""
    start = time.perf_counter()
    info = lifecycle.train(Store.open(url), version_id, flow_run_id)
    return StepResult(info.id, time.perf_counter() - start)


def relearn(url: str, version_id: int, flow_run_id: str | None = None) -> StepResult:
    """Learn a new index structure from a trained version -> a new version."""
    start = time.perf_counter()
    info = lifecycle.relearn(Store.open(url), version_id, flow_run_id)
    return StepResult(info.id, time.perf_counter() - start)


def evaluate(
    url: str,
    version_id: int,
    role: str = "valid",
    ks: tuple[int, ...] = (10, 50),
    beams: tuple[int, ...] = (50,),
    max_users: int | None = None,
    device: str = "auto",
    exhaustive: bool | None = None,
    exhaustive_users: int | None = None,
) -> list[dict]:
    """Metrics of a trained version on held-out users, appended to the store (see
    `models.lifecycle.evaluate`); the rows as dicts (for the Prefect table artifact)."""
    rows = lifecycle.evaluate(
        Store.open(url), version_id, role, tuple(ks), tuple(beams), max_users, device, exhaustive, exhaustive_users
    )
    return [asdict(r) for r in rows]
