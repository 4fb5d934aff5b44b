"""Data-parallel training with torch.distributed: real gloo workers on the CPU.

* the collectives of `grove.models.distributed` (gather of unequal parts, averaged dense and sparse
  gradients = the gradient of the whole batch) in a 2-process group;
* one worker through the launcher = a plain run, bit for bit;
* 2 workers write ONE version (recorded as such), for every trainable method;
* tree learning (JTM, DeFoRec) and DR's E-step shared by 2 workers give the same tree / codes
  as one worker from the same trained version;
* a worker killed mid-run fails the command (exit 2) and writes nothing.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from grove.flows import steps
from grove.flows.cli import main
from grove.indexstore.store import Store
from grove.models import distributed, lifecycle
from grove.models.optim import EmbeddingAdam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_SCORER = {"dim": 8, "hidden": [32, 8], "neg_total": 24, "batch_size": 64, "max_samples": 640, "device": "cpu"}
SMALL = {  # budgets that keep every method's step at a few seconds
    "tdm": TINY_SCORER,
    "jtm": TINY_SCORER | {"tree_samples": 640, "gap": 3},
    "deforec": {
        "dim": 8,
        "negatives": 4,
        "negatives_total": 24,
        "batch_size": 64,
        "max_samples": 640,
        "tree_samples": 640,
        "gap": 3,
        "device": "cpu",
    },
    "dr": {"max_samples": 1500, "epochs": 1, "device": "cpu"},
    "recforest": {"arity": 8, "trees": 2, "epochs": 1, "max_steps": 12, "pretrain_max_steps": 12, "device": "cpu"},
    "two_tower": {"max_steps": 12, "device": "cpu"},
}


@pytest.fixture(scope="module")
def url(make_synth_store) -> str:
    return make_synth_store("distributed", 400, 300, 5)


def _artifacts(url: str, version: int) -> dict[str, str]:
    """name -> sha256 of a version's artifacts."""
    return {k: hashlib.sha256(v).hexdigest() for k, v in Store.open(url).read_version(version)[2].items()}


