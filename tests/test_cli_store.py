"""The store commands of `grove`, called through `grove.flows.cli.main`."""

from __future__ import annotations

import numpy as np
import pytest

from grove.flows.cli import main
from grove.indexstore.store import Store
from grove.indexstore.structures import PathCodes, Tree


def run(capsys, store_url, *argv) -> tuple[int, str, str]:
    code = main(["--store", store_url, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_commands_refuse_an_uninitialised_store(capsys, store_url):
    for argv in (["data", "list"], ["versions", "list"], ["sql", "SELECT 1"]):
        code, _, err = run(capsys, store_url, *argv)
        assert code == 2 and err.startswith("error: ") and "grove init" in err and err.count("\n") == 1


def test_data_and_versions_commands(capsys, store_url, tmp_path):
    assert run(capsys, store_url, "init")[0] == 0
    code, out, _ = run(
        capsys, store_url, "data", "synth", "--name", "syn", "--items", "120", "--users", "150", "--seed", "1"
    )
    assert code == 0 and "dataset 'syn'" in out
    code, out, _ = run(capsys, store_url, "data", "split", "syn", "--seed", "2")
    assert code == 0 and "train" in out
    code, out, _ = run(capsys, store_url, "data", "list")
    assert code == 0 and "syn" in out and "default" in out
    assert run(capsys, store_url, "data", "show", "syn")[0] == 0
    csv = tmp_path / "r.csv"
    csv.write_text("user,item,rating,time\n1,10,5,100\n1,11,4,101\n2,10,3,102\n")
    code, out, err = run(capsys, store_url, "data", "import", str(csv), "--name", "csv1")
    assert code == 0, err
    assert "3 interactions" in out

    store = Store.open(store_url)
    t1 = Tree.from_paths(np.array([[0, 0], [0, 1], [1, 0], [1, 1]]), np.array([0, 1, 2, 3]), 4, 2)
    t2 = Tree.from_paths(np.array([[0, 0], [0, 1], [1, 0], [1, 1]]), np.array([0, 2, 1, 3]), 4, 2)
    a = store.write_version("idx", "tdm", t1, {"k": 2}).id
    b = store.write_version("idx", "tdm", t2, {"k": 2}, parent_id=a).id
    code, out, _ = run(capsys, store_url, "versions", "list", "idx")
    assert code == 0 and "idx" in out and str(b) in out
    code, out, _ = run(capsys, store_url, "versions", "show", str(b))
    assert code == 0 and f"v{b}" in out and f"v{a}" in out and "level" in out
    code, out, _ = run(capsys, store_url, "versions", "diff", str(a), str(b))
    assert code == 0 and "tree 0" in out
    assert run(capsys, store_url, "alias", "set", "idx", "production", str(a), "--reason", "ok")[0] == 0
    assert run(capsys, store_url, "alias", "set", "idx", "production", str(b))[0] == 0
    code, out, _ = run(capsys, store_url, "rollback", "idx", "--reason", "bad")
    assert code == 0 and f"{b} -> {a}" in out
    code, out, _ = run(capsys, store_url, "alias", "log", "idx")
    assert code == 0 and "rollback" in out
    code, out, _ = run(
        capsys, store_url, "sql", f"SELECT level, n_nodes FROM v_level_stats WHERE version_id = {a} ORDER BY level"
    )
    assert code == 0 and "(3 rows)" in out
    store.write_version("dr", "dr", PathCodes(np.array([[[0, 1]], [[1, 1]]]), np.zeros((2, 1)), 2), {})


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def shared_store(new_store_url, request) -> str:
    """One initialised store per backend for the bad-input cases (each must leave it unchanged)."""
    url = new_store_url(request.param, "cli")
    Store.init(url)
    Store.open(url).write_version("idx", "tdm", Tree.from_paths(np.array([[0], [1]]), np.array([0, 1]), 2, 2), {})
    return url


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "show", "nope"], "unknown dataset"),
        (["data", "split", "nope"], "unknown dataset"),
        (["data", "import", "/no/such/file.csv", "--name", "x"], "no such file"),
        (["versions", "show", "99"], "unknown version"),
        (["versions", "list", "nope"], "unknown index"),
        (["alias", "set", "nope", "production", "1"], "unknown index"),
        (["rollback", "nope"], "unknown index"),
        (["sql", "DELETE FROM datasets"], "read-only"),
        (["sql", "SELECT * FROM no_such_table"], "query failed"),
    ],
)
def test_bad_input_exits_2_and_store_unchanged(capsys, shared_store, argv, message):
    store_url = shared_store
    store = Store.open(store_url)
    before = store.query(
        "SELECT (SELECT count(*) FROM versions), (SELECT count(*) FROM alias_events), (SELECT count(*) FROM datasets)"
    )
    code, _, err = run(capsys, store_url, *argv)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert (
        store.query(
            "SELECT (SELECT count(*) FROM versions), (SELECT count(*) FROM alias_events), "
            "(SELECT count(*) FROM datasets)"
        )
        == before
    )


def test_rollback_of_version_of_other_index(capsys, store_url):
    run(capsys, store_url, "init")
    store = Store.open(store_url)
    tree = Tree.from_paths(np.array([[0], [1]]), np.array([0, 1]), 2, 2)
    a = store.write_version("a", "tdm", tree, {}).id
    b = store.write_version("b", "tdm", tree, {}).id
    assert run(capsys, store_url, "alias", "set", "a", "production", str(a))[0] == 0
    code, _, err = run(capsys, store_url, "rollback", "a", "--to", str(b))
    assert code == 2 and "belongs to index" in err
