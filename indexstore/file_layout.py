"""How an interaction file is laid out, learnt from its first bytes; where its N-th record is.

`sniff_layout` reads only the start of the file (gunzipping a stream when it is gzip) to tell
Parquet from text, the text format, the delimiter, whether there is a header, how many lines
precede the first record and which column plays each role. The rows themselves are read by
DuckDB (`grove.indexstore.bulk_import`).

`locate_record` streams the text file line by line to give the 1-based file line and the fields
of data record N (0-based, in file order). It runs only on error paths, to name the line and the
value of the first bad record.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import zlib
from dataclasses import dataclass

from grove.indexstore.columns import resolve_column, sniff_delimiter
from grove.indexstore.errors import InputError
from grove.indexstore.readers import FORMATS, HEADERLESS_NAMES, detect_text_format, is_numeric_line

ROLES = ("user", "item", "time", "rating", "behavior")
_REQUIRED = ("user", "item", "time")
_CHUNK = 1 << 16  # bytes read per peek step
_MAX_FIRST_LINE = 1 << 24  # a header longer than 16 MiB is not an interaction file
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


@dataclass(frozen=True)
class InteractionFile:
    """An interaction file to import and how to read it.

    fmt : one of `grove.indexstore.readers.FORMATS` ("auto" sniffs it).
    user_col ... behavior_col : column names; None picks a common name (`readers.resolve_column`).
    """

    path: str
    fmt: str = "auto"
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    rating_col: str | None = None
    behavior_col: str | None = None

    def __post_init__(self):
        if self.fmt not in FORMATS:
            raise InputError(f"unknown format {self.fmt!r}; expected one of {', '.join(FORMATS)}")
        object.__setattr__(self, "path", os.fspath(self.path))

    def asked(self) -> dict:
        return {role: getattr(self, f"{role}_col") for role in ROLES}


@dataclass(frozen=True)
class Layout:
    """What DuckDB needs to read the file, and which column plays which role.

    kind : "text" or "parquet".  names : every column in file order (text: from the header, or
    user/item/[rating/]timestamp without one).  cols : role -> column name (None: absent).
    types : parquet column name -> DuckDB type ({} for text).  Text only: gzip, delim ("," "\\t"
    ";" or "::"), quote ('"' or "" for none), skip = lines before the first record (leading
    blank lines and the header).
    """

    path: str
    kind: str
    names: tuple
    cols: dict
    types: dict
    gzip: bool = False
    delim: str = ","
    quote: str = '"'
    skip: int = 0

    def index(self, role: str) -> int:
        return self.names.index(self.cols[role])


def sniff_layout(source: InteractionFile, parquet_types) -> Layout:
    """The file's layout. ``parquet_types(path) -> {name: type}`` reads a Parquet schema (the
    caller's DuckDB connection). InputError when missing, empty, binary or without a column."""
    path = source.path
    if not os.path.isfile(path):
        raise InputError(f"file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if source.fmt == "parquet" or (source.fmt == "auto" and magic == b"PAR1"):
        types = parquet_types(path)
        names = tuple(types)
        return Layout(path, "parquet", names, _resolve(path, names, source.asked()), types)
    is_gzip = magic[:2] == b"\x1f\x8b"
    head, blank_lines = _first_line(path, is_gzip)
    return _text_layout(source, head, blank_lines, is_gzip)


def _text_layout(source: InteractionFile, first: bytes, blank_lines: int, is_gzip: bool) -> Layout:
    path, fmt = source.path, source.fmt
    if fmt == "auto":
        fmt = detect_text_format(first)
    if fmt == "ml-dat":
        delim, header, quote = "::", False, ""
    elif fmt == "ml-100k" or (fmt == "tsv" and is_numeric_line(first, b"\t")):
        delim, header, quote = "\t", False, ""
    else:
        delim = "\t" if fmt == "tsv" else sniff_delimiter(first)
        header, quote = not is_numeric_line(first, delim.encode()), '"'
    if header:
        try:
            fields = next(csv.reader([first.decode("utf-8", "replace")], delimiter=delim))
        except csv.Error as exc:  # e.g. a lone carriage return inside the header line
            raise InputError(f"{path}: line {blank_lines + 1}: cannot read the header line: {exc}") from None
        names = tuple(_CONTROL.sub("?", n.strip()) for n in fields)
    else:
        n_fields = len(first.split(delim.encode()))
        if n_fields not in HEADERLESS_NAMES:
            raise InputError(
                f"{path}: header-less file with {n_fields} fields per line; expected "
                "user, item, [rating,] timestamp, or add a header line"
            )
        names = tuple(HEADERLESS_NAMES[n_fields])
    cols = _resolve(path, names, source.asked())
    return Layout(path, "text", names, cols, {}, is_gzip, delim, quote, blank_lines + int(header))


def _resolve(path: str, names: tuple, asked: dict) -> dict:
    return {
        role: resolve_column(path, list(names), role, name, required=role in _REQUIRED) for role, name in asked.items()
    }


def _first_line(path: str, is_gzip: bool) -> tuple[bytes, int]:
    """(first non-blank line without BOM or line break, number of lines before it). Reads only
    as far as that line ends; InputError on an empty, binary or corrupt file."""
    skipped, buf, first = 0, b"", True
    with _open_bytes(path, is_gzip) as f:
        while True:
            chunk = _read(f, path)
            if first and chunk.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
                chunk = chunk[3:]
            first = False
            if b"\x00" in chunk:
                raise InputError(f"{path}: binary data (a NUL byte); expected a text or Parquet interaction file")
            buf += chunk
            if not buf.strip():  # only whitespace so far: keep its line count, not its bytes
                if not chunk:
                    raise InputError(f"{path}: file is empty")
                skipped, buf = skipped + buf.count(b"\n"), buf[buf.rfind(b"\n") + 1 :]
                continue
            text_at = len(buf) - len(buf.lstrip())
            if b"\n" in buf[text_at:] or not chunk:
                break
            if len(buf) > _MAX_FIRST_LINE:
                raise InputError(f"{path}: first line is longer than {_MAX_FIRST_LINE:,} bytes")
    line_at = buf.rfind(b"\n", 0, text_at) + 1
    line = buf[line_at:].split(b"\n", 1)[0].rstrip(b"\r")
    return line, skipped + buf[:line_at].count(b"\n")


def _open_bytes(path: str, is_gzip: bool):
    return gzip.open(path, "rb") if is_gzip else open(path, "rb")


def _read(f, path: str) -> bytes:
    try:
        return f.read(_CHUNK)
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: corrupt gzip file ({e})") from None


# ---------------------------------------------------------------------- error path: records


def _text_lines(layout: Layout, encoding: str):
    raw = _open_bytes(layout.path, layout.gzip)
    return io.TextIOWrapper(
        raw, encoding="utf-8-sig" if encoding == "utf-8" else encoding, errors="replace", newline=""
    )


def _records(layout: Layout, encoding: str):
    """Yield (first file line, fields) of every data record in file order, as DuckDB reads
    them: blank lines skipped, quotes honoured when the format has them."""
    with _text_lines(layout, encoding) as f:
        for _ in range(layout.skip):
            f.readline()
        if layout.quote:
            reader = csv.reader(f, delimiter=layout.delim, quotechar=layout.quote)
            before = 0
            for fields in reader:
                if fields:
                    yield layout.skip + before + 1, fields
                before = reader.line_num
        else:
            for lineno, line in enumerate(f, start=layout.skip + 1):
                line = line.rstrip("\r\n")
                if line:
                    yield lineno, line.split(layout.delim)


def locate_record(layout: Layout, row: int, encoding: str = "utf-8") -> tuple[int, list]:
    """(1-based file line, fields) of data record ``row`` (0-based). Streams the file."""
    for k, (lineno, fields) in enumerate(_records(layout, encoding)):
        if k == row:
            return lineno, fields
    raise InputError(f"{layout.path}: record {row + 1} not found on a second read")


def first_malformed(layout: Layout, encoding: str = "utf-8") -> str | None:
    """The message for the first record whose field count differs from the header's, or None."""
    expected = len(layout.names)
    for lineno, fields in _records(layout, encoding):
        if len(fields) != expected:
            shown = layout.delim.join(fields)[:80]
            return (
                f"{layout.path} line {lineno}: malformed line, expected {expected} fields, "
                f"found {len(fields)}: {shown!r}"
            )
    return None
