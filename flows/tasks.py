"""Prefect tasks: each wraps one step of `grove.flows.steps` and passes references (ints, strings).

Submitted to a task runner (`grove.flows.runners`), tasks may share a process (the thread runner)
with each other. The steps that write a version seed torch's global random generator, which is
one per process, so they run inside `seeded()`, one at a time in a process; evaluations draw no
random numbers and run beside them. (Ray and Dask worker processes run one task at a time.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from grove.flows import steps

_SEEDED = threading.Lock()  # construct / train / relearn: torch.manual_seed is process-wide


@contextmanager
def seeded() -> Iterator[None]:
    """Hold the process's seeded-steps lock. (A function, not the lock: Ray ships a task's
    function by value with the globals it names, and a lock cannot be pickled.)"""
    with _SEEDED:
        yield


def _run_id() -> str | None:
    rid = flow_run.get_id()
    return str(rid) if rid else None


@task(name="construct", task_run_name="construct {index} ({method_name})")
def construct_task(url: str, index: str, method_name: str, config_values: dict | None, dataset: str, split: str) -> int:
    with seeded():
        return steps.construct(url, index, method_name, config_values, dataset, split, _run_id()).version_id


@task(name="train", task_run_name="train v{version_id}")
def train_task(url: str, version_id: int, nproc: int = 1) -> int:
    with seeded():
        return steps.train(url, version_id, _run_id(), nproc).version_id


@task(name="relearn", task_run_name="relearn v{version_id}")
def relearn_task(url: str, version_id: int, nproc: int = 1) -> int:
    with seeded():
        return steps.relearn(url, version_id, _run_id(), nproc).version_id


@task(name="evaluate", task_run_name="evaluate v{version_id}")
def evaluate_task(
    url: str,
    version_id: int,
    role: str,
    ks: tuple[int, ...],
    beams: tuple[int, ...],
    max_users: int | None,
    exhaustive: bool | None = None,
    exhaustive_users: int | None = None,
) -> list[dict]:
    rows = steps.evaluate(
        url, version_id, role, ks, beams, max_users, exhaustive=exhaustive, exhaustive_users=exhaustive_users
    )
    create_table_artifact(
        key=f"metrics-v{version_id}", table=rows, description=f"Metrics of version {version_id} on the {role} users"
    )
    return rows


# ------------------------------------------------- an evaluation in passes (flows.ops.submit_evaluate)
@task(name="evaluate pass", task_run_name="evaluate v{version_id} {label}")
def evaluate_pass_task(
    url: str,
    version_id: int,
    role: str,
    ks: tuple[int, ...],
    beam: int | None,
    max_users: int | None,
    exhaustive: bool | None = None,
    exhaustive_users: int | None = None,
    label: str = "",
):
    """One search pass (a beam, or the exhaustive reference when ``beam`` is None), unrecorded."""
    return steps.evaluate_pass(url, version_id, role, ks, beam, max_users, "auto", exhaustive, exhaustive_users)


@task(name="record metrics", task_run_name="record metrics v{version_id}")
def record_metrics_task(url: str, version_id: int, role: str, ks: tuple[int, ...], results: list) -> list[dict]:
    """The evaluation's passes appended to the store at once, published as `evaluate_task` does."""
    rows = steps.record_evaluation(url, version_id, ks, results)
    create_table_artifact(
        key=f"metrics-v{version_id}", table=rows, description=f"Metrics of version {version_id} on the {role} users"
    )
    return rows
