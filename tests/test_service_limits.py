"""The service's limits (issue 25.3): a cost budget and a body limit (413), a bearer token (401,
/health open), one error shape for every 4xx, Prometheus /metrics, and fair slicing: a large
request is answered slice by slice, interleaved with requests that arrive while it runs."""

from __future__ import annotations

import time

import pytest
from test_gate import tiny_index

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from grove.flows.service import RetrievalService, ServiceConfig, create_app  # noqa: E402
from grove.flows.service.served import Query  # noqa: E402
from grove.indexstore.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    url = f"duckdb:///{tmp_path_factory.mktemp('limits') / 's.duckdb'}"
    v1, _ = tiny_index(url, n_versions=2)
    Store.open(url).set_alias("tiny", "production", v1, reason="test")
    return url


def _service(url, **cfg) -> RetrievalService:
    config = ServiceConfig(poll_seconds=0.2, max_backoff=1.0, max_k=50, **cfg)
    return RetrievalService.open(url, "tiny", "production", device="cpu", config=config)


def test_cost_and_body_limits_answer_413(url):
    client = TestClient(create_app(_service(url, max_cost=20 * 10 * 5, max_body_bytes=2000)))
    with client:
        ok = client.post("/retrieve", json={"histories": [["1"]] * 20, "k": 5, "beam": 10})
        over = client.post("/retrieve", json={"histories": [["1"]] * 21, "k": 5, "beam": 10})
        big = client.post("/retrieve", json={"histories": [["1"] * 600]})
    assert ok.status_code == 200
    assert over.status_code == 413 and "cost (histories x beam x k = 1,050)" in over.json()["error"]
    assert big.status_code == 413 and "more than the limit of 2,000" in big.json()["error"]


def test_every_4xx_has_one_error_shape(url):
    client = TestClient(create_app(_service(url)))
    with client:
        answers = [
            client.get("/no-such-route"),
            client.get("/retrieve"),
            client.post("/retrieve", content=b"{", headers={"content-type": "application/json"}),
            client.post("/retrieve", json={"histories": "x"}),
        ]
    assert [a.status_code for a in answers] == [404, 405, 400, 422]
    for a in answers:
        assert set(a.json()) == {"error"} and a.json()["error"]


def test_bearer_token_guards_every_route_but_health(url):
    client = TestClient(create_app(_service(url), token="s3cret"))
    body = {"histories": [["1", "2"]], "k": 3}
    with client:
        assert client.get("/health").status_code == 200
        missing = client.post("/retrieve", json=body)
        wrong = client.post("/retrieve", json=body, headers={"Authorization": "Bearer nope"})
        right = client.post("/retrieve", json=body, headers={"Authorization": "Bearer s3cret"})
        metrics = client.get("/metrics")
    assert missing.status_code == wrong.status_code == metrics.status_code == 401
    assert "bearer token" in missing.json()["error"] and right.status_code == 200


def test_metrics_in_prometheus_format(url):
    service = _service(url)
    client = TestClient(create_app(service))
    with client:
        for _ in range(3):
            client.post("/retrieve", json={"histories": [["1"], ["2"]], "k": 3})
        text = client.get("/metrics").text
    assert 'grove_requests_total{route="/retrieve",status="200"} 3.0' in text
    assert "grove_request_seconds_bucket" in text and "grove_batch_histories_count" in text
    assert f'grove_served_version{{alias="production",index="tiny"}} {float(service.current.version)}' in text


def test_a_small_request_overtakes_a_large_one_slice_by_slice(url):
    """A large request cut into one-history slices; a small request sent once the large one is
    running is answered before the large one ends, and both answers are whole and in order."""
    service = _service(url, slice_cost=10 * 5, max_batch=1, max_wait_ms=0.0)
    service.start(watch=False)
    try:
        large = Query([[str(i)] for i in range(1, 81)], 5, 10, False)
        done: dict[str, float] = {}
        large_future = service.batcher.submit(large)
        large_future.add_done_callback(lambda _: done.setdefault("large", time.monotonic()))
        while service.batcher.batches < 3:  # the large request is being served
            time.sleep(0.001)
        small = service.batcher.submit(Query([["3", "4"]], 5, 10, False))
        small.add_done_callback(lambda _: done.setdefault("small", time.monotonic()))
        small_answer, large_answer = small.result(timeout=60), large_future.result(timeout=120)
    finally:
        service.stop()
    assert done["small"] < done["large"]
    assert len(large_answer.items) == 80 and len(small_answer.items) == 1
    ref = service.batcher  # the whole large answer equals the same histories answered at once
    whole = _service(url)
    whole.start(watch=False)
    try:
        at_once = whole.batcher.submit(Query([[str(i)] for i in range(1, 81)], 5, 10, False)).result(timeout=120)
    finally:
        whole.stop()
    assert at_once.items == large_answer.items and ref.batches > 80
