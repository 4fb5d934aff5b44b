"""Prefect tasks: each wraps one step of `flows.steps` and passes references (ints, strings)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from flows import steps


def _run_id() -> str | None:
    rid = flow_run.get_id()
    return str(rid) if rid else None


@task(name="construct", task_run_name="construct {index} ({method_name})")
def construct_task(url: str, index: str, method_name: str, config_values: dict | None, dataset: str, split: str) -> int:
    return steps.construct(url, index, method_name, config_values, dataset, split, _run_id()).version_id


@task(name="train", task_run_name="train v{version_id}")
def train_task(url: str, version_id: int) -> int:
    return steps.train(url, version_id, _run_id()).version_id


@task(name="relearn", task_run_name="relearn v{version_id}")
def relearn_task(url: str, version_id: int) -> int:
    return steps.relearn(url, version_id, _run_id()).version_id


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
