"""The two factories of `models.lifecycle.Ops`, the step functions a plan runs on: in-process
(`local_ops`: the lifecycle's verbs on one open `Store`) and as Prefect tasks (`prefect_ops`:
`flows.tasks`, to be called inside a flow run). Both take and return references (version ids)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from indexstore.store import Store
from models import lifecycle
from models.lifecycle import Ops


@dataclass(frozen=True)
class Target:
    """What a plan builds: where, which index, from what (construct) and how it is evaluated."""

    url: str
    index: str
    method: str
    dataset: str | None = None
    split: str = "default"
    config: dict | None = None
    role: str = "valid"
    ks: tuple[int, ...] = (10, 50)
    beams: tuple[int, ...] = (50,)
    max_users: int | None = None
    device: str = "auto"


def local_ops(t: Target, store: Store | None = None) -> Ops:
    """The steps in this process, without Prefect, on ``store`` (opened once from ``t.url``)."""
    store = store or Store.open(t.url)
    recipe = lifecycle.Recipe.new(t.method, t.config)  # unknown fields refused before any step

    def evaluate(v: int) -> list[dict]:
        rows = lifecycle.evaluate(store, v, t.role, t.ks, t.beams, t.max_users, t.device)
        return [asdict(r) for r in rows]

    return Ops(
        construct=lambda: lifecycle.construct(store, t.index, recipe, _dataset(t), t.split).id,
        train=lambda v: lifecycle.train(store, v).id,
        relearn=lambda v: lifecycle.relearn(store, v).id,
        evaluate=evaluate,
    )


def prefect_ops(t: Target) -> Ops:
    """The steps as Prefect tasks (call inside a flow run: each step is a task run)."""
    from flows.tasks import construct_task, evaluate_task, relearn_task, train_task

    return Ops(
        construct=lambda: construct_task(t.url, t.index, t.method, t.config, _dataset(t), t.split),
        train=lambda v: train_task(t.url, v),
        relearn=lambda v: relearn_task(t.url, v),
        evaluate=lambda v: evaluate_task(t.url, v, t.role, t.ks, t.beams, t.max_users),
    )


def _dataset(t: Target) -> str:
    if t.dataset is None:
        raise ValueError("this plan constructs a version but names no dataset")
    return t.dataset
