"""The factories of `grove.models.lifecycle.Ops`, the step functions a plan runs on: in-process
(`local_ops`: the lifecycle's verbs on one open `Store`), as Prefect tasks called one after the
other (`prefect_ops`: `grove.flows.tasks`, inside a flow run) and as Prefect tasks submitted to the
flow's task runner (`submitted_ops`). All take and return references (version ids); the
submitted ones take and return futures of them.

`submitted_ops` turns a plan into a graph of task runs: a step waits only for the version it
starts from, so an evaluation runs beside the next step, and an evaluation is a task per beam
(and one for the exhaustive reference) whose rows one last task records (`submit_evaluate`). A
RecForest construct builds its trees at once (`grove.flows.forest`). `resolve` waits for all of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from grove.indexstore.store import Store
from grove.models import lifecycle
from grove.models.lifecycle import Ops


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
    from grove.flows.tasks import construct_task, evaluate_task, relearn_task, train_task

    return Ops(
        construct=lambda: construct_task(t.url, t.index, t.method, t.config, _dataset(t), t.split),
        train=lambda v: train_task(t.url, v),
        relearn=lambda v: relearn_task(t.url, v),
        evaluate=lambda v: evaluate_task(t.url, v, t.role, t.ks, t.beams, t.max_users),
    )


def submitted_ops(t: Target, futures: list) -> Ops:
    """The steps submitted to the flow's task runner (call inside a flow run); each returns a
    future at once and appends every future it submits to ``futures`` (for `resolve`)."""
    from grove.flows.tasks import relearn_task, train_task

    recipe = lifecycle.Recipe.new(t.method, t.config)  # unknown fields refused before any step

    def add(future):
        futures.append(future)
        return future

    return Ops(
        construct=lambda: submit_construct(t, recipe, futures),
        train=lambda v: add(train_task.submit(t.url, v)),
        relearn=lambda v: add(relearn_task.submit(t.url, v)),
        evaluate=lambda v: submit_evaluate(t, v, futures),
    )


def submit_construct(t: Target, recipe: lifecycle.Recipe, futures: list):
    """The construct step submitted: a task, or for a RecForest a task per tree (`grove.flows.forest`)."""
    from grove.flows.tasks import construct_task

    if recipe.method == "recforest":
        from grove.flows.forest import submit_forest_construct

        return submit_forest_construct(t.url, t.index, t.method, t.config, _dataset(t), t.split, futures)
    future = construct_task.submit(t.url, t.index, t.method, t.config, _dataset(t), t.split)
    futures.append(future)
    return future


def submit_evaluate(t: Target, version, futures: list, exhaustive: bool | None = None, exhaustive_users=None):
    """An evaluation of ``version`` (an id or a future of one) submitted in passes: the
    exhaustive reference and every beam at once, then one task that records all their rows
    (`grove.models.evaluation_passes`: the rows `lifecycle.evaluate` records). Returns that task's future."""
    from grove.flows.tasks import evaluate_pass_task, record_metrics_task

    passes = [
        evaluate_pass_task.submit(
            t.url,
            version,
            t.role,
            t.ks,
            beam,
            t.max_users,
            exhaustive,
            exhaustive_users,
            label="exhaustive" if beam is None else f"beam {beam}",
        )
        for beam in (None, *t.beams)
    ]
    record = record_metrics_task.submit(t.url, version, t.role, t.ks, passes)
    futures += [*passes, record]
    return record


def resolve(futures: list, wanted: list) -> list:
    """Wait for every future in ``futures``; raise the first failure in submission order (a
    failed step's own error comes before its dependants'), else the results of ``wanted``."""
    from prefect.futures import wait

    wait(futures)
    for future in futures:
        future.result()
    return [f.result() for f in wanted]


def _dataset(t: Target) -> str:
    if t.dataset is None:
        raise ValueError("this plan constructs a version but names no dataset")
    return t.dataset
