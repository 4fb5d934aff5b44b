"""Issue 27.5: `grove store copy SRC DST` copies every dataset, version, alias event, metric and
artifact (verified by checksums), so a team can start with the embedded file and move to the
server, or take a snapshot back to a laptop.

Invariants: a round trip (DuckDB -> DuckDB, DuckDB -> PostgreSQL -> DuckDB) gives identical
`versions list`, `alias log`, `versions show` (config, artifacts, lineage, metrics) and table
rows; ids are kept and the next write gets a new one; tables travel in bounded chunks; a
destination that holds rows is refused and left as it was; a failed copy leaves the
destination as it was; a bad source is one line, exit 2.
"""

from __future__ import annotations

import os

import duckdb
import numpy as np
import pytest
import sqlalchemy as sa

from grove.flows.cli import main
from grove.indexstore import store_copy
from grove.indexstore.engine import make_engine
from grove.indexstore.errors import IntegrityError
from grove.indexstore.store import Store
from grove.indexstore.structures import PathCodes

BIG_TABLES = ("interactions", "user_ids", "item_ids", "items", "item_categories", "split_users", "nodes", "item_paths")


@pytest.fixture(scope="module")
def src(make_synth_store) -> str:
    """A DuckDB store with a dataset, a split, a built and a trained TDM version (weights), a
    Deep Retrieval-shaped codes version, alias moves with a rollback, and metrics."""
    url = make_synth_store("copysrc", n_items=200, n_users=300, seed=7)
    build = ["build", "--dataset", "synth", "h", "--method", "tdm", "--local"]
    sets = ["--set", "dim=8", "--set", "hidden=[16,8]", "--set", "max_samples=200", "--set", "epochs=1"]
    assert main(["--store", url, *build, *sets]) == 0
    assert main(["--store", url, "train", "h", "--local"]) == 0
    store = Store.open(url)
    built, trained = (v.id for v in store.list_versions("h"))
    rng = np.random.default_rng(0)
    first = rng.integers(0, 4, size=(200, 1, 3))
    second = first.copy()
    second[..., 2] = (second[..., 2] + 1) % 4  # an item's two paths differ
    codes = PathCodes(np.concatenate([first, second], axis=1), rng.random((200, 2)), 4)
    dr = store.write_version(
        "d", "dr", codes, {"method": "dr"}, "synth", "default", artifacts={"net.pt": bytes(range(256)) * 999}
    )
    for index, alias, version in (("h", "production", built), ("h", "production", trained), ("d", "staging", dr.id)):
        assert main(["--store", url, "alias", "set", index, alias, str(version), "--reason", "r"]) == 0
    assert main(["--store", url, "rollback", "h", "--reason", "worse"]) == 0
    metrics = [{"role": "valid", "name": "recall", "k": 10, "value": 0.25, "beam": 20, "filtered": True, "note": None}]
    store.record_metrics(trained, metrics)
    store.record_metrics(dr.id, [dict(metrics[0], value=0.5, beam=None)])
    return url


