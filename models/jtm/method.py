"""JTM (NeurIPS 2019): the TDM lifecycle (`grove.models.tree_method`) with the hierarchical user
preference representation (`grove.models.jtm.hierarchical`) and joint tree learning, Algorithm 2
(`grove.models.jtm.tree_learning`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from grove.indexstore.structures import Tree
from grove.models.jtm.hierarchical import HierarchicalScorer
from grove.models.jtm.tree_learning import learn_tree
from grove.models.memory import FLOAT
from grove.models.node_scorer import TDMScorer
from grove.models.tree_builders import complete_depth
from grove.models.tree_method import TreeMethod, TreeMethodConfig, scorer_kwargs


@dataclass(frozen=True)
class JTMConfig(TreeMethodConfig):
    """JTM: plus ``gap`` (d, levels assigned per tree-learning step; 7 in the supplement) and
    ``tree_samples`` (training pairs scored by tree learning, seeded subset; 0 = all).

    Defaults from the supplement: the plain network (window averages, 128-64-24 PReLU MLP
    without batch norm; part B) and windows of >= 6 interactions (``min_behaviours=5``, part C);
    `grove.models.tree_method` says what each choice means and what TDM uses. The plain network
    learns slowly at the shared learning rate 1e-3 (the supplement's, with batches of 30,000): on
    ml-1m-subset after 20,000 windows it is far below TDM's attention network, and above it at
    ``lr=0.01`` or on 100,000 windows (benchmarks/README.md, "variants"): short runs want
    ``lr=0.01``."""

    network: str = "average"
    batch_norm: bool = False
    min_behaviours: int = 5
    gap: int = 7
    tree_samples: int = 100_000

    # versions stored before these fields existed were built with TDM's network, every window
    stored_before: ClassVar[dict[str, Any]] = {"network": "attention", "batch_norm": True, "min_behaviours": 1}

    def __post_init__(self):
        super().__post_init__()
        if self.gap < 1 or self.tree_samples < 0:
            raise ValueError(f"gap must be >= 1 and tree_samples >= 0; got {self.gap}, {self.tree_samples}")


class JTMMethod(TreeMethod[JTMConfig]):
    """JTM: hierarchical user preference representation + joint tree learning (Algorithm 2)."""

    name = "jtm"
    config_cls = JTMConfig
    keep_nodes_by_path = True

    def make_scorer(self, config: JTMConfig, tree: Tree) -> TDMScorer:
        return HierarchicalScorer(tree, **scorer_kwargs(config))

    def relearn_bytes(self, config: JTMConfig, n_items: int) -> int:
        """The position maps of the complete layout and the (items with pairs, K**gap) weights."""
        layout = 2 * config.arity ** complete_depth(n_items, config.arity) * 8
        pairs = min(n_items, config.tree_samples or n_items)
        return layout + 4 * pairs * config.arity**config.gap * FLOAT

    def learn(self, config: JTMConfig, scorer, tree, data, seed, device) -> Tree:
        return learn_tree(
            scorer, tree, data.train, gap=config.gap, max_samples=config.tree_samples or None, seed=seed, device=device
        )
