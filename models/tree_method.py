"""What TDM (KDD 2018) and JTM (NeurIPS 2019) share behind the `grove.models.method.Method` contract:
the config fields, the searcher and the verbs (`grove.models.tdm.method`, `grove.models.jtm.method` add the
scorer and the relearning).

Lifecycle of both (each verb's result is one store version):

* ``construct``: TDM's category tree (§3.5, generalised to K children): categories shuffled with
  the seed, items of a category together, the list split recursively into near-equal parts.
  No weights yet.
* ``train``: the attention-DNN scorer (`grove.models.node_scorer.TDMScorer`; JTM:
  `grove.models.jtm.hierarchical.HierarchicalScorer`) trained on the version's tree with per-level
  negative sampling and binary cross-entropy (`grove.models.tree_training`) -> artifact
  ``weights.pt``. Training a version that already has weights continues from them; training a
  freshly relearnt tree warm-starts from the previous model (``warm_start.pt``, see below). *
  ``relearn``: a new tree from the trained model. TDM: top-down balanced k-means over the learnt
  item (= leaf) embeddings (§3.5). JTM: Algorithm 2 (top-down assignment d levels at a time by
  the log-likelihood of each item's training pairs, with the capacity rebalance,
  `grove.models.jtm.tree_learning.learn_tree`). The new version carries the old model and old tree as
  ``warm_start.pt`` and no ``weights.pt``: its tree has never been trained, so it cannot be
  searched until `train` runs. * ``searcher``: TDM Algorithm 1, batched
  (`grove.models.beam_search.beam_search`); ``exhaustive`` scores every leaf with the same model.

Choices where the papers are silent
-----------------------------------
* Warm start after relearning. TDM retrains "the model" on the new tree; we keep item
  embeddings and the network and re-initialise internal-node embeddings (k-means positions mean
  something new). JTM's tree learning keeps positions, so internal nodes are also carried over
  by their K-way path code (`grove.models.node_scorer.transfer_weights`). A cold start is ``warm_start=False``.
* Negatives: level l gets ``ceil(neg_base * neg_growth ** (l - 1))`` (TDM §5.2 draws more near
  the leaves) while those add up to at most ``neg_total`` (200) per sample; a deeper tree shares
  the 200 out in the same proportions instead (`grove.models.tree_training.negatives_per_level`), so a
  sample costs the same at 10^4 and 10^7 items. With the defaults a depth-11 binary tree draws
  117 negatives per sample, depth 12 153, and from depth 13 on 200 (at depth 20: 43 on the
  leaves, 1 on each of the top three levels); the papers use 100-200 in total (TDM §5.2,
  JTM supplement: 100 on Amazon Books, 200 on UserBehavior).
* The scorer's network (``network``, ``batch_norm``; `grove.models.node_scorer`): each method
  defaults to what its paper's experiments used. TDM: the attention-DNN with a batch-normalised
  MLP (§3.3 and Figure 2; the "TDM DNN" of §5.3, without the activation unit, is
  ``network='average'``). JTM: the supplement's network (part B, Figure 1: an element-wise average
  per time window, a plain 128-64-24 PReLU MLP: ``network='average', batch_norm=False``); it says
  TDM's attention "can be used" instead (``network='attention', batch_norm=True``, what grove
  used before issue 30 and what a version stored without these fields was built with).
* Training windows (``min_behaviours``): JTM keeps "only windows that have at least 6
  interactions" (supplement C), a target and >= 5 behaviours: JTM's default is 5. TDM names no
  filter: 1, every positive with one behaviour before it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from grove.indexstore.errors import GroveError
from grove.indexstore.samples import MAX_BEHAVIOURS, SplitData
from grove.indexstore.structures import Tree
from grove.models.beam_search import beam_search, check_search_args, exhaustive
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
from grove.models.node_scorer import NETWORKS, WINDOWS, TDMScorer, transfer_weights, trim_padding
from grove.models.precision import precision_dtype, search_mode
from grove.models.tree_builders import category_tree, complete_depth, tree_tensors
from grove.models.tree_training import TrainOptions, train_scorer

WEIGHTS = "weights.pt"
WARM_START = "warm_start.pt"


@dataclass(frozen=True)
class TreeMethodConfig(MethodConfig):
    """Knobs shared by TDM and JTM (saved with every version).

    arity: K children per node. dim: embedding size (24). hidden: MLP widths (128, 64, 24).
    epochs, batch_size, lr, lr_decay: Adam with per-epoch exponential decay (1e-3, 0.9).
    neg_base, neg_growth, neg_total, negatives: negatives per level and their cap per sample
    (module doc; explicit counts win; neg_total 0 = no cap).
    max_samples: train on a seeded subset of this many windows (0 = all).
    warm_start: start training a relearnt tree from the previous model.
    device: 'auto' (CUDA when available), 'cpu' or 'cuda'.
    network, batch_norm: the scorer ('attention' | 'average'; MLP with batch norm or not).
    min_behaviours: a training window needs this many behaviours before its target.
    """

    arity: int = 2
    dim: int = 24
    hidden: tuple[int, ...] = (128, 64, 24)
    epochs: int = 1
    batch_size: int = 256
    lr: float = 1e-3
    lr_decay: float = 0.9
    neg_base: float = 2.0
    neg_growth: float = 1.3
    neg_total: int = 200
    negatives: tuple[int, ...] = ()
    max_samples: int = 0
    warm_start: bool = True
    device: str = "auto"
    network: str = "attention"
    batch_norm: bool = True
    min_behaviours: int = 1

    def __post_init__(self):
        if self.arity < 2:
            raise ValueError(f"arity must be >= 2, got {self.arity}")
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got {self.network!r}")
        if self.min_behaviours < 1:
            raise ValueError(f"min_behaviours must be >= 1, got {self.min_behaviours}")
        if self.dim < 1 or self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                "dim, batch_size and lr must be positive and epochs >= 0; got "
                f"dim={self.dim}, epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}"
            )
        if self.neg_base <= 0 or self.neg_growth <= 0 or self.neg_total < 0 or any(n < 0 for n in self.negatives):
            raise ValueError("negatives must be positive")
        if self.max_samples < 0:
            raise ValueError(f"max_samples must be >= 0, got {self.max_samples}")

    def train_options(self, seed: int) -> TrainOptions:
        return TrainOptions(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            lr_decay=self.lr_decay,
            neg_base=self.neg_base,
            neg_growth=self.neg_growth,
            negatives=tuple(self.negatives),
            neg_total=self.neg_total,
            max_samples=self.max_samples or None,
            seed=seed,
        )


def _tree(built: Built) -> Tree:
    if not isinstance(built.structure, Tree):
        raise GroveError(f"a tree index holds a Tree, got {type(built.structure).__name__}")
    return built.structure


def _state(scorer: torch.nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in scorer.state_dict().items()}


def _tree_state(tree: Tree) -> dict:
    return {
        "parent": torch.from_numpy(tree.parent.copy()),
        "item": torch.from_numpy(tree.item.copy()),
        "n_items": tree.n_items,
        "arity": tree.arity,
    }


def _tree_from_state(saved: dict) -> Tree:
    return Tree(saved["parent"].numpy(), saved["item"].numpy(), int(saved["n_items"]), int(saved["arity"]))


class TreeSearcher(Searcher):
    """A trained tree and its scorer on a device: batched beam search and exhaustive scoring.

    Reduced precision casts a copy of the scorer's embeddings and activation unit
    (`TDMScorer.in_precision`: every activation intermediate half-size, the MLP and the logits
    float32); `compile` runs each level's scoring, or the whole search, through `torch.compile`."""

    def __init__(self, scorer: TDMScorer, tree: Tree, device: torch.device):
        self.scorer, self.tree, self.device = scorer.to(device).eval(), tree, device
        self._fp32_scorer = self.scorer
        self._compiled: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self._compiled_search: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
        self._whole_search = False
        self.tt = tree_tensors(tree, device)
        self.n_items = tree.n_items

    def set_precision(self, precision: str) -> None:
        self.scorer = self._fp32_scorer.in_precision(precision_dtype(precision))
        self.precision = precision
        if self._compiled is not None or self._compiled_search is not None:
            self.compile(self._whole_search)

    def precision_context(self) -> AbstractContextManager[Any]:
        return nullcontext()  # the weights are cast instead

    def compile(self, whole_search: bool = False) -> None:
        """Compile the search with `torch.compile`.

        Default: every level's scoring through ``torch.compile(scorer.forward_static,
        dynamic=True)``: one graph for every level width and batch size, whose adds, PReLU and
        attention weights fuse into one pass over the (U, C, L, 36) activations.

        ``whole_search``: the whole level loop, scorer and beam together, as one graph per
        (batch size, k, beam) -- on CUDA replayed as a CUDA graph ("reduce-overhead"), so a
        small batch costs one launch instead of ~60 per level. Histories keep their full width
        (no padding trim: every call has the same shapes). Batches are padded to the next power
        of two; each new padded size, k or beam compiles again (~a minute), so it suits a server
        whose batch sizes are few (a batch-1 latency path).

        The first searches pay the compilation (seconds to a minute); the scores equal the eager
        ones up to float rounding."""
        self._whole_search = whole_search
        if whole_search:
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            self._compiled_search = torch.compile(self._static_search, mode=mode, dynamic=False)
            self._compiled = None
        else:
            self._compiled = torch.compile(self.scorer.forward_static, dynamic=True)
            self._compiled_search = None

    def _static_search(self, hist: torch.Tensor, k: int, beam: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The beam search with `TDMScorer.forward_static` per level: no host sync, no shape taken
        from the data (what ``compile(whole_search=True)`` compiles)."""
        b = hist.shape[0]

        def score(rows: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
            return self.scorer.forward_static(hist, _level_grid(nodes, b)).reshape(-1)

        return beam_search(self.tt, score, b, k, beam)

    def _score_fn(self, hist: torch.Tensor):
        """The beam-search score function over (user-major) pairs: one scorer call per level,
        each user's behaviours encoded once for its W candidates. ``hist`` is trimmed already."""
        b = hist.shape[0]
        forward = self._compiled or self.scorer.forward_trimmed

        def score(rows: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
            return self.scorer.score(hist, _level_grid(nodes, b), forward=forward).reshape(-1)

        return score

    @search_mode
    def search(self, histories: torch.Tensor, k: int, beam: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._compiled_search is not None:
            b = histories.shape[0]
            check_search_args(b, k, beam)
            hist = histories.to(self.device).long()
            size = 1 << max(0, (b - 1).bit_length())  # batches padded to a power of two: few graphs
            if size > b:
                hist = torch.cat([hist, hist.new_full((size - b, hist.shape[1]), -1)])
            scores, items = self._compiled_search(hist, k, beam)
            # a CUDA graph's outputs are overwritten by its next replay: copy out
            return scores[:b].clone(), items[:b].clone()
        hist = trim_padding(histories.to(self.device).long())  # once per search: a host sync
        return beam_search(self.tt, self._score_fn(hist), hist.shape[0], k, beam)

    @search_mode
    def exhaustive(self, histories: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        hist = trim_padding(histories.to(self.device).long())
        # leaves per call: keep B * chunk * 69 * 36 activation floats around 2**26
        chunk = max(64, (1 << 26) // max(1, hist.shape[0] * hist.shape[1] * 36))
        return exhaustive(self.tt, self._score_fn(hist), hist.shape[0], k, chunk=chunk)


def scorer_kwargs(config: TreeMethodConfig) -> dict[str, Any]:
    """The `TDMScorer` arguments a tree method's config sets."""
    return {
        "dim": config.dim,
        "hidden": tuple(config.hidden),
        "network": config.network,
        "batch_norm": config.batch_norm,
    }


def _level_grid(nodes: torch.Tensor, b: int) -> torch.Tensor:
    """A level's user-major pairs ``nodes`` (B * W,) as the (B, W) grid the scorer takes.
    Padding pairs come as the root (node 0), never a real candidate below level 0: they get a
    real candidate of this call so all pairs share a level (JTM's hierarchical behaviours then
    take their one-level fast path). Their scores are discarded."""
    grid = nodes.view(b, -1)
    return torch.where(grid == 0, grid.max(), grid)


TC = TypeVar("TC", bound=TreeMethodConfig)


class TreeMethod(Method[TC]):
    """What TDM and JTM share; subclasses pick the scorer and the relearning."""

    kind = "tree"
    keep_nodes_by_path: bool = False
    size_fields = ("arity", "dim", "hidden", "batch_size", "neg_total")

    def memory_bytes(self, config: TC, n_items: int, verb: str) -> int:
        """The node table (n_items + internal nodes rows of ``dim`` floats), the tree's arrays,
        Adam's two moments and the saved copies when training, the (depth, n_items) ancestor
        tables of the negative sampler, and one batch's activations on the device."""
        nodes = tree_nodes(n_items, config.arity)
        depth = complete_depth(n_items, config.arity) + 2  # category trees run a level or two deeper
        # the tree's per-node arrays and the (internal nodes, K) children table of the search
        children = (n_items // max(config.arity - 1, 1) + 1) * config.arity * 8
        table, arrays = (nodes + 1) * config.dim * FLOAT, nodes * 8 * 6 + children
        if verb == "construct":
            return arrays
        if verb == "search":
            return table + arrays
        ancestors = depth * n_items * 4 * (2 if self.keep_nodes_by_path else 1)
        if verb == "relearn":
            return 2 * table + arrays + ancestors + self.relearn_bytes(config, n_items)
        columns = min(config.neg_total or 1 << 12, 1 << 12) + depth + sum(config.negatives)
        act = config.batch_size * columns * MAX_BEHAVIOURS * 36 * FLOAT * 6  # one-piece pass (CUDA)
        if not str(config.device).startswith("cuda"):
            act = min(act, 64 * TDMScorer.train_chunk_elements * FLOAT)  # checkpointed chunks (CPU)
        mlp = sum(config.hidden) * (len(WINDOWS) + 1) * config.dim * FLOAT * 5
        return adam_table(nodes + 1, config.dim) + arrays + ancestors + act + mlp

    def relearn_bytes(self, config: TC, n_items: int) -> int:
        return 0

    def make_scorer(self, config: TC, tree: Tree) -> TDMScorer:
        return TDMScorer(tree, **scorer_kwargs(config))

    def load_scorer(self, config: TC, built: Built, device: torch.device) -> TDMScorer:
        tree = _tree(built)
        scorer = self.make_scorer(config, tree)
        scorer.load_state_dict(bytes_to_state(require_artifact(built, WEIGHTS, self.name), "cpu"))
        return scorer.to(device).eval()

    def construct(self, config: TC, data: SplitData, seed: int) -> Built:
        return Built(category_tree(data.item_category, arity=config.arity, seed=seed), {})

    def train(self, config: TC, built: Built, data: SplitData, seed: int) -> Built:
        tree = _tree(built)
        device = resolve_device(config.device)
        torch.manual_seed(seed)
        scorer = self.make_scorer(config, tree)
        if WEIGHTS in built.artifacts:  # more training of a trained tree continues from its weights
            scorer.load_state_dict(bytes_to_state(built.artifacts[WEIGHTS], "cpu"))
        elif WARM_START in built.artifacts and config.warm_start:
            saved = bytes_to_state(built.artifacts[WARM_START], "cpu")
            transfer_weights(
                scorer,
                saved["state"],
                _tree_from_state(saved["tree"]),
                tree,
                keep_nodes_by_path=self.keep_nodes_by_path,
            )
        train_scorer(scorer, tree, data.train, config.train_options(seed), device, desc=f"{self.name} train")
        return Built(tree, {WEIGHTS: state_to_bytes(_state(scorer))})

    def relearn(self, config: TC, built: Built, data: SplitData, seed: int) -> Built:
        tree = _tree(built)
        device = resolve_device(config.device)
        scorer = self.load_scorer(config, built, device)
        new = self.learn(config, scorer, tree, data, seed, device)
        warm = {"state": _state(scorer), "tree": _tree_state(tree)}
        return Built(new, {WARM_START: state_to_bytes(warm)})

    def learn(self, config, scorer: TDMScorer, tree: Tree, data: SplitData, seed: int, device: torch.device) -> Tree:
        raise NotImplementedError

    def searcher(self, config: TC, built: Built, device="cpu") -> Searcher:
        device = resolve_device(device)
        return TreeSearcher(self.load_scorer(config, built, device), _tree(built), device)
