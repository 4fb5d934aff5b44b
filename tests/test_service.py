"""The retrieval service (issue 6): answers, refuses bad requests (and keeps serving), batches
concurrent requests, and switches versions under concurrent load without a failed request when
the alias moves (promotion, then rollback)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from test_gate import tiny_index

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from grove.flows.service import RetrievalService, ServiceConfig, create_app  # noqa: E402
from grove.indexstore.errors import GroveError, NotFoundError  # noqa: E402


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def served(new_store_url, request):
    url = new_store_url(request.param, "svc")
    v1, v2 = tiny_index(url, n_versions=2)
    from grove.indexstore.store import Store

    Store.open(url).set_alias("tiny", "production", v1, reason="test")
    return url, v1, v2


def _client(url, **cfg):
    config = ServiceConfig(poll_seconds=0.1, max_backoff=1.0, max_request=8, max_k=50, **cfg)
    service = RetrievalService.open(url, "tiny", "production", device="cpu", config=config)
    return service, TestClient(create_app(service))


def test_answers_like_the_retriever(served):
    from grove.indexstore.store import Store
    from grove.models.retriever import Retriever

    url, v1, _ = served
    service, client = _client(url)
    histories = [["1", "5", "9"], [3, 4], []]
    with client:
        res = client.post("/retrieve", json={"histories": histories, "k": 5, "beam": 20})
        assert res.status_code == 200, res.text
        body = res.json()
        health_res = client.get("/health")
        health = health_res.json()
        quality = client.get("/quality").json()
    assert body["version"] == v1 and body["unknown"] == 0
    ref = Retriever.load(Store.open(url), "tiny", version=v1, device="cpu")
    expect = ref.retrieve_raw([[str(x) for x in h] for h in histories], 5, 20)
    for got, want, scores, want_s in zip(body["items"], expect.items, body["scores"], expect.scores):
        want = [w for w in want if w is not None]
        assert got == want
        np.testing.assert_allclose(scores, want_s[: len(want)], rtol=1e-5)
    assert health["version"] == v1 and health["alias"] == "production"
    assert health["load_seconds"] > 0 and "metrics" not in health and len(health_res.content) < 1024
    assert health["precision"] == "fp32" and health["compile"] is None  # the defaults
    assert quality["version"] == v1 and isinstance(quality["metrics"], list)


def test_refuses_bad_requests_and_keeps_serving(served):
    url, v1, _ = served
    _, client = _client(url)
    with client:
        bad = {
            "negative k": ({"histories": [["1"]], "k": -1}, 422),
            "zero beam": ({"histories": [["1"]], "beam": 0}, 422),
            "k above cap": ({"histories": [["1"]], "k": 51}, 422),
            "float k": ({"histories": [["1"]], "k": 2.5}, 422),
            "not a list": ({"histories": "1,2,3"}, 422),
            "unknown field": ({"histories": [["1"]], "kk": 3}, 422),
            "oversized": ({"histories": [["1"]] * 9}, 413),
        }
        for name, (payload, status) in bad.items():
            res = client.post("/retrieve", json=payload)
            assert res.status_code == status, (name, res.text)
            assert isinstance(res.json()["error"], str) and res.json()["error"], name
        res = client.post("/retrieve", content=b'{"histories": [["1"]', headers={"content-type": "application/json"})
        assert res.status_code == 400 and "malformed JSON" in res.json()["error"]
        # unknown ids are ignored and counted; all-unknown is served like an empty history
        res = client.post("/retrieve", json={"histories": [["1", "no-such-item"], ["zzz"]], "k": 3})
        assert res.status_code == 200 and res.json()["unknown"] == 2
        assert len(res.json()["items"][1]) == 3
        ok = client.post("/retrieve", json={"histories": [["1"]], "k": 3})
        assert ok.status_code == 200 and ok.json()["version"] == v1


def test_unknown_index_or_alias_fails_before_serving(served):
    url, _, _ = served
    with pytest.raises(NotFoundError):
        RetrievalService.open(url, "no-such-index")
    with pytest.raises(NotFoundError):
        RetrievalService.open(url, "tiny", alias="no-such-alias")
    with pytest.raises(GroveError):
        ServiceConfig(max_batch=0)


def test_switches_versions_under_load_without_failures(served):
    from grove.flows.retrain import rollback_index
    from grove.indexstore.store import Store

    url, v1, v2 = served
    store = Store.open(url)
    service, client = _client(url, max_batch=16, max_wait_ms=5.0)
    results, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            res = client.post("/retrieve", json={"histories": [["1", "2"], ["7"]], "k": 5, "beam": 10})
            results.append((res.status_code, res.json().get("version")))

    def wait_for(version, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if client.get("/health").json()["version"] == version:
                return True
            time.sleep(0.05)
        return False

    with client:
        workers = [threading.Thread(target=load) for _ in range(6)]
        for w in workers:
            w.start()
        try:  # stop the load before leaving the client, also when an assertion fails
            time.sleep(0.5)
            store.set_alias("tiny", "production", v2, reason="promote under load", action="promote")
            assert wait_for(v2, timeout=60), "service did not pick up the promotion"
            time.sleep(0.3)
            rollback_index(url, "tiny", reason="rollback under load")
            assert wait_for(v1, timeout=60), "service did not pick up the rollback"
            time.sleep(0.3)
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=60)
    statuses = {s for s, _ in results}
    versions = [v for _, v in results]
    assert statuses == {200}, f"failed requests: {[r for r in results if r[0] != 200][:3]}"
    assert v1 in versions and v2 in versions
    assert service.swaps == 2 and service.batcher.batches < len(results)  # requests were batched
