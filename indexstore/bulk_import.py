"""Import an interaction file into the store by streaming it through DuckDB.

The file's rows never enter Python: DuckDB reads it (``read_csv`` with an explicit layout and
every column as VARCHAR, or ``read_parquet``) into a staged temporary table, and SQL validates,
converts and inserts it inside the caller's transaction:

1. stage: ``_grove_stage(u, i VARCHAR -- trimmed raw ids; ts BIGINT -- epoch seconds, NULL when
   unparseable; rating FLOAT -- NULL when missing or not finite; behavior VARCHAR)``, one row per
   record in file order (its ``rowid``). Malformed lines land in a rejects table instead of
   aborting the transaction; a file that is not UTF-8 is staged again as latin-1.
2. validate: one aggregate pass finds the first row with a missing id or a bad timestamp or
   rating; its file line and value are then found by streaming the file in Python (error path).
3. dense ids: ``_grove_user_ids(raw, id)`` / ``_grove_item_ids`` rank the distinct raw ids in
   numeric order when every one is a number (ties by string), else lexicographically -- the
   order of `grove.indexstore.readers.read_interactions`.
4. insert interactions (joined to the dense ids, ordered by the staged rowid), the id maps, the
   items (categories from ``--items`` read in Python: items-sized) and the dataset row.

Memory: DuckDB spills to its temporary directory (``<store file>.tmp``) instead of growing past
``$GROVE_IMPORT_MEMORY`` (default 2GB), set for the import by `import_settings` and restored after.

A PostgreSQL store: steps 1-3 run unchanged in an in-memory DuckDB (one validation path, the
same messages), spilling to a temporary folder; step 4's SELECTs stream out of it as record
batches into the store's COPY (`grove.indexstore.backends.PostgresBulk`): memory stays bounded.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from contextlib import contextmanager

import duckdb
import numpy as np
import sqlalchemy as sa

from grove.indexstore import datasets_io
from grove.indexstore.backends import Bulk, DuckDBBulk, bulk
from grove.indexstore.categories import read_item_categories
from grove.indexstore.engine import MEMORY_RE, native
from grove.indexstore.entities import DatasetInfo
from grove.indexstore.errors import GroveError, InputError
from grove.indexstore.file_layout import InteractionFile, Layout, first_malformed, locate_record, sniff_layout

MEMORY_ENV, DEFAULT_MEMORY = "GROVE_IMPORT_MEMORY", "2GB"
STAGE, USERS, ITEMS = "_grove_stage", "_grove_user_ids", "_grove_item_ids"
REJECTS, REJECT_SCANS = "_grove_rejects", "_grove_reject_scans"
STAGED_TABLES = (STAGE, USERS, ITEMS, REJECTS, REJECT_SCANS)
_WS = "' \t\n\r\x0b\x0c'"  # what pyarrow's utf8_trim_whitespace trims from ids (ASCII part)
_NAIVE = r"'\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?'"
_ZONED = r"'\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)'"
_INTEGER = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
)
_FLOAT = ("FLOAT", "DOUBLE", "DECIMAL")


# -------------------------------------------------------------------------------- settings
@contextmanager
def import_settings(nat):
    """Cap DuckDB's memory at ``$GROVE_IMPORT_MEMORY``, spill next to the store file and keep
    insertion order (the staged rowids must follow the file); restore all three after.

    Run it OUTSIDE the import's transaction: settings are global and not transactional, and a
    failed statement leaves the transaction unable to run anything until the rollback."""
    cap = os.environ.get(MEMORY_ENV, DEFAULT_MEMORY).strip()
    if not MEMORY_RE.fullmatch(cap):
        raise GroveError(f"{MEMORY_ENV}={cap!r}: expected a size such as 2GB, 512MB or 4GiB")
    old_memory, old_temp, old_order = nat.execute(
        "SELECT current_setting('memory_limit'), current_setting('temp_directory'), "
        "current_setting('preserve_insertion_order')"
    ).fetchone()
    store = nat.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()[0]
    temp = f"{store}.tmp" if store else old_temp
    nat.execute(f"SET memory_limit = '{cap}'")
    nat.execute("SET preserve_insertion_order = true")
    moved = temp != old_temp and _set_temp_directory(nat, temp)
    try:
        yield
    finally:
        try:
            nat.execute("RESET memory_limit")  # exact when the old limit was the default
            if nat.execute("SELECT current_setting('memory_limit')").fetchone()[0] != old_memory:
                nat.execute(f"SET memory_limit = '{old_memory}'")
            nat.execute(f"SET preserve_insertion_order = {bool(old_order)}")
            if moved:
                _set_temp_directory(nat, old_temp)
        except duckdb.Error:  # an invalidated database: its settings are gone with it
            pass


def _set_temp_directory(nat, path: str) -> bool:
    """False when DuckDB keeps its directory (it cannot switch once it has spilled there)."""
    try:
        nat.execute("SET temp_directory = ?", [path])
        return True
    except duckdb.NotImplementedException:
        return False


# ---------------------------------------------------------------------------------- import
def import_file(
    conn: sa.Connection, name: str, source: InteractionFile, items: str | None, seed: int, meta: dict
) -> DatasetInfo:
    """Import ``source`` as dataset ``name`` inside ``conn``'s transaction (see module doc).

    ``items`` : optional item-category file (`readers.read_item_categories`, seeded by ``seed``).
    InputError (one line: file, line, column, value) on bad input; the caller rolls back."""
    datasets_io.refuse_existing(conn, name)
    if items is not None and not os.path.isfile(items):
        raise InputError(f"file not found: {items}")
    if conn.dialect.name == "duckdb":
        nat = native(conn)
        nat.execute("SELECT 1").fetchall()  # finish SQLAlchemy's last result on this connection
        n = _import(nat, DuckDBBulk(nat), name, source, items, seed)
    else:  # stage and validate in an in-memory DuckDB, stream the rows into the store
        with tempfile.TemporaryDirectory(prefix="grove-import-") as spill:
            nat = duckdb.connect()
            try:
                nat.execute("SET temp_directory = ?", [spill])
                with import_settings(nat):
                    n = _import(nat, bulk(conn), name, source, items, seed)
            finally:
                nat.close()
    n_rows, n_users, n_items, path = n
    datasets_io.insert_dataset_row(conn, name, path, n_users, n_items, n_rows, meta)
    return datasets_io.get_dataset(conn, name)


def _import(nat, sink: Bulk, name: str, source: InteractionFile, items: str | None, seed: int):
    """Steps 1-4 on the DuckDB connection ``nat``, rows written through ``sink`` (the store's bulk
    channel; on a DuckDB store, ``nat`` itself). Returns (rows, users, items, file path)."""
    layout = sniff_layout(source, lambda path: _parquet_types(nat, path))
    try:
        encoding = _stage(nat, layout)
        n_rows = _validate(nat, layout, encoding)
        n_users, n_items = _dense_ids(nat, "u", USERS), _dense_ids(nat, "i", ITEMS)
        _insert_rows(nat, sink, name, layout)
        _insert_items(nat, sink, name, items, seed)
    except duckdb.OutOfMemoryException as e:
        raise GroveError(
            f"import of {layout.path} ran out of memory ({_first(e)}); raise {MEMORY_ENV} or free disk for spilling"
        ) from None
    except duckdb.Error as e:
        gzip_fault = layout.gzip and re.search(r"gzip|compress|inflate|zlib", str(e), re.IGNORECASE)
        what = "corrupt gzip file" if gzip_fault else "cannot read the file"
        raise InputError(f"{layout.path}: {what} ({_first(e)})") from None
    for table in STAGED_TABLES:
        nat.execute(f"DROP TABLE IF EXISTS {table}")
    return n_rows, n_users, n_items, layout.path


def _first(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300]


def _parquet_types(nat, path: str) -> dict:
    try:
        rows = nat.execute("DESCRIBE SELECT * FROM read_parquet(?)", [path]).fetchall()
    except duckdb.Error as e:
        raise InputError(f"{path}: not a readable Parquet file ({_first(e)})") from None
    return {r[0]: r[1] for r in rows}


# ----------------------------------------------------------------------------------- stage
def _stage(nat, layout: Layout) -> str:
    """Create the staged table; returns the text encoding that read it ("utf-8"/"latin-1")."""
    if layout.kind == "parquet":
        nat.execute(f"CREATE TEMP TABLE {STAGE} AS {_stage_select(layout, 'read_parquet(?)')}", [layout.path])
        return "utf-8"
    for encoding in ("utf-8", "latin-1"):
        for table in (STAGE, REJECTS, REJECT_SCANS):
            nat.execute(f"DROP TABLE IF EXISTS {table}")
        columns = ", ".join(f"'c{k}': 'VARCHAR'" for k in range(len(layout.names)))
        reader = (
            f"read_csv(?, delim = ?, quote = ?, escape = ?, encoding = ?, compression = ?, "
            f"header = false, skip = {layout.skip}, columns = {{{columns}}}, "
            f"auto_detect = false, store_rejects = true, rejects_limit = 1000, "
            f"rejects_table = '{REJECTS}', rejects_scan = '{REJECT_SCANS}')"
        )
        nat.execute(
            f"CREATE TEMP TABLE {STAGE} AS {_stage_select(layout, reader)}",
            [layout.path, layout.delim, layout.quote, layout.quote, encoding, "gzip" if layout.gzip else "none"],
        )
        first = nat.execute(
            f"SELECT line, error_type, csv_line, error_message, "
            f"bool_or(error_type = 'INVALID ENCODING') OVER () FROM {REJECTS} "
            "ORDER BY line LIMIT 1"
        ).fetchone()
        if first is None:
            return encoding
        if not (first[4] and encoding == "utf-8"):  # legacy MovieLens files are latin-1
            raise InputError(_rejected(layout, encoding, first))
    raise AssertionError("unreachable")


def _rejected(layout: Layout, encoding: str, reject: tuple) -> str:
    line, kind, text, message = reject[:4]
    if kind in ("MISSING COLUMNS", "TOO MANY COLUMNS"):
        found = first_malformed(layout, encoding)  # the exact line: DuckDB's may be approximate
        if found:
            return found
    detail = " ".join(str(message).split())[:200]
    return f"{layout.path} line {line}: cannot parse ({detail}): {str(text)[:80]!r}"


def _stage_select(layout: Layout, reader: str) -> str:
    """SELECT of the staged columns from ``reader`` in three levels, so that each value is
    parsed once: (1) raw text ``tv``/``rv`` or typed ``tx``/``rx`` and trimmed ids; (2) numbers
    ``tn``/``rn`` and, for non-numeric time text, its trimmed ``tt``; (3) the conversions."""
    col = {role: _column(layout, role) for role, name in layout.cols.items() if name is not None}
    typ = {role: layout.types.get(layout.cols[role], "VARCHAR") for role in col}
    raw = [f"{_id_text(col['user'], typ['user'])} AS u", f"{_id_text(col['item'], typ['item'])} AS i"]
    raw += _raw_inputs("t", col["time"], typ["time"])
    parsed = [
        "u",
        "i",
        "tv",
        "tx",
        f"{_number('t', typ['time'])} AS tn",
        f"CASE WHEN tv IS NOT NULL AND {_number('t', typ['time'])} IS NULL THEN {_trim('tv')} END AS tt",
    ]
    final = ["u", "i", f"{_time(typ['time'])} AS ts"]
    if "rating" in col:
        raw += _raw_inputs("r", col["rating"], typ["rating"])
        parsed.append(f"{_number('r', typ['rating'])} AS rn")
        final.append("CASE WHEN isfinite(rn) THEN TRY_CAST(rn AS FLOAT) END AS rating")
    if "behavior" in col:
        b = col["behavior"]
        raw.append(
            f"COALESCE({b}, '') AS behavior"
            if layout.kind == "text"  # CSV: '' not NULL
            else f"CAST({b} AS VARCHAR) AS behavior"
        )
        parsed.append("behavior")
        final.append("behavior")
    return f"SELECT {', '.join(final)} FROM (SELECT {', '.join(parsed)} FROM (SELECT {', '.join(raw)} FROM {reader}))"


def _column(layout: Layout, role: str) -> str:
    if layout.kind == "text":
        return f"c{layout.index(role)}"
    return '"' + layout.cols[role].replace('"', '""') + '"'


def _trim(v: str) -> str:
    """Whitespace-trimmed text; the first/last character test skips DuckDB's slow
    trim-with-characters on the usual untrimmed-but-clean value (3x the whole stage)."""
    return f"CASE WHEN {v}[1] > ' ' AND {v}[-1] > ' ' THEN {v} ELSE trim({v}, {_WS}) END"


def _id_text(c: str, typ: str) -> str:
    """Raw id as text: integers in decimal, integral floats without '.0', strings trimmed."""
    if typ in _INTEGER:
        return f"CAST({c} AS VARCHAR)"
    if typ.startswith(_FLOAT):
        return (
            f"CASE WHEN {c} = trunc({c}) AND abs({c}) < 1e15 THEN CAST(CAST({c} AS BIGINT) "
            f"AS VARCHAR) ELSE CAST({c} AS VARCHAR) END"
        )
    return _trim(f"CAST({c} AS VARCHAR)" if typ != "VARCHAR" else c)


def _is_typed_number(typ: str) -> bool:
    return typ in _INTEGER or typ.startswith(_FLOAT)


def _raw_inputs(p: str, c: str, typ: str) -> list[str]:
    """``{p}v``: the text of a text column (NULL otherwise); ``{p}x``: a typed column."""
    if _is_typed_number(typ) or not typ.startswith(("VARCHAR", "BLOB")):
        return [f"NULL::VARCHAR AS {p}v", f"{c} AS {p}x"]
    return [f"CAST({c} AS VARCHAR) AS {p}v", f"NULL AS {p}x"]


def _number(p: str, typ: str) -> str:
    """The DOUBLE of ``{p}v``/``{p}x``, NULL when not a number. DuckDB's casts skip surrounding
    whitespace as pyarrow's do after trimming; its '1_000' is refused as pyarrow refuses it."""
    if _is_typed_number(typ):
        return f"CAST({p}x AS DOUBLE)"
    if not typ.startswith(("VARCHAR", "BLOB")):
        return "NULL::DOUBLE"  # Parquet temporal: converted in _time
    return f"CASE WHEN strpos({p}v, '_') = 0 THEN TRY_CAST({p}v AS DOUBLE) END"


