"""The store facade: datasets, splits, index versions, metrics and aliases.

Every public method validates its arguments, runs in ONE transaction on a short-lived
connection (NullPool: the DuckDB file is free between calls) and returns plain frozen records
(`grove.indexstore.entities`) or numpy-backed structures -- never rows or connections.

    store = Store.open()                       # $GROVE_STORE or duckdb:///grove.duckdb
    info = store.write_version("ml-tdm", "tdm", tree, {"method": "tdm", ...}, "ml", "default")
    info, tree, artifacts = store.read_version(info.id)

Nothing published is updated in place: versions are written once (status 'ready'), metrics
are appended, aliases move with a logged event.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import sqlalchemy as sa

from grove.indexstore import aliases, bulk_import, datasets_io, metrics_io, staging, version_io
from grove.indexstore.backends import bulk
from grove.indexstore.diff import VersionDiff, diff_structures
from grove.indexstore.engine import check_schema, connect, default_url, make_engine, native, read_only, transaction
from grove.indexstore.entities import AliasEvent, DatasetInfo, MetricRow, SplitInfo, VersionInfo, utcnow
from grove.indexstore.errors import GroveError, NotFoundError
from grove.indexstore.file_layout import InteractionFile
from grove.indexstore.item_ids import ItemIds
from grove.indexstore.sql_query import DEFAULT_TIMEOUT, query_store
from grove.indexstore.structures import Structure, kind_of

_METRIC_FIELDS = ("role", "name", "k", "value", "beam", "filtered", "note")


def _name(value, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise GroveError(f"{what} must be a non-empty one-line string, got {value!r}")
    return value


def _version_info(row) -> VersionInfo:
    return VersionInfo(
        int(row.id),
        row.index_name,
        row.kind,
        row.method,
        None if row.parent_id is None else int(row.parent_id),
        row.dataset,
        row.split,
        row.status,
        json.loads(row.config or "{}"),
        row.created_at,
        row.flow_run_id,
        row.note,
        json.loads(row.shape or "{}"),
    )


class Store:
    """A grove store at a SQLAlchemy URL. Use `Store.open` (checks the schema) or `Store.init`."""

    def __init__(self, url: str | None = None):
        self.url = default_url(url)
        self._engine = make_engine(self.url)

    # ------------------------------------------------------------------------- lifecycle
    @classmethod
    def open(cls, url: str | None = None, check: bool = True) -> Store:
        """Open the store; refuses a schema that is missing or behind (run `grove init`)."""
        store = cls(url)
        if check:
            store.check_schema()
        return store

    @staticmethod
    def init(url: str | None = None) -> str:
        """Create or upgrade the schema to the Alembic head; returns the URL."""
        from grove import migrations

        url = default_url(url)
        engine = make_engine(url)
        conn = connect(engine)
        try:
            migrations.upgrade(url, "head", connection=conn)
            conn.commit()
        finally:
            conn.close()
        return url

    def check_schema(self) -> str:
        return check_schema(self._engine)

    @contextmanager
    def _tx(self, wait: float | None = None):
        with transaction(self._engine, wait) as conn:
            yield conn

    # -------------------------------------------------------------------------- datasets
    def import_dataset(
        self, name: str, interactions, categories=None, source: str | None = None, meta: dict | None = None
    ) -> DatasetInfo:
        """Store a new dataset (interactions, id maps, categories) in one transaction."""
        _name(name, "dataset name")
        with self._tx() as conn:
            return datasets_io.import_dataset(conn, name, interactions, categories, source, meta or {})

    def import_file(
        self, name: str, source: InteractionFile, items: str | None = None, seed: int = 0, meta: dict | None = None
    ) -> DatasetInfo:
        """Stream an interaction file into a new dataset in one transaction (`bulk_import`):
        memory bounded by ``$GROVE_IMPORT_MEMORY`` whatever the file's size; on bad input one
        InputError line and the store as it was. ``items``: item categories, chosen by ``seed``."""
        _name(name, "dataset name")
        if not isinstance(source, InteractionFile):
            raise GroveError(f"import_file takes an InteractionFile, got {source!r}")
        conn = connect(self._engine)
        try:
            if conn.dialect.name != "duckdb":  # staged in an in-memory DuckDB (`bulk_import`)
                with conn.begin():
                    return bulk_import.import_file(conn, name, source, items, seed, meta or {})
            with bulk_import.import_settings(native(conn)):  # outside the transaction: restored after it
                with conn.begin():
                    return bulk_import.import_file(conn, name, source, items, seed, meta or {})
        finally:
            conn.close()

    def list_datasets(self) -> list[DatasetInfo]:
        with self._tx() as conn:
            return [datasets_io.dataset_info(r) for r in conn.exec_driver_sql("SELECT * FROM datasets ORDER BY name")]

    def dataset(self, name: str) -> DatasetInfo:
        with self._tx() as conn:
            return datasets_io.get_dataset(conn, name)

    def load_interactions(self, name: str):
        with self._tx() as conn:
            return datasets_io.load_interactions(conn, name)

    def item_raw_ids(self, dataset: str) -> np.ndarray:
        """(n_items,) str: raw id of every dense item."""
        with self._tx() as conn:
            return datasets_io.item_raw_ids(conn, dataset)

    def user_raw_ids(self, dataset: str) -> np.ndarray:
        """(n_users,) str: raw id of every dense user."""
        with self._tx() as conn:
            return datasets_io.user_raw_ids(conn, dataset)

    def item_ids(self, dataset: str) -> ItemIds:
        """The raw <-> dense item id mapper of a dataset."""
        return ItemIds(self.item_raw_ids(dataset))

    def item_dense_ids(self, dataset: str, raw: list[str]) -> np.ndarray:
        """(len(raw),) int64 dense ids of raw item ids, -1 where unknown."""
        return self.item_ids(dataset).dense(raw)

    def item_categories(self, dataset: str) -> tuple[np.ndarray, np.ndarray]:
        """(codes (n_items,) int32, -1 none; names (C,) str) of the kept category per item."""
        with self._tx() as conn:
            return datasets_io.item_category_codes(conn, dataset)

    # ---------------------------------------------------------------------------- splits
    def write_split(self, dataset: str, split_name: str, assignment, config: dict | None = None) -> SplitInfo:
        _name(split_name, "split name")
        with self._tx() as conn:
            return datasets_io.write_split(conn, dataset, split_name, assignment, config or {})

    def split(self, dataset: str, split_name: str = "default") -> SplitInfo:
        with self._tx() as conn:
            return datasets_io.get_split(conn, dataset, split_name)

    def list_splits(self, dataset: str) -> list[SplitInfo]:
        with self._tx() as conn:
            return datasets_io.list_splits(conn, dataset)

    def load_split(self, dataset: str, split_name: str = "default", min_behaviours: int = 1):
        """The split's `SplitData` (training windows, held-out users) built per docs/PROTOCOL.md."""
        from grove.indexstore.protocol import split_data_from_positives

        with self._tx() as conn:
            assignment, info = datasets_io.load_assignment(conn, dataset, split_name)
            positive = info.config["positive_rating"] if "positive_rating" in info.config else 4.0
            users, items = datasets_io.load_positives(conn, dataset, positive)
            codes, _ = datasets_io.item_category_codes(conn, dataset)
            meta = datasets_io.get_dataset(conn, dataset)
        return split_data_from_positives(
            users,
            items,
            meta.n_users,
            assignment,
            meta.n_items,
            codes,
            dataset,
            split_name,
            min_behaviours=min_behaviours,
        )

    # -------------------------------------------------------------------------- versions
    def _get_version(self, conn, version_id) -> VersionInfo:
        if isinstance(version_id, bool) or not isinstance(version_id, (int, np.integer)):
            raise GroveError(f"a version id is an integer, got {version_id!r}")
        row = conn.execute(sa.text("SELECT * FROM versions WHERE id = :v"), {"v": int(version_id)}).first()
        if row is None:
            raise NotFoundError(f"unknown version {version_id}")
        return _version_info(row)

    def _check_index(self, conn, index_name: str, method: str, kind: str, dataset) -> None:
        if conn.dialect.name == "postgresql":  # two first writers of one index: one creates it
            lock = "SELECT pg_advisory_xact_lock(hashtext('grove index'), hashtext(:n))"
            conn.execute(sa.text(lock), {"n": index_name})
        row = conn.execute(sa.text("SELECT method, kind FROM indexes WHERE name = :n"), {"n": index_name}).first()
        if row is None:
            conn.execute(
                sa.text("INSERT INTO indexes VALUES (:n, :m, :k, :d, :t)"),
                {"n": index_name, "m": method, "k": kind, "d": dataset, "t": utcnow()},
            )
        elif (row.method, row.kind) != (method, kind):
            raise GroveError(
                f"index {index_name!r} holds {row.method} {row.kind} versions; "
                f"cannot add a {method} {kind} version (use another index name)"
            )

    def write_version(
        self,
        index_name: str,
        method: str,
        structure: Structure,
        config: dict,
        dataset: str | None = None,
        split: str | None = None,
        parent_id: int | None = None,
        artifacts: dict[str, bytes] | None = None,
        note: str | None = None,
        flow_run_id: str | None = None,
        wait: float | None = None,
    ) -> VersionInfo:
        """Write a complete version (row, nodes, item paths, artifacts) in one transaction.
        ``wait``: seconds to wait while another process holds the store (default
        ``$GROVE_STORE_WAIT``, 10); then `StoreBusyError`."""
        _name(index_name, "index name")
        _name(method, "method")
        try:
            kind = kind_of(structure)
        except TypeError as exc:
            raise GroveError(str(exc)) from None
        try:
            config_json = json.dumps(config if config is not None else {})
        except (TypeError, ValueError) as exc:
            raise GroveError(f"version config is not JSON-serialisable: {exc}") from None
        artifacts = dict(artifacts or {})
        for key, data in artifacts.items():
            if not isinstance(key, str) or not isinstance(data, (bytes, bytearray, memoryview)):
                raise GroveError(f"artifact {key!r} must be bytes under a string name")
        with self._tx(wait) as conn:
            if dataset is not None:
                datasets_io.get_dataset(conn, dataset)
                if split is not None:
                    datasets_io.get_split(conn, dataset, split)
            if parent_id is not None:
                self._get_version(conn, parent_id)
            self._check_index(conn, index_name, method, kind, dataset)
            row = {
                "index_name": index_name,
                "kind": kind,
                "method": method,
                "parent_id": parent_id,
                "dataset": dataset,
                "split": split,
                "config": config_json,
                "flow_run_id": flow_run_id,
                "note": note,
            }
            vid = version_io.insert_version_row(conn, row, structure)
            channel = bulk(conn)
            version_io.write_structure(channel, vid, structure)
            version_io.write_artifacts(conn, channel, vid, artifacts)  # bytes-like, not copied
            return self._get_version(conn, vid)

    def stage_version(self, version: dict, structure: Structure, artifacts: dict[str, bytes]):
        """Save a version that could not be written (`grove.indexstore.staging`); returns the file."""
        url = sa.engine.make_url(self.url)
        return staging.stage(url.database or "grove", version, structure, artifacts)

    def write_staged(self, path) -> VersionInfo:
        """Write a staged version (`stage_version`) and remove its file; its lineage must still hold."""
        import pathlib

        version, structure, artifacts = staging.read_staged(path)
        info = self.write_version(structure=structure, artifacts=artifacts, **version)
        pathlib.Path(path).unlink()
        return info

    def read_version(self, version_id: int) -> tuple[VersionInfo, Structure, dict[str, bytes]]:
        """The version, its structure (validated) and its artifacts (sha256 verified)."""
        with self._tx() as conn:
            info = self._get_version(conn, version_id)
            channel = bulk(conn)
            structure = version_io.read_structure(channel, info.id, info.kind, info.shape)
            return info, structure, version_io.read_artifacts(conn, channel, info.id)

    def read_structure(self, version_id: int) -> Structure:
        with self._tx() as conn:
            info = self._get_version(conn, version_id)
            return version_io.read_structure(bulk(conn), info.id, info.kind, info.shape)

    def version(self, version_id: int) -> VersionInfo:
        with self._tx() as conn:
            return self._get_version(conn, version_id)

    def list_versions(self, index_name: str | None = None) -> list[VersionInfo]:
        with self._tx() as conn:
            if index_name is not None:
                self._require_index(conn, index_name)
            rows = conn.execute(
                sa.text("SELECT * FROM versions WHERE CAST(:i AS VARCHAR) IS NULL OR index_name = :i ORDER BY id"),
                {"i": index_name},
            )
            return [_version_info(r) for r in rows]

    def list_indexes(self) -> list[tuple[str, str, str, str | None]]:
        """(name, method, kind, dataset) of every index."""
        with self._tx() as conn:
            return [
                tuple(r) for r in conn.exec_driver_sql("SELECT name, method, kind, dataset FROM indexes ORDER BY name")
            ]

    def lineage(self, version_id: int) -> list[VersionInfo]:
        """The version and its ancestors along parent_id, newest first."""
        out, seen = [], set()
        with self._tx() as conn:
            v: VersionInfo | None = self._get_version(conn, version_id)
            while v is not None and v.id not in seen:
                out.append(v)
                seen.add(v.id)
                v = self._get_version(conn, v.parent_id) if v.parent_id is not None else None
        return out

    def diff(self, v1: int, v2: int) -> VersionDiff:
        """Items whose leaf/path changed between two versions, agreement per level."""
        return diff_structures(v1, self.read_structure(v1), v2, self.read_structure(v2))

    def _require_index(self, conn, index_name: str) -> None:
        if conn.execute(sa.text("SELECT 1 FROM indexes WHERE name = :n"), {"n": index_name}).first() is None:
            known = [r[0] for r in conn.exec_driver_sql("SELECT name FROM indexes ORDER BY name")]
            raise NotFoundError(f"unknown index {index_name!r}; the store has: {', '.join(known) or 'none'}")

    def resolve(
        self, index_name: str, version: int | None = None, alias: str | None = None, prefer: str | None = "production"
    ) -> VersionInfo:
        """The version an index reference means: an explicit ``version`` (of this index), else
        ``alias`` (NotFoundError when unset), else the ``prefer`` alias if set (serving and
        retraining start from production), else the newest ready version (``prefer=None``: what
        the learning commands continue from)."""
        with self._tx() as conn:
            self._require_index(conn, index_name)
            if version is None:
                if alias is not None:
                    version = aliases.current(conn, index_name, alias)
                    if version is None:
                        raise NotFoundError(f"index {index_name!r} has no alias {alias!r}")
                elif prefer is not None:
                    version = aliases.current(conn, index_name, prefer)
            if version is None:
                row = conn.execute(
                    sa.text("SELECT max(id) FROM versions WHERE index_name = :i AND status = 'ready'"),
                    {"i": index_name},
                ).scalar()
                if row is None:
                    raise NotFoundError(f"index {index_name!r} has no ready version")
                version = int(row)
            info = self._get_version(conn, version)
            if info.index_name != index_name:
                raise GroveError(f"version {info.id} belongs to index {info.index_name!r}, not {index_name!r}")
            return info

    # --------------------------------------------------------------------------- metrics
    def record_metrics(self, version_id: int, rows) -> int:
        """Append metric rows (MetricRow, any object with its fields, or dicts); returns count."""
        values = metrics_io.metric_values(version_id, rows)
        with self._tx() as conn:
            self._get_version(conn, version_id)
            metrics_io.insert(conn, values)
        return len(values)

    def metrics(self, version_id: int) -> list[MetricRow]:
        with self._tx() as conn:
            self._get_version(conn, version_id)
            return metrics_io.read(conn, version_id)

    # --------------------------------------------------------------------------- aliases
    def set_alias(
        self, index_name: str, alias: str, version_id: int, reason: str | None = None, action: str = "set"
    ) -> AliasEvent:
        """Point ``alias`` of ``index_name`` at a version of that index; the move is logged."""
        _name(alias, "alias")
        with self._tx() as conn:
            self._require_index(conn, index_name)
            info = self._get_version(conn, version_id)
            if info.index_name != index_name:
                raise GroveError(f"version {info.id} belongs to index {info.index_name!r}, not {index_name!r}")
            return aliases.move(conn, index_name, alias, info.id, reason, action)

    def rollback(
        self, index_name: str, alias: str = "production", to: int | None = None, reason: str | None = None
    ) -> AliasEvent:
        """Move ``alias`` back (to ``to``, or to the version before the current one); logged."""
        with self._tx() as conn:
            self._require_index(conn, index_name)
            aliases.lock(conn, index_name, alias)  # the target is read under the lock
            if aliases.current(conn, index_name, alias) is None:
                raise NotFoundError(f"index {index_name!r} has no alias {alias!r}")
            target = aliases.rollback_target(conn, index_name, alias) if to is None else to
            info = self._get_version(conn, target)
            if info.index_name != index_name:
                raise GroveError(f"version {info.id} belongs to index {info.index_name!r}, not {index_name!r}")
            return aliases.move(conn, index_name, alias, info.id, reason, "rollback")

    def alias_history(self, index_name: str, alias: str | None = None) -> list[AliasEvent]:
        with self._tx() as conn:
            self._require_index(conn, index_name)
            return aliases.history(conn, index_name, alias)

    def aliases(self, index_name: str) -> dict[str, int]:
        with self._tx() as conn:
            self._require_index(conn, index_name)
            rows = conn.execute(
                sa.text("SELECT alias, version_id FROM aliases WHERE index_name = :i"), {"i": index_name}
            )
            return {a: int(v) for a, v in rows}

    def alias_target(self, index_name: str, alias: str) -> int | None:
        """The version ``alias`` of ``index_name`` points to now, or None: on a short read-only
        connection, so that a service polling it never takes a writer's lock."""
        with read_only(self.url) as conn:
            row = conn.execute(
                sa.text("SELECT version_id FROM aliases WHERE index_name = :i AND alias = :a"),
                {"i": index_name, "a": alias},
            ).first()
        return None if row is None else int(row[0])

    # ------------------------------------------------------------------------------- SQL
    def query(self, sql: str, timeout: float | None = None) -> tuple[list[str], list[tuple]]:
        """Run ONE read-only statement in the SQL sandbox (`grove.indexstore.sql_query`); returns
        (column names, rows)."""
        return query_store(self.url, sql, timeout or DEFAULT_TIMEOUT)
