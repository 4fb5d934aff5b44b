"""What a method's config accepts: each field's name, type, default and a one-line doc
(``grove config METHOD``, `grove.config_fields`), and `config`, a method's config built from
keyword fields with the same checks as ``--set``.

The docs live here, one table, so that every field of every registered method has one (a test
holds it): `COMMON` for the fields that mean the same in every method, `BY_METHOD` for the rest
and for a common field whose meaning differs in a method.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from grove.models.method import MethodConfig, config_from_dict
from grove.models.registry import get_method

COMMON = {
    "seed": "seed of every random choice (initialisation, sampling, subsets): same seed, same index",
    "epochs": "passes over the training windows per train step",
    "batch_size": "training windows per optimiser step",
    "lr": "Adam learning rate",
    "lr_decay": "learning-rate factor applied after every epoch",
    "max_samples": "train on a seeded subset of this many windows (0 = all)",
    "max_steps": "stop a train step after this many optimiser steps (0 = no cap beyond epochs)",
    "device": "'auto' (CUDA when available), 'cpu' or 'cuda'",
    "arity": "children per node of the tree (K)",
    "dim": "embedding size of items, nodes and behaviours",
    "min_behaviours": "a training window needs this many behaviours before its target (JTM 5, RecForest 14)",
    "network": "scorer network: 'attention' (TDM's activation unit) or 'average' (plain window averages)",
    "batch_norm": "batch normalisation in the scorer's MLP",
}

_TREE = {
    "hidden": "widths of the scorer's MLP layers",
    "neg_base": "negatives per sample at level 1 of the default schedule",
    "neg_growth": "growth of the negatives per level, towards the leaves",
    "neg_total": "cap on the negatives per sample over all levels, spread by the schedule (0 = no cap)",
    "negatives": "explicit negatives per level, root to leaves; empty = the schedule",
    "warm_start": "start training a relearnt tree from the previous version's scorer",
}

BY_METHOD: dict[str, dict[str, str]] = {
    "tdm": {**_TREE, "kmeans_iters": "balanced k-means rounds per split when relearning the tree"},
    "jtm": {
        **_TREE,
        "gap": "levels assigned per tree-learning step (d; 7 in the supplement)",
        "tree_samples": "training pairs scored by tree learning, seeded subset (0 = all)",
    },
    "deforec": {
        "arity": "children per node of each tree (the paper uses binary trees)",
        "negatives": "negatives per level (m)",
        "negatives_total": "cap on the negatives per sample over all levels (0 = no cap)",
        "gap": "levels assigned per tree-learning step (d)",
        "tree_samples": "training pairs scored by tree learning, seeded subset (0 = all)",
        "discriminator": "scorer that ranks the forest's candidates: 'last_scorer' or 'two_tower'",
        "hierarchical": "score a node with the behaviours' ancestors at its level (JTM's representation)",
        "beam": "default query beam when a search names none",
    },
    "recforest": {
        "arity": "children per node of each tree (18 in the paper; fit K^H to the items)",
        "trees": "trees in the forest (T)",
        "hidden": "transformer width",
        "heads": "attention heads",
        "encoder_layers": "transformer encoder layers",
        "decoder_layers": "transformer decoder layers",
        "ff": "feed-forward width of each transformer layer",
        "dropout": "dropout rate of the transformer",
        "embeddings": "item vectors the trees are clustered from: 'two_tower' (pretrained) or 'svd'",
        "embedding_dim": "size of those item vectors",
        "pretrain_epochs": "epochs of the two-tower pretraining",
        "pretrain_max_steps": "cap on the two-tower pretraining steps (0 = no cap)",
        "random_ratio": "fraction of each cluster split at random when building a tree (δ; 0 = Algorithm 2 as printed)",
        "beam": "default query beam when a search names none",
    },
    "dr": {
        "arity": "codes per layer (K)",
        "depth": "layers of a path (D)",
        "n_paths": "paths per item (J)",
        "hidden": "width of the structure model's layers",
        "epochs": "training epochs per train step",
        "joint_epochs": "epochs that train the softmax jointly; the rest freeze it",
        "softmax_samples": "None = full softmax up to a size, sampled above; 0 = always full; N = N negatives",
        "alpha": "penalty on crowded paths in the M-step",
        "estep_beam": "paths per sample scored in the E-step (S)",
        "estep_pool": "candidate paths kept per item in the E-step",
        "mstep_iters": "coordinate-descent rounds of the M-step's path assignment",
        "max_samples": "train and E-step on a seeded subset of this many windows (0 = all)",
    },
    "two_tower": {
        "hidden": "widths of the user tower's MLP layers",
        "pooling": "'mean' of the history or TDM's 'windows'",
        "share_embeddings": "one table for history items and candidate items",
        "negatives": "sampled negatives per window in the sampled softmax",
        "sampler": "negative sampler: 'log_uniform' (by popularity rank) or 'uniform'",
    },
    "itemcf": {
        "neighbours": "neighbours kept per item (M)",
        "pair_budget": "co-occurrence pairs materialised per block (memory bound)",
        "dense_budget": "entries of the (block, items) count matrix (memory bound)",
        "device": "build device: 'auto' (CUDA when available), 'cpu' or 'cuda'",
    },
}


@dataclass(frozen=True)
class FieldInfo:
    """One config field: its name, type as written, default and one-line doc."""

    name: str
    type: str
    default: Any
    doc: str


def config_fields(method: str) -> list[FieldInfo]:
    """The fields of ``method``'s config, in declaration order (GroveError for an unknown method)."""
    cls = get_method(method).config_cls
    hints = typing.get_type_hints(cls)
    docs = {**COMMON, **BY_METHOD.get(method, {})}
    out = []
    for f in dataclasses.fields(cls):
        factory: Any = f.default_factory
        default = f.default if f.default is not dataclasses.MISSING else factory()
        out.append(FieldInfo(f.name, _type_name(hints[f.name]), default, docs.get(f.name, "")))
    return out


def config(method: str, **fields: Any) -> MethodConfig:
    """``method``'s frozen config from keyword fields, each checked (unknown fields and wrong
    types refused with a GroveError naming them)."""
    return config_from_dict(get_method(method).config_cls, fields)


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")
