"""What differs between the store's two engines, in one place: bulk arrays in and out.

`bulk(conn)` gives the bulk channel of an open SQLAlchemy connection (same transaction):

* `DuckDBBulk`: pyarrow tables registered on the native connection and ``INSERT INTO t SELECT
  ... FROM registered`` in; ``to_arrow_table`` / ``fetchnumpy`` out (both in the tens of millions of rows/s,
  benchmarks/README.md store_roundtrip).
* `PostgresBulk`: ``COPY t (cols) FROM STDIN (FORMAT csv)`` fed by pyarrow's CSV writer in
  chunks of `CHUNK_ROWS` (memory bounded), and ``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` parsed
  by pyarrow's CSV reader with the column types the server reports. Integer arrays travel as
  text (``{1,2,3}`` in, ``array_to_string`` out, split with pyarrow compute): never a Python loop
  per row.

Both take the same calls: ``write(table, data, consts)``, ``write_batches(table, columns,
batches)``, ``arrow(sql, params)``, ``numpy(sql, params)``, ``rows(sql, params, batch)``; SQL
uses DuckDB's ``$1`` parameters (rewritten for psycopg). ``rowid`` is the column that orders interactions as they were
inserted, ``in_insert_order`` the clause that makes a scan of them return that order: DuckDB's
rowid and plain scans; on PostgreSQL a heap reuses the space of rolled-back rows, so
``interactions`` has a ``pos`` column there (migration 0001) that `PostgresBulk` fills, counting
from 0 per write. Nothing above `indexstore` learns which engine it is on.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Generator, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import sqlalchemy as sa

from grove.indexstore.errors import InputError

CHUNK_ROWS = 250_000  # rows per COPY chunk: ~10 MB of CSV
_tmp_names = itertools.count()


def bulk(conn: sa.Connection) -> Bulk:
    """The bulk channel of ``conn``'s engine, sharing its transaction."""
    driver = conn.connection.driver_connection
    return PostgresBulk(driver) if conn.dialect.name == "postgresql" else DuckDBBulk(driver)


# ------------------------------------------------------------------------------------ DuckDB
class DuckDBBulk:
    """Bulk arrays through the native DuckDB connection (the fast paths grove always had)."""

    rowid = "rowid"
    in_insert_order = ""  # DuckDB's plain scans keep insertion order

    def __init__(self, nat):
        self.nat = nat

    def write(self, table: str, data: pa.Table, consts: dict | None = None) -> None:
        """``INSERT INTO table`` the columns of ``data`` and the constant columns ``consts``."""
        consts = consts or {}
        name = f"_grove_in_{next(_tmp_names)}"
        cols = list(data.column_names)
        self.nat.register(name, data)
        try:
            select = ", ".join(cols + [f"${k + 1}" for k in range(len(consts))])
            self.nat.execute(
                f"INSERT INTO {table} ({', '.join(cols + list(consts))}) SELECT {select} FROM {name}",
                list(consts.values()),
            )
        finally:
            self.nat.unregister(name)

    def write_batches(
        self, table: str, columns: list[str], batches: pa.RecordBatchReader, positions: bool = True
    ) -> None:
        """``INSERT INTO table (columns)`` the record batches, in order (columns by position);
        ``positions`` is PostgreSQL's (DuckDB's rowid is the position)."""
        name = f"_grove_in_{next(_tmp_names)}"
        self.nat.register(name, batches)
        try:
            self.nat.execute(f"INSERT INTO {table} ({_names(columns)}) SELECT * FROM {name}")
        finally:
            self.nat.unregister(name)

    def arrow(self, sql: str, params: list) -> pa.Table:
        """The result of ``sql`` as a pyarrow Table.

        ``con.sql(...).to_arrow_table()`` is ~3x faster than arrow from an ``execute`` result, but
        refuses to run while SQLAlchemy's last statement has an unfinished result on the same
        connection: finish that first with a trivial fully-fetched statement."""
        self.nat.execute("SELECT 1").fetchall()
        return self.nat.sql(sql, params=params).to_arrow_table()

    def numpy(self, sql: str, params: list) -> dict[str, np.ndarray]:
        """The result of ``sql`` as numpy columns."""
        return self.nat.execute(sql, params).fetchnumpy()

    def rows(self, sql: str, params: list, batch: int) -> Generator[list[tuple], None, None]:
        """The rows of ``sql``, ``batch`` at a time, streamed (DuckDB keeps one batch)."""
        self.nat.execute("SELECT 1").fetchall()
        reader = self.nat.sql(sql, params=params).to_arrow_reader(batch)
        try:
            for part in reader:
                yield list(zip(*(col.to_pylist() for col in part.columns)))
        finally:  # left early: the connection's open result must go before its next statement
            reader.close()


