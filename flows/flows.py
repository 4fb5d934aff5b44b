"""Prefect flows: `construct`, `train`, `relearn`, `evaluate` and `cycle`.

Flows only sequence tasks; every step writes a new version whose parent is the previous one.
``cycle`` = construct -> train -> evaluate -> rounds x (relearn -> train -> evaluate): each
relearnt index is trained and evaluated, so the last version is always a trained one.
Methods whose index is not relearnt (the baselines) run construct -> train -> evaluate.
"""
from __future__ import annotations

from prefect import flow

from flows.tasks import construct_task, evaluate_task, relearn_task, train_task
from flows.cycle import CycleOps, sequence_cycle

DEFAULT_KS = (10, 50)
DEFAULT_BEAMS = (50,)


@flow(name="construct", flow_run_name="construct {index}")
def construct_flow(url: str, index: str, method: str, dataset: str, split: str = "default",
                   config: dict | None = None) -> int:
    return construct_task(url, index, method, config, dataset, split)


@flow(name="train", flow_run_name="train v{version_id}")
def train_flow(url: str, version_id: int) -> int:
    return train_task(url, version_id)


@flow(name="relearn", flow_run_name="relearn v{version_id}")
def relearn_flow(url: str, version_id: int) -> int:
    return relearn_task(url, version_id)


@flow(name="evaluate", flow_run_name="evaluate v{version_id}")
def evaluate_flow(url: str, version_id: int, role: str = "valid", ks: tuple[int, ...] = DEFAULT_KS,
                  beams: tuple[int, ...] = DEFAULT_BEAMS, max_users: int | None = None,
                  exhaustive: bool | None = None, exhaustive_users: int | None = None) -> list[dict]:
    return evaluate_task(url, version_id, role, tuple(ks), tuple(beams), max_users, exhaustive, exhaustive_users)


@flow(name="cycle", flow_run_name="cycle {index} ({method}, {rounds} rounds)")
def cycle_flow(url: str, index: str, method: str, dataset: str, split: str = "default",
               config: dict | None = None, rounds: int = 1, ks: tuple[int, ...] = DEFAULT_KS,
               beams: tuple[int, ...] = DEFAULT_BEAMS, max_users: int | None = None) -> list[int]:
    """Returns the ids of every version written, in order."""
    ops = CycleOps(
        construct=lambda: construct_task(url, index, method, config, dataset, split),
        train=lambda v: train_task(url, v),
        relearn=lambda v: relearn_task(url, v),
        evaluate=lambda v: evaluate_task(url, v, "valid", tuple(ks), tuple(beams), max_users),
    )
    return sequence_cycle(ops, method, rounds)
