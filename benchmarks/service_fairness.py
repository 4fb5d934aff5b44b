"""The fairness phase of `benchmarks.service` (issue 25.3): small requests while one maximal
request runs.

Closed-loop clients send small requests (one history, k 10, beam 50) back to back; after a
second, one client sends the largest request the service admits (``max_request`` histories,
``max_k``, ``max_beam``). Reported: the maximal request's seconds, and the latency (p50 / p99 /
max) of the small requests that were in flight while it ran -- once against a server that
slices large requests (its default ``slice_cost``) and once against one that serves a request
in one piece (``--slice-cost`` larger than any request), so the effect of slicing is measured
side by side on the same index.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

SMALL = {"k": 10, "beam": 50}


async def _small_clients(base: str, histories: list, clients: int, stop: asyncio.Event, records: list) -> None:
    import httpx

    async def one(http, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            body = {"histories": [histories[int(rng.integers(0, len(histories)))]], **SMALL}
            sent = time.monotonic()
            res = await http.post(base + "/retrieve", json=body)
            records.append((sent, time.monotonic(), res.status_code))

    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(limits=limits, timeout=600.0) as http:
        await asyncio.gather(*(one(http, i) for i in range(clients)))


async def _phase(base: str, histories: list, clients: int, big: dict) -> dict:
    import httpx

    records: list = []
    stop = asyncio.Event()
    small = asyncio.create_task(_small_clients(base, histories, clients, stop, records))
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient(timeout=600.0) as http:
        sent = time.monotonic()
        res = await http.post(base + "/retrieve", json=big)
        done = time.monotonic()
    await asyncio.sleep(0.5)
    stop.set()
    await small
    during = np.array([(d - s) * 1000.0 for s, d, st in records if st == 200 and d > sent and s < done])
    failed = sum(1 for r in records if r[2] != 200)
    q = np.percentile(during, [50, 99]) if during.size else [float("nan")] * 2
    return {
        "big_status": res.status_code,
        "big_seconds": round(done - sent, 2),
        "small_requests_during": int(during.size),
        "small_p50_ms": round(float(q[0]), 1),
        "small_p99_ms": round(float(q[1]), 1),
        "small_max_ms": round(float(during.max()), 1) if during.size else None,
        "small_failed": failed,
    }


def measure(base: str, histories: list, clients: int, max_request: int, max_k: int, max_beam: int) -> dict:
    """One phase against the server at ``base``: the maximal request and the small ones around it."""
    rng = np.random.default_rng(0)
    big = {
        "histories": [histories[int(i)] for i in rng.integers(0, len(histories), max_request)],
        "k": max_k,
        "beam": max_beam,
    }
    return asyncio.run(_phase(base, histories, clients, big))


def markdown_lines(res: dict) -> list[str]:
    f = res["fairness"]
    lines = [
        "",
        "## Fairness: small requests while one maximal request runs",
        "",
        f"{f['clients']} closed-loop clients sending one history (k {SMALL['k']}, beam {SMALL['beam']}); one "
        f"request of {f['max_request']:,} histories at k {f['max_k']:,}, beam {f['max_beam']:,}.",
        "",
        "| server | maximal request (s) | small requests during it | small p50 (ms) | small p99 (ms) "
        "| small max (ms) | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, key in (("slices of cost <= slice_cost (default)", "sliced"), ("one piece (no slicing)", "one_piece")):
        p = f[key]
        lines.append(
            f"| {label} | {p['big_seconds']} | {p['small_requests_during']} | {p['small_p50_ms']} "
            f"| {p['small_p99_ms']} | {p['small_max_ms']} | {p['small_failed']} |"
        )
    return lines
