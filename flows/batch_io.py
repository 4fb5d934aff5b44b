"""The files of a batch retrieval job: users' histories in, (user, rank, item, score) rows out.

Input: a parquet file with a column ``user`` (integers or strings) and a column ``history``
(a list of raw item ids, strings or integers, oldest first; null or [] = no history: the user
gets the index's answer for an empty history). Other columns are ignored. The file is read in
bounded pieces, never whole: a job is cut into `Part` s of whole chunks (``batch_size`` users),
and a part is read chunk by chunk (`read_chunks`) wherever it runs. The users of a split are
an in-memory table (`held_out_table`) carried by the parts themselves.

Output: one parquet file, columns ``user`` (the input's type), ``rank`` int32 from 1, ``item``
(raw id, string), ``score`` float32; one row per item found, best first (a user of whom fewer
than k items were found has fewer rows). `RowsWriter` writes it streaming to a temporary file
beside the target, renamed at the end: a failed job leaves no partial file (and a file that
was there before as it was).

Errors name the file, the row (from 1, as `grove data import` does) and the column.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from grove.indexstore.errors import GroveError, InputError
from grove.models.limits import MAX_HISTORY

USER, HISTORY = "user", "history"
ROW_GROUP_ROWS = 1 << 20  # output rows per parquet row group


@dataclass(frozen=True)
class UsersFile:
    """An input file checked at its schema: path, number of rows, the user column's type."""

    path: str
    rows: int
    user_type: pa.DataType


