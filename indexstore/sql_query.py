"""Read-only SQL over one store, for people (``grove sql``): a sandbox, not just a read-only flag.

A query runs on its own DuckDB connection to the store file opened read-only with
``enable_external_access = false`` (no other file, database, URL or extension can be reached:
``read_csv``, ``glob``, ``ATTACH``, ``COPY ... TO`` fail), extension autoloading off and the
configuration locked (``SET``, ``PRAGMA`` writes refused). Before it runs, the text must be ONE
statement of an allowed type (SELECT -- which covers WITH, FROM, DESCRIBE, SHOW, SUMMARIZE --
or EXPLAIN); anything else is refused naming its type. A statement running longer than the
timeout is interrupted. Each refusal is one `QueryError` line.

On PostgreSQL (`run_pg_query`) functions that reach files, the server or other databases are
refused by name (``pg_read_file``, ``pg_ls_dir``, ``lo_import``, ``dblink``, ``query_to_xml``
...: a superuser role would be allowed them), then the same check runs (DuckDB's parser reads
PostgreSQL's syntax; the rare statement it cannot parse is refused). The statement runs as a
prepared statement (the server refuses a second statement in it) in a ``READ ONLY`` transaction
with ``SET LOCAL statement_timeout``, which is rolled back.
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal

import duckdb
import sqlalchemy as sa

from grove.indexstore.engine import (
    backend_name,
    connect,
    duckdb_memory,
    lock_error,
    make_engine,
    native,
    read_only,
    retry_while_locked,
)
from grove.indexstore.errors import GroveError

ALLOWED = ("SELECT", "EXPLAIN")
DEFAULT_TIMEOUT = 30.0  # seconds
MAX_ROWS = 100_000  # rows returned; the statement sees every row, the caller gets the first


class QueryError(GroveError):
    """A query refused by the sandbox, failed or timed out."""


def _connect(path: str) -> duckdb.DuckDBPyConnection:
    """The sandboxed read-only connection (retried while a writer holds the file)."""
    config: dict[str, str | bool | int | float | list[str]] = {
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "memory_limit": duckdb_memory(),  # the store's other connections' cap (same configuration)
    }

    def attempt() -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(path, read_only=True, config=config)
        except duckdb.Error as exc:
            locked = lock_error(str(exc))
            if locked is not None:
                raise locked from exc
            raise QueryError(f"cannot open store {path}: {str(exc).splitlines()[0]}") from None

    con = retry_while_locked(attempt, path)
    con.execute("SET lock_configuration = true")
    return con


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """The one allowed statement of ``sql``; `QueryError` otherwise."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"query does not parse: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise QueryError(f"one statement per query, got {len(statements)}")
    kind = str(statements[0].type).rsplit(".", 1)[-1]
    if kind not in ALLOWED:
        raise QueryError(
            f"{kind} statements are not allowed: grove sql runs one read-only "
            f"SELECT/WITH/DESCRIBE/SHOW/EXPLAIN over this store"
        )
    return statements[0].query


