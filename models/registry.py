"""Method name -> `Method` instance. Modules are imported lazily so that a method's
dependencies load only when it is used."""

from __future__ import annotations

import importlib
from typing import Any

from grove.indexstore.errors import GroveError
from grove.models.method import Method

# name -> (module, class). Baselines are methods too, so flows and the retriever treat them alike.
_METHODS: dict[str, tuple[str, str]] = {
    "tdm": ("grove.models.tdm.method", "TDMMethod"),
    "jtm": ("grove.models.jtm.method", "JTMMethod"),
    "deforec": ("grove.models.deforec.method", "DeFoRecMethod"),
    "recforest": ("grove.models.recforest.method", "RecForestMethod"),
    "dr": ("grove.models.dr.method", "DRMethod"),
    "two_tower": ("grove.models.baselines.two_tower", "TwoTowerMethod"),
    "itemcf": ("grove.models.baselines.item_cf", "ItemCFMethod"),
}


def method_names() -> list[str]:
    return list(_METHODS)


def get_method(name: str) -> Method[Any]:
    """The `Method` registered as ``name``; a GroveError listing the known names otherwise."""
    if name not in _METHODS:
        raise GroveError(f"unknown method {name!r}; known methods: {', '.join(_METHODS)}")
    module, cls = _METHODS[name]
    return getattr(importlib.import_module(module), cls)()
