"""Datasets and splits in the store's tables (interactions, id maps, categories, user roles).

Functions take an open SQLAlchemy connection of the caller's transaction and move arrays through
its bulk channel (`grove.indexstore.backends`: pyarrow in, arrow out). Rows keep the order they were
imported in (DuckDB's plain scans keep insertion order; on PostgreSQL the reads order by ctid),
so a dataset reads back exactly as it was written.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from grove.indexstore.backends import Bulk, bulk
from grove.indexstore.entities import DatasetInfo, SplitInfo, utcnow
from grove.indexstore.errors import GroveError, InputError, NotFoundError

ROLES = ("train", "valid", "test")


def _strings(values) -> pa.Array:
    return pa.array(np.asarray(values, dtype=object), type=pa.string(), from_pandas=True)


def dataset_info(row) -> DatasetInfo:
    return DatasetInfo(
        row.name,
        row.source,
        row.created_at,
        int(row.n_users),
        int(row.n_items),
        int(row.n_interactions),
        json.loads(row.meta or "{}"),
    )


def get_dataset(conn: sa.Connection, name: str) -> DatasetInfo:
    row = conn.execute(sa.text("SELECT * FROM datasets WHERE name = :n"), {"n": name}).first()
    if row is None:
        known = [r[0] for r in conn.exec_driver_sql("SELECT name FROM datasets ORDER BY name")]
        raise NotFoundError(f"unknown dataset {name!r}; the store has: {', '.join(known) or 'none'}")
    return dataset_info(row)


def _check_interactions(inter, categories) -> None:
    n = inter.user.shape[0]
    for col in ("item", "ts", "rating", "behavior"):
        arr = getattr(inter, col)
        if arr is not None and arr.shape[0] != n:
            raise InputError(f"interactions column {col} has {arr.shape[0]} rows, user has {n}")
    if n == 0:
        raise InputError("the dataset has no interactions")
    if inter.user.min() < 0 or inter.user.max() >= len(inter.user_raw):
        raise InputError(f"a dense user id is outside [0, {len(inter.user_raw)})")
    if inter.item.min() < 0 or inter.item.max() >= len(inter.item_raw):
        raise InputError(f"a dense item id is outside [0, {len(inter.item_raw)})")
    if categories is not None and len(categories.kept) != len(inter.item_raw):
        raise InputError(f"categories cover {len(categories.kept)} items, the dataset has {len(inter.item_raw)}")


def refuse_existing(conn: sa.Connection, name: str) -> None:
    """GroveError when dataset ``name`` exists (datasets are immutable)."""
    if conn.execute(sa.text("SELECT 1 FROM datasets WHERE name = :n"), {"n": name}).first():
        raise GroveError(f"dataset {name!r} already exists; pick another --name")


def import_dataset(conn: sa.Connection, name: str, inter, categories, source: str | None, meta: dict) -> DatasetInfo:
    """Insert a new dataset (refuses a name already taken: datasets are immutable)."""
    refuse_existing(conn, name)
    _check_interactions(inter, categories)
    io = bulk(conn)
    cols = {
        "user_id": np.asarray(inter.user, np.int32),
        "item_id": np.asarray(inter.item, np.int32),
        "ts": np.asarray(inter.ts, np.int64),
    }
    if inter.rating is not None:  # absent columns stay NULL
        cols["rating"] = np.asarray(inter.rating, np.float64)
    if inter.behavior is not None:
        cols["behavior"] = _strings(inter.behavior)
    io.write("interactions", pa.table(cols), {"dataset": name})
    for table, raw in (("user_ids", inter.user_raw), ("item_ids", inter.item_raw)):
        col = "user_id" if table == "user_ids" else "item_id"
        io.write(table, pa.table({col: np.arange(len(raw), dtype=np.int32), "raw": _strings(raw)}), {"dataset": name})
    write_items(io, name, len(inter.item_raw), categories)
    insert_dataset_row(conn, name, source, len(inter.user_raw), len(inter.item_raw), int(inter.user.shape[0]), meta)
    return get_dataset(conn, name)


def write_items(io: Bulk, name: str, n_items: int, categories) -> None:
    """``items`` rows (the kept category per dense item, NULL without ``categories``) and the
    ``item_categories`` pairs of an `ItemCategories` over ``n_items`` items."""
    kept = categories.kept if categories is not None else np.full(n_items, None, object)
    items = pa.table({"item_id": np.arange(len(kept), dtype=np.int32), "category": _strings(kept)})
    io.write("items", items, {"dataset": name})
    if categories is not None and len(categories.pair_item):
        pairs = pa.table(
            {"item_id": np.asarray(categories.pair_item, np.int32), "category": _strings(categories.pair_category)}
        )
        io.write("item_categories", pairs, {"dataset": name})


def insert_dataset_row(
    conn: sa.Connection, name: str, source: str | None, n_users: int, n_items: int, n_interactions: int, meta: dict
) -> None:
    conn.execute(
        sa.text("INSERT INTO datasets VALUES (:n, :s, :t, :u, :i, :x, :m)"),
        {
            "n": name,
            "s": source,
            "t": utcnow(),
            "u": n_users,
            "i": n_items,
            "x": n_interactions,
            "m": json.dumps(meta or {}),
        },
    )


def _raw(io: Bulk, table: str, col: str, name: str) -> np.ndarray:
    t = io.arrow(f"SELECT {col}, raw FROM {table} WHERE dataset = $1", [name])
    ids = np.asarray(t.column(col)).astype(np.int64)
    out = np.empty(ids.shape[0], dtype=object)
    out[ids] = t.column("raw").to_numpy(zero_copy_only=False)
    return out.astype(str) if out.size else np.array([], dtype=str)


def load_interactions(conn: sa.Connection, name: str):
    """The dataset's interactions as an `grove.indexstore.readers.Interactions` (import order)."""
    from grove.indexstore.interactions import Interactions

    get_dataset(conn, name)
    io = bulk(conn)
    t = io.arrow(
        "SELECT user_id, item_id, ts, rating, behavior FROM interactions WHERE dataset = $1" + io.in_insert_order,
        [name],
    )
    rating_col, behavior_col = t.column("rating"), t.column("behavior")
    rating = (
        None
        if rating_col.null_count == t.num_rows
        else np.asarray(rating_col.combine_chunks().fill_null(np.nan)).astype(np.float32)
    )
    behavior = (
        None
        if behavior_col.null_count == t.num_rows
        else np.asarray(behavior_col.to_numpy(zero_copy_only=False), dtype=object)
    )
    return Interactions(
        np.asarray(t.column("user_id")).astype(np.int32),
        np.asarray(t.column("item_id")).astype(np.int32),
        np.asarray(t.column("ts")).astype(np.int64),
        rating,
        behavior,
        _raw(io, "user_ids", "user_id", name),
        _raw(io, "item_ids", "item_id", name),
    )


