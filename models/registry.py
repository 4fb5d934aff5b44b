"""Method name -> `Method` instance. Modules are imported lazily so that a method's
dependencies load only when it is used."""
from __future__ import annotations

import importlib

from indexstore.errors import GroveError
from models.method import Method

# name -> (module, class). Baselines are methods too, so flows and the retriever treat them alike.
_METHODS: dict[str, tuple[str, str]] = {
    "tdm": ("models.tree_methods", "TDMMethod"),
    "jtm": ("models.tree_methods", "JTMMethod"),
    "deforec": ("models.deforec", "DeFoRecMethod"),
    "recforest": ("models.recforest", "RecForestMethod"),
    "dr": ("models.deep_retrieval", "DRMethod"),
    "two_tower": ("models.two_tower", "TwoTowerMethod"),
    "itemcf": ("models.item_cf", "ItemCFMethod"),
}


def method_names() -> list[str]:
    return list(_METHODS)


def get_method(name: str) -> Method:
    """The `Method` registered as ``name``; a GroveError listing the known names otherwise."""
    if name not in _METHODS:
        raise GroveError(f"unknown method {name!r}; known methods: {', '.join(_METHODS)}")
    module, cls = _METHODS[name]
    return getattr(importlib.import_module(module), cls)()
