"""Promotion gate (issue 6): a candidate that passes moves production, one that fails does not;
both decisions are in the alias log with both figures. Rollback restores the previous version.

Also holds `tiny_index`, the small real store the operating tests share (imported by
test_service / test_retrain / test_report): a synthetic dataset and Item-CF versions, the
fastest method to build on a 2-core CPU. The gate and the service do not depend on the method.
"""

from __future__ import annotations

import pytest

from grove.flows.gate import GateConfig, GateDecision, decide, decision_markdown, metric_value, run_gate
from grove.indexstore.entities import MetricRow
from grove.indexstore.errors import GroveError

METHOD = "itemcf"


def _registry_fallback() -> None:
    """Until models.registry points 'itemcf' at models.baselines.item_cf, point it there for the tests."""
    import grove.models.registry as registry

    try:
        registry.get_method(METHOD)
    except AttributeError:
        registry._METHODS[METHOD] = ("grove.models.baselines.item_cf", "ItemCFMethod")


def tiny_index(
    url: str, n_versions: int = 2, index: str = "tiny", dataset: str = "syn", n_items: int = 120, n_users: int = 200
) -> list[int]:
    """A store at ``url`` with a synthetic dataset and ``n_versions`` trained Item-CF versions
    of ``index`` (construct -> train -> train ...). Returns the trained version ids."""
    from grove.flows import steps
    from grove.indexstore.protocol import split_users
    from grove.indexstore.store import Store
    from grove.indexstore.synth import synthesize

    _registry_fallback()
    Store.init(url)
    store = Store.open(url)
    if dataset not in {d.name for d in store.list_datasets()}:
        inter, cats = synthesize(n_items, n_users, seed=0)
        store.import_dataset(dataset, inter, cats, source="synth")
        assignment = split_users(inter, seed=0)
        store.write_split(dataset, "default", assignment, assignment.config)
    vid = steps.construct(url, index, METHOD, {"neighbours": 20}, dataset).version_id
    trained = []
    for _ in range(n_versions):
        vid = steps.train(url, vid).version_id
        trained.append(vid)
    return trained


def recall_row(value: float, k: int = 10, beam: int | None = 50, filtered: bool = False) -> MetricRow:
    return MetricRow(role="valid", name="recall", k=k, value=value, beam=beam, filtered=filtered)


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def gate_store(new_store_url, request):
    url = new_store_url(request.param, "gate")
    return url, tiny_index(url, n_versions=4)


# ------------------------------------------------------------------------------ pure rule
def test_decide_is_a_floor_with_tolerance():
    assert decide(0.30, None)[0] is True
    assert decide(0.30, 0.30)[0] is True  # equal passes (">=")
    ok, reason = decide(0.29, 0.30, tolerance=0.0, label="recall@10")
    assert not ok and "0.2900" in reason and "0.3000" in reason
    assert decide(0.29, 0.30, tolerance=0.02)[0] is True


def test_metric_value_picks_the_configured_row_and_the_newest():
    rows = [
        recall_row(0.1),
        recall_row(0.5, beam=None),
        recall_row(0.7, filtered=True),
        recall_row(0.2, k=50),
        recall_row(0.3),
    ]
    assert metric_value(rows, GateConfig()) == 0.3  # newest of (recall, 10, beam 50, kept)
    assert metric_value(rows, GateConfig(beam=None)) == 0.5
    assert metric_value(rows, GateConfig(filtered=True)) == 0.7
    assert metric_value(rows, GateConfig(metric="ndcg")) is None


def test_gate_config_refuses_misuse():
    with pytest.raises(GroveError):
        GateConfig(k=0)
    with pytest.raises(GroveError):
        GateConfig(tolerance=-0.1)
    with pytest.raises(GroveError, match="unknown gate setting"):
        GateConfig.from_dict({"recall": 1})


# ------------------------------------------------------------------------------ on a store
def test_promotion_passes_then_fails_and_rollback_restores(gate_store):
    from grove.flows.retrain import rollback_index
    from grove.indexstore.store import Store

    url, (v1, v2, v3, v4) = gate_store
    store = Store.open(url)
    for vid, value in ((v1, 0.20), (v2, 0.25), (v3, 0.10), (v4, 0.30)):
        store.record_metrics(vid, [recall_row(value)])

    first = run_gate(store, "tiny", v1)  # no production yet -> promote
    assert first.promoted and first.current is None
    passed = run_gate(store, "tiny", v2)
    assert passed.promoted and passed.current == v1
    assert store.resolve("tiny", alias="production").id == v2

    failed = run_gate(store, "tiny", v3)
    assert not failed.promoted
    assert store.resolve("tiny", alias="production").id == v2  # unchanged on reject
    assert store.resolve("tiny", alias="candidate").id == v3

    log = store.alias_history("tiny", "production")
    assert [e.action for e in log] == ["promote", "promote", "reject"]
    assert log[1].from_version == v1 and log[1].to_version == v2
    assert log[2].to_version == v3 and "0.1000" in log[2].reason and "0.2500" in log[2].reason

    back = rollback_index(url, "tiny", reason="bad deploy")
    assert (back.from_version, back.to_version, back.action) == (v2, v1, "rollback")
    assert store.resolve("tiny", alias="production").id == v1
    moves = [(e.action, e.from_version, e.to_version) for e in store.alias_history("tiny", "production")]
    assert moves[-2:] == [("reject", v2, v3), ("rollback", v2, v1)]

    # tolerance lets a slightly worse candidate through
    store.record_metrics(v3, [recall_row(0.195)])
    assert run_gate(store, "tiny", v3, GateConfig(tolerance=0.01)).promoted


def test_gate_evaluates_a_missing_metric_or_refuses(gate_store):
    from grove.indexstore.store import Store

    url, (_, _, _, v4) = gate_store
    store = Store.open(url)
    cfg = GateConfig(k=5, tolerance=1.0)  # nobody has recall@5 recorded
    with pytest.raises(GroveError, match="has no valid recall@5"):
        run_gate(store, "tiny", v4, cfg)
    seen = []

    def evaluate(vid):
        seen.append(vid)
        store.record_metrics(vid, [recall_row(0.4, k=5)])

    decision = run_gate(store, "tiny", v4, cfg, evaluate=evaluate)
    assert decision.promoted and v4 in seen and decision.current in seen
    again = GateDecision.from_dict(decision.as_dict())
    assert again == decision
    assert "PROMOTED" in decision_markdown(decision)


def test_gate_refuses_a_version_of_another_index(gate_store):
    from grove.indexstore.store import Store

    url, (v1, *_rest) = gate_store
    with pytest.raises(GroveError):
        run_gate(Store.open(url), "other-index", v1)
