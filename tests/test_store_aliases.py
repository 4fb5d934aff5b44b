"""Aliases: moves are logged, rollback walks back through the alias's history."""

from __future__ import annotations

import numpy as np
import pytest

from grove.indexstore.errors import GroveError, NotFoundError
from grove.indexstore.store import Store
from grove.indexstore.structures import Tree


@pytest.fixture
def store(store_url) -> Store:
    Store.init(store_url)
    return Store.open(store_url)


def _tree() -> Tree:
    return Tree.from_paths(np.array([[0], [1]]), np.array([0, 1]), 2, 2)


def test_set_and_rollback_walk_back_not_toggle(store):
    v = [store.write_version("idx", "tdm", _tree(), {}).id for _ in range(4)]
    for vid in v[:3]:
        store.set_alias("idx", "production", vid, f"promote {vid}", action="promote")
    e = store.rollback("idx", reason="bad")
    assert (e.from_version, e.to_version, e.action) == (v[2], v[1], "rollback")
    assert store.rollback("idx").to_version == v[0]  # two rollbacks go back two steps
    with pytest.raises(GroveError, match="no earlier version"):
        store.rollback("idx")
    store.set_alias("idx", "production", v[3])
    assert store.rollback("idx").to_version == v[0]  # v[3] was set over v[0]
    assert store.rollback("idx", to=v[2], reason="explicit").to_version == v[2]
    assert store.aliases("idx") == {"production": v[2]}
    log = store.alias_history("idx", "production")
    assert [e.action for e in log] == ["promote"] * 3 + ["rollback", "rollback", "set", "rollback", "rollback"]
    assert log[3].reason == "bad" and log[0].from_version is None
    assert all(a.id < b.id and a.at <= b.at for a, b in zip(log, log[1:]))
    _, rows = store.query("SELECT count(*) FROM v_alias_log")
    assert rows[0][0] == len(log)


def test_reject_logs_without_moving(store):
    a = store.write_version("idx", "tdm", _tree(), {}).id
    b = store.write_version("idx", "tdm", _tree(), {}).id
    store.set_alias("idx", "production", a)
    store.set_alias("idx", "production", b, "worse recall", action="reject")
    assert store.resolve("idx").id == a
    assert store.alias_history("idx")[-1].action == "reject"


def test_alias_errors_leave_log_unchanged(store):
    a = store.write_version("idx", "tdm", _tree(), {}).id
    other = store.write_version("other", "tdm", _tree(), {}).id
    with pytest.raises(GroveError, match="belongs to index"):
        store.set_alias("idx", "production", other)
    with pytest.raises(NotFoundError):
        store.set_alias("idx", "production", 12345)
    with pytest.raises(NotFoundError):
        store.set_alias("nope", "production", a)
    with pytest.raises(NotFoundError, match="no alias"):
        store.rollback("idx", alias="staging")
    store.set_alias("idx", "production", a)
    with pytest.raises(GroveError, match="belongs to index"):
        store.rollback("idx", to=other)
    with pytest.raises(GroveError, match="unknown alias action"):
        store.set_alias("idx", "production", a, action="delete")
    assert len(store.alias_history("idx")) == 1


def test_concurrent_moves_are_serialised_and_logged_once(pg_server):
    """Issue 27 (3): movers racing on one alias of a server store each log exactly one event and
    the log is a chain (every move starts where the previous one left the alias)."""
    import threading

    url = pg_server.database("alias_race")
    Store.init(url)
    store = Store.open(url)
    versions = [store.write_version("ix", "tdm", _tree(), {}).id for _ in range(4)]
    start, moves = threading.Barrier(6), 5

    def mover(k: int) -> None:
        own = Store.open(url)  # its own connections, as another process would have
        start.wait()
        for m in range(moves):
            own.set_alias("ix", "production", versions[(k + m) % 4], reason=f"{k}/{m}")

    threads = [threading.Thread(target=mover, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = store.alias_history("ix", "production")
    assert sorted(e.reason for e in log) == sorted(f"{k}/{m}" for k in range(6) for m in range(moves))
    assert log[0].from_version is None
    assert all(b.from_version == a.to_version for a, b in zip(log, log[1:]))
    assert store.aliases("ix")["production"] == log[-1].to_version
