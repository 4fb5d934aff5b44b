"""RecForest (NeurIPS 2022): a forest of T complete K-ary trees built at once, one shared
transformer encoder over the behaviour sequence and one transformer decoder per tree that emits
the root-to-leaf code of the target item.

Lifecycle (`grove.models.method.Method`):
* ``construct`` pretrains item embeddings (the two-tower baseline, or a co-occurrence SVD) and
  builds T trees with appendix Algorithm 2 (``grove.models.tree_builders.recforest_tree``), seeds
  ``seed * 1000 + t``. The embeddings are kept as the artifact ``item_embeddings.pt``.
* ``train`` trains the network from scratch (seeded) with Algorithm 3 and stores ``weights.pt``.
* ``relearn`` leaves the forest as it is (RecForest does not relearn trees; ``relearns=False``).
* ``searcher`` answers queries with Algorithm 4 (`grove.models.recforest.search`).

Training uses Adam with exponential learning-rate decay per epoch (appendix E.2). An item with
several leaves in a tree gets, at every sample, one of its leaves drawn uniformly as the target
(see `grove.models.recforest.search` for why and how retrieval then scores it).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from grove.indexstore.errors import GroveError
from grove.indexstore.samples import MAX_BEHAVIOURS, SplitData
from grove.indexstore.structures import Forest, Tree
from grove.models.distributed import batches, epoch_order, mean_over_workers, worker_generator
from grove.models.memory import FLOAT, adam_table, tree_nodes
from grove.models.method import (
    Built,
    Method,
    MethodConfig,
    Searcher,
    bytes_to_state,
    require_artifact,
    resolve_device,
    state_to_bytes,
)
from grove.models.optim import EmbeddingAdam
from grove.models.progress import Progress
from grove.models.recforest.network import RecForestNet
from grove.models.recforest.search import ForestTables, RecForestSearcher
from grove.models.tree_builders import complete_depth, recforest_tree, tightest_arity
from grove.models.windows import DeviceWindows

EMBEDDINGS = ("two_tower", "svd")
# leaves per item above which `construct` warns that the trees are mostly copies (see
# `duplicate_leaves_warning`); ml-1m-subset's 18-ary trees have 1.6 and lose nothing to copies
MANY_LEAVES_PER_ITEM = 2.0


@dataclass(frozen=True)
class RecForestConfig(MethodConfig):
    """arity K (18), trees T (2..4), network size (hidden 96 as in the paper), training knobs.

    ``embeddings``: 'two_tower' pretrains the two-tower baseline (``pretrain_*`` knobs) and
    clusters its item vectors; 'svd' uses a truncated SVD of the user x item matrix (fast).
    ``random_ratio`` is Algorithm 2's δ (`grove.models.tree_builders.recforest_tree`; 0, the
    algorithm as printed, by default: the δ = 0.1 reading grove used before issue 30 measured no
    better, benchmarks/README.md "variants"). ``max_steps``
    > 0 caps the optimiser steps (time-boxed runs); ``beam`` is the default query beam flows use
    when none is given (query-time knob, not used to build). ``min_behaviours``: appendix E.2
    trains on sliding windows that each contain "at least 15 interactions", the target and >= 14
    behaviours (versions stored before the field existed trained on every window).

    ``arity``: the paper uses 18 on every dataset. A complete K-ary tree over N items has K^H
    leaves (H = ceil(log_K N)) and Algorithm 2 fills the ones beyond N with copies of items, so
    when K^H is many times N a beam's leaves repeat items and find few distinct ones. Choose K
    with K^H close to N (`grove.models.tree_builders.tightest_arity`); `construct` warns above
    ``MANY_LEAVES_PER_ITEM``. On ml-latest-small (9,724 items) a fitted arity finds several times
    more distinct items per beam than 18 and raises recall; on ml-1m-subset (1.6 leaves per item
    at 18) it buys beam, not a better model (benchmarks/README.md, quality)."""

    arity: int = 18
    trees: int = 2
    hidden: int = 96
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    ff: int = 192
    dropout: float = 0.1
    epochs: int = 2
    batch_size: int = 256
    lr: float = 1e-3
    lr_decay: float = 0.9
    max_steps: int = 0
    embeddings: str = "two_tower"
    embedding_dim: int = 24
    pretrain_epochs: int = 3
    pretrain_max_steps: int = 0
    random_ratio: float = 0.0
    beam: int = 100
    device: str = "auto"
    min_behaviours: int = 14

    # versions stored before issue 30 trained on every window
    stored_before: ClassVar[dict[str, Any]] = {"min_behaviours": 1}

    def __post_init__(self):
        if self.arity < 2 or self.trees < 1 or self.hidden % self.heads:
            raise ValueError(
                f"need arity >= 2, trees >= 1, hidden % heads == 0; got arity={self.arity}, "
                f"trees={self.trees}, hidden={self.hidden}, heads={self.heads}"
            )
        if self.embeddings not in EMBEDDINGS:
            raise ValueError(f"embeddings must be one of {EMBEDDINGS}, got {self.embeddings!r}")
        if self.min_behaviours < 1:
            raise ValueError(f"min_behaviours must be >= 1, got {self.min_behaviours}")


def svd_item_embeddings(data: SplitData, dim: int, seed: int) -> np.ndarray:
    """Item embeddings (n_items, dim) from a truncated SVD of the training user x item matrix
    (V * sqrt(S)); items no training user touched get small random vectors."""
    n_users = len(data.train_offsets) - 1
    rows = np.repeat(np.arange(n_users), np.diff(data.train_offsets))
    idx = torch.as_tensor(np.stack([rows, data.train_items]), dtype=torch.long)
    mat = torch.sparse_coo_tensor(
        idx, torch.ones(idx.shape[1]), (n_users, data.n_items), check_invariants=True
    ).coalesce()
    q = min(dim, n_users, data.n_items)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, s, v = torch.svd_lowrank(mat, q=q, niter=4)
        noise = torch.randn(data.n_items, q) * 1e-3
    emb = v * s.sqrt()
    return (emb + noise).numpy().astype(np.float32)


def pretrained_embeddings(config: RecForestConfig, data: SplitData, seed: int, device) -> np.ndarray:
    """(n_items, d) float32 item embeddings the trees are clustered on."""
    if config.embeddings == "svd":
        return svd_item_embeddings(data, config.embedding_dim, seed)
    from grove.models.baselines.two_tower import TwoTowerConfig, train_two_tower

    tt = TwoTowerConfig(
        seed=seed,
        dim=config.embedding_dim,
        epochs=config.pretrain_epochs,
        max_steps=config.pretrain_max_steps,
        device=str(device),
    )
    _, item_emb = train_two_tower(data, tt, device)
    return np.asarray(item_emb, dtype=np.float32)


def duplicate_leaves_warning(n_items: int, arity: int) -> str | None:
    """A message when a complete ``arity``-ary tree over ``n_items`` has more than
    ``MANY_LEAVES_PER_ITEM`` leaves per item, naming the arities that fit the corpus at the same
    depth and one level shallower; None otherwise."""
    depth = complete_depth(n_items, arity)
    leaves = arity**depth
    if leaves <= MANY_LEAVES_PER_ITEM * n_items:
        return None
    fits = [(tightest_arity(n_items, h), h) for h in (depth - 1, depth) if h >= 1]
    options = " or ".join(f"{k} (depth {h}, {k**h / n_items:.2f} leaves per item)" for k, h in fits)
    return (
        f"RecForest: a complete {arity}-ary tree over {n_items:,} items has depth {depth} and "
        f"{leaves:,} leaves, {leaves / n_items:.1f} per item; Algorithm 2 fills the extra leaves with "
        f"copies of items, so a beam of B leaves holds far fewer than B distinct items and recall "
        f"suffers (benchmarks/README.md, ml-latest-small). An arity that fits this corpus: {options}"
    )


# construct in parts, so the trees of a forest can be built at once (one Prefect task each,
# `grove.flows.forest`); `RecForestMethod.construct` is exactly these parts in one process
def construct_embeddings(config: RecForestConfig, data: SplitData, seed: int) -> np.ndarray:
    """(n_items, d) float32: the pretrained item vectors every tree is clustered on (warns when
    the arity leaves many copies of items)."""
    message = duplicate_leaves_warning(data.n_items, config.arity)
    if message:
        warnings.warn(message, stacklevel=3)
    return pretrained_embeddings(config, data, seed, resolve_device(config.device))


def forest_tree(config: RecForestConfig, item_embeddings: np.ndarray, seed: int, t: int) -> Tree:
    """Tree ``t`` of the forest (appendix Algorithm 2 over the shared embeddings, seed
    ``seed * 1000 + t``)."""
    if not 0 <= t < config.trees:
        raise ValueError(f"tree index {t} is outside the forest's {config.trees} trees")
    return recforest_tree(item_embeddings, config.arity, seed=seed * 1000 + t, random_ratio=config.random_ratio)


def assemble_forest(item_embeddings: np.ndarray, trees: list[Tree]) -> Built:
    """The constructed index: the forest of ``trees`` (in order) and the embeddings artifact."""
    artifact = state_to_bytes({"embeddings": torch.as_tensor(item_embeddings)})
    return Built(Forest(tuple(trees)), {"item_embeddings.pt": artifact})


def make_net(config: RecForestConfig, n_items: int, depths: list[int]) -> RecForestNet:
    return RecForestNet(
        n_items,
        config.arity,
        depths,
        config.hidden,
        config.heads,
        config.encoder_layers,
        config.decoder_layers,
        config.ff,
        config.dropout,
    )


def train_net(
    config: RecForestConfig, forest: Forest, data: SplitData, seed: int, device: torch.device
) -> tuple[RecForestNet, dict]:
    """Algorithm 3 over the training windows; returns the net (eval mode) and stats."""
    torch.manual_seed(seed)
    tables = ForestTables.from_forest(forest, device)
    net = make_net(config, data.n_items, tables.depths).to(device)
    opt = EmbeddingAdam(net, lr=config.lr)
    windows = DeviceWindows(data.train, "cpu")  # batches are gathered on the CPU, then moved
    n = len(windows)
    if n == 0:
        raise GroveError(f"split {data.dataset}/{data.split} has no training samples")
    gen = worker_generator(seed, "cpu")  # this worker's draws of codes
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total = steps_per_epoch * config.epochs
    if config.max_steps > 0:
        total = min(total, config.max_steps)
    step, seen, loss_sum, start = 0, 0, 0.0, time.perf_counter()
    net.train()
    with Progress("recforest training", total=total, unit="batch") as prog:
        epoch = 0
        while step < total:
            for b, idx in enumerate(batches(epoch_order(n, seed, epoch, "cpu"), config.batch_size)):
                if step >= total:
                    break
                h, y = windows.behaviours(idx).to(device), windows.targets[idx].to(device)
                codes = [tables.sample_codes(y, t, gen) for t in range(len(forest))]
                loss = net.loss(h, codes)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                seen += min(config.batch_size, n - b * config.batch_size)  # the global batch's samples
                loss_sum += float(loss.item())
                prog.update(1, postfix=f"loss {loss.item():.3f}")
            opt.decay(config.lr_decay)
            epoch += 1
    seconds = time.perf_counter() - start
    mean_loss = mean_over_workers(loss_sum / max(step, 1))
    stats = {"steps": step, "samples": seen, "seconds": seconds, "mean_loss": mean_loss}
    return net.eval(), stats


class RecForestMethod(Method[RecForestConfig]):
    name = "recforest"
    kind = "forest"
    config_cls = RecForestConfig
    relearns = False
    size_fields = ("arity", "trees", "hidden", "embedding_dim", "batch_size")

    def memory_bytes(self, config: RecForestConfig, n_items: int, verb: str) -> int:
        """The encoder's (n_items, hidden) table with Adam and copies, T trees of K**H leaves,
        the pretraining two-tower's tables when constructing, the decoder's per-batch
        activations."""
        leaves = config.arity ** complete_depth(n_items, config.arity)
        trees = config.trees * tree_nodes(leaves, config.arity) * 8 * 8
        if verb == "construct":
            return trees + adam_table(2 * n_items, config.embedding_dim)
        if verb in ("search", "relearn"):
            return trees + (n_items + 1) * config.hidden * FLOAT
        act = config.batch_size * MAX_BEHAVIOURS * config.ff * config.trees * 16 * FLOAT
        return trees + adam_table(n_items + 1, config.hidden) + act

    def construct(self, config: RecForestConfig, data: SplitData, seed: int) -> Built:
        emb = construct_embeddings(config, data, seed)
        return assemble_forest(emb, [forest_tree(config, emb, seed, t) for t in range(config.trees)])

    def train(self, config: RecForestConfig, built: Built, data: SplitData, seed: int) -> Built:
        forest = _forest(built)
        net, stats = train_net(config, forest, data, seed, resolve_device(config.device))
        weights = state_to_bytes(
            {
                "state": {k: v.cpu() for k, v in net.state_dict().items()},
                "depths": [t.depth for t in forest.trees],
                "stats": stats,
            }
        )
        return Built(forest, {**built.artifacts, "weights.pt": weights})

    def relearn(self, config: RecForestConfig, built: Built, data: SplitData, seed: int) -> Built:
        """RecForest builds its trees once; relearning keeps the forest and weights."""
        return built

    def searcher(self, config: RecForestConfig, built: Built, device="cpu") -> Searcher:
        forest = _forest(built)
        device = resolve_device(device)
        saved = bytes_to_state(require_artifact(built, "weights.pt", self.name), device)
        tables = ForestTables.from_forest(forest, device)
        net = make_net(config, forest.n_items, tables.depths).to(device)
        net.load_state_dict(saved["state"])
        return RecForestSearcher(net, tables, forest.n_items, device)


def _forest(built: Built) -> Forest:
    if not isinstance(built.structure, Forest):
        raise GroveError(f"a RecForest index holds a forest, got {type(built.structure).__name__}")
    return built.structure
