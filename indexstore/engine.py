"""Opening a store: SQLAlchemy engine, schema check against the Alembic head, transactions.

The store is reached through a SQLAlchemy URL: ``duckdb:///path`` (the default, an embedded
file) or ``postgresql+psycopg://user@host/db`` (a team's server; ``postgresql://`` means the same,
psycopg 3 is the one driver). Any other scheme is refused with one line. DuckDB admits
one read-write process per file and, while it holds the file, no other process at all,
so every engine uses `NullPool`: a connection lives only as long as one public
store call, and the file is free between calls.

`transaction` opens one connection, begins one transaction and yields the SQLAlchemy
connection; `native` reaches the DuckDB connection underneath (same transaction) for bulk
arrays. A file locked by another process is retried for ``GROVE_STORE_WAIT`` seconds
(default 10) and then reported as `StoreBusyError`.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from grove.indexstore.errors import GroveError, SchemaError, StoreBusyError

DEFAULT_URL = "duckdb:///grove.duckdb"
# another process holds the file's lock, or (same process) a connection with another
# read_only setting is open, e.g. the retrieval service's alias poll beside a writer: both pass
_LOCK_RE = re.compile(
    r"Could not set lock on file|Conflicting lock is held|"
    r"different configuration than existing connections|Unique file handle conflict"
)


MEMORY_ENV, DEFAULT_MEMORY = "GROVE_DUCKDB_MEMORY", "2GB"
MEMORY_RE = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B)", re.IGNORECASE)


def duckdb_memory() -> str:
    """DuckDB's memory limit for store connections: ``$GROVE_DUCKDB_MEMORY``, default 2GB.

    DuckDB's default (80% of RAM) lets its buffer pool keep every block a process has read or
    written, so a step's RSS grew with the store (one more version's weights on a store holding
    many). Under the cap it evicts those blocks and spills sorts and joins to ``<store>.tmp``."""
    cap = os.environ.get(MEMORY_ENV, DEFAULT_MEMORY).strip()
    if not MEMORY_RE.fullmatch(cap):
        raise GroveError(f"{MEMORY_ENV}={cap!r}: expected a size such as 2GB, 512MB or 4GiB")
    return cap


def default_url(url: str | None = None) -> str:
    """``url``, else ``$GROVE_STORE``, else ``duckdb:///grove.duckdb`` (in the working dir)."""
    return url or os.environ.get("GROVE_STORE") or DEFAULT_URL


SUPPORTED = "grove stores are duckdb:///FILE or postgresql+psycopg://USER@HOST/DB"


def parse_url(url: str | None = None) -> sa.engine.URL:
    """The SQLAlchemy URL of a store (``postgresql://`` and ``postgres://`` mapped to psycopg 3);
    GroveError for anything grove cannot store in. Messages never show a password."""
    url = default_url(url)
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise GroveError(f"invalid store URL {_hide_password(url)!r}: {SUPPORTED}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres"):  # postgres://: Heroku's spelling
        if driver and driver != "psycopg":  # a bare postgresql:// means psycopg
            raise GroveError(f"unsupported PostgreSQL driver {driver!r} in {parsed!r}: {SUPPORTED}")
        return parsed.set(drivername="postgresql+psycopg")
    if backend != "duckdb":
        raise GroveError(f"unsupported store URL scheme {parsed.drivername!r} in {parsed!r}: {SUPPORTED}")
    return parsed


def _hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def backend_name(url_or_engine) -> str:
    """'duckdb' or 'postgresql' for a store URL or engine."""
    url = url_or_engine.url if isinstance(url_or_engine, sa.Engine) else parse_url(url_or_engine)
    return "postgresql" if url.get_backend_name() in ("postgresql", "postgres") else url.get_backend_name()


def make_engine(url: str | None = None, read_only: bool = False) -> sa.Engine:
    """A NullPool engine for ``url``; ``read_only`` opens DuckDB files in read-only mode and
    PostgreSQL sessions with ``default_transaction_read_only``."""
    parsed = parse_url(url)
    connect_args: dict = {}
    if parsed.get_backend_name() == "duckdb":
        db = parsed.database
        if read_only and db and db != ":memory:" and not os.path.exists(db):
            raise SchemaError(f"store {db} does not exist: run `grove init`")
        if read_only:
            connect_args["read_only"] = True
        connect_args["config"] = {"memory_limit": duckdb_memory()}
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise GroveError(f"store {parsed!r} needs psycopg 3: pip install 'grove[postgres]'") from None
        connect_args["connect_timeout"] = int(os.environ.get("GROVE_CONNECT_TIMEOUT", "10"))
        if read_only:
            connect_args["options"] = "-c default_transaction_read_only=on"
    try:
        return sa.create_engine(parsed, poolclass=NullPool, connect_args=connect_args)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise GroveError(f"cannot open store URL {parsed!r}: {exc}") from exc