def load_positives(conn: sa.Connection, name: str, positive_rating: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's positives (rating >= ``positive_rating``; every interaction when there is
    no threshold or no rating) as (users (P,), items (P,)) int32 dense ids ordered by (user,
    time, import order), sorted by DuckDB: only two int32 columns reach Python, not the whole
    table with its raw ids (`grove.indexstore.protocol.split_data_from_positives`)."""
    get_dataset(conn, name)
    rated = conn.execute(sa.text("SELECT count(rating) FROM interactions WHERE dataset = :d"), {"d": name}).scalar()
    io = bulk(conn)
    where, params = "dataset = $1", [name]
    if rated and positive_rating is not None:  # float32 comparison, as `protocol.positive_mask`
        where, params = where + " AND CAST(rating AS REAL) >= CAST($2 AS REAL)", [name, str(positive_rating)]
    cols = io.numpy(f"SELECT user_id, item_id FROM interactions WHERE {where} ORDER BY user_id, ts, {io.rowid}", params)
    return np.asarray(cols["user_id"], dtype=np.int32), np.asarray(cols["item_id"], dtype=np.int32)


def item_raw_ids(conn: sa.Connection, name: str) -> np.ndarray:
    get_dataset(conn, name)
    return _raw(bulk(conn), "item_ids", "item_id", name)


def user_raw_ids(conn: sa.Connection, name: str) -> np.ndarray:
    get_dataset(conn, name)
    return _raw(bulk(conn), "user_ids", "user_id", name)


def item_category_codes(conn: sa.Connection, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes (n_items,) int32 with -1 for none, names (C,) str sorted) of the kept categories."""
    info = get_dataset(conn, name)
    t = bulk(conn).arrow("SELECT item_id, category FROM items WHERE dataset = $1", [name])
    ids = np.asarray(t.column("item_id")).astype(np.int64)
    cat = t.column("category").combine_chunks()
    has = np.asarray(cat.is_valid())  # (rows,) bool -- items with a category
    names, inv = np.unique(np.asarray(cat.drop_null().to_numpy(zero_copy_only=False)).astype(str), return_inverse=True)
    codes = np.full(info.n_items, -1, dtype=np.int32)
    codes[ids[has]] = inv
    return codes, names