def _time(typ: str) -> str:
    """Epoch seconds (BIGINT, NULL when unparseable) from tv / tx / tn / tt (_stage_select).

    Numbers: integral ones exactly (as BIGINT text when they are), others floored; ISO text
    dates/datetimes: naive = UTC, offsets honoured, fractions truncated (as pyarrow's cast);
    Parquet timestamps and dates floored to the second."""
    if typ.startswith("TIMESTAMP_NS"):
        return _floor_div("epoch_ns(tx)", 10**9)
    if typ.startswith(("TIMESTAMP", "DATE")):
        return _floor_div(
            "epoch_us(CAST(tx AS TIMESTAMPTZ))" if "TIME ZONE" in typ else "epoch_us(CAST(tx AS TIMESTAMP))", 10**6
        )
    if typ in _INTEGER:
        return "TRY_CAST(tx AS BIGINT)"
    floor = "CASE WHEN isfinite(tn) THEN TRY_CAST(floor(tn) AS BIGINT) END"
    if typ.startswith(_FLOAT):
        return floor
    return (
        f"CASE WHEN tn IS NOT NULL THEN (CASE WHEN tn = floor(tn) THEN COALESCE(TRY_CAST(tv AS "
        f"BIGINT), {floor}) ELSE {floor} END) "
        f"WHEN regexp_full_match(tt, {_NAIVE}) THEN epoch_us(TRY_CAST(tt AS TIMESTAMP)) // 1000000 "
        f"WHEN regexp_full_match(tt, {_ZONED}) THEN epoch_us(TRY_CAST(tt AS TIMESTAMPTZ)) // 1000000 END"
    )


