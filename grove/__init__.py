"""grove: learned retrieval indexes (TDM, JTM, DeFoRec, RecForest, Deep Retrieval) kept as
versioned, queryable data.

The public Python API, one import name for everything::

    import grove

    store = grove.Store.open("duckdb:///grove.duckdb")          # or postgresql+psycopg://...
    written = grove.cycle(store.url, "my-index", "tdm", "my-data", "default", {"max_samples": 5000}, rounds=1,
                          local=True)
    retriever = grove.Retriever.load(store, "my-index", version=written[-1])
    result = retriever.retrieve_raw([["item-1", "item-7"]], k=10, beam=50)

Names (imported on first use, so ``import grove`` and the ``grove`` command stay fast):

- `Store`: the index store (datasets, versions, aliases, metrics, SQL views); `GroveError`: every
  error a caller can cause, one line naming the problem.
- `Retriever` / `RawResult`: a version loaded for search, results with raw item ids.
- `cycle` (construct -> train -> evaluate -> relearn rounds; `local=True` runs without Prefect),
  `retrain` (a retraining run of an index in this process, with its promotion gate).
- `config(method, **fields)`: a method's frozen config, checked field by field; `config_fields(method)`
  what it accepts; the config classes (`TDMConfig` ... `ItemCFConfig`); `methods()` the names.
- `synthesize`, `import_interactions`, `split`: datasets into a store.
- `export` / `import_index`: a version to a folder of Parquet + TorchScript files, and back.

The repository keeps the layout grove was specified with: ``grove.indexstore`` is the folder
``indexstore/``, ``grove.models`` is ``models/``, ``grove.flows`` is ``flows/``,
``grove.migrations`` is ``migrations/`` (pyproject maps them).
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("grove")
except metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "Store": ("grove.indexstore.store", "Store"),
    "GroveError": ("grove.indexstore.errors", "GroveError"),
    "Retriever": ("grove.models.retriever", "Retriever"),
    "RawResult": ("grove.models.retriever", "RawResult"),
    "cycle": ("grove.flows.cycle", "run_cycle"),
    "retrain": ("grove.flows.retrain", "retrain_local"),
    "config": ("grove.models.config_info", "config"),
    "config_fields": ("grove.models.config_info", "config_fields"),
    "methods": ("grove.models.registry", "method_names"),
    "synthesize": ("grove.flows.datasets", "synth_dataset"),
    "import_interactions": ("grove.flows.datasets", "import_file"),
    "split": ("grove.flows.datasets", "split_dataset"),
    "export": ("grove.flows.index_export", "export_index"),
    "import_index": ("grove.flows.index_export", "import_index"),
    "TDMConfig": ("grove.models.tdm.method", "TDMConfig"),
    "JTMConfig": ("grove.models.jtm.method", "JTMConfig"),
    "DeFoRecConfig": ("grove.models.deforec.method", "DeFoRecConfig"),
    "RecForestConfig": ("grove.models.recforest.method", "RecForestConfig"),
    "DRConfig": ("grove.models.dr.method", "DRConfig"),
    "TwoTowerConfig": ("grove.models.baselines.two_tower", "TwoTowerConfig"),
    "ItemCFConfig": ("grove.models.baselines.item_cf", "ItemCFConfig"),
}

__all__ = [
    "__version__",
    "Store",
    "GroveError",
    "Retriever",
    "RawResult",
    "cycle",
    "retrain",
    "config",
    "config_fields",
    "methods",
    "synthesize",
    "import_interactions",
    "split",
    "export",
    "import_index",
    "TDMConfig",
    "JTMConfig",
    "DeFoRecConfig",
    "RecForestConfig",
    "DRConfig",
    "TwoTowerConfig",
    "ItemCFConfig",
]

if TYPE_CHECKING:  # what type checkers and editors see; at run time `__getattr__` imports
    from grove.flows.cycle import run_cycle as cycle
    from grove.flows.datasets import import_file as import_interactions
    from grove.flows.datasets import split_dataset as split
    from grove.flows.datasets import synth_dataset as synthesize
    from grove.flows.index_export import export_index as export
    from grove.flows.index_export import import_index
    from grove.flows.retrain import retrain_local as retrain
    from grove.indexstore.errors import GroveError
    from grove.indexstore.store import Store
    from grove.models.baselines.item_cf import ItemCFConfig
    from grove.models.baselines.two_tower import TwoTowerConfig
    from grove.models.config_info import config, config_fields
    from grove.models.deforec.method import DeFoRecConfig
    from grove.models.dr.method import DRConfig
    from grove.models.jtm.method import JTMConfig
    from grove.models.recforest.method import RecForestConfig
    from grove.models.registry import method_names as methods
    from grove.models.retriever import RawResult, Retriever
    from grove.models.tdm.method import TDMConfig


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'grove' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
