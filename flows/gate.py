"""The promotion gate: a candidate version takes the ``production`` alias only when it is no worse.

Rule: promote when

    value(candidate) >= value(production) - tolerance

where ``value`` is one stored validation metric chosen by `GateConfig` (default Recall@10 at the
evaluation beam 50, seen items kept, on the 'valid' users). An index without a production version
promotes its first candidate. Otherwise the candidate is rejected: ``production`` does not move,
the candidate gets the ``candidate`` alias instead, and the reason (both figures) is logged.

Every decision leaves a trace in two places:

* the alias log (``alias_events``): action ``promote`` (production moves) or ``reject``
  (production stays; the row's ``to_version`` is the rejected candidate), reason with both figures;
* a Prefect artifact (markdown summary + table of every metric old vs new) when the gate runs
  inside a flow run; outside a flow nothing is published and Prefect is not even imported.

`decide` is the pure rule (no store, no Prefect); `run_gate` reads the metrics through the store
API, asks `decide`, moves the alias and publishes. Metrics are append-only, so the newest row
matching the gate's (role, name, k, beam, filtered) is the one used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from grove.indexstore.errors import GroveError, NotFoundError


@dataclass(frozen=True)
class GateConfig:
    """Which stored metric decides, and how much worse a candidate may be.

    metric, k, beam, filtered, role : select the metric row (beam None = exhaustive rows).
    tolerance : absolute slack (same unit as the metric, e.g. 0.005 = half a recall point).
    alias : the alias the gate moves; candidate_alias : where a rejected version is parked.
    """

    metric: str = "recall"
    k: int = 10
    beam: int | None = 50
    filtered: bool = False
    role: str = "valid"
    tolerance: float = 0.0
    alias: str = "production"
    candidate_alias: str = "candidate"

    def __post_init__(self):
        if self.k <= 0:
            raise GroveError(f"gate k must be a positive integer, got {self.k}")
        if self.beam is not None and self.beam <= 0:
            raise GroveError(f"gate beam must be a positive integer, got {self.beam}")
        if self.tolerance < 0:
            raise GroveError(f"gate tolerance must be >= 0, got {self.tolerance}")
        if self.alias == self.candidate_alias:
            raise GroveError(f"gate alias and candidate alias are both {self.alias!r}")

    def label(self) -> str:
        beam = "exhaustive" if self.beam is None else f"beam {self.beam}"
        seen = ", seen filtered" if self.filtered else ""
        return f"{self.role} {self.metric}@{self.k} ({beam}{seen})"

    @classmethod
    def from_dict(cls, values: dict | None) -> GateConfig:
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise GroveError(f"unknown gate setting {unknown[0]!r}; known: {', '.join(cls.__dataclass_fields__)}")
        return cls(**values)


@dataclass(frozen=True)
class GateDecision:
    """The outcome of one gate run (what the alias log and the artifact record)."""

    index: str
    candidate: int
    current: int | None  # the production version before the decision (None: no production yet)
    candidate_value: float
    current_value: float | None
    promoted: bool
    reason: str
    config: GateConfig

    def as_dict(self) -> dict:
        out = asdict(self)
        out["config"] = asdict(self.config)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> GateDecision:
        return cls(**{**values, "config": GateConfig(**values["config"])})


def decide(
    candidate_value: float, current_value: float | None, tolerance: float = 0.0, label: str = "metric"
) -> tuple[bool, str]:
    """The pure rule. Returns (promote?, one-line reason holding both figures)."""
    if current_value is None:
        return True, f"first production version: {label} {candidate_value:.4f} (no production to compare)"
    floor = current_value - tolerance
    verdict = ">=" if candidate_value >= floor else "<"
    reason = (
        f"{label} {candidate_value:.4f} {verdict} production {current_value:.4f}"
        f" - tolerance {tolerance:g} = {floor:.4f}"
    )
    return candidate_value >= floor, reason


def metric_value(rows, config: GateConfig) -> float | None:
    """The newest stored value of the gate's metric among a version's metric rows, or None."""
    match = [
        r
        for r in rows
        if r.role == config.role
        and r.name == config.metric
        and int(r.k) == config.k
        and (None if r.beam is None else int(r.beam)) == config.beam
        and bool(r.filtered) == config.filtered
    ]
    if not match:
        return None
    # the store returns rows in recording order; recorded_at breaks no ties we rely on
    return float(match[-1].value)


def _current(store, index: str, alias: str) -> int | None:
    """The version ``alias`` points to, or None when it was never set."""
    try:
        return store.resolve(index, alias=alias).id
    except NotFoundError:
        return None


def _value_or_evaluate(store, version_id: int, config: GateConfig, evaluate: Callable[[int], object] | None) -> float:
    value = metric_value(store.metrics(version_id), config)
    if value is None and evaluate is not None:
        evaluate(version_id)  # appends rows through the store
        value = metric_value(store.metrics(version_id), config)
    if value is None:
        raise GroveError(
            f"version {version_id} has no {config.label()} metric: evaluate it with "
            f"--beam {config.beam} --k {config.k} first"
        )
    return value


def run_gate(
    store,
    index: str,
    candidate: int,
    config: GateConfig | None = None,
    evaluate: Callable[[int], object] | None = None,
    publish: bool = True,
) -> GateDecision:
    """Decide on ``candidate`` and move (or not) the alias; log and publish the decision.

    Parameters
    ----------
    store : an open `grove.indexstore.store.Store`.
    index : the index name; ``candidate`` must be one of its versions.
    config : the gate's metric and tolerance (default `GateConfig()`).
    evaluate : called with a version id whose gate metric is missing (e.g. `steps.evaluate`
        at the gate's k and beam); without it a missing metric is an error.
    publish : create the Prefect artifact when running inside a flow run.

    Returns
    -------
    GateDecision; the alias log holds one new 'promote' or 'reject' row (plus, on reject, a
    'set' of the candidate alias).
    """
    config = config or GateConfig()
    info = store.version(candidate)
    if info.index_name != index:
        raise GroveError(f"version {candidate} belongs to index {info.index_name!r}, not {index!r}")
    current = _current(store, index, config.alias)
    if current == candidate:
        raise GroveError(f"version {candidate} already is {config.alias!r} of index {index!r}")
    cand_value = _value_or_evaluate(store, candidate, config, evaluate)
    cur_value = None if current is None else _value_or_evaluate(store, current, config, evaluate)
    promoted, reason = decide(cand_value, cur_value, config.tolerance, config.label())
    if promoted:
        store.set_alias(index, config.alias, candidate, reason=f"promote: {reason}", action="promote")
    else:
        store.set_alias(index, config.alias, candidate, reason=f"reject: {reason}", action="reject")
        store.set_alias(
            index, config.candidate_alias, candidate, reason=f"rejected for {config.alias}: {reason}", action="set"
        )
    decision = GateDecision(index, candidate, current, cand_value, cur_value, promoted, reason, config)
    if publish:
        publish_decision(store, decision)
    return decision


# ------------------------------------------------------------------------------ artifact
def comparison_rows(store, decision: GateDecision) -> list[dict]:
    """Every (role, name, k, beam, filtered) metric of the candidate beside production's."""

    def newest(vid):
        out = {}
        for r in store.metrics(vid) if vid is not None else []:
            out[(r.role, r.name, int(r.k), r.beam, bool(r.filtered))] = float(r.value)
        return out

    new, old = newest(decision.candidate), newest(decision.current)
    rows = []
    for key in sorted(set(new) | set(old), key=lambda t: (t[0], t[1], t[2], t[3] or 0, t[4])):
        role, name, k, beam, filtered = key
        o, n = old.get(key), new.get(key)
        rows.append(
            {
                "role": role,
                "metric": name,
                "k": k,
                "beam": "exhaustive" if beam is None else beam,
                "filtered": filtered,
                f"production v{decision.current}": o,
                f"candidate v{decision.candidate}": n,
                "delta": None if o is None or n is None else n - o,
            }
        )
    return rows


def decision_markdown(decision: GateDecision) -> str:
    verdict = "PROMOTED" if decision.promoted else "REJECTED"
    where = (
        f"`{decision.config.alias}` -> v{decision.candidate}"
        if decision.promoted
        else f"`{decision.config.alias}` stays v{decision.current}; "
        f"`{decision.config.candidate_alias}` -> v{decision.candidate}"
    )
    cur = "none" if decision.current_value is None else f"{decision.current_value:.4f}"
    return "\n".join(
        [
            f"# Promotion gate: index `{decision.index}`, candidate v{decision.candidate}: **{verdict}**",
            "",
            f"* metric: {decision.config.label()}, tolerance {decision.config.tolerance:g}",
            f"* candidate v{decision.candidate}: {decision.candidate_value:.4f}",
            f"* production v{decision.current}: {cur}",
            f"* aliases: {where}",
            f"* reason: {decision.reason}",
        ]
    )


def publish_decision(store, decision: GateDecision) -> bool:
    """Markdown + table artifacts of the decision when inside a Prefect flow run.
    Returns whether anything was published (False outside a flow run)."""
    import sys

    if "prefect" not in sys.modules:  # never pay Prefect's import outside a flow
        return False
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return False
    key = f"gate-{slug(decision.index)}-v{decision.candidate}"
    create_markdown_artifact(
        key=key, markdown=decision_markdown(decision), description=f"promotion gate decision for v{decision.candidate}"
    )
    create_table_artifact(
        key=f"{key}-metrics", table=comparison_rows(store, decision), description="metrics: production vs candidate"
    )
    return True


def slug(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    out = "".join(c if c.isalnum() else "-" for c in name.lower())
    return "-".join(p for p in out.split("-") if p) or "index"
