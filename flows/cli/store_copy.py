"""``grove store copy SRC_URL DST_URL``: a whole store into an empty one, ids kept, verified.

    grove store copy duckdb:///grove.duckdb postgresql://grove@db.example/grove   # to the server
    grove store copy postgresql://grove@db.example/grove duckdb:///snapshot.duckdb   # a snapshot back

The copy itself is `grove.indexstore.store_copy.copy_store`; this command reports its progress per
table on stderr (`grove.models.progress.Progress`) and what was copied and checked on stdout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grove.models.progress import Progress


class _TableProgress:
    """`copy_store`'s progress callback: one `Progress` per table, lines every few seconds."""

    def __init__(self):
        self.table: str | None = None
        self.progress: Progress | None = None
        self.done = 0

    def __call__(self, table: str, done: int, total: int) -> None:
        from grove.models.progress import Progress

        if table != self.table:
            self.close()
            self.table, self.done = table, 0
            self.progress = Progress(f"copying {table}", total=total, unit="rows", interval=5.0)
        if self.progress is not None:
            self.progress.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
            self.progress = None


def cmd_store_copy(args) -> int:
    from grove.indexstore.store_copy import copy_store

    progress = _TableProgress()
    report = copy_store(args.src, args.dst, progress=progress)
    progress.close()  # the last table's final line (a failed copy prints none)
    rows = report.rows
    print(
        f"copied the store at schema {report.revision}: {sum(rows.values()):,} rows in {len(rows)} tables "
        f"({rows.get('datasets', 0):,} datasets, {rows.get('interactions', 0):,} interactions, "
        f"{rows.get('versions', 0):,} versions, {rows.get('alias_events', 0):,} alias events, "
        f"{rows.get('metrics', 0):,} metrics); {report.artifacts:,} artifacts ({report.artifact_bytes:,} bytes) "
        f"verified by SHA-256"
    )
    return 0


def register(sub) -> None:
    """Add ``grove store copy`` to the ``grove`` subparsers."""
    store = sub.add_parser("store", help="whole-store operations: copy a store to another URL")
    ssub = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    p = ssub.add_parser(
        "copy",
        help="copy every dataset, version, alias event, metric and artifact into an empty store",
        description="Copy the store at SRC into the empty store at DST (created and brought to the "
        "schema head if needed), keeping every id, in one transaction, checked by row counts and "
        "artifact SHA-256 before it commits. The global --store is not used.",
    )
    p.add_argument("src", help="source store URL (duckdb:///FILE or postgresql://...)")
    p.add_argument("dst", help="destination store URL: must hold no rows")
    p.set_defaults(func=cmd_store_copy)
