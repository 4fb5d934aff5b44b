"""Alembic environment for the grove store (DuckDB through duckdb-engine, or PostgreSQL).

DuckDB needs an Alembic implementation registered for its dialect name, with transactional
DDL; every revision runs in its own transaction so a failed revision rolls back whole.
"""

from __future__ import annotations

from alembic import context
from alembic.ddl.impl import DefaultImpl
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool


class AlembicDuckDBImpl(DefaultImpl):
    """Alembic's DDL implementation for duckdb-engine's dialect."""

    __dialect__ = "duckdb"
    transactional_ddl = True


def run_migrations_online() -> None:
    cfg = context.config
    url = cfg.attributes.get("grove_url") or cfg.get_main_option("sqlalchemy.url")
    connection = cfg.attributes.get("connection")
    if connection is not None:  # a caller handed its own connection
        _run(connection)
        return
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(conn) -> None:
    context.configure(connection=conn, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("grove migrations run online only (they need a live store)")
run_migrations_online()
