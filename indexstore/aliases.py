"""Aliases: named pointers ``(index, alias) -> version`` with an append-only event log.

Moving an alias never touches a version; every move (and every rejected candidate) appends an
``alias_events`` row with the time and the reason (mlflow's aliases, lancedb's ``restore``).

Rollback semantics (chosen here, the papers do not say): the history of one alias is replayed
as a *stack* of the versions it pointed to. ``set``/``promote`` to v pushes v (unless v is
already on top); ``rollback`` pops the version it leaves and lands on the target (truncating the
stack down to the target when the target is on it, else pushing it). A rollback without an
explicit target goes to the version under the top of the stack, i.e. the version the alias
pointed to before the current one was set, skipping versions that were themselves rolled back
from. Two rollbacks in a row therefore go back two steps instead of toggling. ``reject`` events
record a candidate that was not promoted; they do not move the alias.

Functions take an open SQLAlchemy connection (the caller's transaction).

Concurrent moves: DuckDB has one writing process per file, so moves are serial already. On
PostgreSQL `lock` takes a transaction-scoped advisory lock on (index, alias) before the caller
reads the alias: a second mover waits, then reads the first one's committed move, so every
move is logged exactly once with the right ``from_version``. An advisory lock rather than
``SELECT ... FOR UPDATE`` because the first move of an alias has no row to lock.
"""

from __future__ import annotations

import sqlalchemy as sa

from grove.indexstore.entities import AliasEvent, utcnow
from grove.indexstore.errors import GroveError, NotFoundError

MOVING_ACTIONS = ("set", "promote", "rollback")
ACTIONS = MOVING_ACTIONS + ("reject",)


def _event(row) -> AliasEvent:
    return AliasEvent(
        int(row.id),
        row.index_name,
        row.alias,
        None if row.from_version is None else int(row.from_version),
        int(row.to_version),
        row.action,
        row.reason,
        row.at,
    )


def history(conn: sa.Connection, index: str, alias: str | None = None) -> list[AliasEvent]:
    """Events of an index (one alias or all), oldest first."""
    sql = "SELECT * FROM alias_events WHERE index_name = :i"
    params = {"i": index}
    if alias is not None:
        sql += " AND alias = :a"
        params["a"] = alias
    rows = conn.execute(sa.text(sql + " ORDER BY id"), params).all()
    return [_event(r) for r in rows]


def current(conn: sa.Connection, index: str, alias: str) -> int | None:
    row = conn.execute(
        sa.text("SELECT version_id FROM aliases WHERE index_name = :i AND alias = :a"), {"i": index, "a": alias}
    ).first()
    return None if row is None else int(row[0])


def replay(events: list[AliasEvent]) -> list[int]:
    """The stack of versions an alias went through (top = current), from its events."""
    stack: list[int] = []
    for e in events:
        if e.action == "reject":
            continue
        if e.action == "rollback":
            if stack:
                stack.pop()
            if e.to_version in stack:
                del stack[len(stack) - stack[::-1].index(e.to_version) :]
            else:
                stack.append(e.to_version)
        elif not stack or stack[-1] != e.to_version:
            stack.append(e.to_version)
    return stack


def _append(
    conn: sa.Connection, index: str, alias: str, from_v: int | None, to_v: int, action: str, reason: str | None
) -> AliasEvent:
    row = conn.execute(
        sa.text(
            'INSERT INTO alias_events (index_name, alias, from_version, to_version, action, reason, "at") '
            "VALUES (:i, :a, :f, :t, :act, :r, :at) RETURNING *"
        ),
        {"i": index, "a": alias, "f": from_v, "t": to_v, "act": action, "r": reason, "at": utcnow()},
    ).first()
    return _event(row)


def lock(conn: sa.Connection, index: str, alias: str) -> None:
    """Serialise moves of ``alias`` of ``index`` until the transaction ends (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtext('grove alias'), hashtext(:k))"), {"k": f"{index}\x1f{alias}"}
        )


def move(
    conn: sa.Connection, index: str, alias: str, version_id: int, reason: str | None, action: str = "set"
) -> AliasEvent:
    """Point ``alias`` at ``version_id`` (or only log a 'reject') and append the event."""
    if action not in ACTIONS:
        raise GroveError(f"unknown alias action {action!r}; expected one of {', '.join(ACTIONS)}")
    lock(conn, index, alias)  # a no-op when the caller holds it already
    before = current(conn, index, alias)
    if action != "reject":
        conn.execute(
            sa.text(
                "INSERT INTO aliases (index_name, alias, version_id, updated_at) VALUES (:i, :a, :v, :t) "
                "ON CONFLICT (index_name, alias) DO UPDATE SET version_id = excluded.version_id, "
                "updated_at = excluded.updated_at"
            ),
            {"i": index, "a": alias, "v": version_id, "t": utcnow()},
        )
    return _append(conn, index, alias, before, version_id, action, reason)


def rollback_target(conn: sa.Connection, index: str, alias: str) -> int:
    """The version a default rollback of ``alias`` lands on (see the module docstring)."""
    if current(conn, index, alias) is None:
        raise NotFoundError(f"index {index!r} has no alias {alias!r}")
    stack = replay(history(conn, index, alias))
    if len(stack) < 2:
        raise GroveError(f"alias {alias!r} of index {index!r} has no earlier version to roll back to (use --to V)")
    return stack[-2]
