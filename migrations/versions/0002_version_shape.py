"""version shape: a JSON column with what rebuilds a structure exactly

``versions.shape`` holds the structure's own parameters, which the caller's config may not:
trees ``{"n_items", "arity", "n_trees", "n_nodes": [per tree], "depth": [per tree]}``,
codes ``{"n_items", "arity", "n_paths" (J), "depth" (D)}``. Nullable, so adding it is allowed on
DuckDB even though the table has a primary key.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE versions ADD COLUMN shape VARCHAR")


def downgrade() -> None:
    op.execute("ALTER TABLE versions DROP COLUMN shape")
