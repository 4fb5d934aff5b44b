"""Every Prefect flow runs once under a real (test-harness) Prefect server on a real DuckDB store;
each step writes a new version whose parent is the previous one."""

from __future__ import annotations

import pytest

from grove.indexstore.store import Store

# small enough to train in seconds on a 2-core CPU (the paper-sized defaults take minutes)
TINY_TDM = {"epochs": 1, "batch_size": 256, "dim": 8, "hidden": [16, 8], "max_samples": 1500, "neg_base": 1.0}


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def synth_store(make_synth_store, request) -> str:
    return make_synth_store("flows", n_items=300, n_users=400, seed=1, backend=request.param)


def test_construct_train_relearn_evaluate_flows(prefect_server, synth_store):
    from grove.flows.prefect_flows import construct_flow, evaluate_flow, relearn_flow, train_flow

    v0 = construct_flow(synth_store, "f-tdm", "tdm", "synth", config=TINY_TDM)
    v1 = train_flow(synth_store, v0)
    rows = evaluate_flow(synth_store, v1, ks=(10,), beams=(20,), max_users=20)
    v2 = relearn_flow(synth_store, v1)
    store = Store.open(synth_store)
    assert [store.version(v).parent_id for v in (v0, v1, v2)] == [None, v0, v1]
    assert store.version(v2).kind == "tree"
    names = {(r["name"], r["k"]) for r in rows}
    assert ("recall", 10) in names and ("fidelity", 10) in names
    assert {m.name for m in store.metrics(v1)} >= {"precision", "recall", "f1", "ndcg", "novelty"}
    assert store.version(v1).flow_run_id  # the flow run is recorded on the version


def test_cycle_flow_writes_a_lineage(prefect_server, synth_store):
    from grove.flows.prefect_flows import cycle_flow

    written = cycle_flow(
        synth_store, "f-cycle", "tdm", "synth", config=TINY_TDM, rounds=1, ks=(10,), beams=(10,), max_users=20
    )
    store = Store.open(synth_store)
    # construct, train, relearn, train
    assert len(written) == 4
    notes = [store.version(v).note for v in written]
    assert notes[0] == "construct" and notes[-1].startswith("train")
    for parent, child in zip(written, written[1:]):
        assert store.version(child).parent_id == parent
    assert store.metrics(written[1]) and store.metrics(written[3])
