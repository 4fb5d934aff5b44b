"""Bringing datasets into a store: import a file, synthesise one, split one.

Thin glue between the data functions (`grove.indexstore.bulk_import`, `grove.indexstore.protocol`,
`grove.indexstore.synth`) and the `Store`; used by ``grove data ...`` and ``grove demo``.
"""

from __future__ import annotations

import pathlib

from grove.indexstore.entities import DatasetInfo, SplitInfo
from grove.indexstore.errors import InputError

# CLI spellings of the MovieLens formats -> the reader's names
FORMAT_ALIASES = {"ml-udata": "ml-100k", "ml-csv": "ml-latest", "tsv": "tsv"}


def import_file(
    store,
    path: str,
    name: str,
    *,
    fmt: str = "auto",
    items: str | None = None,
    seed: int = 0,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    rating_col: str | None = None,
    behavior_col: str | None = None,
    meta: dict | None = None,
) -> DatasetInfo:
    """Stream an interactions file (and optionally item categories) into a new dataset;
    ``meta`` is kept with the dataset beside the import's settings.

    DuckDB reads the file (`grove.indexstore.bulk_import`): memory stays under
    ``$GROVE_IMPORT_MEMORY`` (default 2GB) whatever the file's size."""
    from grove.indexstore.file_layout import InteractionFile

    if not pathlib.Path(path).exists():
        raise InputError(f"{path}: no such file")
    source = InteractionFile(
        str(path),
        FORMAT_ALIASES.get(fmt, fmt),
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        rating_col=rating_col,
        behavior_col=behavior_col,
    )
    settings = {
        "format": fmt,
        "items_file": items,
        "seed": seed,
        "columns": {
            "user": user_col,
            "item": item_col,
            "time": time_col,
            "rating": rating_col,
            "behavior": behavior_col,
        },
    }
    return store.import_file(name, source, items=items or None, seed=seed, meta={**settings, **(meta or {})})


def synth_dataset(store, name: str, n_items: int, n_users: int, seed: int = 0) -> DatasetInfo:
    """Generate a planted-hierarchy dataset (`grove.indexstore.synth.synthesize`) into the store.
    Sizes that cannot fit in memory (or in int32 ids) are refused before generating."""
    from grove.indexstore.synth import synthesize
    from grove.models.memory import require

    for what, n in (("items", n_items), ("users", n_users)):
        if not 1 <= n < 2**31:
            raise InputError(f"--{what} must be in [1, {2**31 - 1:,}], got {n:,}")
    # ~40 events per user, ~120 bytes per event in flight (ids, times, ratings, temporaries);
    # ~120 bytes per item (hierarchy and raw ids)
    require(n_users * 40 * 120 + n_items * 120, "cpu", f"synthesising {n_items:,} items and {n_users:,} users")
    inter, categories = synthesize(n_items, n_users, seed)
    return store.import_dataset(
        name,
        inter,
        categories,
        source="synth",
        meta={"generator": "indexstore.synth", "n_items": n_items, "n_users": n_users, "seed": seed},
    )


def split_dataset(
    store,
    name: str,
    split: str = "default",
    *,
    seed: int = 0,
    min_positives: int = 10,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    positive_rating: float | None = 4.0,
) -> SplitInfo:
    """Apply the protocol's user split (docs/PROTOCOL.md) to a stored dataset and store it."""
    from grove.indexstore.protocol import split_users

    store.dataset(name)  # NotFoundError before loading anything
    inter = store.load_interactions(name)
    assignment = split_users(
        inter,
        positive_rating=positive_rating,
        min_positives=min_positives,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    config = {
        "seed": seed,
        "min_positives": min_positives,
        "valid_fraction": valid_fraction,
        "test_fraction": test_fraction,
        "positive_rating": positive_rating,
    }
    return store.write_split(name, split, assignment, config)
