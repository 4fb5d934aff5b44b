"""Issue 27.4 and 27.3: `grove sql` on a PostgreSQL store runs in a read-only transaction with a
statement timeout and the same refusals as on DuckDB (one statement; no writes, no COPY, no file
access), and a long `grove sql` query does not block writers.

The test server runs as a superuser, to whom PostgreSQL itself would allow reading server files
(``pg_read_file``), large-object import/export and the like: grove refuses them by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa

from grove.flows.cli import main
from grove.indexstore.store import Store
from grove.indexstore.store_copy import copy_store
from grove.indexstore.structures import Tree


@pytest.fixture(scope="module")
def stores(make_synth_store, new_store_url) -> tuple[str, str]:
    """(DuckDB store, its copy on PostgreSQL): a dataset, a split, two versions, an alias."""
    duck = make_synth_store("sqlduck", n_items=120, n_users=150, seed=3)
    store = Store.open(duck)
    paths = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    a = store.write_version("idx", "tdm", Tree.from_paths(paths, np.arange(4), 4, 2), {"k": 2}, "synth", "default")
    store.write_version("idx", "tdm", Tree.from_paths(paths, np.array([1, 0, 2, 3]), 4, 2), {"k": 2}, parent_id=a.id)
    store.set_alias("idx", "production", a.id)
    pg = new_store_url("postgres", "sqlpg")
    copy_store(duck, pg)
    return duck, pg


def _snapshot(url: str) -> tuple:
    s = Store.open(url)
    return tuple(v.id for v in s.list_versions()), tuple((e.id, e.to_version) for e in s.alias_history("idx"))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize(
    "query, says",
    [
        ("SELECT 1; SELECT 2", "one statement per query, got 2"),
        ("SELECT 1; DELETE FROM versions", "one statement per query, got 2"),
        ("DELETE FROM versions", "DELETE statements are not allowed"),
        ("UPDATE aliases SET version_id = 2", "UPDATE statements are not allowed"),
        ("CREATE TABLE x (a int)", "CREATE statements are not allowed"),
        ("SET statement_timeout = 0", "SET statements are not allowed"),
        ("COPY (SELECT 1) TO STDOUT", "COPY statements are not allowed"),
        ("COPY versions FROM '/etc/passwd'", "COPY statements are not allowed"),
        ("WITH d AS (DELETE FROM versions RETURNING *) SELECT * FROM d", "in a read-only transaction"),
        ("SELECT nextval('version_id_seq')", "in a read-only transaction"),
        ("SELECT pg_read_file('/etc/passwd')", "function pg_read_file is not allowed"),
        ("SELECT pg_catalog.PG_READ_BINARY_FILE('/etc/passwd')", "function pg_read_binary_file is not allowed"),
        ("SELECT * FROM pg_ls_dir('.')", "function pg_ls_dir is not allowed"),
        ("SELECT \"pg_stat_file\"('postgresql.conf')", "function pg_stat_file is not allowed"),
        ("SELECT lo_import('/etc/passwd')", "function lo_import is not allowed"),
        ("SELECT lo_export(1, '{tmp}/out')", "function lo_export is not allowed"),
        ("SELECT * FROM dblink('dbname=postgres', 'SELECT 1') AS t(a int)", "function dblink is not allowed"),
        ("SELECT query_to_xml('SELECT 1', true, true, '')", "function query_to_xml is not allowed"),
        ("SELECT set_config('default_transaction_read_only', 'off', false)", "function set_config is not allowed"),
        ("SELECT pg_terminate_backend(pg_backend_pid())", "function pg_terminate_backend is not allowed"),
        ("SELECT U&\"pg_read\\005ffile\"('/etc/passwd')", "U& escaped names and strings are not allowed"),
        ("SELECT * FROM nowhere", 'relation "nowhere" does not exist'),
    ],
)
def test_sql_on_postgresql_reaches_this_store_only(stores, capsys, tmp_path, query, says):
    _, pg = stores
    before = _snapshot(pg)
    assert main(["--store", pg, "sql", query.format(tmp=tmp_path)]) == 2
    assert says in _one_line_error(capsys)
    assert _snapshot(pg) == before and not os.path.exists(tmp_path / "out")


def test_sql_on_postgresql_reads_like_duckdb(stores, capsys):
    duck, pg = stores
    for sql in (
        "SELECT id, index_name, parent_id, note FROM versions ORDER BY id",
        "SELECT count(*) AS n, sum(item_id) AS s, max(ts) AS t FROM interactions",
        "SELECT index_name, alias, version_id FROM aliases",
        "SELECT version_id, level, n_nodes, n_leaves FROM v_level_stats ORDER BY version_id, level",
    ):
        assert Store.open(pg).query(sql) == Store.open(duck).query(sql), sql
    assert main(["--store", pg, "sql", "EXPLAIN SELECT * FROM versions"]) == 0
    assert main(["--store", pg, "sql", "SELECT id FROM v_versions ORDER BY id"]) == 0
    assert "(2 rows)" in capsys.readouterr().out


@pytest.mark.parametrize("query", ["SELECT pg_sleep(30)", "SELECT count(*) FROM generate_series(1, 100000000000) a"])
def test_sql_on_postgresql_stops_a_long_query(stores, capsys, query):
    _, pg = stores
    start = time.monotonic()
    assert main(["--store", pg, "sql", query, "--timeout", "1"]) == 2
    assert "stopped after the 1 s timeout" in _one_line_error(capsys)
    assert time.monotonic() - start < 15


def test_a_long_sql_query_does_not_block_writers(stores):
    """Issue 27.3: while `grove sql` runs a long query in another process, this process moves an
    alias, rolls it back and writes a version at once (MVCC: the reader holds no lock writers
    wait for), and the reader still finishes."""
    _, pg = stores
    reader = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "grove.flows.cli",
            "--store",
            pg,
            "sql",
            "SELECT pg_sleep(6) AS slept",
            "--timeout",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_query(pg, "pg_sleep(6)")
        store = Store.open(pg)
        versions = store.list_versions("idx")
        start = time.monotonic()
        store.set_alias("idx", "production", versions[-1].id, reason="while a reader runs")
        store.rollback("idx", reason="and back")
        info = store.write_version("idx", "tdm", store.read_structure(versions[-1].id), {"k": 2}, "synth", "default")
        took = time.monotonic() - start
        assert reader.poll() is None, "the reader ended before the writes: the test proves nothing"
        assert took < 3, f"the writes waited {took:.1f} s"
    finally:
        out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0 and "slept" in out and "(1 row)" in out, err
    assert store.version(info.id).parent_id is None and store.alias_target("idx", "production") == versions[0].id


def _wait_for_query(url: str, text: str, timeout: float = 60) -> None:
    """Until a session of the server runs a query containing ``text``."""
    dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as con:
        while time.monotonic() < deadline:
            row = con.execute(
                "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
                (f"%{text}%",),
            ).fetchone()
            if row:
                return
            time.sleep(0.1)
    raise AssertionError(f"no session ran {text!r} within {timeout} s")