# -------------------------------------------------------------------------------- PostgreSQL
_ARROW_OF_OID = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    26: pa.int64(),
    700: pa.float32(),
    701: pa.float64(),
    1700: pa.float64(),
    1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"),
}
_ARRAY_OIDS = {1005: pa.int16(), 1007: pa.int32(), 1016: pa.int64()}  # int2[], int4[], int8[]
_PARAM_RE = re.compile(r"\$(\d+)")


def _psycopg_sql(sql: str, params: list) -> tuple[str, dict]:
    """DuckDB's ``$n`` parameters as psycopg's ``%(pn)s`` (literal % doubled)."""
    return _PARAM_RE.sub(r"%(p\1)s", sql.replace("%", "%%")), {f"p{k + 1}": v for k, v in enumerate(params)}


class PostgresBulk:
    """Bulk arrays through COPY on the psycopg 3 connection of the transaction."""

    rowid = "pos"
    in_insert_order = " ORDER BY pos"
    POSITIONED = ("interactions",)  # tables whose rows carry their position (see module doc)

    def __init__(self, pg):
        self.pg = pg

    # ------------------------------------------------------------------------------ in
    def write(self, table: str, data: pa.Table, consts: dict | None = None) -> None:
        """COPY the columns of ``data`` and the constant columns ``consts`` into ``table``."""
        n = data.num_rows
        for name, value in (consts or {}).items():
            data = data.append_column(name, pa.repeat(pa.scalar(value), n))
        self.write_batches(table, data.column_names, data.to_reader(max_chunksize=CHUNK_ROWS))

    def write_batches(
        self, table: str, columns: list[str], batches: Iterable[pa.RecordBatch], positions: bool = True
    ) -> None:
        """COPY record batches into ``table (columns)`` (columns by position), chunk by chunk.
        ``positions``: count the rows of a `POSITIONED` table from 0 (False: ``columns`` carry
        them, as in a store copy)."""
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            return
        batches = itertools.chain([first], batches)
        if any(pa.types.is_binary(f.type) for f in first.schema):
            self._copy_rows(table, columns, batches)
            return
        options = pcsv.WriteOptions(include_header=False, quoting_style="needed")  # strings quoted: '' is not NULL
        positioned = positions and table in self.POSITIONED
        columns = [*columns, "pos"] if positioned else list(columns)
        done = 0
        try:
            with self.pg.cursor() as cur, cur.copy(f"COPY {table} ({_names(columns)}) FROM STDIN (FORMAT csv)") as cp:
                for batch in batches:
                    for start in range(0, batch.num_rows, CHUNK_ROWS):
                        part = _as_text_arrays(batch.slice(start, CHUNK_ROWS))
                        if positioned:
                            pos = pa.array(np.arange(done, done + part.num_rows, dtype=np.int64))
                            part = pa.RecordBatch.from_arrays([*part.columns, pos], names=columns)
                        done += part.num_rows
                        buf = io.BytesIO()
                        pcsv.write_csv(part, buf, options)
                        cp.write(buf.getbuffer())
        except Exception as exc:  # psycopg's DataError: a value PostgreSQL cannot hold (NUL in text)
            if type(exc).__name__ in ("DataError", "InvalidTextRepresentation", "CharacterNotInRepertoire"):
                first = " ".join(str(exc).split())[:200]
                raise InputError(f"PostgreSQL refused a value for table {table}: {first}") from None
            raise

    def _copy_rows(self, table: str, columns: list[str], batches: Iterable[pa.RecordBatch]) -> None:
        """COPY in text format row by row (psycopg adapts bytes to bytea): for binary columns,
        which the CSV writer cannot spell. Used for artifact chunks (few, large rows)."""
        with self.pg.cursor() as cur, cur.copy(f"COPY {table} ({_names(columns)}) FROM STDIN") as cp:
            for batch in batches:
                for row in zip(*(col.to_pylist() for col in batch.columns)):
                    cp.write_row(row)

    # ----------------------------------------------------------------------------- out
    def arrow(self, sql: str, params: list) -> pa.Table:
        """The result of ``sql`` as a pyarrow Table, through ``COPY (...) TO STDOUT``."""
        query, named = _psycopg_sql(sql, params)
        with self.pg.cursor() as cur:
            cur.execute(f"SELECT * FROM ({query}) q LIMIT 0", named)
            desc = [(d.name, d.type_code) for d in cur.description or ()]
            select = ", ".join(
                f"array_to_string(q.{_quote(n)}, ',') AS {_quote(n)}" if oid in _ARRAY_OIDS else f"q.{_quote(n)}"
                for n, oid in desc
            )
            with cur.copy(f"COPY (SELECT {select} FROM ({query}) q) TO STDOUT (FORMAT csv)", named) as cp:
                data = b"".join(bytes(chunk) for chunk in cp)
        names = [n for n, _ in desc]
        types = {n: pa.string() if oid in _ARRAY_OIDS else _ARROW_OF_OID.get(oid, pa.string()) for n, oid in desc}
        if not data:
            table = pa.table({n: pa.array([], type=t) for n, t in types.items()})
        else:
            table = pcsv.read_csv(
                io.BytesIO(data),
                read_options=pcsv.ReadOptions(column_names=names, block_size=1 << 24),
                parse_options=pcsv.ParseOptions(newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(
                    column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False, null_values=[""]
                ),
            )
        for k, (n, oid) in enumerate(desc):
            if oid in _ARRAY_OIDS:
                table = table.set_column(k, n, _split_list(table.column(n).combine_chunks(), _ARRAY_OIDS[oid]))
        return table

    def rows(self, sql: str, params: list, batch: int) -> Generator[list[tuple], None, None]:
        """The rows of ``sql``, ``batch`` at a time, through a server-side cursor."""
        query, named = _psycopg_sql(sql, params)
        with self.pg.cursor(name=f"grove_rows_{next(_tmp_names)}") as cur:
            cur.execute(query, named)
            while part := cur.fetchmany(batch):
                yield part

    def numpy(self, sql: str, params: list) -> dict[str, np.ndarray]:
        t = self.arrow(sql, params)
        return {n: t.column(n).to_numpy() for n in t.column_names}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _names(columns: list[str]) -> str:
    """A quoted column list (a store has a column named "at")."""
    return ", ".join(_quote(c) for c in columns)


def _as_text_arrays(batch: pa.RecordBatch) -> pa.RecordBatch:
    """List columns as PostgreSQL array literals ``{1,2,3}`` (the CSV writer has no lists)."""
    if not any(pa.types.is_list(f.type) for f in batch.schema):
        return batch
    cols = []
    for col in batch.columns:
        if pa.types.is_list(col.type):
            joined = pc.binary_join(col.cast(pa.list_(pa.string())), ",")
            col = pc.binary_join_element_wise("{", joined, "}", "")
        cols.append(col)
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


def _split_list(text: pa.Array, value_type: pa.DataType) -> pa.Array:
    """``'1,2,3'`` -> [1, 2, 3] for a whole column ('' -> [], null -> null), vectorised."""
    parts = pc.split_pattern(text.fill_null(""), ",")  # '' -> [''] : one empty value to drop
    empty = np.asarray(pc.equal(text.fill_null(""), ""))
    lengths = np.asarray(parts.value_lengths()).astype(np.int64)
    lengths[empty] = 0
    values = pc.filter(parts.flatten(), pc.not_equal(parts.flatten(), "")).cast(value_type)
    offsets = np.zeros(len(text) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pc.is_null(text))


Bulk = DuckDBBulk | PostgresBulk
