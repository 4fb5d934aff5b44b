"""Interaction files -> `grove.indexstore.interactions.Interactions` (dense ids, raw-id maps), in
memory (the store's import streams files through DuckDB instead: `grove.indexstore.bulk_import`; this
reader serves the format detection it shares and small in-memory uses). Item category files are
read by `grove.indexstore.categories`.

Formats (``fmt``; ``"auto"`` looks at the first bytes and the first line):

* ``"csv"`` / ``"tsv"`` / ``"ml-latest"``: delimited text with a header (``,``, tab or ``;``,
  sniffed from the header line); ml-latest's ``userId,movieId,rating,timestamp`` is one of these.
* ``"ml-dat"``: MovieLens-1M/10M ``ratings.dat``: ``user::item::rating::timestamp``, no header.
* ``"ml-100k"``: MovieLens-100K ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``, no header
  (any header-less file whose first line is 3 or 4 numbers reads as user, item, [rating,] time).
* ``"parquet"``.
Gzip-compressed text (``.gz``) is read transparently.

Parsing goes through pyarrow's multithreaded CSV reader with every needed column read as
strings, then converted column-wise, so the raw ids are kept exactly ("007" stays "007"). When a
conversion fails, the offending row is located by bisection (only on that error path) and
reported with its file line number.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq

from .columns import first_bad, line_number, resolve_column, sniff_delimiter
from .errors import InputError
from .interactions import Interactions

FORMATS = ("auto", "csv", "tsv", "ml-latest", "ml-dat", "ml-100k", "parquet")
_NUMERIC_LINE = re.compile(rb"^\s*[+-]?\d+(\.\d*)?([eE][+-]?\d+)?\s*$")
HEADERLESS_NAMES = {4: ["user", "item", "rating", "timestamp"], 3: ["user", "item", "timestamp"]}


def read_bytes(path) -> bytes:
    """The file's bytes (gunzipped if gzip). InputError when missing or empty."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise InputError(f"{path}: corrupt gzip file ({e})") from None
    if data[:3] == b"\xef\xbb\xbf":  # UTF-8 byte-order mark
        data = data[3:]
    if not data or data.isspace():  # isspace stops at the first other byte: no copy
        raise InputError(f"{path}: file is empty")
    return data


def first_line(data: bytes) -> bytes:
    """The first non-empty line, without its line break (no copy of the whole buffer)."""
    start = 0
    while start < len(data) and data[start] in b"\r\n":
        start += 1
    end = data.find(b"\n", start)
    return data[start : end if end >= 0 else len(data)].rstrip(b"\r")