def store_name(engine: sa.Engine) -> str:
    """How messages name a store: the DuckDB file, or host/database of a server (no password)."""
    url = engine.url
    if url.get_backend_name() == "duckdb":
        return str(url.database)
    host = url.host or url.query.get("host") or "localhost"
    if isinstance(host, tuple):
        host = host[0]
    port = f":{url.port}" if url.port else ""
    return f"database {url.database or url.username or 'postgres'!r} on {host}{port}"


def _is_lock_error(exc: BaseException) -> bool:
    return bool(_LOCK_RE.search(str(getattr(exc, "orig", exc))))


def connect(engine: sa.Engine, wait: float | None = None) -> sa.Connection:
    """Open a connection, retrying while another process holds the DuckDB lock.

    Raises `StoreBusyError` after ``wait`` seconds (default ``$GROVE_STORE_WAIT`` or 10).
    """

    def attempt() -> sa.Connection:
        try:
            return engine.connect()
        except sa.exc.OperationalError as exc:
            if not _is_lock_error(exc):
                raise GroveError(f"cannot open store {store_name(engine)}: {_cause(exc)}") from None
            raise _Locked(str(exc.orig)) from exc

    return retry_while_locked(attempt, str(engine.url.database), wait)


def _cause(exc: sa.exc.DBAPIError) -> str:
    """The driver's reason in one line (psycopg's starts 'connection failed: ... failed: FATAL: ...')."""
    text = " ".join(str(exc.orig).split())
    return re.sub(r"^connection failed: connection to server (at|on) .*? failed: (FATAL: )?", "", text)[:300]


class _Locked(Exception):
    """One attempt met another process's lock (message: DuckDB's, naming the PID)."""


T = TypeVar("T")


def retry_while_locked(attempt: Callable[[], T], name: str, wait: float | None = None) -> T:
    """``attempt()`` until it stops raising `_Locked`, for ``wait`` seconds (default
    ``$GROVE_STORE_WAIT`` or 10); then `StoreBusyError` naming the process that holds ``name``."""
    wait = float(os.environ.get("GROVE_STORE_WAIT", "10")) if wait is None else wait
    start = time.monotonic()
    deadline, delay, told = start + wait, 0.02, start
    while True:
        try:
            return attempt()
        except _Locked as exc:
            now = time.monotonic()
            if now - told >= 30 and os.environ.get("GROVE_QUIET") != "1":  # a long wait says so
                print(
                    f"store {name} is locked by another process; waiting ({now - start:.0f} s of {wait:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                told = now
            if now >= deadline:
                pid = re.search(r"PID (\d+)", str(exc))
                who = f"process {pid.group(1)}" if pid else "another process"
                raise StoreBusyError(f"store {name} is locked by {who}; try again when it has finished") from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def lock_error(message: str) -> Exception | None:
    """A `_Locked` to raise when ``message`` (of any DuckDB error) says the file is locked."""
    return _Locked(message) if _LOCK_RE.search(message) else None


@contextmanager
def transaction(engine: sa.Engine, wait: float | None = None) -> Iterator[sa.Connection]:
    """One connection, one transaction: committed on success, rolled back on any exception.
    ``wait``: seconds to wait for another process's lock (`connect`)."""
    conn = connect(engine, wait)
    try:
        with conn.begin():
            yield conn
    finally:
        conn.close()


@contextmanager
def read_only(url: str) -> Iterator[sa.Connection]:
    """A short read-only connection to the store at ``url`` (DuckDB: a read-only open)."""
    conn = connect(make_engine(url, read_only=True))
    try:
        yield conn
    finally:
        conn.close()


def native(conn: sa.Connection):
    """The driver connection under ``conn`` (shares its transaction): DuckDB's or psycopg's.
    Bulk arrays go through `grove.indexstore.backends.bulk`, which knows what to do with it."""
    return conn.connection.driver_connection


# ----------------------------------------------------------------------------------- schema
def current_revision(conn: sa.Connection) -> str | None:
    """The Alembic revision the store is at, or None for an empty store."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    row = conn.exec_driver_sql("SELECT version_num FROM alembic_version").first()
    return row[0] if row else None


def head_revision() -> str:
    """The newest revision the code knows (the head of migrations/versions)."""
    from grove.migrations import head_revision as _head

    return _head()


def check_schema(engine: sa.Engine) -> str:
    """Raise `SchemaError` unless the store is at the Alembic head; returns the revision."""
    head = head_revision()
    db = engine.url.database
    if engine.url.get_backend_name() == "duckdb" and db and db != ":memory:" and not os.path.exists(db):
        raise SchemaError(f"store {db} does not exist: run `grove init`")  # and do not create it
    with transaction(engine) as conn:
        rev = current_revision(conn)
    if rev != head:
        where = "empty (no schema)" if rev is None else f"at {rev}"
        raise SchemaError(f"store schema is {where}, code needs {head}: run `grove init`")
    return rev
