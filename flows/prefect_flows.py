"""Prefect flows: `construct`, `train`, `relearn`, `evaluate`, `cycle`, `retrain`, `promote` and
`rollback`, and the retrain-only tasks (`prepare`, `gate`).

Flows only sequence tasks (`grove.flows.tasks`); every step writes a new version whose parent is the
previous one. ``cycle`` runs `grove.models.lifecycle.Plan.cycle` through `grove.flows.ops.prefect_ops`.

``concurrent=True`` (construct, evaluate, cycle, retrain, retrain-indexes) submits the steps to
the flow's task runner instead of calling them one after the other (`grove.flows.ops.submitted_ops`;
the runner is set with `grove.flows.runners.with_task_runner`, e.g. Ray or Dask): independent steps run
at once, the versions and metric rows written are the same. ``retrain-indexes`` retrains
several indexes in one flow run, each index's chain beside the others' when concurrent.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from grove.flows.gate import GateConfig, GateDecision, run_gate, slug
from grove.flows.ops import Target, prefect_ops, resolve, submit_construct, submit_evaluate, submitted_ops
from grove.flows.retrain import eval_settings, prepare, retrain_result, retrain_target, rollback_index
from grove.flows.runners import absolute_url
from grove.flows.tasks import construct_task, evaluate_task, relearn_task, train_task
from grove.indexstore.errors import GroveError
from grove.indexstore.store import Store
from grove.models.lifecycle import Plan, Recipe, run_plan

DEFAULT_KS = (10, 50)
DEFAULT_BEAMS = (50,)


@flow(name="construct", flow_run_name="construct {index}")
def construct_flow(
    url: str,
    index: str,
    method: str,
    dataset: str,
    split: str = "default",
    config: dict | None = None,
    concurrent: bool = False,
) -> int:
    """``concurrent``: the construct submitted to the task runner (a RecForest's trees at once)."""
    if not concurrent:
        return construct_task(url, index, method, config, dataset, split)
    futures: list = []
    target = Target(absolute_url(url), index, method, dataset, split, config)
    version = submit_construct(target, Recipe.new(method, config), futures)
    return resolve(futures, [version])[0]


@flow(name="train", flow_run_name="train v{version_id}")
def train_flow(url: str, version_id: int, nproc: int = 1) -> int:
    return train_task(url, version_id, nproc)


@flow(name="relearn", flow_run_name="relearn v{version_id}")
def relearn_flow(url: str, version_id: int, nproc: int = 1) -> int:
    return relearn_task(url, version_id, nproc)


@flow(name="evaluate", flow_run_name="evaluate v{version_id}")
def evaluate_flow(
    url: str,
    version_id: int,
    role: str = "valid",
    ks: tuple[int, ...] = DEFAULT_KS,
    beams: tuple[int, ...] = DEFAULT_BEAMS,
    max_users: int | None = None,
    exhaustive: bool | None = None,
    exhaustive_users: int | None = None,
    concurrent: bool = False,
) -> list[dict]:
    """``concurrent``: every beam and the exhaustive reference a task, at once (same rows)."""
    if not concurrent:
        return evaluate_task(url, version_id, role, tuple(ks), tuple(beams), max_users, exhaustive, exhaustive_users)
    futures: list = []
    target = Target(absolute_url(url), "", "", role=role, ks=tuple(ks), beams=tuple(beams), max_users=max_users)
    record = submit_evaluate(target, version_id, futures, exhaustive, exhaustive_users)
    return resolve(futures, [record])[0]


@flow(name="cycle", flow_run_name="cycle {index} ({method}, {rounds} rounds)")
def cycle_flow(
    url: str,
    index: str,
    method: str,
    dataset: str,
    split: str = "default",
    config: dict | None = None,
    rounds: int = 1,
    ks: tuple[int, ...] = DEFAULT_KS,
    beams: tuple[int, ...] = DEFAULT_BEAMS,
    max_users: int | None = None,
    concurrent: bool = False,
) -> list[int]:
    """Returns the ids of every version written, in order. ``concurrent``: the steps submitted
    to the task runner (each evaluation beside the next step, its beams at once)."""
    if concurrent:
        url = absolute_url(url)
    target = Target(url, index, method, dataset, split, config, ks=tuple(ks), beams=tuple(beams), max_users=max_users)
    if not concurrent:
        return run_plan(Plan.cycle(method, rounds), prefect_ops(target))
    futures: list = []
    written = run_plan(Plan.cycle(method, rounds), submitted_ops(target, futures))
    return resolve(futures, written)


@task(name="gate", task_run_name="gate {index} v{candidate}")
def gate_task(url: str, index: str, candidate: int, gate: dict | None, max_users: int | None) -> dict:
    """The promotion gate as a task; evaluates a version whose gate metric is missing."""
    cfg = GateConfig.from_dict(gate)
    ks, beams = eval_settings(cfg)

    def evaluate(v: int) -> list[dict]:
        return evaluate_task.fn(url, v, cfg.role, ks, beams, max_users)

    return run_gate(Store.open(url), index, candidate, cfg, evaluate=evaluate).as_dict()


@task(name="prepare", task_run_name="prepare retrain {index}")
def prepare_task(url: str, index: str, method: str | None, data: str | None, rounds: int) -> tuple:
    return prepare(url, index, method, data, rounds)


@flow(name="retrain", flow_run_name="retrain {index}")
def retrain_flow(
    url: str,
    index: str,
    rounds: int = 1,
    method: str | None = None,
    data: str | None = None,
    gate: dict | None = None,
    max_users: int | None = None,
    concurrent: bool = False,
) -> dict:
    """Retrain ``index`` from production (or on new ``data``), evaluate, gate. Returns the
    `RetrainResult` as a dict (versions written, candidate, promoted, reason). ``concurrent``:
    the steps submitted to the task runner."""
    return _retrain(url, index, rounds, method, data, gate, max_users, concurrent)()


@flow(name="retrain-indexes", flow_run_name="retrain {indexes}")
def retrain_indexes_flow(
    url: str,
    indexes: list[str],
    rounds: int = 1,
    method: str | None = None,
    data: str | None = None,
    gate: dict | None = None,
    max_users: int | None = None,
    concurrent: bool = False,
) -> list[dict]:
    """`retrain_flow` of each of ``indexes`` in one flow run: one result per index, in order.
    ``concurrent``: every index's chain submitted to the task runner at once. Each chain runs to
    its end (its versions and gate decision stand); then the first failure, if any, is raised."""
    if len(set(indexes)) != len(indexes) or not indexes:
        raise GroveError(f"retrain-indexes needs distinct index names, got {list(indexes)!r}")
    finishers, errors = [], []
    for index in indexes:  # every chain is submitted before any is waited for
        try:
            finishers.append(_retrain(url, index, rounds, method, data, gate, max_users, concurrent))
        except Exception as exc:  # raised below, after the other indexes ran
            errors.append(exc)
    results = []
    for finish in finishers:
        try:
            results.append(finish())
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
    return results


def _retrain(url, index, rounds, method, data, gate, max_users, concurrent: bool):
    """Start the retrain of ``index``: called one after the other, or (``concurrent``)
    submitted. Returns a function that waits for it and gives its `RetrainResult` dict."""
    base, fresh = prepare_task(url, index, method, data, rounds)
    plan = Plan.retrain(base.method, rounds, fresh is not None)
    if concurrent:
        url = absolute_url(url)
    target = retrain_target(url, index, base, fresh, GateConfig.from_dict(gate), max_users)
    if not concurrent:
        written = run_plan(plan, prefect_ops(target), start=base.id)
        decision = gate_task(url, index, written[-1], gate, max_users)
        result = asdict(retrain_result(index, base.id, written, GateDecision.from_dict(decision), fresh, base.dataset))
        return lambda: result
    futures: list = []
    submitted = run_plan(plan, submitted_ops(target, futures), start=base.id)
    # the gate reads the candidate's metrics: it waits for the whole chain (its evaluation too)
    decided = gate_task.submit(url, index, submitted[-1], gate, max_users, wait_for=list(futures))  # type: ignore[call-overload]

    def finish() -> dict:
        written = resolve([*futures, decided], submitted)
        decision = GateDecision.from_dict(decided.result())
        return asdict(retrain_result(index, base.id, written, decision, fresh, base.dataset))

    return finish


@flow(name="rollback", flow_run_name="rollback {index} {alias}")
def rollback_flow(
    url: str, index: str, alias: str = "production", to: int | None = None, reason: str = "rollback from Prefect"
) -> dict:
    """Roll ``alias`` back (one step, or to version ``to``) -- triggerable from the Prefect UI."""
    event = rollback_index(url, index, alias, to, reason)
    create_markdown_artifact(
        key=f"rollback-{slug(index)}",
        markdown=(
            f"# Rollback of `{index}` alias `{alias}`\n\n* from v{event.from_version} "
            f"to v{event.to_version}\n* reason: {event.reason}\n* at: {event.at} UTC"
        ),
        description=f"rollback of {index} {alias}",
    )
    return {
        "index": index,
        "alias": alias,
        "from_version": event.from_version,
        "to_version": event.to_version,
        "reason": event.reason,
        "event_id": event.id,
    }


@flow(name="promote", flow_run_name="promote {index} v{version}")
def promote_flow(url: str, index: str, version: int, gate: dict | None = None, max_users: int | None = None) -> dict:
    """The promotion gate of one version, as a flow run (its decision is a published artifact)."""
    return gate_task(url, index, version, gate, max_users)