# ----------------------------------------------------------------------------------- splits
def split_info(row) -> SplitInfo:
    return SplitInfo(
        row.dataset,
        row.name,
        json.loads(row.config or "{}"),
        row.created_at,
        int(row.n_train),
        int(row.n_valid),
        int(row.n_test),
    )


def get_split(conn: sa.Connection, dataset: str, name: str) -> SplitInfo:
    get_dataset(conn, dataset)
    row = conn.execute(
        sa.text("SELECT * FROM splits WHERE dataset = :d AND name = :n"), {"d": dataset, "n": name}
    ).first()
    if row is None:
        raise NotFoundError(f"dataset {dataset!r} has no split {name!r}: run `grove data split {dataset}`")
    return split_info(row)


def list_splits(conn: sa.Connection, dataset: str) -> list[SplitInfo]:
    get_dataset(conn, dataset)
    rows = conn.execute(sa.text("SELECT * FROM splits WHERE dataset = :d ORDER BY name"), {"d": dataset})
    return [split_info(r) for r in rows]


def write_split(conn: sa.Connection, dataset: str, name: str, assignment, config: dict) -> SplitInfo:
    info = get_dataset(conn, dataset)
    if conn.execute(
        sa.text("SELECT 1 FROM splits WHERE dataset = :d AND name = :n"), {"d": dataset, "n": name}
    ).first():
        raise GroveError(f"dataset {dataset!r} already has a split {name!r}; pick another --split")
    users = np.asarray(assignment.users, dtype=np.int32)
    roles = np.asarray(assignment.roles).astype(str)
    if users.shape != roles.shape:
        raise GroveError(f"split assignment has {users.shape[0]} users but {roles.shape[0]} roles")
    bad = np.flatnonzero(~np.isin(roles, ROLES))
    if bad.size:
        raise GroveError(f"split role {roles[bad[0]]!r} is not one of {', '.join(ROLES)}")
    if users.size and (users.min() < 0 or users.max() >= info.n_users):
        raise GroveError(f"a split user is outside [0, {info.n_users})")
    bulk(conn).write(
        "split_users",
        pa.table({"user_id": users, "role": pa.array(roles, type=pa.string())}),
        {"dataset": dataset, "split": name},
    )
    counts = {r: int((roles == r).sum()) for r in ROLES}
    full = {**dict(getattr(assignment, "config", {}) or {}), **(config or {})}
    conn.execute(
        sa.text("INSERT INTO splits VALUES (:d, :n, :c, :t, :a, :b, :e)"),
        {
            "d": dataset,
            "n": name,
            "c": json.dumps(full),
            "t": utcnow(),
            "a": counts["train"],
            "b": counts["valid"],
            "e": counts["test"],
        },
    )
    return get_split(conn, dataset, name)


def load_assignment(conn: sa.Connection, dataset: str, name: str):
    """The stored `SplitAssignment` (users sorted by id) and the split's info."""
    from grove.indexstore.protocol import SplitAssignment

    info = get_split(conn, dataset, name)
    t = bulk(conn).arrow(
        "SELECT user_id, role FROM split_users WHERE dataset = $1 AND split = $2 ORDER BY user_id", [dataset, name]
    )
    users = np.asarray(t.column("user_id")).astype(np.int32)
    roles = np.asarray(t.column("role").to_numpy(zero_copy_only=False)).astype(str)
    return SplitAssignment(users, roles, info.config), info
