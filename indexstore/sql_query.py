"""Read-only SQL over one store, for people (``grove sql``): a sandbox, not just a read-only flag.

A query runs on its own DuckDB connection to the store file opened read-only with
``enable_external_access = false`` (no other file, database, URL or extension can be reached:
``read_csv``, ``glob``, ``ATTACH``, ``COPY ... TO`` fail), extension autoloading off and the
configuration locked (``SET``, ``PRAGMA`` writes refused). Before it runs, the text must be ONE
statement of an allowed type (SELECT -- which covers WITH, FROM, DESCRIBE, SHOW, SUMMARIZE --
or EXPLAIN); anything else is refused naming its type. A statement running longer than the
timeout is interrupted. Each refusal is one `QueryError` line.
"""

from __future__ import annotations

import threading

import duckdb
import sqlalchemy as sa

from indexstore.engine import lock_error, read_only, retry_while_locked
from indexstore.errors import GroveError

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
