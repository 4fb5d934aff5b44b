"""The floating-point precision a search computes in: a per-searcher option, fp32 by default.

``fp32`` is exact to the trained weights; ``bf16`` and ``fp16`` halve the bytes every scoring
intermediate moves (the beam searches are memory-bound on a GPU: `benchmarks.gpu_profile`) at
the cost of ~3 (bf16) or ~4 (fp16) significant digits in each score, so near-ties may swap.
`benchmarks.precision` measures how far the top-k moves on trained indexes.

Two ways to run in reduced precision, chosen per searcher (`grove.models.method.Searcher`):

* **weights cast** (TDM and JTM trees, `TreeSearcher`; DeFoRec's trees): each scorer's
  embeddings and activation unit are copied in the target dtype (`TDMScorer.in_precision`), so
  every intermediate of the activation unit -- the (users, nodes, behaviours, 36) tensor that
  dominates the search -- is half-size, while the MLP and the logits stay float32.
* **autocast** (every other searcher): `torch.autocast` runs matrix products and attention in
  the target dtype and keeps reductions such as log-softmax in float32, so RecForest's and
  DR's path log-probabilities still accumulate in float32.

Scores are always returned as float32; only the work inside a search changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import torch

from grove.indexstore.errors import GroveError

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(precision: str) -> torch.dtype:
    """'fp32' | 'bf16' | 'fp16' -> its torch dtype; GroveError naming the choices otherwise."""
    try:
        return PRECISIONS[precision]
    except (KeyError, TypeError):
        raise GroveError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}") from None


COMPILE_MODES = ("level", "search")


def check_compile_mode(mode: str | None) -> None:
    """None (eager), 'level' or 'search' (`grove.models.tree_method.TreeSearcher.compile`);
    GroveError naming the choices otherwise."""
    if mode is not None and mode not in COMPILE_MODES:
        raise GroveError(f"unknown compile mode {mode!r}: use level or search (or leave it out: eager)")


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """A `torch.autocast` context for ``precision`` on ``device`` (nothing for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=precision_dtype(precision))


F = TypeVar("F", bound=Callable[..., Any])


def search_mode(fn: F) -> F:
    """Decorator of a `Searcher`'s search methods: no autograd, and the searcher's
    `Searcher.precision_context` around the call."""

    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        with torch.no_grad(), self.precision_context():
            return fn(self, *args, **kwargs)

    return run  # type: ignore[return-value]
