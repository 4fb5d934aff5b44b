"""Prometheus metrics of the retrieval service (``GET /metrics``, prometheus-client): requests by
route and status, request latency, the version served, micro-batch sizes. One registry per app,
so that several services in one process (tests) do not share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    """The service's counters; `observe_batches` catches up with the batcher's batch sizes."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("grove_requests_total", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram(
            "grove_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.version = Gauge("grove_served_version", "version served", ["index", "alias"], registry=self.registry)
        self.batch = Histogram(
            "grove_batch_histories", "histories per micro-batch", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self._batches_seen = 0

    def observe_batches(self, batcher) -> None:
        """Record the batch sizes the batcher produced since the last call."""
        new = batcher.batches - self._batches_seen
        for size in batcher.batch_sizes[-new:] if new > 0 else []:
            self.batch.observe(size)
        self._batches_seen = batcher.batches

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
