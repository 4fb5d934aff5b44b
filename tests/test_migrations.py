"""Alembic revisions: upgrade from empty, downgrade to base and back, schema-behind refused."""

from __future__ import annotations

import duckdb
import pytest

import migrations
from indexstore.errors import SchemaError
from indexstore.store import Store

TABLES = {
    "datasets",
    "interactions",
    "user_ids",
    "item_ids",
    "items",
    "item_categories",
    "splits",
    "split_users",
    "indexes",
    "versions",
    "nodes",
    "item_paths",
    "artifacts",
    "metrics",
    "aliases",
    "alias_events",
}
VIEWS = {
    "v_level_stats",
    "v_leaf_occupancy",
    "v_multi_leaf_items",
    "v_path_sizes",
    "v_path_summary",
    "v_lineage",
    "v_versions",
    "v_alias_log",
}


def _objects(url: str) -> tuple[set, set]:
    con = duckdb.connect(url.removeprefix("duckdb:///"), read_only=True)
    try:
        rows = con.execute("SELECT table_name, table_type FROM information_schema.tables").fetchall()
    finally:
        con.close()
    return {n for n, t in rows if t == "BASE TABLE"}, {n for n, t in rows if t == "VIEW"}


def test_upgrade_downgrade_upgrade(store_url):
    migrations.upgrade(store_url)
    tables, views = _objects(store_url)
    assert TABLES <= tables and views == VIEWS
    migrations.downgrade(store_url, "base")
    tables, views = _objects(store_url)
    assert tables == {"alembic_version"} and not views
    migrations.upgrade(store_url)
    assert Store.open(store_url).check_schema() == migrations.head_revision()


def test_schema_behind_or_missing_is_refused(store_url):
    with pytest.raises(SchemaError, match="grove init"):
        Store.open(store_url)
    migrations.upgrade(store_url, "0001")
    with pytest.raises(SchemaError, match=r"at 0001, code needs .*grove init"):
        Store.open(store_url)
    Store.init(store_url)  # upgrades the rest
    Store.open(store_url)


def test_init_is_idempotent(store_url):
    Store.init(store_url)
    Store.init(store_url)
    assert Store.open(store_url).check_schema() == migrations.head_revision()
