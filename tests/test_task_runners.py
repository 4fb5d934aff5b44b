"""Issue 26, Prefect on the same cluster: flows on a task runner (threads, a local Ray, a local
Dask cluster) write the same versions (structure and weights, bit for bit) and the same metric
rows as the default runner, with independent steps run at once by worker processes that each
open the DuckDB store; several indexes retrain in one flow run; a bad runner exits 2. Real
Prefect (test harness), real Ray and Dask, a real store; nothing of grove's is mocked."""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import warnings

import pytest

from grove.flows.cli import main
from grove.indexstore.store import Store
from grove.models.metrics import METRIC_NAMES

ROOT = pathlib.Path(__file__).resolve().parents[1]
TDM = {"epochs": 1, "batch_size": 256, "dim": 8, "hidden": [16, 8], "max_samples": 1500, "neg_base": 1.0}
RECFOREST = {
    "arity": 7,
    "trees": 2,
    "hidden": 16,
    "heads": 2,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "ff": 32,
    "dropout": 0.0,
    "epochs": 1,
    "max_steps": 20,
    "embeddings": "svd",
    "device": "cpu",
}
ENV = ("PYTHONPATH", "OMP_NUM_THREADS", "GROVE_STORE_WAIT")  # set here or by with_task_runner
EVAL = {"ks": (10,), "beams": (5, 10), "max_users": 20}
CLI_EVAL = ["--k", "10", "--beam", "5,10", "--users", "20"]


@pytest.fixture(scope="module")
def one_thread():
    """Every process computes on one thread, so weights match bit for bit across processes
    (Ray and Dask workers run one torch thread each); workers import this checkout of grove."""
    import torch

    threads, saved = torch.get_num_threads(), {k: os.environ.get(k) for k in ENV}
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved["PYTHONPATH"]) if p)
    yield
    torch.set_num_threads(threads)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def prefect_server(one_thread):
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def url(make_synth_store, one_thread) -> str:
    return make_synth_store("runners", n_items=300, n_users=400, seed=3)


@pytest.fixture(scope="module")
def reference(prefect_server, url) -> dict[str, list[int]]:
    """The cycles of a TDM (1 round) and a RecForest index on the default runner."""
    from grove.flows.prefect_flows import cycle_flow

    tdm = cycle_flow(url, "ref-tdm", "tdm", "synth", config=TDM, rounds=1, **EVAL)
    rf = cycle_flow(url, "ref-rf", "recforest", "synth", config=RECFOREST, rounds=0, **EVAL)
    return {"tdm": tdm, "recforest": rf}


def grove(url: str, *args: str) -> int:
    return main(["--store", url, *args])


def written(capsys) -> list[int]:
    """The versions ``grove cycle`` printed (``wrote versions 5, 6 of index ...``)."""
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("wrote versions "))
    return [int(v) for v in line[len("wrote versions ") :].split(" of index")[0].split(", ")]


def _built(url: str, version: int):
    from grove.models.method import Built

    _, structure, artifacts = Store.open(url).read_version(version)
    return Built(structure, artifacts)


def _rows(url: str, version: int) -> list[tuple]:
    """A version's metric rows, sorted; timings (users per second) and NaN compared by name."""

    def value(r):
        if r.name == "users_per_second":
            return None
        return "nan" if math.isnan(r.value) else r.value

    rows = Store.open(url).metrics(version)
    return sorted((r.role, r.name, r.k, r.beam or 0, r.filtered, value(r), r.note or "") for r in rows)


def task_names(url: str, version: int) -> list[str]:
    """The names of the task runs of the flow run that wrote ``version``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run = Store.open(url).version(version).flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run])))
    return sorted(r.name for r in runs)


def assert_same_cycle(url: str, ours: list[int], theirs: list[int]) -> None:
    """Same lineage, same contents (structure and every weight, bit for bit; timings inside the
    training stats aside), same metric rows, each evaluation recorded once."""
    from benchmarks.reproducibility import compare

    store = Store.open(url)
    assert len(ours) == len(theirs)
    assert [store.version(v).note for v in ours] == [store.version(v).note for v in theirs]
    assert [store.version(v).parent_id for v in ours[1:]] == ours[:-1]
    for a, b in zip(ours, theirs):
        result = compare(_built(url, a), _built(url, b))
        assert result["bitwise"], (a, b, result)
        assert store.version(a).config == store.version(b).config
        assert _rows(url, a) == _rows(url, b), (a, b)
    assert any(_rows(url, v) for v in ours)


# ------------------------------------------------------------------ the parts, without Prefect
def test_evaluation_in_passes_gives_the_rows_of_one_evaluation(url):
    """The passes of an evaluation, each run alone (as Prefect tasks run them), assemble exactly
    `lifecycle.evaluate`'s rows, in order."""
    from grove.flows import steps
    from grove.models import lifecycle

    store = Store.open(url)
    version = steps.train(url, steps.construct(url, "parts-tdm", "tdm", TDM, "synth").version_id).version_id
    for sample in (None, 7):  # the exhaustive reference on every user, or on the first 7
        rows = lifecycle.evaluate(store, version, "valid", (5, 10), (3, 10), 20, "cpu", None, sample)
        results = [
            steps.evaluate_pass(url, version, "valid", (5, 10), b, 20, "cpu", None, sample) for b in (None, 3, 10)
        ]
        parts = steps.record_evaluation(url, version, (5, 10), results)

        def key(r):
            r = r if isinstance(r, dict) else r.__dict__
            return (
                r["role"],
                r["name"],
                r["k"],
                r["beam"],
                r["filtered"],
                r["note"],
                r["name"] == "users_per_second" or r["value"],
            )

        assert [key(r) for r in parts] == [key(r) for r in rows]
        assert {r["name"] for r in parts} >= {"recall", "fidelity", "users_per_second"}
    # no reference asked for: none computed
    assert steps.evaluate_pass(url, version, "valid", (10,), None, 20, "cpu", False) is None


