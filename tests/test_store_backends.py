"""The same versions written to DuckDB and to PostgreSQL read the same through every SQL view and
`item_moves`: the backends differ in DDL and bulk paths, never in what a user's query returns."""

from __future__ import annotations

import numpy as np
import pytest

from grove.indexstore.entities import MetricRow
from grove.indexstore.store import Store
from grove.indexstore.structures import Forest, PathCodes, Tree
from tests.test_migrations import VIEWS
from tests.test_store_versions import complete_tree, ragged_tree

TIMES = {"created_at", "updated_at", "recorded_at", "at"}  # when a row was written: differs by construction


def _fill(store: Store) -> list[int]:
    """Trees (one with two items swapped), a forest and a codes version, with lineage, an alias
    move, a rollback and metrics; returns the version ids."""
    t1 = complete_tree(16, 2, 4, 0)
    _, items, paths = t1.leaf_paths()
    swapped = items.copy()
    swapped[[0, 15]] = swapped[[15, 0]]
    t2 = Tree.from_paths(paths, swapped, 16, 2)
    rng = np.random.default_rng(0)
    ids = np.stack([rng.choice(5**3, 2, replace=False) for _ in range(30)])
    codes = PathCodes((ids[:, :, None] // 5 ** np.arange(2, -1, -1)) % 5, rng.random((30, 2)).astype(np.float32), 5)
    a = store.write_version("t", "tdm", t1, {"dim": 8}, artifacts={"w": b"abc"})
    b = store.write_version("t", "tdm", t2, {"dim": 8}, parent_id=a.id, note="relearn")
    doubled = np.concatenate([np.arange(14), [0, 1]])  # items 0 and 1 at two leaves (RecForest)
    f = store.write_version("f", "recforest", Forest((ragged_tree(14, 1), Tree.from_paths(paths, doubled, 14, 2))), {})
    c = store.write_version("d", "dr", codes, {"J": 2})
    store.set_alias("t", "production", a.id)
    store.set_alias("t", "production", b.id)
    store.rollback("t", "production", reason="worse")
    store.record_metrics(b.id, [MetricRow("valid", "recall", 10, 0.25, beam=20, filtered=True)])
    return [a.id, b.id, f.id, c.id]


def _rows(store: Store, sql: str) -> list[tuple]:
    """Rows of ``sql``, times dropped (they differ by construction), floats rounded, sorted."""
    cols, rows = store.query(sql)
    keep = [i for i, c in enumerate(cols) if c not in TIMES]

    def plain(v):
        if isinstance(v, float):
            return round(v, 6)
        if isinstance(v, (list, tuple)):
            return tuple(v)
        return v

    return sorted((tuple(plain(r[i]) for i in keep) for r in rows), key=repr)


@pytest.fixture(scope="module")
def stores(new_store_url):
    out = []
    for backend in ("duckdb", "postgres"):
        url = new_store_url(backend, "parity")
        Store.init(url)
        store = Store.open(url)
        out.append((store, _fill(store)))
    return out


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_every_view_reads_the_same_on_both_backends(stores, view):
    (duck, _), (pg, _) = stores
    sql = f"SELECT * FROM {view}"
    assert duck.query(sql)[0] == pg.query(sql)[0]  # the same columns, in the same order
    ours, theirs = _rows(duck, sql), _rows(pg, sql)
    assert ours and ours == theirs


def test_item_moves_reads_the_same_on_both_backends(stores):
    (duck, (a, b, *_)), (pg, ids) = stores
    assert ids[:2] == [a, b]  # the same ids on both: one sequence of versions each
    ours = _rows(duck, f"SELECT * FROM item_moves({a}, {b})")
    assert len(ours) == 2 and ours == _rows(pg, f"SELECT * FROM item_moves({a}, {b})")
