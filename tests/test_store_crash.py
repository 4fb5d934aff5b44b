"""A process killed with SIGKILL in the middle of writing a large version leaves no trace of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from grove.indexstore.store import Store
from grove.indexstore.structures import Tree

WRITER = textwrap.dedent("""
    import sys, numpy as np
    from grove.indexstore.store import Store
    from grove.indexstore.structures import Tree
    depth = 20  # 2^20 leaves -> ~2.1M nodes
    digits = (np.arange(2 ** depth)[:, None] >> np.arange(depth - 1, -1, -1)) & 1
    tree = Tree.from_paths(digits, np.arange(2 ** depth), 2 ** depth, 2)
    store = Store.open(sys.argv[1])
    print("writing", flush=True)
    for i in range(1000):  # keep writing until killed: the kill lands inside some write
        v = store.write_version("big", "tdm", tree, {"size": "large", "i": i})
        print("wrote", v.id, flush=True)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_during_write_leaves_no_trace(store_url):
    Store.init(store_url)
    store = Store.open(store_url)
    small = Tree.from_paths(np.array([[0, 0], [0, 1], [1, 0]]), np.array([2, 0, 1]), 3, 2)
    before = store.write_version("small", "tdm", small, {"n": 1}, artifacts={"w": b"123"})
    env = dict(os.environ, GROVE_QUIET="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, store_url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(2.5)  # several writes in: the kill lands inside one of them
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and "wrote 1000" not in rest, "the writer finished before the kill"
    reported = [int(line.split()[1]) for line in rest.splitlines() if line.startswith("wrote")]

    store = Store.open(store_url)  # opens (WAL replayed), schema intact
    big = [v for v in store.list_versions() if v.index_name == "big"]
    # every reported write is there; at most one more (committed, killed before its print)
    assert [v.id for v in big][: len(reported)] == reported and len(big) - len(reported) in (0, 1)
    info, tree, arts = store.read_version(before.id)
    assert tree.equals(small) and arts == {"w": b"123"} and info.config == {"n": 1}
    n_big = 2**21 - 1  # nodes of one complete binary tree of depth 20
    _, rows = store.query("SELECT (SELECT count(*) FROM nodes), (SELECT count(*) FROM item_paths)")
    # nothing of the interrupted write: only whole versions' rows
    assert rows[0] == (small.n_nodes + len(big) * n_big, small.leaves.size + len(big) * 2**20)
    again = store.write_version("small", "tdm", small, {"n": 2}, parent_id=before.id)
    assert store.read_structure(again.id).equals(small)
