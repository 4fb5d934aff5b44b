"""Prefect flows: `construct`, `train`, `relearn`, `evaluate`, `cycle`, `retrain`, `promote` and
`rollback`, and the retrain-only tasks (`prepare`, `gate`).

Flows only sequence tasks (`flows.tasks`); every step writes a new version whose parent is the
previous one. ``cycle`` runs `models.lifecycle.Plan.cycle` through `flows.ops.prefect_ops`.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.gate import GateConfig, GateDecision, run_gate, slug
from flows.ops import Target, prefect_ops
from flows.retrain import eval_settings, prepare, retrain_result, retrain_target, rollback_index
from flows.tasks import construct_task, evaluate_task, relearn_task, train_task
from indexstore.store import Store
from models.lifecycle import Plan, run_plan

DEFAULT_KS = (10, 50)
DEFAULT_BEAMS = (50,)


@flow(name="construct", flow_run_name="construct {index}")
def construct_flow(
    url: str, index: str, method: str, dataset: str, split: str = "default", config: dict | None = None
) -> int:
    return construct_task(url, index, method, config, dataset, split)


@flow(name="train", flow_run_name="train v{version_id}")
def train_flow(url: str, version_id: int) -> int:
    return train_task(url, version_id)


@flow(name="relearn", flow_run_name="relearn v{version_id}")
def relearn_flow(url: str, version_id: int) -> int:
    return relearn_task(url, version_id)


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
) -> list[dict]:
    return evaluate_task(url, version_id, role, tuple(ks), tuple(beams), max_users, exhaustive, exhaustive_users)


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
) -> list[int]:
    """Returns the ids of every version written, in order."""
    target = Target(url, index, method, dataset, split, config, ks=tuple(ks), beams=tuple(beams), max_users=max_users)
    return run_plan(Plan.cycle(method, rounds), prefect_ops(target))


@task(name="gate", task_run_name="gate {index} v{candidate}")
def gate_task(url: str, index: str, candidate: int, gate: dict | None, max_users: int | None) -> dict:
    """The promotion gate as a task; evaluates a version whose gate metric is missing."""
    cfg = GateConfig.from_dict(gate)
    ks, beams = eval_settings(cfg)

    def evaluate(v: int) -> list[dict]:
        return evaluate_task.fn(url, v, cfg.role, ks, beams, max_users)

    return run_gate(Store.open(url), index, candidate, cfg, evaluate=evaluate).as_dict()


@task(name="prepare", task_run_name="prepare retrain {index}")
def prepare_task(url: str, index: str, method: str | None, data: str | None, rounds: int):
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
) -> dict:
    """Retrain ``index`` from production (or on new ``data``), evaluate, gate. Returns the
    `RetrainResult` as a dict (versions written, candidate, promoted, reason)."""
    base, fresh = prepare_task(url, index, method, data, rounds)
    ops = prefect_ops(retrain_target(url, index, base, fresh, GateConfig.from_dict(gate), max_users))
    written = run_plan(Plan.retrain(base.method, rounds, fresh is not None), ops, start=base.id)
    decision = GateDecision.from_dict(gate_task(url, index, written[-1], gate, max_users))
    return asdict(retrain_result(index, base.id, written, decision, fresh, base.dataset))


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