def query_store(url: str, sql: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[list[str], list[tuple]]:
    """One sandboxed statement over the store at ``url`` (a DuckDB file: `run_query`; another
    database: a read-only connection and the same one-statement, allowed-types check)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "duckdb" and parsed.database and parsed.database != ":memory:":
        return run_query(parsed.database, sql, timeout)
    if backend_name(url) == "postgresql":
        return run_pg_query(url, sql, timeout)
    with read_only(url) as conn:
        try:
            result = conn.exec_driver_sql(check_statement(duckdb.connect(), sql))
            if not result.returns_rows:
                return [], []
            return list(result.keys()), [tuple(r) for r in result.all()]
        except sa.exc.DBAPIError as exc:
            first = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
            raise QueryError(f"query failed: {first}") from None


def run_query(
    path: str, sql: str, timeout: float = DEFAULT_TIMEOUT, max_rows: int = MAX_ROWS
) -> tuple[list[str], list[tuple]]:
    """Run one sandboxed statement on the DuckDB store file at ``path``: (column names, rows)."""
    con = _connect(path)
    timer = threading.Timer(timeout, con.interrupt)
    try:
        statement = check_statement(con, sql)
        timer.start()
        try:
            cur = con.execute(statement)
            rows = cur.fetchmany(max_rows)
        except duckdb.InterruptException:
            raise QueryError(f"query stopped after the {timeout:g} s timeout") from None
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {str(exc).splitlines()[0]}") from None
        columns = [d[0] for d in cur.description or []]
        return columns, [tuple(r) for r in rows]
    finally:
        timer.cancel()
        con.close()


# ----------------------------------------------------------------------------- PostgreSQL
# functions that read or write server files, large objects, other databases, the server's
# state or settings, or run SQL given as text (which would hide any of these from this check)
_PG_REFUSED = re.compile(
    r"\b(pg_read_file|pg_read_binary_file|pg_ls_\w+|pg_stat_file|pg_file_\w+|pg_logdir_ls|"
    r"pg_current_logfile|lo_\w+|dblink\w*|query_to_xml\w*|cursor_to_xml\w*|ts_stat|ts_rewrite|"
    r"set_config|pg_terminate_backend|pg_cancel_backend|pg_reload_conf|pg_rotate_logfile\w*|"
    r"pg_promote|pg_switch_wal|pg_create_restore_point|pg_backup_\w+|pg_notify|pg_\w*advisory\w*|"
    r"pg_import_system_collations|pg_\w*replication\w*|pg_log_backend_memory_contexts)\b",
    re.IGNORECASE,
)
_PG_UNICODE_ESCAPE = re.compile(r"\bU&[\"']", re.IGNORECASE)  # U&"pg\005fread_file": a hidden name


def check_pg_statement(sql: str) -> str:
    """The one allowed statement of ``sql`` for PostgreSQL: no function that reaches beyond this
    store's tables (named anywhere in the text), then `check_statement`'s rules; `QueryError`
    otherwise."""
    if _PG_UNICODE_ESCAPE.search(sql):
        raise QueryError("U& escaped names and strings are not allowed in grove sql")
    refused = _PG_REFUSED.search(sql)
    if refused:
        raise QueryError(
            f"function {refused.group(1).lower()} is not allowed: grove sql reads this store's tables only "
            f"(no file, server or other-database access)"
        )
    statement = check_statement(duckdb.connect(), sql)
    return statement


def _plain(value):
    """PostgreSQL's numeric as DuckDB's types would give it: int when integral, else float."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def run_pg_query(
    url: str, sql: str, timeout: float = DEFAULT_TIMEOUT, max_rows: int = MAX_ROWS
) -> tuple[list[str], list[tuple]]:
    """Run one sandboxed statement on the PostgreSQL store at ``url``: (column names, rows)."""
    import psycopg

    statement = check_pg_statement(sql)
    engine = make_engine(url, read_only=True)  # default_transaction_read_only, and the SET below
    try:
        conn = connect(engine)
    except GroveError as exc:
        raise QueryError(str(exc)) from None
    pg = native(conn)  # psycopg; its transaction begins at the first statement
    try:
        cur = pg.cursor()
        cur.execute("SET TRANSACTION READ ONLY")
        cur.execute(f"SET LOCAL statement_timeout = {max(1, round(timeout * 1000))}")
        try:
            cur.execute(statement, prepare=True)  # extended protocol: one statement only
            rows = cur.fetchmany(max_rows) if cur.description else []
        except psycopg.errors.QueryCanceled:
            raise QueryError(f"query stopped after the {timeout:g} s timeout") from None
        except psycopg.Error as exc:
            raise QueryError(f"query failed: {str(exc).strip().splitlines()[0]}") from None
        columns = [d.name for d in cur.description or []]
        return columns, [tuple(_plain(v) for v in r) for r in rows]
    finally:
        pg.rollback()  # nothing to keep: read only
        conn.close()
        engine.dispose()