def _type_ok(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def open_users(path: str) -> UsersFile:
    """Check the users file (exists, parquet, columns ``user`` and ``history`` of usable types)
    from its metadata alone; InputError naming the file and column otherwise."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable parquet file ({exc})") from None
    schema = pf.schema_arrow
    for col in (USER, HISTORY):
        if col not in schema.names:
            raise InputError(f"{path}: no column {col!r} (columns: {', '.join(schema.names)})")
    user = schema.field(USER).type
    if not _type_ok(user):
        raise InputError(f"{path} column 'user': expected integers or strings, got {user}")
    hist = schema.field(HISTORY).type
    if not (pa.types.is_list(hist) or pa.types.is_large_list(hist)) or not _type_ok(hist.value_type):
        raise InputError(f"{path} column 'history': expected a list of item ids (strings or integers), got {hist}")
    return UsersFile(path, pf.metadata.num_rows, user)


@dataclass(frozen=True)
class Part:
    """Users ``[lo, hi)`` of a job: rows of the parquet file ``path``, or, for users held in
    memory, ``data``: those rows as Arrow IPC bytes. ``lo`` is a multiple of the chunk size."""

    lo: int
    hi: int
    path: str | None = None
    data: bytes | None = None

    def to_row(self) -> dict:
        """As a row of a Ray dataset."""
        return {"lo": self.lo, "hi": self.hi, "path": self.path or "", "data": self.data or b""}

    @classmethod
    def from_row(cls, row: dict) -> Part:
        return cls(int(row["lo"]), int(row["hi"]), row["path"] or None, row["data"] or None)


def spans(rows: int, batch_size: int, parts: int) -> list[tuple[int, int]]:
    """``rows`` cut into about ``parts`` spans of whole chunks of ``batch_size`` rows."""
    chunks = -(-rows // batch_size)
    per = max(1, -(-chunks // max(parts, 1))) * batch_size
    return [(lo, min(lo + per, rows)) for lo in range(0, rows, per)]


def file_parts(users: UsersFile, batch_size: int, parts: int = 1) -> list[Part]:
    """Parts naming the file by its absolute path (workers do not share our directory)."""
    path = os.path.abspath(users.path)
    return [Part(lo, hi, path=path) for lo, hi in spans(users.rows, batch_size, parts)]


def table_parts(table: pa.Table, batch_size: int, parts: int = 1) -> list[Part]:
    """Parts carrying their rows (Arrow IPC bytes): users held in memory, sent to workers."""
    out = []
    for lo, hi in spans(table.num_rows, batch_size, parts):
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(lo, hi - lo))
        out.append(Part(lo, hi, data=sink.getvalue().to_pybytes()))
    return out


def read_chunks(part: Part, batch_size: int) -> Iterator[tuple[int, pa.Table]]:
    """(first row, table) of every chunk of the part: ``batch_size`` rows (the last may be
    shorter), columns user and history, starting at ``part.lo``."""
    if part.data is not None:
        table = ipc.open_stream(part.data).read_all()
        for lo in range(0, table.num_rows, batch_size):
            yield part.lo + lo, table.slice(lo, batch_size)
        return
    assert part.path is not None
    try:
        pf = pq.ParquetFile(part.path)
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        first = int(np.searchsorted(starts, part.lo, side="right")) - 1  # the row group holding lo
        last = int(np.searchsorted(starts, part.hi, side="left"))  # row groups [first, last)
        batches = pf.iter_batches(batch_size=batch_size, row_groups=range(first, last), columns=[USER, HISTORY])
        wanted = _between(batches, int(starts[first]), part.lo, part.hi)
        for i, chunk in enumerate(_rechunk(wanted, batch_size, pf.schema_arrow)):
            yield part.lo + i * batch_size, chunk
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{part.path}: cannot read rows {part.lo + 1}-{part.hi} ({exc})") from None


def _between(batches: Iterable[pa.RecordBatch], pos: int, lo: int, hi: int) -> Iterator[pa.RecordBatch]:
    """The rows ``[lo, hi)`` of a stream of batches whose first row is row ``pos``."""
    for rb in batches:
        a, b = max(lo, pos), min(hi, pos + rb.num_rows)
        if a < b:
            yield rb.slice(a - pos, b - a)
        pos += rb.num_rows
        if pos >= hi:
            return


def _rechunk(batches: Iterable[pa.RecordBatch], size: int, schema: pa.Schema) -> Iterator[pa.Table]:
    """Tables of exactly ``size`` rows (the last may be shorter) from batches of any size."""
    schema = pa.schema([schema.field(USER), schema.field(HISTORY)])
    pending: list[pa.RecordBatch] = []
    n = 0
    for rb in batches:
        pending.append(rb)
        n += rb.num_rows
        while n >= size:
            table = pa.Table.from_batches(pending, schema)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, n = rest.to_batches(), rest.num_rows
    if n:
        yield pa.Table.from_batches(pending, schema)


def chunk_histories(table: pa.Table, source: str, first_row: int) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(users (B,) Arrow array, offsets (B+1,) int64, raw item ids (nnz,)) of a chunk; an
    InputError naming ``source``, the row and the column of a null user, a null item id or a
    history longer than `grove.models.limits.MAX_HISTORY`."""
    users = table.column(USER).combine_chunks()
    if users.null_count:
        row = first_row + int(np.argmax(np.asarray(users.is_null())))
        raise InputError(f"{source} row {row + 1} column 'user': the user is null")
    hist = table.column(HISTORY).combine_chunks()
    lengths = np.asarray(pc.list_value_length(hist).fill_null(0), dtype=np.int64)  # (B,), null = []
    if lengths.size and lengths.max() > MAX_HISTORY:
        row = int(np.argmax(lengths > MAX_HISTORY))
        raise InputError(
            f"{source} row {first_row + row + 1} column 'history': {lengths[row]:,} item ids, "
            f"at most {MAX_HISTORY:,} per history"
        )
    values = pc.list_flatten(hist)  # null lists give nothing
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if values.null_count:
        at = int(np.argmax(np.asarray(values.is_null())))
        row = int(np.searchsorted(offsets, at, side="right")) - 1
        raise InputError(f"{source} row {first_row + row + 1} column 'history': a null item id")
    return users, offsets, values.to_numpy(zero_copy_only=False)


def held_out_table(users: np.ndarray, offsets: np.ndarray, items: np.ndarray) -> pa.Table:
    """A split's held-out users as an input table: users (U,) raw ids, their histories as the
    CSR ``offsets`` (U+1,) over raw item ids ``items`` (oldest first)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets[-1] < 2**31:
        hist = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(items, pa.string()))
    else:  # more ids than int32 offsets address
        hist = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(items, pa.string()))
    return pa.table({USER: pa.array(users, pa.string()), HISTORY: hist})


def output_schema(user_type: pa.DataType) -> pa.Schema:
    return pa.schema([(USER, user_type), ("rank", pa.int32()), ("item", pa.string()), ("score", pa.float32())])


def check_out(path: str) -> pathlib.Path:
    """The output path, refused (InputError) when it is a directory or its folder is missing."""
    target = pathlib.Path(path)
    if target.is_dir():
        raise InputError(f"{path}: is a directory, not an output file")
    if not target.parent.is_dir():
        raise InputError(f"{path}: no such directory {str(target.parent)!r}")
    return target


class RowsWriter:
    """The output file, written streaming to ``.<name>.<pid>.tmp`` beside it and renamed on a
    clean exit; removed on any error (``with RowsWriter(path, schema) as w: w.write(table)``)."""

    def __init__(self, path: str, schema: pa.Schema):
        target = check_out(path)
        self.path, self.schema = target, schema
        self.tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> RowsWriter:
        try:
            self._writer = pq.ParquetWriter(str(self.tmp), self.schema)
        except OSError as exc:
            raise GroveError(f"{self.path}: cannot write ({exc})") from None
        return self

    def write(self, table: pa.Table) -> None:
        """Append rows (the output's columns, in order); a row group per ~10^6 rows."""
        self._pending.append(table.select(self.schema.names).cast(self.schema))
        if sum(t.num_rows for t in self._pending) >= ROW_GROUP_ROWS:
            self._flush()
        self.rows += table.num_rows

    def _flush(self) -> None:
        if self._pending and self._writer is not None:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=ROW_GROUP_ROWS)
        self._pending = []

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:
                self._flush()
            if self._writer is not None:
                self._writer.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)
