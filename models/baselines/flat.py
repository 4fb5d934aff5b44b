"""What the brute-force baselines (two-tower, Item-CF) share.

The baselines search exactly, by scoring every item, so their stored structure is a **flat
tree**: a root whose children are all ``n_items`` leaves (arity = n_items). That keeps them
behind the same `Method` contract as the tree methods (the store, flows, `Retriever` and
`evaluate` work on them unchanged), and their ``relearn`` returns its input.

The methods themselves live in `grove.models.baselines.two_tower` (YouTube product-DNN, `TwoTowerMethod`) and
`grove.models.baselines.item_cf` (`ItemCFMethod`).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar, TypeVar

import numpy as np
import torch

from grove.indexstore.errors import GroveError, InputError
from grove.indexstore.samples import SplitData
from grove.indexstore.structures import Tree
from grove.models.method import Built, Method, MethodConfig, Searcher
from grove.models.precision import search_mode
from grove.models.topk import empty_topk, merge_topk, padded_topk

# cap on the (batch, chunk) score block a searcher materialises at once: 2^24 floats = 64 MiB
SCORE_BLOCK = 1 << 24


def flat_tree(n_items: int) -> Tree:
    """A root (node 0) with every item as a leaf child: node i+1 holds item i."""
    if n_items < 1:
        raise GroveError(f"a flat index needs at least one item, got n_items={n_items}")
    parent = np.zeros(n_items + 1, dtype=np.int64)
    parent[0] = -1
    item = np.arange(-1, n_items, dtype=np.int64)
    return Tree(parent, item, n_items, arity=n_items)


def check_query(histories: torch.Tensor, k: int, beam: int | None = None) -> None:
    """Raise InputError on k <= 0, beam <= 0 or histories that are not (B, L) integers."""
    if int(k) <= 0:
        raise InputError(f"k must be a positive integer, got {k}")
    if beam is not None and int(beam) <= 0:
        raise InputError(f"beam must be a positive integer, got {beam}")
    if histories.dim() != 2 or histories.dtype.is_floating_point:
        raise InputError(
            f"histories must be a (batch, length) integer tensor, got {tuple(histories.shape)} {histories.dtype}"
        )


def behaviour_mask(histories: torch.Tensor, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids -> (ids with padding/unknown ids replaced by 0 (B, L) int64, mask (B, L) bool).

    Ids outside [0, n_items) (padding -1, or unknown items) are masked out, not an error: the
    `Retriever` counts unknown ids and warns; here they simply do not contribute.
    """
    h = histories.long()
    mask = (h >= 0) & (h < n_items)
    return torch.where(mask, h, torch.zeros_like(h)), mask


class BruteForceSearcher(Searcher):
    """Scores every item in chunks of the item axis and keeps a running top-k.

    Subclasses implement `_prepare` (per-batch user state) and `_score_chunk` (that state
    against items [lo, hi)). ``search`` ignores ``beam`` (validated only) and equals
    ``exhaustive``: the search is exact.
    """

    def __init__(self, n_items: int, device: torch.device):
        self.n_items = int(n_items)
        self.device = torch.device(device)

    @abstractmethod
    def _prepare(self, histories: torch.Tensor):
        """Per-batch state from (B, L) int64 histories on self.device."""

    @abstractmethod
    def _score_chunk(self, state, lo: int, hi: int) -> torch.Tensor:
        """(B, hi - lo) float scores of items lo..hi-1."""

    @search_mode
    def exhaustive(self, histories: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        check_query(histories, k)
        histories = histories.to(self.device)
        b = histories.shape[0]
        state = self._prepare(histories)
        chunk = max(1024, SCORE_BLOCK // max(b, 1))
        best = empty_topk(b, k, self.device)
        for lo in range(0, self.n_items, chunk):
            hi = min(lo + chunk, self.n_items)
            best = merge_topk(best, padded_topk(self._score_chunk(state, lo, hi), k, offset=lo), k)
        return best

    def search(self, histories: torch.Tensor, k: int, beam: int) -> tuple[torch.Tensor, torch.Tensor]:
        check_query(histories, k, beam)
        return self.exhaustive(histories, k)


FC = TypeVar("FC", bound=MethodConfig)


class FlatMethod(Method[FC]):
    """Shared verbs of the brute-force baselines: a flat tree, no relearning."""

    kind: ClassVar[str] = "tree"
    relearns: ClassVar[bool] = False

    def construct(self, config: FC, data: SplitData, seed: int) -> Built:
        return Built(flat_tree(int(data.n_items)))

    def relearn(self, config: FC, built: Built, data: SplitData, seed: int) -> Built:
        return built

    def check_data(self, built: Built, data: SplitData) -> None:
        """The version's item count must match the data's."""
        if built.structure.n_items != data.n_items:
            raise GroveError(
                f"this {self.name} index holds {built.structure.n_items} items but the "
                f"split {data.dataset}/{data.split} has {data.n_items}"
            )
