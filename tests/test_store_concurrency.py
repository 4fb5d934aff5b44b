"""Issue 27 (3): two cycles started by two processes at the same time on one PostgreSQL store
both land, each with a consistent lineage, and two first writers of one index do not collide."""

from __future__ import annotations

import os
import subprocess
import sys

from grove.indexstore.store import Store

CYCLE = ["--dataset", "synth", "--method", "tdm", "--rounds", "2", "--k", "10", "--users", "20", "--local"]
BUDGET = ["--set", "max_samples=200", "--set", "device=cpu"]


def _start(url: str, index: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", GROVE_QUIET="1")
    cmd = [sys.executable, "-m", "grove.flows.cli", "--store", url, "cycle", index, *CYCLE, *BUDGET]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_cycles_from_two_processes_both_land_with_their_lineage(make_synth_store):
    url = make_synth_store("two_cycles", 300, 400, 5, backend="postgres")
    procs = [_start(url, "team-a"), _start(url, "team-b"), _start(url, "team-c")]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    store = Store.open(url)
    ids = []
    for index in ("team-a", "team-b", "team-c"):
        versions = store.list_versions(index)
        assert [v.note for v in versions][:2] == ["construct", "train round 0"]
        assert versions[0].parent_id is None
        assert all(b.parent_id == a.id for a, b in zip(versions, versions[1:]))  # each its own chain
        ids += [v.id for v in versions]
    assert len(set(ids)) == len(ids)  # one sequence, no id handed out twice


def test_two_first_writers_of_one_index_both_land(make_synth_store):
    """Both processes create the same new index: one creates it, both versions are written."""
    url = make_synth_store("one_index", 300, 400, 5, backend="postgres")
    procs = [_start(url, "shared"), _start(url, "shared")]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    versions = Store.open(url).list_versions("shared")
    constructs = [v for v in versions if v.parent_id is None]
    assert len(constructs) == 2
    by_id = {v.id: v for v in versions}
    for v in versions:  # every chain leads back to one of the two constructs
        while v.parent_id is not None:
            v = by_id[v.parent_id]
        assert v in constructs
