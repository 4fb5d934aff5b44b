"""`grove schedule / promote / rollback / serve / report` (issue 6) on a real store with a tiny
TDM index: the report holds lineage, metrics, the curve and the alias log; a CLI rollback
restores the previous version and the log records both moves; the gate from the CLI promotes
and rejects; bad input (invalid cron, unknown index, no Prefect server) exits 2 with one line.
The slow test registers the cron deployment against a real `prefect server start`."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time

import pytest

from grove.flows.cli import main
from grove.indexstore.store import Store

INDEX = "ops-tdm"
TDM = {"epochs": 1, "dim": 8, "hidden": [16, 8], "max_samples": 400, "neg_base": 1.0}


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def ops(make_synth_store, request):
    """On each backend, a store with versions construct (v0) -> train (v1) -> relearn -> train (v2) of a tiny TDM
    index; v1 evaluated at beams 5 and 20, v2 at 5, 20, 50 and exhaustively, on 20 valid users."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: a second thread only fights for the 2 shared cores
    try:
        return _build(make_synth_store("ops", n_items=300, n_users=400, seed=2, backend=request.param))
    finally:
        torch.set_num_threads(threads)


def _build(url: str):
    from grove.flows import steps

    v0 = steps.construct(url, INDEX, "tdm", TDM, "synth").version_id
    v1 = steps.train(url, v0).version_id
    v2 = steps.train(url, steps.relearn(url, v1).version_id).version_id
    steps.evaluate(url, v1, "valid", (10,), (5, 20), max_users=20, exhaustive=False)
    steps.evaluate(url, v2, "valid", (10,), (5, 20, 50), max_users=20)
    return url, v0, v1, v2


def grove(url, *args) -> int:
    return main(["--store", url, *args])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ------------------------------------------------------------------------------ rollback
def test_rollback_restores_previous_version_and_logs_both_moves(ops, capsys):
    url, _, v1, v2 = ops
    store = Store.open(url)
    store.set_alias(INDEX, "production", v1, reason="first")
    store.set_alias(INDEX, "production", v2, reason="newer", action="promote")
    before = len(store.alias_history(INDEX, "production"))
    assert grove(url, "rollback", INDEX, "--reason", "bad version") == 0
    assert f"{v2} -> {v1}" in capsys.readouterr().out
    assert store.aliases(INDEX)["production"] == v1
    log = store.alias_history(INDEX, "production")
    promote, rollback = log[before - 1], log[before]
    assert len(log) == before + 1
    assert (promote.action, promote.from_version, promote.to_version) == ("promote", v1, v2)
    assert (rollback.action, rollback.from_version, rollback.to_version) == ("rollback", v2, v1)
    assert rollback.reason == "bad version"


# ------------------------------------------------------------------------------ promote
def test_promote_from_the_cli_rejects_then_promotes(ops, capsys):
    url, _, v1, v2 = ops
    store = Store.open(url)
    store.set_alias(INDEX, "production", v1, reason="baseline")
    # a metric of our own so the verdict is known: production 0.5, candidate 0.4
    for vid, value in ((v1, 0.5), (v2, 0.4)):
        store.record_metrics(vid, [{"role": "valid", "name": "gatecheck", "k": 10, "value": value, "beam": 50}])
    assert grove(url, "promote", INDEX, str(v2), "--gate-metric", "gatecheck", "--local") == 1
    assert "rejected" in capsys.readouterr().out
    assert store.aliases(INDEX)["production"] == v1 and store.aliases(INDEX)["candidate"] == v2
    assert grove(url, "promote", INDEX, str(v2), "--gate-metric", "gatecheck", "--tolerance", "0.2", "--local") == 0
    assert "promoted" in capsys.readouterr().out
    assert store.aliases(INDEX)["production"] == v2
    actions = [e.action for e in store.alias_history(INDEX, "production")][-2:]
    assert actions == ["reject", "promote"]


@pytest.mark.slow  # a train + an evaluation: ~10 s on a busy 2-core machine
def test_schedule_once_local_retrains_from_production_and_gates(ops, capsys):
    url, _, v1, _ = ops
    store = Store.open(url)
    store.set_alias(INDEX, "production", v1, reason="before retrain")
    n = len(store.list_versions(INDEX))
    assert (
        grove(
            url,
            "schedule",
            INDEX,
            "--once",
            "--local",
            "--rounds",
            "0",
            "--users",
            "20",
            "--gate-beam",
            "20",
            "--tolerance",
            "1.0",
        )
        == 0
    )
    out = capsys.readouterr().out
    new = store.list_versions(INDEX)[n:]
    assert len(new) == 1 and new[0].parent_id == v1  # train from production, then evaluate + gate
    assert f"v{new[0].id} promoted" in out
    assert store.aliases(INDEX)["production"] == new[0].id


