"""Alembic migrations of the grove store, usable without an alembic.ini.

`config(url)` builds a programmatic Alembic `Config` whose script location is this package's
folder (found from ``__file__``, so it works installed or editable). `upgrade`/`downgrade`
run the revisions under `versions/` (hand-written: duckdb-engine has no autogenerate).
"""

from __future__ import annotations

import pathlib
from functools import lru_cache

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

HERE = pathlib.Path(__file__).resolve().parent


def config(url: str) -> Config:
    """An Alembic Config for the store at ``url`` (no ini file needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["grove_url"] = url
    return cfg


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The single head revision of the scripts."""
    heads = ScriptDirectory.from_config(config("duckdb:///:memory:")).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {heads}")
    return heads[0]


def upgrade(url: str, revision: str = "head", connection=None) -> None:
    """Create or upgrade the schema of the store at ``url`` (one transaction per revision).

    ``connection``: an open SQLAlchemy connection to use instead of opening one."""
    cfg = config(url)
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


def downgrade(url: str, revision: str = "base", connection=None) -> None:
    """Downgrade the store at ``url`` to ``revision`` ('base' drops everything)."""
    cfg = config(url)
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, revision)
