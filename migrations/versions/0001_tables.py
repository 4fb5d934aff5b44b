"""tables: datasets, splits, indexes, versions, nodes, item paths, artifacts, metrics, aliases

The tables of docs/DESIGN.md. No foreign keys and no secondary indexes (DuckDB's ALTER
TABLE is crippled on tables that have them, and bulk loads slow down); relations are checked
in code. Primary keys only on small tables that are looked up by key.

PostgreSQL (same history, same head): the same tables with its spelling of two types,
DOUBLE -> DOUBLE PRECISION and BLOB -> BYTEA (`_columns`), and one more column,
``interactions.pos BIGINT`` (the row's position in its dataset): a heap reuses the space of
rolled-back rows, so unlike DuckDB's rowid its physical order is not the insertion order.

Revision ID: 0001
Revises:
"""

import re

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = {
    "datasets": """name VARCHAR PRIMARY KEY, source VARCHAR, created_at TIMESTAMP,
        n_users BIGINT, n_items BIGINT, n_interactions BIGINT, meta VARCHAR""",
    "interactions": """dataset VARCHAR, user_id INTEGER, item_id INTEGER, ts BIGINT,
        rating DOUBLE, behavior VARCHAR""",
    "user_ids": "dataset VARCHAR, user_id INTEGER, raw VARCHAR",
    "item_ids": "dataset VARCHAR, item_id INTEGER, raw VARCHAR",
    "items": "dataset VARCHAR, item_id INTEGER, category VARCHAR",
    "item_categories": "dataset VARCHAR, item_id INTEGER, category VARCHAR",
    "splits": """dataset VARCHAR, name VARCHAR, config VARCHAR, created_at TIMESTAMP,
        n_train BIGINT, n_valid BIGINT, n_test BIGINT, PRIMARY KEY (dataset, name)""",
    "split_users": "dataset VARCHAR, split VARCHAR, user_id INTEGER, role VARCHAR",
    "indexes": """name VARCHAR PRIMARY KEY, method VARCHAR, kind VARCHAR, dataset VARCHAR,
        created_at TIMESTAMP""",
    "versions": """id BIGINT PRIMARY KEY DEFAULT nextval('version_id_seq'), index_name VARCHAR,
        kind VARCHAR, method VARCHAR, parent_id BIGINT, dataset VARCHAR, split VARCHAR,
        status VARCHAR, config VARCHAR, created_at TIMESTAMP, flow_run_id VARCHAR, note VARCHAR""",
    "nodes": "version_id BIGINT, tree INTEGER, node BIGINT, level INTEGER, parent BIGINT, item BIGINT",
    "item_paths": """version_id BIGINT, tree INTEGER, item BIGINT, leaf BIGINT, path INTEGER[],
        score DOUBLE""",
    "artifacts": "version_id BIGINT, name VARCHAR, sha256 VARCHAR, size BIGINT, data BLOB",
    "metrics": """version_id BIGINT, recorded_at TIMESTAMP, role VARCHAR, name VARCHAR, k INTEGER,
        value DOUBLE, beam INTEGER, filtered BOOLEAN, note VARCHAR""",
    "aliases": """index_name VARCHAR, alias VARCHAR, version_id BIGINT, updated_at TIMESTAMP,
        PRIMARY KEY (index_name, alias)""",
    "alias_events": """id BIGINT PRIMARY KEY DEFAULT nextval('alias_event_id_seq'),
        index_name VARCHAR, alias VARCHAR, from_version BIGINT, to_version BIGINT,
        action VARCHAR, reason VARCHAR, "at" TIMESTAMP""",
}
SEQUENCES = ("version_id_seq", "alias_event_id_seq")


def _columns(table: str, columns: str) -> str:
    """The column list of ``table`` in the dialect of the connection (DuckDB's text unchanged)."""
    if op.get_bind().dialect.name != "postgresql":
        return columns
    columns = re.sub(r"\bDOUBLE\b", "DOUBLE PRECISION", columns).replace("BLOB", "BYTEA")
    return columns + ", pos BIGINT" if table == "interactions" else columns


def upgrade() -> None:
    for seq in SEQUENCES:
        op.execute(f"CREATE SEQUENCE {seq} START 1")
    for name, columns in TABLES.items():
        op.execute(f"CREATE TABLE {name} ({_columns(name, columns)})")


def downgrade() -> None:
    for name in reversed(list(TABLES)):
        op.execute(f"DROP TABLE {name}")
    for seq in SEQUENCES:
        op.execute(f"DROP SEQUENCE {seq}")
