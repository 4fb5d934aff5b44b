"""A Ray actor pool for the batch jobs (`grove.flows.batch_retrieve`): Ray Data ``map_batches`` with a
callable class, one instance per actor, over a dataset of work items (parts of a job).

* `ray_session`: ``ray.init`` on an existing cluster (``address``: ``auto``, ``HOST:6379``,
  ``ray://HOST:10001``) or a local one (no address), or the Ray this process already runs;
  shut down at the end only if it was started here. Ray Data keeps the order of the work items
  (``preserve_order``), without progress bars (the job prints its own progress line).
* `map_on_actors`: the items as a dataset of one block each (``from_items``: no read tasks,
  so actors holding every CPU cannot starve a reader), ``map_batches(cls, batch_size=1)`` on
  ``actors`` actors of ``threads`` CPUs (and one GPU each with ``gpus``), the outputs in order.
  A `GroveError` raised in an actor comes back as itself (the CLI exits 2 with its message).

Actors import grove: on a cluster, install it on every node. Whatever the actors read (the
store, an input file) must be reachable from them under the same name: a DuckDB file on a
shared filesystem, or a database server.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from grove.indexstore.errors import GroveError

LOCAL = "local"  # ``--ray`` without an address


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: ``address`` of a cluster (None: local or this process's Ray),
    ``actors`` in the pool, torch ``threads`` (= CPUs reserved) per actor."""

    address: str | None = None
    actors: int = 1
    threads: int = 1

    def __post_init__(self):
        for name in ("actors", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise GroveError(f"{name} must be a positive integer, got {value!r}")

    def describe(self) -> str:
        return f"{self.actors} Ray actor{'s' * (self.actors > 1)} ({self.address or 'local'})"


def import_ray() -> Any:
    """The ray module with Ray Data, or a GroveError naming what to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise GroveError(
            f"--ray needs ray[data] ({exc.name or 'ray'} is not installed): pip install 'grove[distributed]'"
        ) from None
    return ray


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray connected for the block (module docstring); yields the ray module."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        try:
            if address in (None, LOCAL):
                ray.init(include_dashboard=False, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise GroveError(f"cannot start or reach Ray at {address or 'a local cluster'}: {exc}") from None
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notices would bury the job's line
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def check_resources(ray: Any, opts: RayOptions, gpus: bool) -> None:
    """Refuse a pool the cluster cannot hold (it would wait for ever): actors x threads CPUs,
    and one GPU per actor with ``gpus``."""
    have = ray.cluster_resources()
    cpus, n_gpus = int(have.get("CPU", 0)), int(have.get("GPU", 0))
    if opts.actors * opts.threads > cpus:
        raise GroveError(
            f"{opts.actors} actors x {opts.threads} threads need {opts.actors * opts.threads} CPUs; "
            f"the Ray cluster has {cpus}"
        )
    if gpus and opts.actors > n_gpus:
        raise GroveError(f"{opts.actors} GPU actors need {opts.actors} GPUs; the Ray cluster has {n_gpus}")


def cluster_has_gpu(ray: Any) -> bool:
    return ray.cluster_resources().get("GPU", 0) >= 1


def map_on_actors(
    ray: Any, cls: type, kwargs: dict[str, Any], items: list[dict], opts: RayOptions, gpus: bool = False
) -> Iterator[Any]:
    """``cls(**kwargs)`` on each of ``opts.actors`` actors, called on one item at a time (as a
    one-row pyarrow table); yields what the calls return (pyarrow tables), in item order."""
    if not items:
        return
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    out = ds.map_batches(
        cls,
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=opts.actors),
        num_cpus=opts.threads,
        num_gpus=1 if gpus else 0,
        fn_constructor_kwargs=kwargs,
    )
    try:
        with warnings.catch_warnings():  # fewer items than actors: Ray says the pool is too wide
            warnings.simplefilter("ignore", UserWarning)
            yield from out.iter_batches(batch_format="pyarrow", batch_size=None)
    except Exception as exc:
        cause = grove_cause(exc)
        if cause is not None:
            raise cause from None
        raise


def grove_cause(exc: BaseException) -> GroveError | None:
    """The `GroveError` an actor raised, out of Ray's wrappers (``RayTaskError.cause``, the
    exception chain); None when the failure is not one."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, GroveError) and not hasattr(cause, "cause"):
            return cause
        if isinstance(e, GroveError) and not hasattr(e, "cause"):
            return e
        todo += [cause if isinstance(cause, BaseException) else None, e.__cause__, e.__context__]
    return None
