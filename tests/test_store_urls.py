"""Issue 27: a store URL grove cannot use, a server it cannot reach, a password it cannot use or
a schema at another revision is one line naming the problem, exit status 2 -- never a
traceback, never the password."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from grove import migrations
from grove.flows.cli import main
from grove.indexstore.engine import make_engine, parse_url


def _grove(capsys, url: str, *args: str) -> tuple[int, str]:
    code = main(["--store", url, *args])
    err = capsys.readouterr().err.strip()
    return code, err


def _one_line_error(code: int, err: str) -> str:
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert "hunter2" not in err
    return err


@pytest.mark.parametrize("url", ["sqlite:///x.db", "mysql://bob:hunter2@db.example/grove", "oracle://h/x"])
def test_unsupported_scheme_is_one_line(capsys, tmp_path, monkeypatch, url):
    monkeypatch.chdir(tmp_path)
    err = _one_line_error(*_grove(capsys, url, "data", "list"))
    assert "unsupported store URL scheme" in err and "postgresql+psycopg://" in err
    assert not list(tmp_path.iterdir())  # nothing was created


def test_postgresql_urls_mean_psycopg3():
    for url in ("postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg://u@h/db"):
        assert parse_url(url).drivername == "postgresql+psycopg"


def test_unreachable_server_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("GROVE_CONNECT_TIMEOUT", "3")
    err = _one_line_error(*_grove(capsys, "postgresql://bob:hunter2@127.0.0.1:9/grove", "data", "list"))
    assert "cannot open store database 'grove' on 127.0.0.1:9" in err and "refused" in err


def test_wrong_password_is_one_line(capsys, pg_server):
    """A role with a password on a server that checks it (scram), and a wrong password."""
    url = pg_server.database("pw")
    db = sa.engine.make_url(url).database
    with pg_server.admin() as con:
        con.execute("CREATE ROLE grove_pw LOGIN PASSWORD 'right'")
        hba = con.execute("SHOW hba_file").fetchone()[0]
    with open(hba, encoding="utf-8") as fh:
        rules = fh.read()
    with open(hba, "w", encoding="utf-8") as fh:
        fh.write(f"local {db} grove_pw scram-sha-256\n" + rules)
    try:
        with pg_server.admin() as con:
            con.execute("SELECT pg_reload_conf()")
        bad = url.replace("postgres@", "grove_pw:hunter2@")
        err = _one_line_error(*_grove(capsys, bad, "data", "list"))
        assert f"cannot open store database '{db}'" in err and "password authentication failed" in err
    finally:
        with open(hba, "w", encoding="utf-8") as fh:
            fh.write(rules)
        with pg_server.admin() as con:
            con.execute("SELECT pg_reload_conf()")


def test_store_at_another_revision_is_one_line(capsys, store_url):
    migrations.upgrade(store_url, "0001")
    err = _one_line_error(*_grove(capsys, store_url, "data", "list"))
    assert "at 0001, code needs" in err and "grove init" in err
    engine = make_engine(store_url)
    with engine.begin() as con:  # a revision this code does not know (a newer grove's)
        con.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    err = _one_line_error(*_grove(capsys, store_url, "data", "list"))
    assert "at 9999" in err


def test_duckdb_store_connections_hold_the_memory_cap(duckdb_url, capsys, monkeypatch):
    """DuckDB's buffer pool is capped (`GROVE_DUCKDB_MEMORY`, default 2GB) so a step's memory
    does not grow with the store; a malformed cap is one line, exit 2."""
    from grove.indexstore.engine import transaction
    from grove.indexstore.store import Store

    Store.init(duckdb_url)
    monkeypatch.setenv("GROVE_DUCKDB_MEMORY", "512MB")
    with transaction(make_engine(duckdb_url)) as con:
        assert con.exec_driver_sql("SELECT current_setting('memory_limit')").scalar() == "488.2 MiB"
    monkeypatch.setenv("GROVE_DUCKDB_MEMORY", "lots")
    err = _one_line_error(*_grove(capsys, duckdb_url, "data", "list"))
    assert "GROVE_DUCKDB_MEMORY='lots'" in err
