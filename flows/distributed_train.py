"""A training step run by N data-parallel workers: `grove train INDEX --nproc N` (and
``relearn``) on one machine, or ``torchrun`` across several.

`run` starts N local workers with torch's elastic launcher (what ``torchrun --standalone`` does:
a c10d rendezvous on a free local port, no restarts). Every worker runs `work`: it reads the
version and the split from the store, joins the process group (gloo on the CPU, NCCL on CUDA,
`grove.models.distributed.process_group`), runs the lifecycle step (`grove.models.lifecycle.step_result`,
whose loops shard the batches and average the gradients) and waits at a barrier; rank 0 alone
then writes the one new version. A worker that dies, or raises, stops the launcher, which stops
the others: the run fails with the worker's error and no version is written.

Under ``torchrun`` (several machines: ``torchrun --nnodes M --nproc-per-node N --rdzv-backend
c10d --rdzv-endpoint HOST:PORT -m grove.flows.cli train INDEX``), each process is already a worker:
the CLI calls `work` directly. Every worker must reach the store: a DuckDB file on a shared
path, or a PostgreSQL URL.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from grove.indexstore.errors import GroveError
from grove.indexstore.store import Store
from grove.models import distributed, lifecycle

STEPS = ("train", "relearn")
T = TypeVar("T")


@record
def work(url: str, version_id: int, step: str, flow_run_id: str | None = None) -> int | None:
    """One worker's part of ``step`` of version ``version_id``; rank 0 returns the id of the
    version it wrote, the others None."""
    if step not in STEPS:
        raise GroveError(f"only {' and '.join(STEPS)} run on several workers, not {step!r}")
    store = Store.open(url)
    old = lifecycle.load(store, version_id)
    with distributed.process_group(old.recipe.device):
        built, recipe = lifecycle.step_result(store, old, step)
        distributed.barrier()  # every worker finished its part: none died before the end
        if not distributed.is_main():
            return None
        info = lifecycle.write(
            store, old.info.index_name, recipe, built, old.dataset, old.split, old.info.id, flow_run_id
        )
        return info.id


def run(url: str, version_id: int, step: str, nproc: int, flow_run_id: str | None = None) -> int:
    """``step`` of version ``version_id`` by ``nproc`` local workers -> the id of the version
    written. Raises GroveError naming the failed worker(s) when one dies or fails."""
    if nproc < 1:
        raise GroveError(f"--nproc must be >= 1, got {nproc}")
    threads = os.environ.get("OMP_NUM_THREADS")
    # the launcher logs a failed worker's traceback; the GroveError below says it in one line
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        results = launch(work, nproc, url, version_id, step, flow_run_id)
    except ChildFailedError as exc:
        raise GroveError(
            f"{step} of version {version_id} on {nproc} workers failed, no version written: {_why(exc)}"
        ) from None
    finally:
        _restore("OMP_NUM_THREADS", threads)  # the launcher sets it for the workers
    written = results.get(0)
    if written is None:
        raise GroveError(f"{step} of version {version_id}: rank 0 returned no version")
    return int(written)


def launch(fn: Callable[..., T], nproc: int, *args: Any) -> dict[int, T]:
    """``fn(*args)`` in ``nproc`` local workers (spawned; ``fn`` importable at module level),
    joined by a c10d rendezvous on a free local port, as ``torchrun --standalone`` does, with
    no restarts -> {rank: return value}. Raises ChildFailedError when a worker fails."""
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"grove-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    return elastic_launch(config, fn)(*args)


def _why(exc: ChildFailedError) -> str:
    """One line per failed worker: its rank and its error (or the signal that killed it)."""
    parts = []
    for rank, failure in sorted(exc.failures.items()):
        message = failure.message if isinstance(failure.message, str) else str(failure.message)
        if isinstance(failure.message, dict):
            message = str(failure.message.get("message", failure.message))
        last = [line for line in message.strip().splitlines() if line.strip()][-1:] or [f"exit code {failure.exitcode}"]
        parts.append(f"worker {rank} ({last[0].strip()})")
    return "; ".join(parts)


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