# ---------------------------------------------------------------- collectives, 2 processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collectives(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # gather: unequal parts, rank order
        part = torch.arange(rank * 10, rank * 10 + 3 + rank)
        out[f"gather{rank}"] = distributed.gather(part).tolist()
        # the same global batch, sharded: averaged gradients = the whole batch's gradient
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(50, 4, sparse=True), nn.Flatten(), nn.Linear(12, 1))
        opt = EmbeddingAdam(model, lr=0.1)
        batch = torch.randint(0, 50, (8, 3))
        y = torch.rand(8, 1)
        idx = distributed.shard(torch.arange(8))
        loss = nn.functional.mse_loss(model(batch[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        distributed.average_gradients(opt.dense, opt.tables)
        out[f"grads{rank}"] = [p.grad.to_dense().clone() for p in model.parameters()]
        out[f"order{rank}"] = distributed.epoch_order(20, 3, 1, "cpu").tolist()
    finally:
        dist.destroy_process_group()


def test_collectives_of_two_gloo_workers():
    out = mp.Manager().dict()
    mp.spawn(_collectives, args=(_free_port(), out), nprocs=2, join=True)
    assert out["gather0"] == out["gather1"] == [0, 1, 2, 10, 11, 12, 13]
    assert out["order0"] == out["order1"] == distributed.epoch_order(20, 3, 1, "cpu").tolist()
    # one process, the whole batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 4, sparse=True), nn.Flatten(), nn.Linear(12, 1))
    batch = torch.randint(0, 50, (8, 3))
    y = torch.rand(8, 1)
    nn.functional.mse_loss(model(batch), y).backward()
    whole = [p.grad.to_dense() for p in model.parameters()]
    for g0, g1, w in zip(out["grads0"], out["grads1"], whole):
        assert torch.equal(g0, g1)  # every worker holds the same averaged gradient
        assert torch.allclose(g0, w, atol=1e-6)  # ... the gradient of the whole batch


def test_outside_a_process_group_everything_is_the_identity():
    idx = torch.arange(7)
    assert distributed.world() == (0, 1) and distributed.is_main()
    assert torch.equal(distributed.shard(idx), idx) and torch.equal(distributed.gather(idx), idx)
    assert all(distributed.mine(i) for i in range(5))
    assert distributed.mean_over_workers(2.5) == 2.5


# ---------------------------------------------------------------- whole steps, launched
def _construct(url: str, method: str, index: str) -> int:
    recipe = lifecycle.Recipe.new(method, SMALL[method])
    return lifecycle.construct(Store.open(url), index, recipe, "synth").id


def test_one_worker_is_bit_identical_to_a_plain_run(url, monkeypatch):
    # one thread here and in the launched worker: a float sum split over another number of
    # threads rounds differently (earlier tests may leave torch at any thread count)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _one_worker_matches_a_plain_run(url)
    finally:
        torch.set_num_threads(threads)


def _one_worker_matches_a_plain_run(url: str) -> None:
    v0 = _construct(url, "tdm", "one-worker")
    plain = steps.train(url, v0).version_id
    launched = steps.train(url, v0, nproc=1).version_id  # nproc=1 runs in process...
    from grove.flows.distributed_train import run

    one = run(url, v0, "train", 1)  # ... and this through the launcher, a group of one
    assert _artifacts(url, plain) == _artifacts(url, launched), "nproc=1 in process"
    assert _artifacts(url, launched) == _artifacts(url, one), "a group of one through the launcher"


@pytest.mark.parametrize("method", ["tdm", "dr", "recforest", "two_tower"])
def test_two_workers_write_one_version(url, method):
    v0 = _construct(url, method, f"two-{method}")
    store = Store.open(url)
    before = {v.id for v in store.list_versions(f"two-{method}")}
    one = steps.train(url, v0).version_id
    two = steps.train(url, v0, nproc=2).version_id
    written = {v.id for v in store.list_versions(f"two-{method}")} - before
    assert written == {one, two}  # the 2-worker run wrote exactly one version
    info = store.version(two)
    assert info.parent_id == v0 and info.config["workers"] == 2 and "workers" not in store.version(one).config
    assert set(_artifacts(url, two)) == set(_artifacts(url, one))
    assert _artifacts(url, two) != _artifacts(url, one)  # half batches per worker, own negatives
    searcher = lifecycle.searcher(lifecycle.load(store, two), "cpu")
    scores, items = searcher.search(torch.full((3, 5), 1, dtype=torch.long), 10, 20)
    assert items.shape == (3, 10) and torch.isfinite(scores[items >= 0]).all()


@pytest.mark.parametrize("method", ["jtm", "deforec", "dr"])
def test_shared_relearning_gives_the_one_worker_structure(url, method):
    v0 = _construct(url, method, f"relearn-{method}")
    trained = steps.train(url, v0).version_id
    one = steps.relearn(url, trained).version_id
    two = steps.relearn(url, trained, nproc=2).version_id
    store = Store.open(url)
    s1, s2 = store.read_version(one)[1], store.read_version(two)[1]
    assert s1.equals(s2)


def test_cli_nproc(url, capsys):
    v0 = _construct(url, "tdm", "cli-nproc")
    assert main(["--store", url, "train", "cli-nproc", "--version", str(v0), "--local", "--nproc", "2"]) == 0
    assert f"(train of version {v0})" in capsys.readouterr().out
    assert main(["--store", url, "train", "cli-nproc", "--local", "--nproc", "0"]) == 2


def test_torchrun_runs_the_cli_as_workers(url):
    """The multi-machine form, on one machine: torchrun starts the workers, each runs the CLI."""
    v0 = _construct(url, "tdm", "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "grove.flows.cli", "--store", url, "train", "torchrun", "--version", str(v0)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    written = [v for v in Store.open(url).list_versions("torchrun") if v.parent_id == v0]
    assert len(written) == 1 and written[0].config["workers"] == 2  # rank 0 alone wrote, once
    assert done.stdout.count("wrote version") == 1


def test_a_dead_worker_fails_the_run_and_writes_nothing(url):
    recipe = lifecycle.Recipe.new("tdm", SMALL["tdm"] | {"epochs": 200})  # long enough to be killed
    lifecycle.construct(Store.open(url), "killed", recipe, "synth")
    n_before = len(Store.open(url).list_versions("killed"))
    env = dict(os.environ, OMP_NUM_THREADS="1", GROVE_QUIET="0", GROVE_PROGRESS_INTERVAL="0.2")
    cmd = [sys.executable, "-m", "grove.flows.cli", "--store", url, "train", "killed", "--local", "--nproc", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # rank 0's progress: both workers are training
            if "training" in line or "train:" in line:
                break
        workers = _descendants(proc.pid)
        assert len(workers) >= 2, workers
        os.kill(max(workers), signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err[-2000:]
    assert "failed, no version written" in err and "worker" in err
    assert len(Store.open(url).list_versions("killed")) == n_before


def _descendants(pid: int) -> list[int]:
    """The training workers under ``pid``: the launcher's spawned python children (their own
    helper processes -- the spawn resource tracker -- excluded)."""
    out: list[int] = []
    deadline = time.time() + 30
    while time.time() < deadline and len(out) < 2:
        out = []
        for child in _children(pid):
            cmdline = open(f"/proc/{child}/cmdline", "rb").read().replace(b"\0", b" ")
            if b"spawn_main" in cmdline:
                out.append(child)
        time.sleep(0.2)
    return out


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir("/proc"):
        if task.isdigit():
            try:
                stat = open(f"/proc/{task}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(task))
    return found
