"""Refusing work that cannot fit, before allocating it.

Each method estimates the peak bytes of its verbs from the config and the catalogue size
(`grove.models.method.Method.memory_bytes`): the embedding tables with the optimiser's two moment
buffers and the copies a version's artifacts take, the structure's tables, the per-batch
activations. Estimates are upper bounds of the dominant terms, not a measurement: they exist to
turn "grew until the kernel killed it" into one line naming the sizes, before anything is
allocated.

The bound is the device's memory: ``GROVE_MEMORY_LIMIT`` (bytes, or with a unit: ``20GB``,
``512MiB``) when set, else the machine's physical memory on the CPU and the GPU's total
memory on CUDA.
"""

from __future__ import annotations

import os
import re

import torch

from grove.indexstore.errors import GroveError, TooLargeError

FLOAT = 4  # bytes per float32
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(text: str) -> int:
    """'20GB' / '512MiB' / '1000000' -> bytes; GroveError naming the value otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text or "")
    if not m or m.group(2).lower() not in _UNITS:
        raise GroveError(f"GROVE_MEMORY_LIMIT={text!r} is not a size (e.g. 20GB, 512MiB, 1000000)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def budget(device: torch.device | str) -> int:
    """Bytes a step may use on ``device`` (see the module docstring)."""
    limit = os.environ.get("GROVE_MEMORY_LIMIT")
    if limit:
        return parse_bytes(limit)
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def human(n: float) -> str:
    """Bytes as a short human string (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def require(nbytes: int, device: torch.device | str, what: str) -> None:
    """Raise `TooLargeError` when ``nbytes`` exceeds the device's budget, naming ``what``."""
    have = budget(device)
    if nbytes > have:
        raise TooLargeError(
            f"{what} needs about {human(nbytes)} but {torch.device(device).type} memory is "
            f"{human(have)}; choose a smaller configuration (or set GROVE_MEMORY_LIMIT)"
        )


def tree_nodes(n_items: int, arity: int) -> int:
    """Upper bound of the nodes of a K-ary tree over ``n_items`` leaves whose internal nodes
    have at least two children, plus slack for single-child chains of a category tree."""
    return n_items + n_items // max(arity - 1, 1) + 64


def adam_table(rows: int, dim: int) -> int:
    """An embedding table trained with Adam: the weights, two moment buffers, the state copy
    and the serialised bytes a version keeps (5 tables)."""
    return 5 * rows * dim * FLOAT
