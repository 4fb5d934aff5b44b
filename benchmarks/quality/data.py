"""The benchmark's data: a MovieLens dataset imported into a DuckDB store and split with one seed
(or, without the store's packages, read and split directly), loaded as `SplitData`."""

from __future__ import annotations

import pathlib

import numpy as np

from benchmarks.quality.settings import DATA_DIRS, DATASETS


def find_data_dir(name: str, explicit: str | None) -> pathlib.Path:
    dirs = [pathlib.Path(explicit)] if explicit else DATA_DIRS
    for d in dirs:
        if (d / name / DATASETS[name][0]).exists():
            return d / name
    raise SystemExit(f"dataset {name} not found under {', '.join(map(str, dirs))}")


def target_coverage(data) -> dict:
    """How much training signal each item gets: training windows per item, and the share of items
    that are the target of no window, or of fewer than 5. An item that is rarely a target keeps a
    near-random leaf embedding, which a k-means relearn then clusters (see benchmarks/README.md)."""
    counts = np.bincount(np.asarray(data.train.targets), minlength=data.n_items)
    return {
        "windows_per_item": float(counts.sum() / max(1, data.n_items)),
        "median_targets_per_item": float(np.median(counts)),
        "items_never_target": float((counts == 0).mean()),
        "items_under_5_targets": float((counts < 5).mean()),
    }


def load_data(name: str, folder: pathlib.Path, seed: int, workdir: str, url: str | None = None) -> tuple[object, dict]:
    """SplitData of ``name`` split with ``seed`` (split ``seed<seed>``): through a DuckDB store
    (``url``, else a new one in ``workdir``; the dataset and split are reused when the store has
    them) when its packages are importable, else through the same readers and protocol functions."""
    ratings, items = (folder / f for f in DATASETS[name])
    try:
        from grove.flows.datasets import import_file, split_dataset
        from grove.indexstore.store import Store
    except ImportError as exc:  # store stack missing (e.g. a bare GPU machine)
        note = f"direct (readers + protocol; store unavailable: {exc})"
        from grove.indexstore.categories import read_item_categories
        from grove.indexstore.protocol import build_split_data, split_users
        from grove.indexstore.readers import read_interactions

        inter = read_interactions(str(ratings))
        cats = read_item_categories(str(items), inter.item_raw, seed)
        kept = np.asarray(cats.kept, dtype=object)
        names = sorted({c for c in kept if c is not None})
        code = {c: i for i, c in enumerate(names)}
        codes = np.array([code.get(c, -1) if c is not None else -1 for c in kept], dtype=np.int32)
        data = build_split_data(inter, split_users(inter, seed=seed), len(inter.item_raw), codes, name, f"seed{seed}")
        return data, {"data_path": note}
    url = url or f"duckdb:///{workdir}/quality_{name}.duckdb"
    Store.init(url)
    store = Store.open(url)
    if name not in {d.name for d in store.list_datasets()}:
        import_file(store, str(ratings), name, items=str(items), seed=0)
    if f"seed{seed}" not in {s.name for s in store.list_splits(name)}:
        split_dataset(store, name, f"seed{seed}", seed=seed)
    data = store.load_split(name, f"seed{seed}")
    return data, {"data_path": f"store ({url})"}