def test_recforest_trees_built_one_by_one_assemble_to_construct():
    """Trees built apart, in any order (as tasks finish), assemble to the forest and artifact
    bytes of `RecForestMethod.construct`."""
    from test_recforest import planted_split  # tests/ is on sys.path (pytest's prepend import mode)

    from grove.models.recforest.method import (
        RecForestConfig,
        RecForestMethod,
        assemble_forest,
        construct_embeddings,
        forest_tree,
    )

    data = planted_split()
    config = RecForestConfig(**{**RECFOREST, "arity": 3, "trees": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = RecForestMethod().construct(config, data, seed=5)
        emb = construct_embeddings(config, data, 5)
    parts = assemble_forest(emb, [forest_tree(config, emb, 5, t) for t in reversed(range(3))][::-1])
    assert parts.structure.equals(whole.structure)
    assert parts.artifacts == whole.artifacts
    with pytest.raises(ValueError, match="outside"):
        forest_tree(config, emb, 5, 3)


# ------------------------------------------------------------------ flows on task runners
def test_cycle_on_a_local_ray_writes_what_the_default_runner_writes(reference, url, capsys):
    """``grove cycle --task-runner ray --workers 2``: the runner starts a local Ray
    (``ray.init(num_cpus=2)``); evaluations run beside the next step, beams at once."""
    pytest.importorskip("prefect_ray")
    args = ["cycle", "--dataset", "synth", "ray-tdm", "--method", "tdm", "--config", json.dumps(TDM)]
    assert grove(url, *args, "--rounds", "1", *CLI_EVAL, "--task-runner", "ray", "--workers", "2") == 0
    ours = written(capsys)
    assert_same_cycle(url, ours, reference["tdm"])
    store = Store.open(url)
    assert all(store.version(v).flow_run_id for v in ours)  # the flow run, recorded from the workers
    names = task_names(url, ours[0])
    assert {f"evaluate v{ours[1]} beam 5", f"evaluate v{ours[1]} beam 10", f"record metrics v{ours[3]}"} <= set(names)


def test_cycle_on_a_local_dask_cluster_writes_what_the_default_runner_writes(reference, url, capsys):
    """``grove cycle --task-runner dask --workers 2`` on a RecForest: its two trees are built
    by two tasks and assembled into one version, byte for byte the default runner's."""
    pytest.importorskip("prefect_dask")
    args = ["cycle", "--dataset", "synth", "dask-rf", "--method", "recforest"]
    args += ["--config", json.dumps(RECFOREST), "--rounds", "0", *CLI_EVAL]
    assert grove(url, *args, "--task-runner", "dask", "--workers", "2") == 0
    ours = written(capsys)
    assert_same_cycle(url, ours, reference["recforest"])
    names = task_names(url, ours[0])
    assert {"forest tree 0", "forest tree 1", "write dask-rf (construct)"} <= set(names)
    assert not any(n.startswith("construct ") for n in names)  # no whole-forest construct task


def test_cycle_on_threads_writes_what_the_default_runner_writes(reference, url):
    from grove.flows.prefect_flows import cycle_flow
    from grove.flows.runners import RunnerSpec, with_task_runner

    flow = with_task_runner(cycle_flow, RunnerSpec("thread", workers=4))
    for method, config, rounds in (("tdm", TDM, 1), ("recforest", RECFOREST, 0)):
        ours = flow(url, f"thread-{method}", method, "synth", config=config, rounds=rounds, **EVAL, concurrent=True)
        assert_same_cycle(url, ours, reference[method])


def test_evaluate_flow_runs_its_beams_as_tasks_and_records_them_once(prefect_server, url):
    from grove.flows import steps
    from grove.flows.prefect_flows import evaluate_flow
    from grove.flows.runners import RunnerSpec, with_task_runner

    version = steps.train(url, steps.construct(url, "eval-tdm", "tdm", TDM, "synth").version_id).version_id
    before = len(Store.open(url).metrics(version))
    flow = with_task_runner(evaluate_flow, RunnerSpec("thread"))
    rows = flow(url, version, "test", (10,), (5, 10, 20), 20, exhaustive=True, exhaustive_users=7, concurrent=True)
    stored = Store.open(url).metrics(version)
    assert len(stored) == before + len(rows)
    assert {(r["name"], r["beam"]) for r in rows} >= {("fidelity", 5), ("fidelity", 20), ("recall", None)}
    # the reference's rows, on 7 users: every metric kept and filtered, and its users_per_second
    assert sum(r["note"] == "7 users" for r in rows) == 2 * len(METRIC_NAMES) + 1


def test_two_indexes_retrain_at_once_on_dask(reference, url, capsys):
    """``grove schedule A B --once --task-runner dask``: both chains at once on two Dask worker
    processes that read and write the one DuckDB file; one result per index; the store stays
    consistent (each evaluation recorded once, lineage intact)."""
    pytest.importorskip("prefect_dask")
    store = Store.open(url)
    bases = {i: store.resolve(i).id for i in ("ref-tdm", "ref-rf")}
    args = ["schedule", "ref-tdm", "ref-rf", "--once", "--rounds", "0", "--users", "20", "--gate-beam", "10"]
    assert grove(url, *args, "--task-runner", "dask", "--workers", "2") == 0
    out = capsys.readouterr().out
    for index, base in bases.items():
        assert f"retrain of {index!r} from v{base}" in out
        new = [v for v in store.list_versions(index) if v.id > max(reference["tdm"] + reference["recforest"])]
        assert [v.parent_id for v in new] == [base]
        rows = [(r.role, r.name, r.k, r.beam, r.filtered) for r in store.metrics(new[0].id)]
        assert rows and len(rows) == len(set(rows))  # recorded once
    assert out.count("promoted to production") + out.count("rejected") == 2


# ------------------------------------------------------------------ refusals
def test_a_bad_runner_or_a_missing_package_exits_2_before_anything_runs(url, capsys, monkeypatch):
    base = ["cycle", "--dataset", "synth", "bad", "--method", "tdm"]
    assert grove(url, *base, "--task-runner", "spark") == 2
    assert "invalid choice: 'spark'" in capsys.readouterr().err
    for extra, message in (
        (["--runner-address", "ray://h:10001"], "need --task-runner"),
        (["--task-runner", "thread", "--runner-address", "x:1"], "takes no address"),
        (["--task-runner", "ray", "--runner-address", "ray://h:10001", "--workers", "2"], "has its own workers"),
        (["--task-runner", "ray", "--local"], "--local runs the steps without Prefect"),
    ):
        assert grove(url, *base, *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    monkeypatch.setitem(sys.modules, "prefect_ray", None)  # as if prefect-ray were not installed
    monkeypatch.setitem(sys.modules, "prefect_ray.task_runners", None)
    assert grove(url, *base, "--task-runner", "ray") == 2
    assert "needs prefect-ray" in capsys.readouterr().err
    assert "bad" not in {v.index_name for v in Store.open(url).list_versions()}  # nothing ran


def test_the_scheduled_deployment_carries_its_runner(url):
    """``grove schedule A B --cron ... --task-runner dask``: the served flow has the runner and
    its parameters ask for concurrent steps; it pickles (the runner spawns it per run)."""
    pytest.importorskip("prefect_dask")
    import cloudpickle

    from grove.flows.runners import RunnerSpec
    from grove.flows.schedule import deployment_name, retrain_deployment

    flow, params = retrain_deployment("duckdb:///rel.duckdb", ["a", "b"], {"rounds": 0}, RunnerSpec("dask", workers=2))
    assert flow.name == "retrain-indexes" and type(flow.task_runner).__name__ == "DaskTaskRunner"
    assert params["indexes"] == ["a", "b"] and params["concurrent"] and params["url"].startswith("duckdb:////")
    # a served flow reaches its run's process through cloudpickle (Prefect's run_flow_in_subprocess)
    assert cloudpickle.loads(cloudpickle.dumps(flow)).task_runner.cluster_kwargs["n_workers"] == 2
    assert deployment_name(["a", "b"]) == "retrain-a+b"
    flow, params = retrain_deployment("duckdb:///rel.duckdb", "a", {}, None)
    assert flow.name == "retrain" and params["index"] == "a" and "concurrent" not in params
