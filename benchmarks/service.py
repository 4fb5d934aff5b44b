"""Retrieval service under a bounded loopback load, and version switches under that load (issue 6).

    python -m benchmarks.service                 # 32 clients, 30 s, then 10 alias moves
    python -m benchmarks.service --quick         # 5 s of load

1. Builds a temporary store: a synthetic planted-hierarchy dataset, a tiny TDM index with two
   trained versions (construct -> train = A, A -> relearn -> train = B); ``production`` -> A.
2. Starts ``grove serve`` in a subprocess on 127.0.0.1 (the clients run here, in one asyncio
   loop, so client and server do not share a GIL; on a 2-core machine they do share the CPU).
3. Steady load: ``--clients`` concurrent clients, each POSTing /retrieve (``--per-request``
   real user histories, k, beam 50) back to back for ``--duration`` seconds: requests/s,
   histories/s, p50/p90/p99 latency, failed requests.
4. Switches: the same load continues while another thread moves ``production`` between A and B
   ``--moves`` times through `Store.set_alias` (a DuckDB writer in this process while the
   service polls read-only from its own): failed requests during the moves (target 0) and, per
   move, the time from the alias commit to /health reporting the new version (polled every
   10 ms), plus the time of the first /retrieve answer from the new version.

Writes ``benchmarks/results/service.json`` and ``service.md`` (or ``--out`` DIR).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from benchmarks import service_fairness as fairness
from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
INDEX = "bench-tdm"
TDM = {"epochs": 1, "dim": 16, "hidden": [32, 16], "max_samples": 1500, "neg_base": 1.0}


# ------------------------------------------------------------------------------ setup
def build_store(path: pathlib.Path, items: int, users: int) -> tuple[str, int, int, list[list[str]]]:
    """A store with two trained TDM versions (A, B) and ``production`` -> A.
    Returns (url, A, B, histories of raw item ids, oldest first, one per user)."""
    from grove.flows import steps
    from grove.flows.datasets import split_dataset, synth_dataset
    from grove.indexstore.store import Store

    url = f"duckdb:///{path}"
    Store.init(url)
    store = Store.open(url)
    synth_dataset(store, "synth", items, users, seed=0)
    split_dataset(store, "synth", "default", seed=0)
    v0 = steps.construct(url, INDEX, "tdm", TDM, "synth").version_id
    a = steps.train(url, v0).version_id
    b = steps.train(url, steps.relearn(url, a).version_id).version_id
    store.set_alias(INDEX, "production", a, reason="benchmark start")
    inter = store.load_interactions("synth")
    order = np.lexsort((inter.ts, inter.user))
    users_sorted, items_sorted = inter.user[order], inter.item[order]
    bounds = np.flatnonzero(np.diff(users_sorted)) + 1
    histories = [inter.item_raw[h[-30:]].tolist() for h in np.split(items_sorted, bounds)]
    return url, a, b, histories


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    url: str, port: int, poll: float, max_batch: int, wait_ms: float, threads: int | None, extra: tuple[str, ...] = ()
):
    env = dict(os.environ, GROVE_QUIET="1")
    cmd = [
        sys.executable,
        "-m",
        "grove.flows.cli",
        "--store",
        url,
        "serve",
        INDEX,
        "--port",
        str(port),
        "--device",
        "cpu",
        "--poll-seconds",
        str(poll),
        "--max-batch",
        str(max_batch),
        "--max-wait-ms",
        str(wait_ms),
        "--threads",
        str(threads or 0),
        *extra,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import httpx

    end = time.monotonic() + 120
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"grove serve exited: {proc.stdout.read()}")
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
            return proc, health
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("grove serve did not answer in 120 s")


# ------------------------------------------------------------------------------ load
class Load:
    """Closed-loop clients: each sends a request, waits for the answer, sends the next."""

    def __init__(self, base: str, histories: list[list[str]], per_request: int, k: int, beam: int):
        self.base, self.histories, self.per_request = base, histories, per_request
        self.k, self.beam = k, beam
        self.records: list[tuple[float, float, int, int | None]] = []  # (sent, done, status, version)
        self.errors: list[str] = []

    async def client(self, http, seed: int, deadline: float, stop: threading.Event) -> None:
        rng = np.random.default_rng(seed)
        while time.monotonic() < deadline and not stop.is_set():
            pick = rng.integers(0, len(self.histories), self.per_request)
            body = {"histories": [self.histories[i] for i in pick], "k": self.k, "beam": self.beam}
            sent = time.monotonic()
            try:
                res = await http.post(self.base + "/retrieve", json=body)
                status, version = res.status_code, res.json().get("version")
                if status != 200:
                    self.errors.append(f"{status}: {res.text[:200]}")
            except Exception as exc:  # connection reset, timeout: a failed request
                status, version = -1, None
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.records.append((sent, time.monotonic(), status, version))

    async def run(self, clients: int, seconds: float, stop: threading.Event) -> None:
        import httpx

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(limits=limits, timeout=60.0) as http:
            deadline = time.monotonic() + seconds
            await asyncio.gather(*(self.client(http, i, deadline, stop) for i in range(clients)))


def summarise(records, per_request: int, seconds: float) -> dict:
    ok = [r for r in records if r[2] == 200]
    lat = np.array([r[1] - r[0] for r in ok]) * 1000.0
    span = (max(r[1] for r in records) - min(r[0] for r in records)) if records else seconds
    q = np.percentile(lat, [50, 90, 99]) if lat.size else [float("nan")] * 3
    return {
        "requests": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "seconds": round(span, 2),
        "requests_per_s": round(len(ok) / span, 1),
        "histories_per_s": round(len(ok) * per_request / span, 1),
        "latency_ms": {
            "p50": round(float(q[0]), 2),
            "p90": round(float(q[1]), 2),
            "p99": round(float(q[2]), 2),
            "max": round(float(lat.max()), 2) if lat.size else None,
        },
    }


# ------------------------------------------------------------------------------ moves
def move_aliases(
    url: str, base: str, a: int, b: int, moves: int, gap: float, out: list[dict], stop: threading.Event
) -> None:
    """Move production A<->B ``moves`` times; per move, the time until the service serves it."""
    import httpx

    from grove.indexstore.store import Store

    store = Store.open(url)
    try:
        time.sleep(gap)
        for m in range(moves):
            target = b if m % 2 == 0 else a
            t0 = time.monotonic()
            store.set_alias(INDEX, "production", target, reason=f"benchmark move {m + 1}")
            committed = time.monotonic()
            health_s = None
            while time.monotonic() - committed < 60:
                if httpx.get(base + "/health", timeout=10).json()["version"] == target:
                    health_s = time.monotonic() - committed
                    break
                time.sleep(0.01)
            out.append(
                {
                    "move": m + 1,
                    "to": target,
                    "committed": committed,
                    "set_alias_s": round(committed - t0, 4),
                    "health_switch_s": None if health_s is None else round(health_s, 3),
                }
            )
            time.sleep(gap)
    finally:
        stop.set()


def first_answers(per_move: list[dict], records) -> None:
    """Per move: seconds from the alias commit to the first /retrieve answer from the new version
    (answered before the next move); replaces the monotonic ``committed`` stamp."""
    for i, mv in enumerate(per_move):
        nxt = per_move[i + 1]["committed"] if i + 1 < len(per_move) else float("inf")
        done = [r[1] for r in records if r[3] == mv["to"] and mv["committed"] <= r[1] < nxt]
        mv["first_answer_s"] = round(min(done) - mv["committed"], 3) if done else None
    for mv in per_move:
        del mv["committed"]


# ------------------------------------------------------------------------------ report
def markdown(res: dict) -> str:
    s, m, w = res["steady"], res["moves"], res["workload"]
    sw = [x["health_switch_s"] for x in m["per_move"] if x["health_switch_s"] is not None]
    fa = [x["first_answer_s"] for x in m["per_move"] if x["first_answer_s"] is not None]
    lines = [
        "# Retrieval service benchmark (`python -m benchmarks.service`)",
        "",
        f"Machine: {res['machine']['cpu_count']} cores, torch {res['machine']['torch']} with "
        f"{res['machine']['torch_threads_server']} thread(s) in the server (default "
        f"{res['machine']['torch_threads']}), load average {res['machine']['load_average_before']} at start, "
        f"{res['machine']['load_average_end']} at end. Client and server share these cores (loopback).",
        "",
        f"Workload: TDM ({w['items']} items, tree of {w['tree_nodes']} nodes), {w['clients']} closed-loop "
        f"clients, {w['per_request']} histories/request, k={w['k']}, beam={w['beam']}, CPU; "
        f"service max_batch={w['max_batch']}, max_wait_ms={w['max_wait_ms']}, alias poll {w['poll_seconds']} s.",
        "",
        "| phase | seconds | requests ok | failed | requests/s | histories/s | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, ph in (("steady", s), ("10 alias moves" if m["moves"] == 10 else f"{m['moves']} alias moves", m["load"])):
        lat = ph["latency_ms"]
        lines.append(
            f"| {name} | {ph['seconds']} | {ph['ok']} | {ph['failed']} | {ph['requests_per_s']} | "
            f"{ph['histories_per_s']} | {lat['p50']} | {lat['p90']} | {lat['p99']} |"
        )
    lines += [
        "",
        f"Alias moves: {m['moves']}, failed requests during the moves: **{m['load']['failed']}** "
        f"(target 0); versions answered: {m['versions_answered']}.",
        "",
        f"Time from alias commit to /health serving the new version: median {_med(sw)} s, max "
        f"{max(sw) if sw else None} s; to the first /retrieve answer from it: median {_med(fa)} s "
        f"(poll period {w['poll_seconds']} s + loading the version).",
        "",
        "| move | to | set_alias s | /health switch s | first answer s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {x['move']} | v{x['to']} | {x['set_alias_s']} | {x['health_switch_s']} | {x['first_answer_s']} |"
        for x in m["per_move"]
    ]
    if res.get("fairness"):
        lines += fairness.markdown_lines(res)
    return "\n".join(lines) + "\n"


def _med(xs):
    return round(statistics.median(xs), 3) if xs else None


# ------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of steady load")
    ap.add_argument("--quick", action="store_true", help="5 s of steady load")
    ap.add_argument("--moves", type=int, default=10)
    ap.add_argument("--move-gap", type=float, default=1.5, help="seconds between alias moves")
    ap.add_argument("--per-request", type=int, default=1, help="histories per request")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--beam", type=int, default=50)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--poll-seconds", type=float, default=0.5, help="the service's alias poll period")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument(
        "--server-threads",
        type=int,
        default=1,
        help="torch threads of the server (grove serve --threads); 0 = torch's default. 1 by default: on a "
        "small shared machine a second thread oversubscribes the cores the clients need",
    )
    ap.add_argument("--fair-clients", type=int, default=8, help="small-request clients of the fairness phase")
    ap.add_argument("--out", default=str(RESULTS), help="directory for service.json / service.md")
    args = ap.parse_args(argv)
    seconds = 5.0 if args.quick else args.duration
    os.environ.setdefault("GROVE_QUIET", "1")
    info = machine_info()
    info["torch_threads_server"] = args.server_threads or info["torch_threads"]
    import torch

    torch.set_num_threads(1)  # the build here; the clients do not use torch

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="grove-bench-service-"))
    t = time.perf_counter()
    url, a, b, histories = build_store(tmp / "grove.duckdb", args.items, args.users)
    build_s = time.perf_counter() - t
    from grove.indexstore.store import Store

    nodes = Store.open(url).version(a).shape.get("total_nodes")
    print(f"store built in {build_s:.1f} s: versions A={a}, B={b}", flush=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, health = start_server(url, port, args.poll_seconds, args.max_batch, args.max_wait_ms, args.server_threads)
    try:
        load = Load(base, histories, args.per_request, args.k, args.beam)
        asyncio.run(load.run(args.clients, 3.0, threading.Event()))  # warm-up, not counted
        load.records.clear()
        load.errors.clear()
        asyncio.run(load.run(args.clients, seconds, threading.Event()))
        steady = summarise(load.records, args.per_request, seconds)
        print(f"steady: {json.dumps(steady)}", flush=True)

        moving = Load(base, histories, args.per_request, args.k, args.beam)
        per_move: list[dict] = []
        stop = threading.Event()
        mover = threading.Thread(target=move_aliases, args=(url, base, a, b, args.moves, args.move_gap, per_move, stop))
        mover.start()
        asyncio.run(moving.run(args.clients, 3600.0, stop))
        mover.join()
        first_answers(per_move, moving.records)
        during = summarise(moving.records, args.per_request, 0.0)
        versions = sorted({r[3] for r in moving.records if r[3] is not None})
        final_health = __import__("httpx").get(base + "/health", timeout=10).json()
        fair = {
            "clients": args.fair_clients,
            "max_request": 1024,
            "max_k": 1000,
            "max_beam": 4096,
            "sliced": fairness.measure(base, histories, args.fair_clients, 1024, 1000, 4096),
        }
    finally:
        stop_server(proc)
    port = free_port()
    proc, _ = start_server(
        url,
        port,
        args.poll_seconds,
        args.max_batch,
        args.max_wait_ms,
        args.server_threads,
        ("--slice-cost", str(10**12)),
    )
    try:
        fair["one_piece"] = fairness.measure(f"http://127.0.0.1:{port}", histories, args.fair_clients, 1024, 1000, 4096)
    finally:
        stop_server(proc)
    print(f"fairness: {json.dumps(fair)}", flush=True)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    res = {
        "machine": info,
        "workload": {
            "items": args.items,
            "users": args.users,
            "tree_nodes": nodes,
            "tdm_config": TDM,
            "clients": args.clients,
            "per_request": args.per_request,
            "k": args.k,
            "beam": args.beam,
            "poll_seconds": args.poll_seconds,
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "store_build_s": round(build_s, 1),
            "version_load_s": health.get("load_seconds"),
        },
        "steady": steady,
        "steady_errors": load.errors[:5],
        "moves": {
            "moves": args.moves,
            "load": during,
            "errors": moving.errors[:5],
            "versions_answered": versions,
            "per_move": per_move,
            "service_swaps": final_health.get("swaps"),
            "service_batches": final_health.get("batches"),
        },
        "fairness": fair,
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_and_markdown(out / "service", res, markdown)
    print(markdown(res))
    return res


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