def _floor_div(e: str, n: int) -> str:
    return f"({e} // {n} - CASE WHEN {e} % {n} < 0 THEN 1 ELSE 0 END)"


# -------------------------------------------------------------------------------- validate
def _validate(nat, layout: Layout, encoding: str) -> int:
    """Number of staged rows; InputError naming the first bad value."""
    checks = {"user": "u IS NULL OR u = ''", "item": "i IS NULL OR i = ''", "time": "ts IS NULL"}
    if layout.cols["rating"] is not None:
        checks["rating"] = "rating IS NULL"
    firsts = ", ".join(f"min(rowid) FILTER (WHERE {cond})" for cond in checks.values())
    n, *bad = nat.execute(f"SELECT count(*), {firsts} FROM {STAGE}").fetchone()
    if n == 0:
        raise InputError(f"{layout.path}: file has no interactions (header only)")
    found = [(rowid, role) for rowid, role in zip(bad, checks) if rowid is not None]
    if found:
        rowid, role = min(found)  # rowids grow in file order but start at an offset: rank it
        row = nat.execute(f"SELECT count(*) FROM {STAGE} WHERE rowid < ?", [rowid]).fetchone()[0]
        raise InputError(_bad_value(nat, layout, encoding, int(row), role))
    return int(n)


def _bad_value(nat, layout: Layout, encoding: str, row: int, role: str) -> str:
    name = layout.cols[role]
    if layout.kind == "text":
        lineno, fields = locate_record(layout, row, encoding)
        where, value = f"{layout.path} line {lineno} column {name!r}", fields[layout.index(role)]
    else:
        where = f"{layout.path} row {row + 1} column {name!r}"
        value = nat.execute(
            f"SELECT CAST({_column(layout, role)} AS VARCHAR) FROM read_parquet(?) LIMIT 1 OFFSET {row}", [layout.path]
        ).fetchone()[0]
    if role in ("user", "item"):
        return f"{where}: missing {role} id"
    what = "timestamp" if role == "time" else "rating"
    if value is None or not value.strip():
        return f"{where}: missing {what}"
    number = _as_number(value)
    if number is not None:
        if math.isfinite(number):  # a rating past float32's range
            return f"{where}: {what} {value!r} out of range (expected a finite number below 3.4e38)"
        return f"{where}: non-finite {what} {value!r} (expected a finite number)"
    hint = " (expected epoch seconds or an ISO date/datetime)" if role == "time" else ""
    return f"{where}: non-numeric {what} {value!r}{hint}"


