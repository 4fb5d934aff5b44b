"""Which column of a file plays which role (user, item, time, rating, behaviour, category),
the delimiter of a header line, and where a bad value is (its file line; the first bad element
of an array). Shared by the readers, the file sniffing of the streamed import and the category
reader."""

from __future__ import annotations

import re

import pyarrow as pa

from .errors import InputError

_CANDIDATES = {
    "user": ("user", "user_id", "userId", "uid", "visitorid", "reviewerID", "customer_id"),
    "item": ("item", "item_id", "itemId", "movieId", "movie_id", "iid", "product_id", "asin"),
    "time": ("ts", "time", "timestamp", "datetime", "date", "event_time", "unix_time"),
    "rating": ("rating", "ratings", "score", "stars", "overall"),
    "behavior": ("behavior", "behaviour", "behavior_type", "behaviour_type", "event_type", "action"),
    "category": ("category", "categories", "genre", "genres", "cat", "category_id"),
}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def resolve_column(path: str, names: list[str], role: str, asked: str | None, required: bool) -> str | None:
    """The column of ``names`` playing ``role``: ``asked`` (exact, then case-insensitive) or the
    first common name found. InputError listing the columns found when it is missing."""
    found = ", ".join(names)
    if asked is not None:
        for match in ([n for n in names if n == asked], [n for n in names if _norm(n) == _norm(asked)]):
            if match:
                return match[0]
        raise InputError(f"{path}: column {asked!r} ({role}_col) not found; columns found: {found}")
    normed = {_norm(n): n for n in reversed(names)}
    for cand in _CANDIDATES[role]:
        if _norm(cand) in normed:
            return normed[_norm(cand)]
    if required:
        tried = ", ".join(_CANDIDATES[role][:4])
        raise InputError(
            f"{path}: no {role} column (tried {tried}, ...); columns found: {found}; name it with {role}_col"
        )
    return None


def sniff_delimiter(header: bytes) -> str:
    """Tab if the line has tabs, ';' if it has semicolons and no commas, else ','."""
    if b"\t" in header:
        return "\t"
    if b";" in header and b"," not in header:
        return ";"
    return ","


def line_number(data: bytes, header: int, row: int) -> int:
    """1-based file line of data row ``row`` (blank lines are skipped by the parser)."""
    if b"\n\n" not in data and b"\n\r\n" not in data and not data.startswith((b"\n", b"\r\n")):
        return header + row + 1
    seen = -1
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if lineno > header and line.strip():
            seen += 1
            if seen == row:
                return lineno
    return header + row + 1


def first_bad(arr: pa.Array, convert) -> int:
    """Index of the first element on which ``convert`` raises (bisection: ~2n work)."""
    lo, n = 0, len(arr)
    while n > 1:
        half = n // 2
        try:
            convert(arr.slice(lo, half))
            lo, n = lo + half, n - half
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            n = half
    return lo
