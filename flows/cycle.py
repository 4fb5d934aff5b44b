"""`run_cycle`: the learning cycle of `grove.models.lifecycle.Plan.cycle` (construct -> train ->
evaluate -> rounds x (relearn -> train -> evaluate)) as a Prefect flow run (default), with its
steps on a task runner (``runner``: threads, Ray or Dask, `grove.flows.runners`), or in-process
(``local=True``) for machines without a Prefect server and for fast tests."""

from __future__ import annotations

from grove.flows.ops import Target, local_ops
from grove.flows.runners import RunnerSpec
from grove.indexstore.errors import GroveError
from grove.indexstore.store import Store
from grove.models.lifecycle import Plan, run_plan


def run_cycle(
    url: str,
    index: str,
    method: str,
    dataset: str,
    split: str,
    config: dict | None,
    rounds: int,
    ks=(10, 50),
    beams=(50,),
    max_users: int | None = None,
    local: bool = False,
    store: Store | None = None,
    runner: RunnerSpec | None = None,
) -> list[int]:
    """Returns the ids of every version written, in order. ``store``: the open store of ``url``
    (in-process runs reuse it). ``runner``: the flow's task runner; independent steps (an
    evaluation and the next step, the beams of an evaluation, a RecForest's trees) run at once."""
    plan = Plan.cycle(method, rounds)  # rounds checked before anything starts
    if local and runner is not None:
        raise GroveError("a task runner runs Prefect tasks; --local runs the steps without Prefect")
    if not local:
        from grove.flows.prefect_flows import cycle_flow
        from grove.flows.runners import with_task_runner

        flow = with_task_runner(cycle_flow, runner)  # the runner's package checked before the flow starts
        return flow(
            url, index, method, dataset, split, config, rounds, tuple(ks), tuple(beams), max_users, runner is not None
        )
    target = Target(url, index, method, dataset, split, config, ks=tuple(ks), beams=tuple(beams), max_users=max_users)
    return run_plan(plan, local_ops(target, store))
