"""Scheduled retraining (`retrain` flow), rollback (`rollback` flow) and the cron deployment.

``retrain`` on an index:

1. base = the index's ``production`` version, else its newest version;
2. *no new data*: train from the base (continue training its weights on its dataset/split) ->
   ``rounds`` x (relearn -> train) -> evaluate the last version;
   *new data* (``data=FILE``): the file is imported as a new dataset snapshot and split with the
   base split's protocol settings, then a fresh cycle of the same method and config runs on it
   (construct -> train -> rounds x (relearn -> train) -> evaluate). A fresh cycle, because a new
   snapshot renumbers users and items, so the old weights do not carry over;
3. the promotion gate (`flows.gate`) compares the last version with production and moves the
   alias, or parks the version as ``candidate``; the decision is logged and published.

"New data since the last run" (our choice): the data file is identified by the SHA-256 of its
bytes; the snapshot is the dataset ``<index>@<sha12>``. If that snapshot is already in the store,
the file holds nothing new and the run continues training from the base instead (so a cron job
pointing at a file that an upstream job rewrites retrains from scratch exactly when it changed).

The steps are the same functions `grove cycle` uses: Prefect tasks inside `retrain_flow`
(``flows.tasks``), plain `flows.steps` calls with ``local=True``.

``schedule``: `serve_retrain` serves `retrain_flow` as a deployment with a cron schedule on a
real Prefect server (PREFECT_API_URL must point at ``prefect server start``); `check_cron` refuses
an invalid cron line before anything starts.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows import steps
from flows.gate import GateConfig, GateDecision, slug, run_gate
from indexstore.errors import GroveError, InputError, NotFoundError
from indexstore.store import Store
from models.registry import get_method

SNAPSHOT_SEP = "@"


@dataclass(frozen=True)
class RetrainOps:
    """The steps a retrain run sequences; each takes and returns references."""

    construct: Callable[[str, str, dict], int]  # (dataset, split, config) -> version
    train: Callable[[int], int]
    relearn: Callable[[int], int]
    evaluate: Callable[[int], object]
    gate: Callable[[int], GateDecision]


@dataclass(frozen=True)
class RetrainResult:
    """What one retrain run did: versions written (in order), the candidate, the decision."""

    index: str
    base: int | None
    versions: list[int]
    candidate: int
    promoted: bool
    reason: str
    dataset: str
    fresh: bool = False
    gate: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ planning
def base_version(store: Store, index: str, alias: str = "production"):
    """The version retraining starts from: ``alias`` if set, else the newest version."""
    try:
        return store.resolve(index, alias=alias)
    except NotFoundError:
        return store.resolve(index)  # newest ready version (NotFoundError: unknown index)


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise InputError(f"cannot read data file {path}: {exc.strerror}") from None
    return h.hexdigest()


def snapshot_name(index: str, path: str) -> str:
    """The dataset name of a data file's snapshot: ``<index>@<first 12 hex of its SHA-256>``."""
    return f"{index}{SNAPSHOT_SEP}{_file_digest(path)[:12]}"


def import_snapshot(store: Store, path: str, name: str, split: str, split_config: dict) -> str:
    """Import ``path`` as dataset ``name`` and split it like ``split_config``; returns the name.
    Protocol settings not in ``split_config`` keep the `split_users` defaults."""
    from indexstore.protocol import split_users
    from indexstore.readers import read_interactions

    inter = read_interactions(path)
    keys = ("positive_rating", "min_positives", "valid_fraction", "test_fraction", "seed")
    settings = {k: split_config[k] for k in keys if k in split_config}
    if inter.rating is None:
        settings["positive_rating"] = None
    store.import_dataset(name, inter, None, source=os.path.abspath(path),
                         meta={"snapshot_of": path, "imported_by": "retrain",
                               "imported_at": datetime.now().isoformat(timespec="seconds")})
    assignment = split_users(inter, **settings)
    store.write_split(name, split, assignment, assignment.config)
    return name


def sequence_retrain(ops: RetrainOps, base: int, method: str, rounds: int,
                     fresh: tuple[str, str, dict] | None = None) -> tuple[list[int], GateDecision]:
    """Run the retrain order over ``ops``; returns (versions written, gate decision).

    fresh : (dataset, split, config) for a fresh cycle on a new snapshot; None continues from
        ``base``.
    """
    written = [ops.construct(*fresh)] if fresh is not None else []
    written.append(ops.train(written[-1] if written else base))
    for _ in range(rounds if get_method(method).relearns else 0):
        written.append(ops.relearn(written[-1]))
        written.append(ops.train(written[-1]))
    ops.evaluate(written[-1])
    return written, ops.gate(written[-1])