def _grove(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _views(capsys, url: str) -> list[str]:
    """What people see of a store: versions list, alias logs, every version shown."""
    outs = [_grove(capsys, "--store", url, "versions", "list")[1]]
    outs += [_grove(capsys, "--store", url, "alias", "log", index)[1] for index in ("h", "d")]
    for v in Store.open(url).list_versions():
        code, out, err = _grove(capsys, "--store", url, "versions", "show", str(v.id))
        assert code == 0, err
        outs.append(out)
    return outs


def _table_rows(url: str) -> dict[str, list]:
    """Every row of the big tables of a DuckDB store, in stored order."""
    path = sa.engine.make_url(url).database
    con = duckdb.connect(path, read_only=True)
    try:
        return {t: con.execute(f"SELECT * FROM {t}").fetchall() for t in BIG_TABLES}
    finally:
        con.close()


def _artifacts(url: str) -> dict:
    store = Store.open(url)
    return {v.id: store.read_version(v.id)[2] for v in store.list_versions()}


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as con:
            names = sa.inspect(con).get_table_names()
            return {t: con.exec_driver_sql(f'SELECT count(*) FROM "{t}"').scalar() for t in sorted(names)}
    finally:
        engine.dispose()


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ round trips
def test_copy_round_trips_a_duckdb_store(src, tmp_path, capsys):
    dst = f"duckdb:///{tmp_path / 'copy.duckdb'}"
    code, out, err = _grove(capsys, "store", "copy", src, dst)
    assert code == 0, err
    assert "verified by SHA-256" in out and "2 artifacts" in out
    assert _views(capsys, dst) == _views(capsys, src)
    assert _table_rows(dst) == _table_rows(src)
    assert _artifacts(dst) == _artifacts(src)
    # the sequences moved past the copied ids: the next write and alias move get new ids
    copy = Store.open(dst)
    top = max(v.id for v in copy.list_versions())
    info = copy.write_version("h", "tdm", copy.read_structure(top - 1), {"method": "tdm"}, "synth", "default")
    assert info.id == top + 1
    event = copy.set_alias("h", "production", info.id)
    assert event.id == max(e.id for e in Store.open(src).alias_history("h") + Store.open(src).alias_history("d")) + 1


def test_copy_round_trips_through_postgresql(src, tmp_path, capsys, pg_server):
    server = pg_server.database("copy")
    back = f"duckdb:///{tmp_path / 'back.duckdb'}"
    try:
        assert _grove(capsys, "store", "copy", src, server)[0] == 0
        assert _views(capsys, server) == _views(capsys, src)
        theirs, ours = Store.open(server).load_interactions("synth"), Store.open(src).load_interactions("synth")
        assert all(np.array_equal(getattr(theirs, f), getattr(ours, f)) for f in ("user", "item", "ts"))
        assert _grove(capsys, "store", "copy", server, back)[0] == 0
        assert _views(capsys, back) == _views(capsys, src)
        assert _table_rows(back) == _table_rows(src)
        assert _artifacts(back) == _artifacts(src)
        code, out, err = _grove(capsys, "--store", server, "sql", "SELECT max(id) AS top FROM versions")
        assert code == 0 and str(max(v.id for v in Store.open(src).list_versions())) in out, err
    finally:
        pg_server.drop(server)


def test_copy_between_two_postgresql_databases(src, pg_server, capsys):
    """Server to server (a team's snapshot into a second database): the same views, interactions
    in the same order, the same artifacts."""
    first, second = pg_server.database("copyone"), pg_server.database("copytwo")
    try:
        assert _grove(capsys, "store", "copy", src, first)[0] == 0
        code, out, err = _grove(capsys, "store", "copy", first, second)
        assert code == 0 and "verified by SHA-256" in out, err
        assert _views(capsys, second) == _views(capsys, src)
        theirs, ours = Store.open(second).load_interactions("synth"), Store.open(src).load_interactions("synth")
        assert all(np.array_equal(getattr(theirs, f), getattr(ours, f)) for f in ("user", "item", "ts"))
        assert _artifacts(second) == _artifacts(src)
    finally:
        pg_server.drop(first)
        pg_server.drop(second)


def test_tables_travel_in_bounded_chunks(src, tmp_path, monkeypatch):
    sizes: dict[str, list[int]] = {}
    append = store_copy._append

    def spy(conn, table, columns, data):
        sizes.setdefault(table, []).append(data.num_rows)
        append(conn, table, columns, data)

    monkeypatch.setattr(store_copy, "_append", spy)
    seen = []
    report = store_copy.copy_store(
        src, f"duckdb:///{tmp_path / 'c.duckdb'}", progress=lambda t, d, n: seen.append((t, d, n)), chunk_rows=1000
    )
    assert max(sizes["interactions"]) <= 1000 and len(sizes["interactions"]) >= report.rows["interactions"] // 1000
    assert max(sizes["artifact_chunks"]) <= store_copy.BLOB_ROWS["artifact_chunks"]  # 64 KiB rows, 16 MiB at a time
    assert ("interactions", report.rows["interactions"], report.rows["interactions"]) in seen
    assert report.artifacts == 2 and report.rows["versions"] == 3


# -------------------------------------------------------------------------------- refusals
def test_a_destination_that_holds_rows_is_refused_unchanged(src, tmp_path, capsys):
    dst = f"duckdb:///{tmp_path / 'full.duckdb'}"
    assert _grove(capsys, "store", "copy", src, dst)[0] == 0
    Store.open(dst).set_alias("h", "canary", 1)
    before = (_counts(dst), _views(capsys, dst))
    code, _, err = _grove(capsys, "store", "copy", src, dst)
    assert code == 2 and "is not empty (interactions" in _one_line_error(err)
    assert (_counts(dst), _views(capsys, dst)) == before


@pytest.mark.parametrize("dst_kind", ["new file", "empty store", "postgres"])
def test_a_failed_copy_leaves_the_destination_as_it_was(src, tmp_path, monkeypatch, capsys, dst_kind, request):
    if dst_kind == "postgres":
        server = request.getfixturevalue("pg_server")
        dst = server.database("failed")
        request.addfinalizer(lambda: server.drop(dst))
    else:
        dst = f"duckdb:///{tmp_path / 'dst.duckdb'}"
        if dst_kind == "empty store":
            Store.init(dst)
    before = None if dst_kind == "new file" else _counts(dst)

    def broken(src_conn, dst_conn, rows):
        raise IntegrityError("artifact 'weights.pt' of version 2 does not match its sha256 after the copy")

    monkeypatch.setattr(store_copy, "_verify", broken)
    code, _, err = _grove(capsys, "store", "copy", src, dst)
    assert code == 2 and "does not match its sha256" in _one_line_error(err)
    if dst_kind == "new file":
        assert not os.path.exists(tmp_path / "dst.duckdb") and not os.path.exists(tmp_path / "dst.duckdb.wal")
    else:
        assert _counts(dst) == before  # postgres: no tables at all (the schema rolled back too)


@pytest.mark.parametrize(
    "source, says",
    [
        ("sqlite:///x.db", "unsupported store URL scheme 'sqlite'"),
        ("duckdb:///{tmp}/missing.duckdb", "missing.duckdb does not exist"),
        ("not a url", "invalid store URL"),
    ],
)
def test_a_bad_source_is_one_line(tmp_path, capsys, source, says):
    dst = tmp_path / "dst.duckdb"
    code, _, err = _grove(capsys, "store", "copy", source.format(tmp=tmp_path), f"duckdb:///{dst}")
    assert code == 2 and says in _one_line_error(err)
    assert not dst.exists()


def test_a_store_is_not_copied_onto_itself(src, capsys):
    before = _counts(src)
    code, _, err = _grove(capsys, "store", "copy", src, src.replace("/grove.duckdb", "/./grove.duckdb"))
    assert code == 2 and "the same store" in _one_line_error(err)
    assert _counts(src) == before
