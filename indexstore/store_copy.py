"""Copying a whole store to another URL (``grove store copy SRC DST``): DuckDB file to server and
back, keeping every id.

Every table of the schema is copied in chunks of at most ``chunk_rows`` rows (artifact bytes:
`BLOB_ROWS` rows of 64 KiB at a time), read from the source as arrow and appended to the
destination through the bulk channel, so memory stays bounded whatever the size of
``interactions``. Ids are kept as they are (version ids, alias event
ids); the destination's sequences are then moved past them, so the next version written there
gets a new id.

The destination must hold no rows (a new DuckDB file, an empty database or an empty store at
any revision): it is brought to the schema head and filled in ONE transaction, which also runs
the checks -- row counts per table, the small tables (datasets, splits, indexes, versions,
aliases, alias events, metrics) row for row, and every artifact's SHA-256 recomputed from the
bytes read back from the destination. Any failure rolls it all back (a DuckDB file the copy
created is removed), so the destination is as it was.

``interactions`` has one more column on PostgreSQL, ``pos`` (a row's position in its dataset,
from 0: a heap's order is not the insertion order): a PostgreSQL source is read in that order,
and positions are counted again, in the source's order, when a DuckDB store is copied there.

The source is read in one read-only transaction (PostgreSQL: repeatable read, a consistent
snapshot while others write; DuckDB: a read-only open, which keeps writers out meanwhile).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from grove.indexstore.backends import bulk
from grove.indexstore.engine import (
    check_schema,
    connect,
    current_revision,
    head_revision,
    make_engine,
    native,
    store_name,
)
from grove.indexstore.errors import GroveError, IntegrityError
from grove.indexstore.version_io import artifact_bytes

CHUNK_ROWS = 500_000
BLOB_ROWS = {"artifact_chunks": 256}  # tables of large values -> rows per chunk (16 MiB)
SEQUENCES = (("version_id_seq", "versions", "id"), ("alias_event_id_seq", "alias_events", "id"))
# table -> (its position column on PostgreSQL, the partition positions count in); the one column
# that may differ between the engines' schemas (left NULL where the engine's writers leave it)
POSITION = "pos"
POSITIONED = {"interactions": (POSITION, "dataset")}
SMALL = ("datasets", "splits", "indexes", "versions", "aliases", "alias_events", "metrics")
Progress = Callable[[str, int, int], None]  # (table, rows copied so far, rows in the table)


@dataclass(frozen=True)
class CopyReport:
    """What `copy_store` copied and checked: rows per table, artifacts whose SHA-256 matched."""

    src: str
    dst: str
    revision: str
    rows: dict[str, int]
    artifacts: int
    artifact_bytes: int


def copy_store(
    src_url: str, dst_url: str, progress: Progress | None = None, chunk_rows: int = CHUNK_ROWS
) -> CopyReport:
    """Copy every row of the store at ``src_url`` into the empty store at ``dst_url``, verified.

    Raises `GroveError` (one line) for a source that cannot be opened or is not at the schema
    head, a destination that holds rows, the same store twice, or a failed check; the
    destination is then as it was."""
    src_engine, dst_engine = make_engine(src_url, read_only=True), make_engine(dst_url)
    if _same_store(src_engine.url, dst_engine.url):
        raise GroveError(f"source and destination are the same store: {store_name(src_engine)}")
    revision = check_schema(src_engine)
    created = _new_duckdb_file(dst_engine)
    try:
        with contextlib.closing(connect(src_engine)) as src, contextlib.closing(connect(dst_engine)) as dst:
            with _bulk_settings(dst), src.begin(), dst.begin():
                _snapshot(src)
                _prepare_destination(dst, dst_url)
                rows, n, size = _copy_all(src, dst, progress, chunk_rows)
        return CopyReport(src_url, dst_url, revision, rows, n, size)
    except BaseException:
        if created:
            _remove_duckdb_file(dst_engine)
        raise
    finally:
        src_engine.dispose()
        dst_engine.dispose()


def _copy_all(src: sa.Connection, dst: sa.Connection, progress: Progress | None, chunk_rows: int):
    theirs = _columns(dst)
    rows = {}
    for table, ours in _columns(src).items():
        columns, order, position = _plan(table, ours, theirs.get(table))
        total = _count(src, table)
        step = min(chunk_rows, BLOB_ROWS.get(table, chunk_rows))
        done, counters = 0, dict[str, int]()
        for chunk in _read_chunks(src, table, columns, step, order):
            if position:
                chunk = _with_positions(chunk, table, counters)
            _append(dst, table, chunk.column_names, chunk)
            done += chunk.num_rows
            if progress is not None:
                progress(table, done, total)
        if done != total:
            raise IntegrityError(f"table {table}: read {done:,} rows of {total:,}")
        rows[table] = done
    _advance_sequences(dst)
    return (rows, *_verify(src, dst, rows))


def _plan(table: str, ours: list[str], theirs: list[str] | None) -> tuple[list[str], str, bool]:
    """(columns to copy, ORDER BY of the read, whether to add positions) for one table.

    The schemas are the same but for `POSITIONED` tables: on PostgreSQL their rows carry their
    position in their dataset (a heap's order is not the insertion order); read from there in
    that order, and counted again when written there from DuckDB (whose rowid is the order)."""
    if theirs is None:
        raise GroveError(f"the destination has no table {table} after the upgrade to head; cannot copy")
    pos, part = POSITIONED.get(table, (POSITION, ""))
    if (set(ours) ^ set(theirs)) - {POSITION}:
        raise GroveError(f"table {table} has other columns in the source and the destination; cannot copy")
    columns = [c for c in ours if c in theirs]  # a position the other side lacks stays behind
    if not part:
        return columns, "", False
    return columns, f' ORDER BY "{part}", "{pos}"' if pos in ours else "", pos in theirs and pos not in ours


def _with_positions(chunk: pa.Table, table: str, counters: dict[str, int]) -> pa.Table:
    """``chunk`` with its rows' positions in their partition (dataset), from 0, continuing the
    counts of the chunks before (``counters``, updated)."""
    pos, part = POSITIONED[table]
    encoded = chunk.column(part).combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    out = np.empty(chunk.num_rows, dtype=np.int64)
    for k, name in enumerate(encoded.dictionary.to_pylist()):
        at = codes == k
        start = counters.get(name, 0)
        out[at] = np.arange(start, start + int(at.sum()), dtype=np.int64)
        counters[name] = start + int(at.sum())
    return chunk.append_column(pos, pa.array(out))


# ------------------------------------------------------------------------------ the stores
def _backend(conn: sa.Connection) -> str:
    return conn.engine.url.get_backend_name()


def _same_store(a: sa.engine.URL, b: sa.engine.URL) -> bool:
    if a.get_backend_name() == b.get_backend_name() == "duckdb" and a.database and b.database:
        return os.path.realpath(a.database) == os.path.realpath(b.database)
    return a.render_as_string(hide_password=False) == b.render_as_string(hide_password=False)


def _new_duckdb_file(engine: sa.Engine) -> bool:
    db = engine.url.database
    if engine.url.get_backend_name() != "duckdb" or not db or db == ":memory:":
        return False
    return not os.path.exists(db)


def _remove_duckdb_file(engine: sa.Engine) -> None:
    db = str(engine.url.database)
    for path in (db, db + ".wal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def _bulk_settings(dst: sa.Connection) -> Iterator[None]:
    """DuckDB: the import's memory cap and spill folder (outside the transaction, restored)."""
    if _backend(dst) != "duckdb":
        yield
        return
    from grove.indexstore.bulk_import import import_settings

    with import_settings(native(dst)):
        yield


def _snapshot(src: sa.Connection) -> None:
    if _backend(src) == "postgresql":  # one consistent snapshot of every table, scanned from
        src.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        src.exec_driver_sql("SET LOCAL synchronize_seqscans = off")  # its first page: insertion order
    else:
        src.exec_driver_sql("SELECT 1").all()  # the transaction has begun before native reads


def _columns(conn: sa.Connection) -> dict[str, list[str]]:
    """Base tables of the store (but alembic_version) -> column names in table order."""
    rows = conn.exec_driver_sql(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
        "WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' "
        "AND c.table_name <> 'alembic_version' ORDER BY c.table_name, c.ordinal_position"
    ).all()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(table, []).append(column)
    return out


def _count(conn: sa.Connection, table: str) -> int:
    return int(conn.exec_driver_sql(f'SELECT count(*) FROM "{table}"').scalar() or 0)


def _prepare_destination(dst: sa.Connection, url: str) -> None:
    """Refuse a destination that holds rows; bring an empty one to the schema head."""
    from grove import migrations

    held = {t: n for t in _columns(dst) if t != "alembic_version" and (n := _count(dst, t))}
    if held:
        top = sorted(held.items(), key=lambda kv: -kv[1])
        listed = ", ".join(f"{t} {n:,}" for t, n in top[:3]) + (", ..." if len(top) > 3 else "")
        raise GroveError(
            f"destination store {store_name(dst.engine)} is not empty ({listed} rows): copy into a new or empty store"
        )
    if current_revision(dst) != head_revision():
        migrations.upgrade(url, "head", connection=dst)


# ---------------------------------------------------------------------------- chunks of rows
def _select(table: str, columns: list[str]) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    return f'SELECT {names} FROM "{table}"'


def _read_chunks(conn: sa.Connection, table: str, columns: list[str], rows: int, order: str = "") -> Iterator[pa.Table]:
    """The table's rows in its stored order (or ``order``), ``rows`` at a time, as arrow tables."""
    if _backend(conn) == "duckdb":
        nat = native(conn)
        nat.execute("SELECT 1").fetchall()  # a relation refuses to run beside an unfinished result
        reader = nat.sql(_select(table, columns) + order).to_arrow_reader(rows)  # streams
        for batch in reader:
            if batch.num_rows:
                yield pa.Table.from_batches([batch])
        return
    cur = native(conn).cursor(name=f"grove_copy_{table}")  # server-side
    try:
        cur.execute(_select(table, columns) + order)
        while batch := cur.fetchmany(rows):
            yield pa.table({c: pa.array([_plain(r[i]) for r in batch]) for i, c in enumerate(columns)})
    finally:
        cur.close()


def _append(conn: sa.Connection, table: str, columns: list[str], data: pa.Table) -> None:
    """Append an arrow table's rows (columns in the table's order) to ``table`` through the bulk
    channel (DuckDB: a registered arrow reader; PostgreSQL: COPY), positions as given."""
    bulk(conn).write_batches(table, columns, data.to_reader(), positions=False)


def _plain(value):
    """A value as DuckDB gives it back: naive UTC datetimes, int/float numbers, bytes."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def _advance_sequences(dst: sa.Connection) -> None:
    """Move each id sequence past the largest copied id (the next write gets a new id)."""
    for seq, table, column in SEQUENCES:
        top = dst.exec_driver_sql(f'SELECT max("{column}") FROM "{table}"').scalar()
        if top is None:
            continue
        if _backend(dst) == "postgresql":
            dst.execute(
                sa.text("SELECT setval(coalesce(to_regclass(:s)::text, pg_get_serial_sequence(:t, :c)), :n)"),
                {"s": seq, "t": table, "c": column, "n": int(top)},
            )
        else:  # DuckDB cannot set a sequence: draw as many values as the largest id
            dst.exec_driver_sql(f"SELECT max(nextval('{seq}')) FROM range({int(top)})").all()


# ---------------------------------------------------------------------------------- checks
def _rows(conn: sa.Connection, table: str, columns: list[str]) -> list[tuple]:
    rows = [tuple(_plain(v) for v in r) for r in conn.exec_driver_sql(_select(table, columns)).all()]
    return sorted(rows, key=repr)


def _verify(src: sa.Connection, dst: sa.Connection, rows: dict[str, int]) -> tuple[int, int]:
    """Row counts, the small tables row for row, artifacts' SHA-256 recomputed on ``dst``;
    returns (artifacts checked, their bytes). Raises `IntegrityError` on any difference."""
    for table, n in rows.items():
        if _count(dst, table) != n:
            raise IntegrityError(f"table {table}: {_count(dst, table):,} rows in the destination, {n:,} copied")
    columns = _columns(src)
    for table in SMALL:
        if table in columns and _rows(src, table, columns[table]) != _rows(dst, table, columns[table]):
            raise IntegrityError(f"table {table} differs between the source and the destination after the copy")
    listed = ["version_id", "name", "sha256", "size"]
    if _rows(src, "artifacts", listed) != _rows(dst, "artifacts", listed):
        raise IntegrityError("the artifacts' names or checksums differ between the source and the destination")
    n = size = 0
    for version_id, name, sha, length in _rows(dst, "artifacts", listed):
        try:
            artifact_bytes(bulk(dst), version_id, name, sha, length)
        except IntegrityError:
            raise IntegrityError(
                f"artifact {name!r} of version {version_id} does not match its sha256 after the copy"
            ) from None
        n, size = n + 1, size + length
    return n, size