def prepare(url: str, index: str, method: str | None, data: str | None, rounds: int):
    """Validate a retrain request and find its base and (new data) snapshot.

    Returns (base VersionInfo, fresh (dataset, split, config) or None). Raises before any work:
    unknown index, a method other than the index's, negative rounds, unreadable data file.
    """
    if rounds < 0:
        raise GroveError(f"rounds must be >= 0, got {rounds}")
    store = Store.open(url)
    base = base_version(store, index)
    if method is not None and method != base.method:
        raise GroveError(f"index {index!r} holds {base.method} versions; --method {method} does not "
                         "match (retrain keeps an index's method; use another index for another)")
    if data is None:
        return base, None
    name = snapshot_name(index, data)
    if name in {d.name for d in store.list_datasets()}:
        return base, None  # this file was imported by an earlier run: nothing new
    split_config = store.split(base.dataset, base.split).config if base.dataset else {}
    import_snapshot(store, data, name, base.split or "default", split_config)
    return base, (name, base.split or "default", dict(base.config.get("config", {})))


def eval_settings(gate: GateConfig, ks=(10, 50), beams=(50,)) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The cut-offs and beams to evaluate: the defaults plus what the gate reads."""
    ks = tuple(sorted(set(ks) | {gate.k}))
    beams = tuple(sorted(set(beams) | ({gate.beam} if gate.beam is not None else set())))
    return ks, beams


# ------------------------------------------------------------------------------ local runs
def retrain_local(url: str, index: str, rounds: int = 1, method: str | None = None,
                  data: str | None = None, gate: dict | None = None, max_users: int | None = None,
                  device: str = "auto") -> RetrainResult:
    """The retrain run in-process (no Prefect): same steps, same gate, nothing published."""
    gate_cfg = GateConfig.from_dict(gate)
    base, fresh = prepare(url, index, method, data, rounds)
    ks, beams = eval_settings(gate_cfg)
    evaluate = lambda v: steps.evaluate(url, v, gate_cfg.role, ks, beams, max_users, device)  # noqa: E731
    ops = RetrainOps(
        construct=lambda d, s, c: steps.construct(url, index, base.method, c, d, s).version_id,
        train=lambda v: steps.train(url, v).version_id,
        relearn=lambda v: steps.relearn(url, v).version_id,
        evaluate=evaluate,
        gate=lambda v: run_gate(Store.open(url), index, v, gate_cfg, evaluate=evaluate, publish=False),
    )
    written, decision = sequence_retrain(ops, base.id, base.method, rounds, fresh)
    return _result(index, base.id, written, decision, fresh, base.dataset)


def _result(index, base_id, written, decision: GateDecision, fresh, dataset) -> RetrainResult:
    return RetrainResult(index, base_id, list(written), decision.candidate, decision.promoted,
                         decision.reason, fresh[0] if fresh else dataset, fresh is not None,
                         decision.as_dict())


def rollback_index(url: str | None, index: str, alias: str = "production", to: int | None = None,
                   reason: str | None = None):
    """Move ``alias`` back one step (or to version ``to``); the move is logged. Returns the
    `AliasEvent`. See `indexstore.aliases` for what "back" means after several rollbacks."""
    store = Store.open(url)
    event = store.rollback(index, alias=alias, to=to, reason=reason or "manual rollback")
    return event


# ------------------------------------------------------------------------------ schedule
def check_cron(expr: str) -> str:
    """``expr`` when it is a valid 5-field cron line; a GroveError naming the problem otherwise."""
    from cronsim import CronSim, CronSimError

    text = (expr or "").strip()
    if len(text.split()) != 5:
        raise GroveError(f"invalid cron expression {expr!r}: expected 5 fields "
                         "(minute hour day-of-month month day-of-week), e.g. \"0 3 * * *\"")
    try:
        next(CronSim(text, datetime.now()))
    except (CronSimError, StopIteration) as exc:
        raise GroveError(f"invalid cron expression {expr!r}: {exc}") from None
    return text


def prefect_api_url() -> str:
    """The Prefect API the deployment goes to; a GroveError when none is configured or reachable."""
    from prefect.settings import PREFECT_API_URL

    api = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if not api:
        raise GroveError("grove schedule needs a Prefect server: run `prefect server start` and set "
                         "PREFECT_API_URL=http://127.0.0.1:4200/api")
    import httpx

    try:
        httpx.get(api.rstrip("/") + "/health", timeout=5.0).raise_for_status()
    except httpx.HTTPError as exc:
        raise GroveError(f"the Prefect server at PREFECT_API_URL={api} does not answer ({exc}); "
                         "is `prefect server start` running?") from None
    return api


def absolute_url(url: str) -> str:
    """A store URL whose DuckDB path is absolute (a served flow may run in another directory)."""
    if url.startswith("duckdb:///") and not url.startswith("duckdb:////"):
        path = url[len("duckdb:///"):]
        if path and path != ":memory:" and not os.path.isabs(path):
            return "duckdb:///" + os.path.abspath(path)
    return url


def deployment_name(index: str) -> str:
    return f"retrain-{index}"


def serve_retrain(url: str, index: str, cron: str, parameters: dict, name: str | None = None) -> None:
    """Serve `retrain_flow` for ``index`` on ``cron`` (blocks until interrupted)."""
    retrain_flow.serve(name=name or deployment_name(index), cron=check_cron(cron),
                       parameters={"url": absolute_url(url), "index": index, **parameters},
                       description=f"scheduled retraining of index {index!r}")


# ------------------------------------------------------------------------------ Prefect
@task(name="gate", task_run_name="gate {index} v{candidate}")
def gate_task(url: str, index: str, candidate: int, gate: dict | None, max_users: int | None) -> dict:
    """The promotion gate as a task; evaluates a version whose gate metric is missing."""
    from flows.tasks import evaluate_task

    cfg = GateConfig.from_dict(gate)
    ks, beams = eval_settings(cfg)
    evaluate = lambda v: evaluate_task.fn(url, v, cfg.role, ks, beams, max_users)  # noqa: E731
    return run_gate(Store.open(url), index, candidate, cfg, evaluate=evaluate).as_dict()


@task(name="prepare", task_run_name="prepare retrain {index}")
def prepare_task(url: str, index: str, method: str | None, data: str | None, rounds: int):
    base, fresh = prepare(url, index, method, data, rounds)
    return base.id, base.method, base.dataset, fresh


@flow(name="retrain", flow_run_name="retrain {index}")
def retrain_flow(url: str, index: str, rounds: int = 1, method: str | None = None,
                 data: str | None = None, gate: dict | None = None,
                 max_users: int | None = None) -> dict:
    """Retrain ``index`` from production (or on new ``data``), evaluate, gate. Returns the
    `RetrainResult` as a dict (versions written, candidate, promoted, reason)."""
    from dataclasses import asdict

    from flows.tasks import construct_task, evaluate_task, relearn_task, train_task

    cfg = GateConfig.from_dict(gate)
    ks, beams = eval_settings(cfg)
    base_id, base_method, base_dataset, fresh = prepare_task(url, index, method, data, rounds)
    ops = RetrainOps(
        construct=lambda d, s, c: construct_task(url, index, base_method, c, d, s),
        train=lambda v: train_task(url, v),
        relearn=lambda v: relearn_task(url, v),
        evaluate=lambda v: evaluate_task(url, v, cfg.role, ks, beams, max_users),
        gate=lambda v: GateDecision.from_dict(gate_task(url, index, v, gate, max_users)),
    )
    written, decision = sequence_retrain(ops, base_id, base_method, rounds, fresh)
    return asdict(_result(index, base_id, written, decision, fresh, base_dataset))


@flow(name="rollback", flow_run_name="rollback {index} {alias}")
def rollback_flow(url: str, index: str, alias: str = "production", to: int | None = None,
                  reason: str = "rollback from Prefect") -> dict:
    """Roll ``alias`` back (one step, or to version ``to``) -- triggerable from the Prefect UI."""
    event = rollback_index(url, index, alias, to, reason)
    create_markdown_artifact(
        key=f"rollback-{slug(index)}",
        markdown=(f"# Rollback of `{index}` alias `{alias}`\n\n* from v{event.from_version} "
                  f"to v{event.to_version}\n* reason: {event.reason}\n* at: {event.at} UTC"),
        description=f"rollback of {index} {alias}")
    return {"index": index, "alias": alias, "from_version": event.from_version,
            "to_version": event.to_version, "reason": event.reason, "event_id": event.id}
