"""The learning cycle's order, written once: `sequence_cycle` runs
construct -> train -> evaluate -> rounds x (relearn -> train -> evaluate)
over whichever step functions it is given: Prefect tasks inside `flows.flows.cycle_flow`, or the
plain `flows.steps` functions in-process (``run_cycle(..., local=True)``) for machines without a
Prefect server and for fast tests."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from flows import steps
from models.registry import get_method


@dataclass(frozen=True)
class CycleOps:
    """The four steps, each taking and returning references (version ids)."""

    construct: Callable[[], int]
    train: Callable[[int], int]
    relearn: Callable[[int], int]
    evaluate: Callable[[int], object]


def sequence_cycle(ops: CycleOps, method: str, rounds: int) -> list[int]:
    """Run the cycle; returns the ids of the versions written, in order. Every relearnt index
    is trained and evaluated, so the last version is a trained one. Methods whose index is not
    relearnt (baselines) run construct -> train -> evaluate only."""
    written = [ops.construct()]
    written.append(ops.train(written[-1]))
    ops.evaluate(written[-1])
    for _ in range(rounds if get_method(method).relearns else 0):
        written.append(ops.relearn(written[-1]))
        written.append(ops.train(written[-1]))
        ops.evaluate(written[-1])
    return written


def run_cycle(url: str, index: str, method: str, dataset: str, split: str, config: dict | None,
              rounds: int, ks=(10, 50), beams=(50,), max_users: int | None = None,
              local: bool = False) -> list[int]:
    """The cycle as a Prefect flow run (default) or in-process (``local=True``)."""
    if not local:
        from flows.flows import cycle_flow

        return cycle_flow(url, index, method, dataset, split, config, rounds, tuple(ks),
                          tuple(beams), max_users)
    ops = CycleOps(
        construct=lambda: steps.construct(url, index, method, config, dataset, split).version_id,
        train=lambda v: steps.train(url, v).version_id,
        relearn=lambda v: steps.relearn(url, v).version_id,
        evaluate=lambda v: steps.evaluate(url, v, "valid", tuple(ks), tuple(beams), max_users),
    )
    return sequence_cycle(ops, method, rounds)