# ------------------------------------------------------------------------------ report
def test_report_html_holds_lineage_metrics_curve_and_alias_log(ops, tmp_path, capsys):
    url, v0, v1, v2 = ops
    store = Store.open(url)
    store.set_alias(INDEX, "production", v2, reason="for the report", action="promote")
    out = tmp_path / "report.html"
    assert grove(url, "report", INDEX, "--out", str(out)) == 0
    page = out.read_text()
    for section in ("Version lineage", "Metrics per version", "Efficiency vs accuracy", "Alias history"):
        assert section in page
    assert "construct" in page and "relearn round 1" in page  # lineage step notes
    assert f"<td>{v2}</td><td>{v2 - 1}</td><td>train round 1</td>" in page  # parent: the relearnt one
    assert "recall@10" in page and "users/s" in page and "exhaustive" in page
    png = page.split("data:image/png;base64,", 1)[1].split('"', 1)[0]
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "for the report" in page and "promote" in page  # the alias log
    assert str(out) in capsys.readouterr().out


def test_report_markdown_writes_the_png_beside(ops, tmp_path):
    url, *_ = ops
    out = tmp_path / "ops.md"
    assert grove(url, "report", INDEX, "--out", str(out)) == 0  # format from the suffix
    page = out.read_text()
    png = tmp_path / "ops-curve.png"
    assert "](ops-curve.png)" in page and png.read_bytes()[:4] == b"\x89PNG"
    assert "| version | role | beam | seen | recall@10" in page
    assert "## Alias history" in page and "| production |" in page


def test_curve_points_pair_recall_with_users_per_second(ops):
    from grove.flows.report import curve_points, gather

    url, v0, v1, v2 = ops
    points = curve_points(gather(Store.open(url), INDEX), k=10)
    assert v0 not in points and {v1, v2} <= set(points)
    assert [b for b, _, _ in points[v1]] == [5, 20] and [b for b, _, _ in points[v2]] == [5, 20, 50]
    assert all(ups > 0 and 0 <= rec <= 1 for _, ups, rec in points[v2])


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("cron", ["61 3 * * *", "0 3 * *", "every night", ""])
def test_invalid_cron_exits_2_before_anything_starts(store_url, capsys, cron):
    # the store is not even initialised: the cron line is refused before it is opened
    assert grove(store_url, "schedule", INDEX, "--cron", cron) == 2
    assert "invalid cron expression" in one_error_line(capsys)


def test_unknown_index_exits_2(ops, capsys, tmp_path):
    url, *_ = ops
    for args in (
        ["schedule", "nope", "--once", "--local"],
        ["schedule", "nope", "--cron", "0 3 * * *"],
        ["promote", "nope", "1", "--local"],
        ["report", "nope", "--out", str(tmp_path / "r.html")],
        ["serve", "nope", "--port", str(free_port())],
        ["rollback", "nope"],
    ):
        assert grove(url, *args) == 2, args
        assert "unknown index 'nope'" in one_error_line(capsys), args
    assert not (tmp_path / "r.html").exists()


def test_schedule_refusals(ops, capsys, monkeypatch):
    url, *_ = ops
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert grove(url, "schedule", INDEX, "--cron", "0 3 * * *") == 2
    assert "prefect server start" in one_error_line(capsys)
    assert grove(url, "schedule", INDEX, "--cron", "0 3 * * *", "--local") == 2
    assert "needs a Prefect server" in one_error_line(capsys)
    assert grove(url, "schedule", INDEX, "--once", "--local", "--method", "itemcf") == 2
    assert "does not match" in one_error_line(capsys)
    assert grove(url, "schedule", INDEX, "--once", "--local", "--data", "/no/such/file.csv") == 2
    assert "no such file" in one_error_line(capsys)
    assert grove(url, "schedule", INDEX) == 2  # neither --cron nor --once: usage error


# ------------------------------------------------------------------------------ slow
def _wait_http(url: str, timeout: float, proc=None) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout:.0f} s")


def _stop(proc) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


@pytest.mark.slow
def test_schedule_registers_a_cron_deployment_on_a_real_prefect_server(ops, tmp_path):
    """`grove schedule INDEX --cron` against `prefect server start` (issue 6)."""
    import httpx

    url, *_ = ops
    home = tmp_path / "prefect"
    home.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(
        os.environ,
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_UI_ENABLED="false",
    )
    prefect = os.path.join(os.path.dirname(sys.executable), "prefect")
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sched = None
    try:
        _wait_http(f"{api}/health", 180, server)
        sched = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "grove.flows.cli",
                "--store",
                url,
                "schedule",
                INDEX,
                "--cron",
                "0 3 * * *",
                "--rounds",
                "2",
                "--tolerance",
                "0.01",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        end, found = time.monotonic() + 180, []
        while time.monotonic() < end and not found:
            assert sched.poll() is None, _stop(sched)
            res = httpx.post(f"{api}/deployments/filter", json={}, timeout=10)
            found = [d for d in res.json() if d["name"] == f"retrain-{INDEX}"]
            time.sleep(1.0)
        assert found, "no deployment registered: " + _stop(sched)
        dep = found[0]
        assert dep["parameters"]["index"] == INDEX and dep["parameters"]["rounds"] == 2
        assert dep["parameters"]["gate"]["tolerance"] == 0.01
        assert dep["parameters"]["url"].startswith("duckdb:////")  # absolute path for the runner
        schedules = [s["schedule"].get("cron") for s in dep.get("schedules", [])]
        assert "0 3 * * *" in schedules, dep.get("schedules")
        flow = httpx.get(f"{api}/flows/{dep['flow_id']}", timeout=10).json()
        assert flow["name"] == "retrain"
    finally:
        if sched is not None:
            _stop(sched)
        _stop(server)
