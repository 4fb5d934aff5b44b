"""RecForest's ``construct`` in parts, so the trees of a forest can be built at once (one task
each, `flows.forest`): the item embeddings the trees are clustered on (`embeddings`), tree t
(`tree`, seeded as `models.recforest.method.build_forest` seeds it) and the index they make
(`assemble`). For every config, split and seed::

    emb = embeddings(config, data, seed)
    assemble(emb, [tree(config, emb, seed, t) for t in range(config.trees)])
        == RecForestMethod().construct(config, data, seed)      # same forest, same artifact bytes

(tests/test_task_runners.py holds the two together). Training stays one job: the T decoders
share one encoder (Algorithm 3).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from indexstore.samples import SplitData
from indexstore.structures import Forest, Tree
from models.method import Built, resolve_device, state_to_bytes
from models.recforest.method import RecForestConfig, duplicate_leaves_warning, pretrained_embeddings
from models.tree_builders import recforest_tree


def embeddings(config: RecForestConfig, data: SplitData, seed: int) -> np.ndarray:
    """(n_items, d) float32: the pretrained item vectors every tree is clustered on (warns, as
    ``construct`` does, when the arity leaves many copies of items)."""
    message = duplicate_leaves_warning(data.n_items, config.arity)
    if message:
        warnings.warn(message, stacklevel=2)
    return pretrained_embeddings(config, data, seed, resolve_device(config.device))


def tree(config: RecForestConfig, item_embeddings: np.ndarray, seed: int, t: int) -> Tree:
    """Tree ``t`` of the forest (appendix Algorithm 2, seed ``seed * 1000 + t``)."""
    if not 0 <= t < config.trees:
        raise ValueError(f"tree index {t} is outside the forest's {config.trees} trees")
    return recforest_tree(item_embeddings, config.arity, seed=seed * 1000 + t, random_ratio=config.random_ratio)


def assemble(item_embeddings: np.ndarray, trees: list[Tree]) -> Built:
    """The constructed index: the forest of ``trees`` (in order) and the embeddings artifact."""
    artifact = state_to_bytes({"embeddings": torch.as_tensor(item_embeddings)})
    return Built(Forest(tuple(trees)), {"item_embeddings.pt": artifact})
