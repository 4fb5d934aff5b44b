"""Plain frozen records the store hands out (never ORM rows or connections).

Times are naive UTC `datetime`s; JSON columns come back as dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    """Naive UTC now (DuckDB TIMESTAMP has no zone)."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    source: str | None
    created_at: datetime
    n_users: int
    n_items: int
    n_interactions: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitInfo:
    dataset: str
    name: str
    config: dict[str, Any]
    created_at: datetime
    n_train: int
    n_valid: int
    n_test: int


@dataclass(frozen=True)
class VersionInfo:
    """One immutable index version. ``shape`` holds the structure's own parameters
    (n_items, arity, trees and nodes per tree, or J and D for codes)."""

    id: int
    index_name: str
    kind: str  # 'tree' | 'forest' | 'codes'
    method: str
    parent_id: int | None
    dataset: str | None
    split: str | None
    status: str
    config: dict[str, Any]
    created_at: datetime
    flow_run_id: str | None = None
    note: str | None = None
    shape: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricRow:
    """One metric value of a version (append-only)."""

    role: str  # 'valid' | 'test' | ...
    name: str  # 'precision', 'recall', 'f1', 'ndcg', 'novelty', 'fidelity', ...
    k: int
    value: float
    beam: int | None = None
    filtered: bool = False
    note: str | None = None
    recorded_at: datetime | None = None


@dataclass(frozen=True)
class AliasEvent:
    """One move (or rejection) of an alias; the log is append-only."""

    id: int
    index_name: str
    alias: str
    from_version: int | None
    to_version: int
    action: str  # 'set' | 'promote' | 'rollback' | 'reject'
    reason: str | None
    at: datetime
