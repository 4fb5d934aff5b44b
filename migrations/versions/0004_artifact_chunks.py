"""artifact chunks: an artifact's bytes as rows of at most 64 KiB, not one value

``artifacts`` keeps one row per artifact (name, sha256, size); its bytes move to
``artifact_chunks (version_id, name, seq, data)``, in order of ``seq`` from 0, each at most
`grove.indexstore.version_io.ARTIFACT_CHUNK` bytes. Why: DuckDB stores a value larger than its
256 KiB block as an overflow string, and every later checkpoint of the table re-reads all of
them -- a commit's memory and time grew with the bytes of every artifact already stored (one
more 192 MB artifact needed 14 GiB once the store held 5 GB of them). Values under the block
size are appended without that. On PostgreSQL the chunks also stay far below bytea's 1 GB
limit and stream through COPY; there a primary key finds a version's chunks without a scan
(DuckDB: no key on a large table, see 0001).

Upgrade moves the bytes of existing artifacts one artifact at a time; downgrade joins them back.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CHUNK = 1 << 16  # = indexstore.version_io.ARTIFACT_CHUNK (a revision keeps its own copy)


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    blob = "BYTEA" if _postgres() else "BLOB"
    key = ", PRIMARY KEY (version_id, name, seq)" if _postgres() else ""
    op.execute(f"CREATE TABLE artifact_chunks (version_id BIGINT, name VARCHAR, seq INTEGER, data {blob}{key})")
    conn = op.get_bind()
    names = conn.execute(sa.text("SELECT version_id, name FROM artifacts ORDER BY version_id, name")).all()
    insert = sa.text("INSERT INTO artifact_chunks (version_id, name, seq, data) VALUES (:v, :n, :s, :d)")
    for version_id, name in names:
        data = conn.execute(
            sa.text("SELECT data FROM artifacts WHERE version_id = :v AND name = :n"), {"v": version_id, "n": name}
        ).scalar()
        data = bytes(data or b"")
        rows = [
            {"v": version_id, "n": name, "s": k, "d": data[at : at + CHUNK]}
            for k, at in enumerate(range(0, len(data), CHUNK))
        ]
        if rows:
            conn.execute(insert, rows)
    op.execute("ALTER TABLE artifacts DROP COLUMN data")


def downgrade() -> None:
    op.execute(f"ALTER TABLE artifacts ADD COLUMN data {'BYTEA' if _postgres() else 'BLOB'}")
    conn = op.get_bind()
    names = conn.execute(sa.text("SELECT version_id, name FROM artifacts ORDER BY version_id, name")).all()
    for version_id, name in names:
        parts = conn.execute(
            sa.text("SELECT data FROM artifact_chunks WHERE version_id = :v AND name = :n ORDER BY seq"),
            {"v": version_id, "n": name},
        ).scalars()
        conn.execute(
            sa.text("UPDATE artifacts SET data = :d WHERE version_id = :v AND name = :n"),
            {"d": b"".join(bytes(p) for p in parts), "v": version_id, "n": name},
        )
    op.execute("DROP TABLE artifact_chunks")