def read_interactions(
    path,
    fmt: str = "auto",
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    rating_col: str | None = None,
    behavior_col: str | None = None,
) -> Interactions:
    """Read an interaction file into dense-id arrays.

    Parameters
    ----------
    path : the file (CSV/TSV with header, MovieLens ``ratings.dat``/``u.data``, Parquet; .gz ok).
    fmt : one of FORMATS.
    user_col, item_col, time_col, rating_col, behavior_col : column names; None picks a common
        name (user/user_id/userId, item/item_id/movieId, ts/time/timestamp, rating,
        behavior/behaviour). User, item and time are required; rating and behaviour optional.

    Returns
    -------
    Interactions, rows in file order. Timestamps: integers, or ISO dates/datetimes (UTC unless
    an offset is given) converted to epoch seconds.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = os.fspath(path)
    asked = {"user": user_col, "item": item_col, "time": time_col, "rating": rating_col, "behavior": behavior_col}
    if fmt == "parquet" or (fmt == "auto" and _is_parquet(path)):
        table, src = _read_parquet(path, asked)
    else:
        table, src = _read_text(path, fmt, asked)
    if table.num_rows == 0:
        raise InputError(f"{path}: file has no interactions (header only)")
    return _to_interactions(table, src)


def _is_parquet(path: str) -> bool:
    if not os.path.isfile(path):
        raise InputError(f"file not found: {path}")
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


class _Source:
    """Where rows come from, to name file and line in messages."""

    def __init__(self, path: str, data: bytes | None, header: int, cols: dict):
        self.path, self.data, self.header, self.cols = path, data, header, cols

    def where(self, row: int, role: str) -> str:
        col = self.cols[role]
        if self.data is None:
            return f"{self.path} row {row + 1} column {col!r}"
        return f"{self.path} line {line_number(self.data, self.header, row)} column {col!r}"


def _resolve_all(path: str, names: list[str], asked: dict) -> dict:
    cols = {}
    for role, name in asked.items():
        cols[role] = resolve_column(path, names, role, name, required=role in ("user", "item", "time"))
    return cols


def _read_parquet(path: str, asked: dict):
    try:
        names = pq.read_schema(path).names
        cols = _resolve_all(path, names, asked)
        table = pq.read_table(path, columns=[c for c in cols.values() if c is not None])
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    return table, _Source(path, None, 0, cols)


def _read_text(path: str, fmt: str, asked: dict):
    data = read_bytes(path)
    first = first_line(data)
    if fmt == "auto":
        fmt = detect_text_format(first)
    quote: str | bool = '"'
    if fmt == "ml-dat":
        # pyarrow wants a one-byte delimiter: '::' -> unit separator (ids and numbers only)
        data, delim, names, header, quote = data.replace(b"::", b"\x1f"), "\x1f", None, 0, False
    elif fmt == "ml-100k" or (fmt == "tsv" and is_numeric_line(first, b"\t")):
        delim, names, header, quote = "\t", None, 0, False
    else:
        delim = "\t" if fmt == "tsv" else sniff_delimiter(first)
        if is_numeric_line(first, delim.encode()):
            names, header = None, 0
        else:
            names = next(csv.reader([first.decode("utf-8", "replace")], delimiter=delim))
            names, header = [n.strip() for n in names], 1
    if names is None:
        n_fields = len(first.split(b"::" if fmt == "ml-dat" else delim.encode()))
        if n_fields not in HEADERLESS_NAMES:
            raise InputError(
                f"{path}: header-less file with {n_fields} fields per line; expected "
                "user, item, [rating,] timestamp, or add a header line"
            )
        names = HEADERLESS_NAMES[n_fields]
    cols = _resolve_all(path, names, asked)
    table = parse_csv(path, data, names, header, delim, quote, cols)
    return table, _Source(path, data, header, cols)


def detect_text_format(first: bytes) -> str:
    """The text format of a file whose first non-blank line is ``first``: "ml-dat" (``::``),
    "ml-100k" (tab-separated numbers) or "csv"."""
    if b"::" in first:
        return "ml-dat"
    if b"\t" in first and is_numeric_line(first, b"\t"):
        return "ml-100k"
    return "csv"


def is_numeric_line(line: bytes, delim: bytes) -> bool:
    """True when ``line`` has 3 or more ``delim``-separated fields, all numbers (no header)."""
    fields = line.split(delim)
    return len(fields) >= 3 and all(_NUMERIC_LINE.match(f) for f in fields)


def parse_csv(path, data, names, header, delim, quote, cols) -> pa.Table:
    needed = [c for c in cols.values() if c is not None]
    read = pv.ReadOptions(column_names=names, skip_rows=header, block_size=1 << 22)
    parse = pv.ParseOptions(delimiter=delim, quote_char=quote)
    conv = pv.ConvertOptions(include_columns=needed, column_types={c: pa.string() for c in needed})
    for attempt in (0, 1):
        try:
            return pv.read_csv(io.BytesIO(data), read_options=read, parse_options=parse, convert_options=conv)
        except pa.ArrowInvalid as e:
            msg = str(e)
            if "columns, got" in msg:
                raise InputError(_malformed_line(path, data, header, delim, quote, len(names))) from None
            if "UTF8" in msg.upper() and attempt == 0:
                data = data.decode("latin-1").encode("utf-8")  # legacy MovieLens files
                continue
            raise InputError(f"{path}: cannot parse ({msg.splitlines()[0]})") from None
    raise AssertionError("unreachable")


def _malformed_line(path, data, header, delim, quote, expected) -> str:
    """Scan (error path only) for the first line whose field count differs."""
    text = data.decode("utf-8", "replace").splitlines()
    for lineno, line in enumerate(text, start=1):
        if lineno <= header or not line.strip():
            continue
        n = len(next(csv.reader([line], delimiter=delim))) if quote else len(line.split(delim))
        if n != expected:
            shown = line.replace("\x1f", "::")[:80]
            return f"{path} line {lineno}: malformed line, expected {expected} fields, found {n}: {shown!r}"
    return f"{path}: malformed line (field count differs from the header)"


def _to_interactions(table: pa.Table, src: _Source) -> Interactions:
    cols = src.cols
    get = lambda role: table.column(cols[role]).combine_chunks()  # noqa: E731
    user, user_raw = _dense_ids(get("user"), src, "user")
    item, item_raw = _dense_ids(get("item"), src, "item")
    ts = _timestamps(get("time"), src)
    rating = _numbers(get("rating"), src, "rating") if cols["rating"] else None
    behavior = None
    if cols["behavior"]:
        behavior = np.asarray(pc.cast(get("behavior"), pa.string()).to_numpy(zero_copy_only=False), dtype=object)
    return Interactions(user, item, ts, rating, behavior, user_raw, item_raw)


def trimmed_strings(arr: pa.Array) -> pa.Array:
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    return pc.utf8_trim_whitespace(arr)


def _dense_ids(arr: pa.Array, src: _Source, role: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw ids -> (dense (n,) int32, raw (U,) str), dense order = numeric order if every raw id
    is a number, else lexicographic."""
    ints = _canonical_ints(arr)
    if ints is not None:  # fast path: integer ids written canonically ("7", not "007")
        return _dense_from_ints(ints)
    arr = trimmed_strings(arr)
    missing = pc.or_kleene(pc.is_null(arr), pc.equal(arr, "")).fill_null(True)
    if pc.any(missing).as_py():
        row = int(np.flatnonzero(missing.to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{src.where(row, role)}: missing {role} id")
    enc = pc.dictionary_encode(arr)
    raw = np.asarray(enc.dictionary.to_numpy(zero_copy_only=False), dtype=str)
    try:
        num = pc.cast(enc.dictionary, pa.float64()).to_numpy()
        order = np.lexsort((raw, num))  # numeric, ties ("7" vs "07") by string
    except pa.ArrowInvalid:
        order = np.argsort(raw, kind="stable")
    rank = np.empty(order.shape[0], dtype=np.int32)
    rank[order] = np.arange(order.shape[0], dtype=np.int32)
    dense = rank[enc.indices.to_numpy(zero_copy_only=False)]
    return dense.astype(np.int32, copy=False), raw[order]


def _canonical_ints(arr: pa.Array) -> np.ndarray | None:
    """(n,) int64 when every id is an integer whose decimal text is the raw id, else None."""
    if arr.null_count:
        return None
    if pa.types.is_integer(arr.type):
        return arr.to_numpy().astype(np.int64, copy=False)
    if not pa.types.is_string(arr.type):
        return None
    try:
        ints = pc.cast(arr, pa.int64())
    except pa.ArrowInvalid:
        return None
    if not pc.all(pc.equal(pc.cast(ints, pa.string()), arr)).as_py():
        return None  # leading zeros, '+' or spaces: keep the raw text through the string path
    return ints.to_numpy()


def _dense_from_ints(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer ids -> dense ranks in numeric order; a lookup table when the id range is small."""
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo < 4 * ids.shape[0] + (1 << 20):
        present = np.zeros(hi - lo + 1, dtype=bool)
        present[ids - lo] = True
        rank = np.cumsum(present, dtype=np.int64) - 1  # (range,)
        uniq = np.flatnonzero(present) + lo
        dense = rank[ids - lo]
    else:
        uniq, dense = np.unique(ids, return_inverse=True)
    return dense.astype(np.int32), uniq.astype(str)


def _numbers(arr: pa.Array, src: _Source, role: str) -> np.ndarray:
    """Rating column -> (n,) float32; InputError naming the first non-numeric value."""
    convert = lambda a: pc.cast(a, pa.float64())  # noqa: E731
    try:
        out = convert(arr)
    except pa.ArrowInvalid:
        arr = trimmed_strings(arr)
    try:
        out = convert(arr)
    except pa.ArrowInvalid:
        row = first_bad(arr, convert)
        raise InputError(f"{src.where(row, role)}: non-numeric {role} {arr[row].as_py()!r}") from None
    if out.null_count:
        row = int(np.flatnonzero(pc.is_null(out).to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{src.where(row, role)}: missing {role}")
    return out.to_numpy().astype(np.float32)


def _timestamps(arr: pa.Array, src: _Source) -> np.ndarray:
    """Time column -> (n,) int64 epoch seconds. Integers (or integral floats) are taken as epoch
    seconds; ISO dates / datetimes (naive = UTC, or with an offset) are converted."""
    t = arr.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):  # Parquet temporal columns
        per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
        if pa.types.is_date(t):
            arr = pc.cast(arr, pa.timestamp("ms"))
        ticks = pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False)
        arr = pa.array(
            np.floor_divide(ticks, per_second[arr.type.unit]), mask=pc.is_null(arr).to_numpy(zero_copy_only=False)
        )
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        arr = pc.floor(pc.cast(arr, pa.float64())) if pa.types.is_floating(t) else arr
    else:
        try:
            arr = pc.cast(arr, pa.int64())  # fast path: epoch seconds
        except pa.ArrowInvalid:
            arr = _parse_time_strings(trimmed_strings(arr), src)
    if arr.null_count:
        row = int(np.flatnonzero(pc.is_null(arr).to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{src.where(row, 'time')}: missing timestamp")
    return arr.to_numpy(zero_copy_only=False).astype(np.int64)


def _parse_time_strings(arr: pa.Array, src: _Source) -> pa.Array:
    converters = [
        lambda a: pc.cast(a, pa.int64()),
        lambda a: pc.cast(pc.floor(pc.cast(a, pa.float64())), pa.int64()),
        lambda a: pc.divide(pc.cast(pc.cast(a, pa.timestamp("ns")), pa.int64()), 10**9),
        lambda a: pc.divide(pc.cast(pc.cast(a, pa.timestamp("ns", tz="UTC")), pa.int64()), 10**9),
    ]
    for conv in converters:
        try:
            return conv(arr)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    # pick the converter matching the first value to find the first offending row
    probe = next((conv for conv in converters if _ok(conv, arr.slice(0, 1))), converters[0])
    row = first_bad(arr, probe)
    raise InputError(
        f"{src.where(row, 'time')}: non-numeric timestamp {arr[row].as_py()!r} "
        "(expected epoch seconds or an ISO date/datetime)"
    )


def _ok(conv, arr) -> bool:
    try:
        conv(arr)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