def _as_number(text: str) -> float | None:
    """The float of ``text`` when it is a number as DuckDB reads one ('1_000' is not), else None."""
    try:
        return None if "_" in text else float(text)
    except ValueError:
        return None


# ----------------------------------------------------------------------------------- write
def _dense_ids(nat, col: str, table: str) -> int:
    """``table(raw, id)``: dense ids of the staged column ``col`` (see module doc); returns count."""
    nat.execute(f"""CREATE TEMP TABLE {table} AS
        WITH distinct_ids AS (SELECT DISTINCT {col} AS raw FROM {STAGE}),
        parsed AS (SELECT raw, CASE WHEN strpos(raw, '_') = 0 THEN TRY_CAST(raw AS DOUBLE) END AS num
                   FROM distinct_ids),
        kind AS (SELECT count(num) = count(*) AS numeric FROM parsed)
        SELECT raw, (row_number() OVER (ORDER BY CASE WHEN (SELECT numeric FROM kind) THEN num END,
                                        raw) - 1)::INTEGER AS id
        FROM parsed""")
    return int(nat.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


BATCH_ROWS = 250_000  # rows per record batch streamed out of the staging DuckDB


def _emit(nat, sink: Bulk, table: str, columns: str, select: str, params: list) -> None:
    """``INSERT INTO table (columns) <select>`` where ``select`` runs on the DuckDB ``nat``: one
    statement when the store is that DuckDB, else its rows streamed as record batches to ``sink``."""
    if isinstance(sink, DuckDBBulk) and sink.nat is nat:
        nat.execute(f"INSERT INTO {table} ({columns}) {select}", params)
        return
    nat.execute("SELECT 1").fetchall()  # .sql() refuses while an execute() result is unfinished
    reader = nat.sql(select, params=params).to_arrow_reader(BATCH_ROWS)
    sink.write_batches(table, [c.strip() for c in columns.split(",")], reader)


def _insert_rows(nat, sink: Bulk, name: str, layout: Layout) -> None:
    rating = "CAST(s.rating AS DOUBLE)" if layout.cols["rating"] is not None else "NULL"
    behavior = "s.behavior" if layout.cols["behavior"] is not None else "NULL"
    _emit(
        nat,
        sink,
        "interactions",
        "dataset, user_id, item_id, ts, rating, behavior",
        f"""SELECT $1, u.id, i.id, s.ts, {rating}, {behavior}
        FROM {STAGE} s JOIN {USERS} u ON s.u = u.raw JOIN {ITEMS} i ON s.i = i.raw
        ORDER BY s.rowid""",
        [name],
    )
    for table, ids, col in (("user_ids", USERS, "user_id"), ("item_ids", ITEMS, "item_id")):
        _emit(nat, sink, table, f"dataset, {col}, raw", f"SELECT $1, id, raw FROM {ids} ORDER BY id", [name])


def _insert_items(nat, sink: Bulk, name: str, items: str | None, seed: int) -> None:
    """Items without categories in SQL; with ``items``, categories read in Python (I rows)."""
    if items is None:
        _emit(nat, sink, "items", "dataset, item_id, category", f"SELECT $1, id, NULL FROM {ITEMS} ORDER BY id", [name])
        return
    raw = nat.execute(f"SELECT raw FROM {ITEMS} ORDER BY id").fetchnumpy()["raw"]
    item_raw = np.asarray(raw, dtype=object).astype(str)  # (I,) raw id of each dense item
    datasets_io.write_items(sink, name, len(item_raw), read_item_categories(items, item_raw, seed))
