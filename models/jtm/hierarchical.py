"""JTM's hierarchical user preference representation (supplement B): to score a node at level
l, every behaviour item c is replaced by ``b_l(pi(c))``, its ancestor at level l
(`HierarchicalScorer`). A behaviour whose leaf sits above level l keeps its leaf."""

from __future__ import annotations

import numpy as np
import torch

from grove.indexstore.structures import Tree
from grove.models.node_scorer import TDMScorer


def ancestor_table(tree: Tree) -> np.ndarray:
    """(depth + 1, n_items) int64: node of item i at level l = ancestor of its first leaf at
    level l, or the leaf itself when the leaf sits above level l."""
    leaf = tree.item_leaf
    rows = [np.where(a >= 0, a, leaf) for a in (tree.ancestors_at(leaf, lv) for lv in range(tree.depth + 1))]
    return np.stack(rows)


class HierarchicalScorer(TDMScorer):
    """TDM's scorer with JTM's hierarchical user preference representation: behaviours are
    mapped to their ancestors at the level of the node being scored. Same parameters."""

    ancestor: torch.Tensor  # (depth + 1, n_items) buffer: node of every item at every level

    def __init__(self, tree: Tree, **kwargs):
        super().__init__(tree, **kwargs)
        self.register_buffer("ancestor", torch.as_tensor(ancestor_table(tree)), persistent=False)

    def behaviour_rows(self, histories: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """(U, L) rows when all nodes share a level (beam search), else (U, C, L)."""
        level = self.node_level[nodes.clamp(min=0)]  # (U, C)
        if bool((level == level.reshape(-1)[0]).all()):
            ok, items = self._items(histories)
            anc = self.ancestor[level.reshape(-1)[0], items]  # (U, L) nodes
            return torch.where(ok, self.node_row[anc], torch.full_like(anc, self.pad_row))
        return self._rows_at(histories, level)

    def static_behaviour_rows(self, histories: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """(U, C, L) rows, each node's behaviours mapped to its own level (the general path)."""
        return self._rows_at(histories, self.node_level[nodes.clamp(min=0)])

    def _rows_at(self, histories: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Rows (U, C, L) of the behaviours' ancestors at ``level`` (U, C)."""
        ok, items = self._items(histories)
        anc = self.ancestor[level.unsqueeze(-1), items.unsqueeze(1)]  # (U, C, L) nodes
        return torch.where(ok.unsqueeze(1), self.node_row[anc], torch.full_like(anc, self.pad_row))

    def _items(self, histories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, L) real behaviours, and the ids with padding set to item 0 (masked later)."""
        ok = (histories >= 0) & (histories < self.n_items)
        return ok, torch.where(ok, histories, torch.zeros_like(histories))
