"""Item category files -> `grove.indexstore.interactions.ItemCategories`: MovieLens ``movies.dat``
(``id::title::g1|g2``, latin-1), ``movies.csv`` (``movieId,title,genres``), or a CSV with an item
column and a category column. One category is kept per item (uniform among its categories,
seeded, as TDM does with multi-genre items)."""

from __future__ import annotations

import csv
import os

import numpy as np

from .columns import resolve_column, sniff_delimiter
from .errors import InputError
from .interactions import ItemCategories
from .readers import first_line, parse_csv, read_bytes, trimmed_strings


def read_item_categories(path, item_raw: np.ndarray, seed: int) -> ItemCategories:
    """Read item categories and keep one per item.

    Parameters
    ----------
    path : MovieLens ``movies.dat`` (``id::title::g1|g2``, latin-1), ``movies.csv``
        (``movieId,title,genres``), or a CSV with an item column (item/item_id/movieId...) and a
        category column (category/categories/genre/genres); several categories per field are
        ``|``-separated and an item may also appear on several rows.
    item_raw : (I,) str -- the dataset's raw item ids (dense id = position).
    seed : seeds the choice of the one category kept per item (uniform among its categories,
        as TDM does with multi-genre items).

    Returns
    -------
    ItemCategories over the I dense items. Items of the file absent from ``item_raw`` are
    ignored; items without any category (or "(no genres listed)") get None.
    """
    path = os.fspath(path)
    data = read_bytes(path)
    first = first_line(data)
    if b"::" in first:
        raw_items, raw_cats = _movies_dat(path, data)
    else:
        raw_items, raw_cats = _category_csv(path, data, first)
    return _keep_one(raw_items, raw_cats, np.asarray(item_raw, dtype=str), seed)


def _movies_dat(path: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    items, cats = [], []
    for lineno, line in enumerate(data.decode("latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) < 3:
            raise InputError(f"{path} line {lineno}: malformed line, expected 'id::title::genres', found {line[:80]!r}")
        items.append(parts[0].strip())
        cats.append(parts[-1].strip())
    return np.asarray(items, dtype=object), np.asarray(cats, dtype=object)


def _category_csv(path: str, data: bytes, first: bytes) -> tuple[np.ndarray, np.ndarray]:
    delim = sniff_delimiter(first)
    names = [n.strip() for n in next(csv.reader([first.decode("utf-8", "replace")], delimiter=delim))]
    item_col = resolve_column(path, names, "item", None, required=True)
    cat_col = resolve_column(path, names, "category", None, required=True)
    table = parse_csv(path, data, names, 1, delim, '"', {"item": item_col, "category": cat_col})
    items = trimmed_strings(table.column(item_col).combine_chunks()).to_numpy(zero_copy_only=False)
    cats = trimmed_strings(table.column(cat_col).combine_chunks()).fill_null("").to_numpy(zero_copy_only=False)
    return np.asarray(items, dtype=object), np.asarray(cats, dtype=object)


def _keep_one(raw_items: np.ndarray, raw_cats: np.ndarray, item_raw: np.ndarray, seed: int) -> ItemCategories:
    # map raw ids to dense through a sorted copy of item_raw; unknown items -> -1
    order = np.argsort(item_raw)
    sorted_raw = item_raw[order]
    keys = raw_items.astype(str)
    pos = np.searchsorted(sorted_raw, keys).clip(0, max(len(sorted_raw) - 1, 0))
    found = (sorted_raw[pos] == keys) if len(sorted_raw) else np.zeros(len(keys), bool)
    dense = np.where(found, order[pos] if len(order) else -1, -1)
    # explode 'a|b|c' fields into pairs, file order kept; drop empty and "(no genres listed)"
    counts = np.fromiter((c.count("|") + 1 for c in raw_cats), np.int64, len(raw_cats))
    pair_item = np.repeat(dense, counts)
    pair_cat = np.asarray("|".join(raw_cats).split("|"), dtype=object) if len(raw_cats) else np.zeros(0, dtype=object)
    pair_cat = np.asarray([c.strip() for c in pair_cat], dtype=object)
    ok = (pair_item >= 0) & (pair_cat != "") & (pair_cat != "(no genres listed)")
    pair_item, pair_cat = pair_item[ok], pair_cat[ok]
    # drop duplicate pairs, keep first occurrence
    cat_names, cat_code = np.unique(pair_cat.astype(str), return_inverse=True)
    key = pair_item.astype(np.int64) * max(len(cat_names), 1) + cat_code
    keep = np.sort(np.unique(key, return_index=True)[1])
    pair_item, pair_cat = pair_item[keep].astype(np.int32), pair_cat[keep]
    # one category per item, uniform among its pairs (stable sort keeps file order per item)
    by_item = np.argsort(pair_item, kind="stable")
    n_per = np.bincount(pair_item, minlength=len(item_raw))
    starts = np.concatenate([[0], np.cumsum(n_per)[:-1]])
    has = np.flatnonzero(n_per)
    rng = np.random.default_rng(seed)
    pick = starts[has] + np.floor(rng.random(len(has)) * n_per[has]).astype(np.int64)
    kept = np.full(len(item_raw), None, dtype=object)
    kept[has] = pair_cat[by_item[pick]]
    return ItemCategories(kept, pair_item, pair_cat)
