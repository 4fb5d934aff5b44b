"""Alembic revisions: upgrade from empty, downgrade to base and back, schema-behind refused."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa

from grove import migrations
from grove.indexstore import version_io
from grove.indexstore.backends import bulk
from grove.indexstore.engine import make_engine
from grove.indexstore.errors import GroveError, SchemaError
from grove.indexstore.store import Store

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
    "artifact_chunks",
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
    engine = make_engine(url, read_only=True)
    with engine.connect() as con:
        rows = con.execute(
            sa.text(
                "SELECT table_name, table_type FROM information_schema.tables "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
        ).all()
    engine.dispose()
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


def test_artifacts_move_into_chunks_and_back(store_url):
    """0004 moves a 0003 store's artifact bytes into 64 KiB chunks; its downgrade joins them back."""
    migrations.upgrade(store_url, "0003")
    big = bytes(range(256)) * 700  # 179,200 bytes: three chunks
    engine = make_engine(store_url)
    with engine.begin() as con:
        for name, data in (("w.pt", big), ("e", b"")):
            con.execute(
                sa.text("INSERT INTO artifacts (version_id, name, sha256, size, data) VALUES (7, :n, :h, :s, :d)"),
                {"n": name, "h": hashlib.sha256(data).hexdigest(), "s": len(data), "d": data},
            )
    engine.dispose()
    migrations.upgrade(store_url, "0004")
    engine = make_engine(store_url)
    with engine.connect() as con:
        assert version_io.read_artifacts(con, bulk(con), 7) == {"w.pt": big, "e": b""}
        assert con.execute(sa.text("SELECT count(*) FROM artifact_chunks WHERE name = 'w.pt'")).scalar() == 3
    engine.dispose()
    migrations.downgrade(store_url, "0003")
    engine = make_engine(store_url)
    with engine.connect() as con:
        back = dict(con.execute(sa.text("SELECT name, data FROM artifacts WHERE version_id = 7")).all())
    engine.dispose()
    assert {k: bytes(v or b"") for k, v in back.items()} == {"w.pt": big, "e": b""}


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


def test_views_and_item_moves_run_on_an_empty_store(store_url):
    """Every view and the item_moves function/macro compile and run on both backends."""
    Store.init(store_url)
    store = Store.open(store_url)
    engine = make_engine(store_url)
    with engine.connect() as con:
        for view in sorted(VIEWS):
            assert con.execute(sa.text(f"SELECT * FROM {view}")).all() == []
        cols = list(con.execute(sa.text("SELECT * FROM item_moves(1, 2)")).keys())
    engine.dispose()
    assert cols == ["tree", "item", "old_leaf", "new_leaf", "old_path", "new_path"]
    assert store.check_schema() == migrations.head_revision()


@pytest.mark.parametrize(
    "url, says",
    [
        ("sqlite:///x.db", "unsupported store URL scheme 'sqlite'"),
        ("mysql://u:secret@h/db", "unsupported store URL scheme 'mysql'"),
        ("postgresql+psycopg2://u@h/db", "unsupported PostgreSQL driver 'psycopg2'"),
        ("not a url", "invalid store URL"),
    ],
)
def test_unsupported_urls_are_refused_in_one_line(url, says):
    with pytest.raises(GroveError, match=says) as err:
        Store.open(url)
    assert "\n" not in str(err.value) and "secret" not in str(err.value)
    assert "duckdb:///FILE or postgresql+psycopg://" in str(err.value)
