"""Retraining an index: its base version, new-data snapshots, the in-process run (the Prefect
flows are `grove.flows.prefect_flows.retrain_flow` and ``rollback_flow``; the cron deployment is
`grove.flows.schedule`).

``retrain`` on an index:

1. base = the index's ``production`` version, else its newest version;
2. *no new data*: train from the base (continue training its weights on its dataset/split) ->
   ``rounds`` x (relearn -> train) -> evaluate the last version;
   *new data* (``data=FILE``): the file is imported as a new dataset snapshot and split with the
   base split's protocol settings, then a fresh cycle of the same method and config runs on it
   (construct -> train -> rounds x (relearn -> train) -> evaluate). A fresh cycle, because a new
   snapshot renumbers users and items, so the old weights do not carry over;
3. the promotion gate (`grove.flows.gate`) compares the last version with production and moves the
   alias, or parks the version as ``candidate``; the decision is logged and published.

"New data since the last run" (our choice): the data file is identified by the SHA-256 of its
bytes; the snapshot is the dataset ``<index>@<sha12>``. If that snapshot is already in the store,
the file holds nothing new and the run continues training from the base instead (so a cron job
pointing at a file that an upstream job rewrites retrains from scratch exactly when it changed).

The order is `grove.models.lifecycle.Plan.retrain`, run on the same step functions `grove cycle` uses
(`grove.flows.ops`): Prefect tasks inside the flow, the lifecycle's verbs in `retrain_local`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from grove.flows.gate import GateConfig, GateDecision, run_gate
from grove.flows.ops import Target, local_ops
from grove.indexstore.errors import GroveError
from grove.indexstore.file_digest import file_sha256
from grove.indexstore.store import Store
from grove.models.lifecycle import Plan, run_plan

SNAPSHOT_SEP = "@"


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
def snapshot_name(index: str, path: str) -> str:
    """The dataset name of a data file's snapshot: ``<index>@<first 12 hex of its SHA-256>``."""
    return f"{index}{SNAPSHOT_SEP}{file_sha256(path, 'data file')[:12]}"


def import_snapshot(store: Store, path: str, name: str, split: str, split_config: dict) -> str:
    """Import ``path`` as dataset ``name`` and split it like ``split_config``; returns the name.
    Protocol settings not in ``split_config`` keep the `split_users` defaults."""
    from grove.flows.datasets import import_file
    from grove.indexstore.protocol import split_users

    keys = ("positive_rating", "min_positives", "valid_fraction", "test_fraction", "seed")
    settings = {k: split_config[k] for k in keys if k in split_config}
    info = import_file(
        store,
        path,
        name,
        meta={
            "snapshot_of": path,
            "imported_by": "retrain",
            "imported_at": datetime.now().isoformat(timespec="seconds"),
        },
    )
    inter = store.load_interactions(info.name)
    if inter.rating is None:
        settings["positive_rating"] = None
    assignment = split_users(inter, **settings)
    store.write_split(name, split, assignment, assignment.config)
    return name


def prepare(url: str, index: str, method: str | None, data: str | None, rounds: int):
    """Validate a retrain request and find its base and (new data) snapshot.

    Returns (base VersionInfo, fresh (dataset, split, config) or None). Raises before any work:
    unknown index, a method other than the index's, negative rounds, unreadable data file.
    """
    store = Store.open(url)
    base = store.resolve(index)  # production, else the newest version
    if method is not None and method != base.method:
        raise GroveError(
            f"index {index!r} holds {base.method} versions; --method {method} does not "
            "match (retrain keeps an index's method; use another index for another)"
        )
    Plan.retrain(base.method, rounds, data is not None)  # refuses negative rounds before any work
    if data is None:
        return base, None
    name = snapshot_name(index, data)
    if name in {d.name for d in store.list_datasets()}:
        return base, None  # this file was imported by an earlier run: nothing new
    split_config = store.split(base.dataset, base.split or "default").config if base.dataset else {}
    import_snapshot(store, data, name, base.split or "default", split_config)
    return base, (name, base.split or "default", dict(base.config.get("config", {})))


def eval_settings(gate: GateConfig, ks=(10, 50), beams=(50,)) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The cut-offs and beams to evaluate: the defaults plus what the gate reads."""
    ks = tuple(sorted(set(ks) | {gate.k}))
    beams = tuple(sorted(set(beams) | ({gate.beam} if gate.beam is not None else set())))
    return ks, beams


# ------------------------------------------------------------------------------ local runs
def retrain_target(
    url: str, index: str, base, fresh, gate: GateConfig, max_users: int | None, device: str = "auto"
) -> Target:
    """What a retrain run builds: the base's index and method; on new data, the snapshot."""
    ks, beams = eval_settings(gate)
    dataset, split, config = fresh if fresh is not None else (None, "default", None)
    return Target(
        url,
        index,
        base.method,
        dataset,
        split,
        config,
        role=gate.role,
        ks=ks,
        beams=beams,
        max_users=max_users,
        device=device,
    )


def retrain_local(
    url: str,
    index: str,
    rounds: int = 1,
    method: str | None = None,
    data: str | None = None,
    gate: dict | None = None,
    max_users: int | None = None,
    device: str = "auto",
) -> RetrainResult:
    """The retrain run in-process (no Prefect): same plan, same gate, nothing published."""
    gate_cfg = GateConfig.from_dict(gate)
    base, fresh = prepare(url, index, method, data, rounds)
    ops = local_ops(retrain_target(url, index, base, fresh, gate_cfg, max_users, device))
    written = run_plan(Plan.retrain(base.method, rounds, fresh is not None), ops, start=base.id)
    decision = run_gate(Store.open(url), index, written[-1], gate_cfg, evaluate=ops.evaluate, publish=False)
    return retrain_result(index, base.id, written, decision, fresh, base.dataset)


def retrain_result(index, base_id, written, decision: GateDecision, fresh, dataset) -> RetrainResult:
    return RetrainResult(
        index,
        base_id,
        list(written),
        decision.candidate,
        decision.promoted,
        decision.reason,
        fresh[0] if fresh else dataset,
        fresh is not None,
        decision.as_dict(),
    )


def rollback_index(
    url: str | None, index: str, alias: str = "production", to: int | None = None, reason: str | None = None
):
    """Move ``alias`` back one step (or to version ``to``); the move is logged. Returns the
    `AliasEvent`. See `grove.indexstore.aliases` for what "back" means after several rollbacks."""
    store = Store.open(url)
    return store.rollback(index, alias=alias, to=to, reason=reason or "manual rollback")
