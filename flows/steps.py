"""The steps of a cycle over a store URL: each opens the store, runs one verb of the lifecycle
(`grove.models.lifecycle`) and returns a reference, never tensors. Prefect tasks (`grove.flows.tasks`)
wrap these; `--local` runs and tests call them directly. Nothing here holds the store open
between calls.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from grove.indexstore.store import Store
from grove.models import lifecycle

if TYPE_CHECKING:
    from grove.models.evaluation_passes import PassResult


@dataclass(frozen=True)
class StepResult:
    """What a step hands to the next one: a reference, never tensors."""

    version_id: int
    seconds: float


def construct(
    url: str,
    index: str,
    method_name: str,
    config_values: dict | None,
    dataset: str,
    split: str = "default",
    flow_run_id: str | None = None,
) -> StepResult:
    """Initial index of ``method_name`` on ``dataset``/``split`` -> a new version (no parent)."""
    start = time.perf_counter()
    recipe = lifecycle.Recipe.new(method_name, config_values)
    info = lifecycle.construct(Store.open(url), index, recipe, dataset, split, flow_run_id)
    return StepResult(info.id, time.perf_counter() - start)


def train(url: str, version_id: int, flow_run_id: str | None = None, nproc: int = 1) -> StepResult:
    """Train the method's model for the version's structure -> a new version (same structure);
    ``nproc`` > 1: by that many data-parallel workers (`grove.flows.distributed_train`)."""
    return _advance(url, version_id, "train", flow_run_id, nproc)


def relearn(url: str, version_id: int, flow_run_id: str | None = None, nproc: int = 1) -> StepResult:
    """Learn a new index structure from a trained version -> a new version; ``nproc`` > 1:
    tree learning / the E-step shared among that many workers."""
    return _advance(url, version_id, "relearn", flow_run_id, nproc)


def _advance(url: str, version_id: int, step: str, flow_run_id: str | None, nproc: int) -> StepResult:
    start = time.perf_counter()
    if nproc > 1:
        from grove.flows.distributed_train import run  # torch.distributed's launcher only when asked

        vid = run(url, version_id, step, nproc, flow_run_id)
    else:
        vid = getattr(lifecycle, step)(Store.open(url), version_id, flow_run_id).id
    return StepResult(vid, time.perf_counter() - start)


def evaluate(
    url: str,
    version_id: int,
    role: str = "valid",
    ks: tuple[int, ...] = (10, 50),
    beams: tuple[int, ...] = (50,),
    max_users: int | None = None,
    device: str = "auto",
    exhaustive: bool | None = None,
    exhaustive_users: int | None = None,
) -> list[dict]:
    """Metrics of a trained version on held-out users, appended to the store (see
    `grove.models.lifecycle.evaluate`); the rows as dicts (for the Prefect table artifact)."""
    rows = lifecycle.evaluate(
        Store.open(url), version_id, role, tuple(ks), tuple(beams), max_users, device, exhaustive, exhaustive_users
    )
    return [asdict(r) for r in rows]


# ----------------------------------------------------------- an evaluation in parts
def evaluate_pass(
    url: str,
    version_id: int,
    role: str,
    ks: tuple[int, ...],
    beam: int | None,
    max_users: int | None = None,
    device: str = "auto",
    exhaustive: bool | None = None,
    exhaustive_users: int | None = None,
) -> PassResult | None:
    """One pass of an evaluation (`grove.models.evaluation_passes`), unrecorded: a beam's, or with
    ``beam`` None the exhaustive reference's (None when ``exhaustive``, or the catalogue's size,
    says not to run it). The version and its held-out users are read as `lifecycle.evaluate`
    reads them."""
    from grove.models import evaluation_passes as ev  # heavy import only when evaluating

    store = Store.open(url)
    loaded = lifecycle.load(store, version_id)
    users = lifecycle.split_data(store, loaded.dataset, loaded.split, loaded.recipe.config).held_out(role)
    users = users.subset(max_users) if max_users else users
    beams, wanted = ((), exhaustive) if beam is None else ((beam,), False)
    passes = ev.plan(loaded.built.structure.n_items, users, tuple(ks), beams, wanted, exhaustive_users)
    if not passes:
        return None
    lists = ev.local_searches(lifecycle.searcher(loaded, device))(users, max(ks), passes)[0]
    return ev.pass_result(passes[0], lists, users, tuple(ks), role, ev.reference_users(users, exhaustive_users))


def record_evaluation(url: str, version_id: int, ks: tuple[int, ...], results: list[PassResult | None]) -> list[dict]:
    """The passes assembled (fidelity added, `evaluate`'s row order) and appended to the store in
    one transaction, as `evaluate` appends them; the rows as dicts."""
    from grove.models import evaluation_passes

    rows = evaluation_passes.assemble([r for r in results if r is not None], tuple(ks))
    Store.open(url).record_metrics(version_id, rows)
    return [asdict(r) for r in rows]
