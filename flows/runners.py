"""Task runners: where a flow's submitted tasks run (issue 26, "Prefect on the same cluster").

A flow runs its tasks in its own process by default. With a task runner and ``concurrent=True``
the flows (`grove.flows.prefect_flows`) submit independent steps to it instead: an evaluation beside
the next step, the beams of an evaluation, the trees of a RecForest, the indexes of a retrain.

=========  ==============================================  ==========================================
kind       no address: a local pool or cluster             ``address``: an existing cluster
=========  ==============================================  ==========================================
thread     threads of the flow process (``workers``)       --
ray        ``ray.init(num_cpus=workers)`` (prefect-ray)    ``ray://head:10001`` or ``auto``
dask       ``LocalCluster(n_workers=workers, 1 thread      ``tcp://scheduler:8786``
           each)`` (prefect-dask)
=========  ==============================================  ==========================================

Every worker opens the store itself (by URL, made absolute: a worker's directory is not the
flow's), so the store must be reachable from the workers: a DuckDB file on a shared filesystem,
or a database server. A DuckDB file admits one process at a time: the workers' reads and writes
wait for each other (`grove.indexstore.engine`). Steps that ran one after the other now meet, so
`with_task_runner` lets a read wait as long as a write does (``GROVE_STORE_WAIT`` defaults to
``GROVE_WRITE_WAIT``'s 600 s in this process and in the local workers it starts, which inherit
its environment; set it on the workers of a cluster). Workers import grove: install it on them.
Prefect is imported only when a runner is made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from grove.indexstore.errors import GroveError
from grove.indexstore.staging import DEFAULT_WRITE_WAIT, WRITE_WAIT_ENV

STORE_WAIT_ENV = "GROVE_STORE_WAIT"  # read by indexstore.engine.retry_while_locked

RUNNERS = ("thread", "ray", "dask")
_PACKAGES = {"ray": ("prefect_ray", "prefect-ray"), "dask": ("prefect_dask", "prefect-dask")}
EXTRA = "distributed"  # pyproject's optional dependencies that bring both


@dataclass(frozen=True)
class RunnerSpec:
    """A task runner by name: ``kind`` (thread, ray, dask), the ``address`` of an existing
    cluster (None: start a local one) and the size of a local one (``workers``; None: the
    package's default)."""

    kind: str
    address: str | None = None
    workers: int | None = None

    def __post_init__(self):
        if self.kind not in RUNNERS:
            raise GroveError(f"unknown task runner {self.kind!r}: choose one of {', '.join(RUNNERS)}")
        if self.address is not None and self.kind == "thread":
            raise GroveError("the thread task runner runs in the flow's process: it takes no address")
        if self.address is not None and self.workers is not None:
            raise GroveError(
                f"workers sizes a local {self.kind} cluster; the cluster at {self.address} has its own workers"
            )
        if self.workers is not None and self.workers <= 0:
            raise GroveError(f"workers must be a positive integer, got {self.workers}")

    def describe(self) -> str:
        where = self.address or ("local" if self.kind != "thread" else "flow process")
        size = f", {self.workers} workers" if self.workers else ""
        return f"{self.kind} ({where}{size})"


def task_runner(spec: RunnerSpec, init_kwargs: dict[str, Any] | None = None) -> Any:
    """The Prefect task runner of ``spec``; a GroveError naming the package to install when
    prefect-ray / prefect-dask is missing. ``init_kwargs``: more arguments for ``ray.init`` or
    dask's ``LocalCluster`` (a local cluster only)."""
    extra = dict(init_kwargs or {})
    if spec.kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=spec.workers)
    module, package = _PACKAGES[spec.kind]
    try:
        runners = __import__(f"{module}.task_runners", fromlist=["task_runners"])
    except ImportError as exc:
        raise GroveError(
            f"--task-runner {spec.kind} needs {package} ({exc.name or module} is not installed): "
            f"pip install 'grove[{EXTRA}]'"
        ) from None
    if spec.kind == "ray":
        if spec.address is not None:
            return runners.RayTaskRunner(address=spec.address, init_kwargs=extra or None)
        kwargs = {"num_cpus": spec.workers} if spec.workers else {}
        return runners.RayTaskRunner(init_kwargs={**kwargs, **extra})
    if spec.address is not None:
        return runners.DaskTaskRunner(address=spec.address)
    # one thread per worker process: torch's random generator is per process (`grove.flows.tasks`)
    cluster = {"threads_per_worker": 1, "processes": True, **({"n_workers": spec.workers} if spec.workers else {})}
    return runners.DaskTaskRunner(cluster_kwargs={**cluster, **extra})


def with_task_runner(flow: Any, spec: RunnerSpec | None, init_kwargs: dict[str, Any] | None = None) -> Any:
    """``flow`` with the task runner of ``spec`` (None: ``flow`` as it is). Sets the store's
    lock wait for concurrent steps (module docstring) unless ``GROVE_STORE_WAIT`` is set."""
    if spec is None:
        return flow
    runner = task_runner(spec, init_kwargs)
    os.environ.setdefault(STORE_WAIT_ENV, os.environ.get(WRITE_WAIT_ENV, str(DEFAULT_WRITE_WAIT)))
    return flow.with_options(task_runner=runner)


def absolute_url(url: str) -> str:
    """A store URL whose DuckDB path is absolute (workers and served flows run elsewhere)."""
    if url.startswith("duckdb:///") and not url.startswith("duckdb:////"):
        path = url[len("duckdb:///") :]
        if path and path != ":memory:" and not os.path.isabs(path):
            return "duckdb:///" + os.path.abspath(path)
    return url
