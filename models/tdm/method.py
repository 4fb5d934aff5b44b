"""TDM (KDD 2018): category tree -> attention-DNN node scorer -> balanced k-means tree over the
learnt leaf embeddings (§3.5) -> train ... (the shared verbs: `grove.models.tree_method`)."""

from __future__ import annotations

from dataclasses import dataclass

from grove.indexstore.structures import Tree
from grove.models.memory import FLOAT
from grove.models.tree_builders import kmeans_tree
from grove.models.tree_method import TreeMethod, TreeMethodConfig


@dataclass(frozen=True)
class TDMConfig(TreeMethodConfig):
    """TDM: plus ``kmeans_iters``, the balanced k-means rounds per split when relearning."""

    kmeans_iters: int = 10


class TDMMethod(TreeMethod[TDMConfig]):
    """TDM: category tree -> train -> k-means tree over the learnt leaf embeddings -> train ..."""

    name = "tdm"
    config_cls = TDMConfig

    def relearn_bytes(self, config: TDMConfig, n_items: int) -> int:
        return 6 * n_items * config.dim * FLOAT  # k-means: the embeddings, distances, centroids

    def learn(self, config: TDMConfig, scorer, tree, data, seed, device) -> Tree:
        emb = scorer.item_embeddings().detach()  # (n_items, d): item i's leaf embedding
        return kmeans_tree(emb, arity=config.arity, seed=seed, device=device, iters=config.kmeans_iters)
