"""Metric rows in the store's ``metrics`` table: append-only, never updated (a version's row is
immutable; its metrics accumulate)."""

from __future__ import annotations

import sqlalchemy as sa

from grove.indexstore.entities import MetricRow, utcnow
from grove.indexstore.errors import GroveError


def metric_values(version_id: int, rows) -> list[dict]:
    """Rows (MetricRow, any object with its fields, or dicts) as insert parameters, stamped now;
    GroveError for a row without a name or a value."""
    now, values = utcnow(), []
    for r in rows:
        get = r.get if isinstance(r, dict) else (lambda f, _r=r: getattr(_r, f, None))
        name, value, k, beam = get("name"), get("value"), get("k"), get("beam")
        if name is None or value is None:
            raise GroveError(f"a metric row needs a name and a value, got {r!r}")
        values.append(
            {
                "v": int(version_id),
                "t": now,
                "role": get("role"),
                "name": name,
                "k": None if k is None else int(k),
                "value": float(value),
                "beam": None if beam is None else int(beam),
                "filtered": bool(get("filtered")),
                "note": get("note"),
            }
        )
    return values


def insert(conn: sa.Connection, values: list[dict]) -> None:
    if values:
        conn.execute(
            sa.text("INSERT INTO metrics VALUES (:v, :t, :role, :name, :k, :value, :beam, :filtered, :note)"), values
        )


def read(conn: sa.Connection, version_id: int) -> list[MetricRow]:
    rows = conn.execute(
        sa.text(
            "SELECT * FROM metrics WHERE version_id = :v ORDER BY recorded_at, role, name, k, beam NULLS LAST, filtered"
        ),
        {"v": int(version_id)},
    )
    return [MetricRow(r.role, r.name, r.k, r.value, r.beam, bool(r.filtered), r.note, r.recorded_at) for r in rows]
