"""DeFoRec (SIGIR 2022): a forest of every tree learnt during training, each with its scorer.

Lifecycle (`grove.models.method.Method`):
* ``construct``: the category tree (§5) as a forest of one tree (and, for the 'two_tower'
  discriminator, the two-tower model as ``two_tower.pt``).
* ``train``: trains the one-logit TDM scorer of the LAST tree with layer-wise sampled softmax
  (`grove.models.deforec.training`) -> ``weights_round{r}.pt`` (r = index of the last tree). Round r > 0
  warm-starts from round r - 1 (`grove.models.node_scorer.transfer_weights`, nodes kept by path).
* ``relearn``: learns a new tree from the last round's scorer (softmax matching score, gap d)
  and APPENDS it: the forest keeps the tree and the scorer of every round.
* ``searcher``: beam search (TDM Algorithm 1) on every tree with that round's scorer; each tree
  offers its top-`beam` leaves; the union of their items is ranked by the discriminator (§3.3):
  'last_scorer' (default: the last round's scorer on the item's first leaf of the last tree) or
  'two_tower' (inner product of the two-tower user and item vectors).

The scorer (§3.1 and Figure 1, with §6's single logit): TDM's attention DNN with a
batch-normalised MLP (§3.1: "batch normalization is applied to the MLP"; ``network``,
``batch_norm``, `grove.models.node_scorer`), with JTM's hierarchical user preference
representation (§6: "the user behavior sequence is represented as c^j = {b_j(c_1), ...,
b_j(c_N)} at layer j": every behaviour replaced by its ancestor at the level of the node scored,
`grove.models.jtm.hierarchical`). ``hierarchical=False`` scores with the items themselves, what
grove did before issue 30 and what a version stored without the field was built with. The paper
filters users (>= 15 interactions), not training windows: ``min_behaviours`` defaults to 1.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from grove.indexstore.errors import GroveError, StateError
from grove.indexstore.samples import SplitData
from grove.indexstore.structures import Forest, Tree
from grove.models.deforec.training import train_softmax_scorer
from grove.models.deforec.tree_learning import learn_tree_softmax
from grove.models.jtm.hierarchical import HierarchicalScorer
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
from grove.models.node_scorer import NETWORKS, TDMScorer, transfer_weights
from grove.models.precision import precision_dtype, search_mode
from grove.models.topk import ranked, unique_rows
from grove.models.tree_builders import category_tree, tree_tensors
from grove.models.tree_training import TrainOptions

DISCRIMINATORS = ("last_scorer", "two_tower")


@dataclass(frozen=True)
class DeFoRecConfig(MethodConfig):
    """arity K (the paper uses binary trees), m negatives per level (40) and at most
    ``negatives_total`` per sample (480; `grove.models.deforec.training.level_negatives`; 0 = no cap),
    gap d (7), training knobs, discriminator, default query beam and the device; the scorer's
    ``network`` / ``batch_norm`` / ``hierarchical`` behaviours and the training windows'
    ``min_behaviours`` (module docstring)."""

    arity: int = 2
    negatives: int = 40
    negatives_total: int = 480
    gap: int = 7
    dim: int = 24
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay: float = 0.9
    max_steps: int = 0
    max_samples: int = 0  # 0: all training samples
    tree_samples: int = 100_000  # pairs scored by tree learning
    discriminator: str = "last_scorer"
    beam: int = 150
    device: str = "auto"
    network: str = "attention"
    batch_norm: bool = True
    hierarchical: bool = True
    min_behaviours: int = 1

    # versions stored before issue 30 scored with the items themselves
    stored_before: ClassVar[dict[str, Any]] = {"hierarchical": False}

    def __post_init__(self):
        if self.arity < 2 or self.negatives < 1 or self.gap < 1 or self.negatives_total < 0:
            raise ValueError(
                f"need arity >= 2, negatives >= 1, gap >= 1; got {self.arity}, {self.negatives}, {self.gap}"
            )
        if self.discriminator not in DISCRIMINATORS:
            raise ValueError(f"discriminator must be one of {DISCRIMINATORS}, got {self.discriminator!r}")
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got {self.network!r}")
        if self.min_behaviours < 1:
            raise ValueError(f"min_behaviours must be >= 1, got {self.min_behaviours}")


def _weights_name(r: int) -> str:
    return f"weights_round{r}.pt"


def _forest(built: Built) -> Forest:
    s = built.structure
    if isinstance(s, Tree):
        return Forest((s,))
    if not isinstance(s, Forest):
        raise GroveError(f"a DeFoRec index holds a forest, got {type(s).__name__}")
    return s


def make_scorer(config: DeFoRecConfig, tree: Tree) -> TDMScorer:
    """A fresh scorer for ``tree``: hierarchical behaviours or the items themselves."""
    cls = HierarchicalScorer if config.hierarchical else TDMScorer
    return cls(tree, dim=config.dim, network=config.network, batch_norm=config.batch_norm)


def load_scorer(config: DeFoRecConfig, tree: Tree, data: bytes, device) -> TDMScorer:
    scorer = make_scorer(config, tree)
    scorer.load_state_dict(bytes_to_state(data, "cpu"))
    return scorer.to(device).eval()


def tree_beam(scorer: TDMScorer, tree: Tree, hist: torch.Tensor, beam: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TDM Algorithm 1, batched: expand the top-`beam` internal nodes per level, collect every
    leaf reached with its score, return the top-`beam` leaves (U, beam) and scores (-1 / -inf)."""
    tt = tree_tensors(tree, hist.device)
    u = hist.shape[0]
    frontier = torch.zeros(u, 1, dtype=torch.long, device=hist.device)  # the root
    pool_nodes, pool_scores = [], []
    for _ in range(tt.depth):
        ch = torch.where((frontier >= 0)[..., None], tt.children[frontier.clamp(min=0)], -1).view(u, -1)
        ok = ch >= 0
        if not bool(ok.any()):
            break
        s = scorer.score(hist, ch.clamp(min=0)).masked_fill(~ok, float("-inf"))  # (U, P*K)
        leaf = ok & tt.is_leaf[ch.clamp(min=0)]
        pool_nodes.append(torch.where(leaf, ch, -1))
        pool_scores.append(s.masked_fill(~leaf, float("-inf")))
        inner = s.masked_fill(leaf, float("-inf"))
        top, idx = inner.topk(min(beam, inner.shape[1]), dim=1)
        frontier = torch.where(torch.isfinite(top), ch.gather(1, idx), -1)
    nodes, scores = torch.cat(pool_nodes, 1), torch.cat(pool_scores, 1)
    top, idx = scores.topk(min(beam, scores.shape[1]), dim=1)
    return torch.where(torch.isfinite(top), nodes.gather(1, idx), -1), top


class DeFoRecSearcher(Searcher):
    """Beam search per tree, union of items, ranked by the discriminator."""

    def __init__(
        self,
        trees,
        scorers,
        discriminate,
        n_items: int,
        device: torch.device,
        rounds: list[int] | None = None,
        discriminator: str = "last_scorer",
    ):
        self.trees, self.scorers, self.discriminate = trees, scorers, discriminate
        self.n_items, self.device = n_items, device
        self.rounds = rounds if rounds is not None else list(range(len(trees)))  # forest tree of each scorer
        self.discriminator = discriminator
        self._fp32 = (scorers, discriminate)  # what `set_precision` casts from
        self._last: float | None = None

    def last_candidates(self) -> float | None:
        return self._last

    def set_precision(self, precision: str) -> None:
        """Cast copies of the trees' scorers (`TDMScorer.in_precision`: activation unit in
        ``precision``, MLP and logits float32); the last-scorer discriminator follows them, a
        two-tower discriminator stays float32 (one dot product per candidate)."""
        dtype = precision_dtype(precision)
        scorers, discriminate = self._fp32
        self.scorers = [s.in_precision(dtype) for s in scorers]
        if self.discriminator == "last_scorer" and dtype != torch.float32:
            discriminate = scorer_discriminator(self.scorers[-1], self.trees[-1])
        self.discriminate = discriminate
        self.precision = precision

    def precision_context(self) -> AbstractContextManager[Any]:
        return nullcontext()  # the scorers are cast instead

    @search_mode
    def search(self, histories: torch.Tensor, k: int, beam: int):
        hist = histories.to(self.device).long()
        items = []
        for tree, scorer in zip(self.trees, self.scorers):
            leaves, _ = tree_beam(scorer, tree, hist, beam)
            item = tree_tensors(tree, self.device).item
            items.append(torch.where(leaves >= 0, item[leaves.clamp(min=0)], -1))
        cand = unique_rows(torch.cat(items, dim=1))  # (U, C)
        self._last = float((cand >= 0).sum(1).float().mean().item())
        scores = self.discriminate(hist, cand.clamp(min=0)).masked_fill(cand < 0, float("-inf"))
        return ranked(scores, cand, k)

    @search_mode
    def exhaustive(self, histories: torch.Tensor, k: int):
        """The discriminator over every item (the reference the forest's search approximates)."""
        hist = histories.to(self.device).long()
        items = torch.arange(self.n_items, device=self.device).expand(hist.shape[0], -1)
        return ranked(self.discriminate(hist, items), items, k)


class DeFoRecMethod(Method[DeFoRecConfig]):
    name = "deforec"
    kind = "forest"
    config_cls = DeFoRecConfig
    size_fields = ("arity", "dim", "batch_size", "negatives_total")

    def memory_bytes(self, config: DeFoRecConfig, n_items: int, verb: str) -> int:
        """TDM's estimate with the DeFoRec trainer's negatives; a search loads one scorer per
        round (the estimate counts the first round's: later rounds are checked as they come)."""
        from grove.models.tdm.method import TDMConfig, TDMMethod

        tdm = TDMConfig(
            arity=config.arity,
            dim=config.dim,
            batch_size=config.batch_size,
            neg_total=config.negatives_total or config.negatives * 64,
            device=config.device,
        )
        return TDMMethod().memory_bytes(tdm, n_items, verb if verb != "relearn" else "search") + (
            4 * min(n_items, config.tree_samples or n_items) * config.arity**config.gap * 4 if verb == "relearn" else 0
        )

    def construct(self, config: DeFoRecConfig, data: SplitData, seed: int) -> Built:
        tree = category_tree(data.item_category, arity=config.arity, seed=seed)
        artifacts = {}
        if config.discriminator == "two_tower":
            from grove.models.baselines.two_tower import TwoTowerConfig, train_two_tower

            tt = TwoTowerConfig(seed=seed, dim=config.dim, device=config.device)
            model, _ = train_two_tower(data, tt, resolve_device(config.device))
            artifacts["two_tower.pt"] = state_to_bytes(
                {"state": {k: v.cpu() for k, v in model.state_dict().items()}, "config": tt.to_dict()}
            )
        return Built(Forest((tree,)), artifacts)

    def train(self, config: DeFoRecConfig, built: Built, data: SplitData, seed: int) -> Built:
        forest = _forest(built)
        r = len(forest) - 1
        device = resolve_device(config.device)
        torch.manual_seed(seed)
        tree = forest.trees[r]
        scorer = make_scorer(config, tree)
        if r > 0 and _weights_name(r - 1) in built.artifacts:
            old = bytes_to_state(built.artifacts[_weights_name(r - 1)], "cpu")
            transfer_weights(scorer, old, forest.trees[r - 1], tree, keep_nodes_by_path=True)
        opts = TrainOptions(
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            lr_decay=config.lr_decay,
            max_samples=config.max_samples or None,
            seed=seed,
        )
        train_softmax_scorer(
            scorer, tree, data.train, config.negatives, opts, device, config.max_steps, config.negatives_total
        )
        state = {k: v.cpu() for k, v in scorer.state_dict().items()}
        return Built(forest, {**built.artifacts, _weights_name(r): state_to_bytes(state)})

    def relearn(self, config: DeFoRecConfig, built: Built, data: SplitData, seed: int) -> Built:
        forest = _forest(built)
        r = len(forest) - 1
        device = resolve_device(config.device)
        scorer = load_scorer(config, forest.trees[r], require_artifact(built, _weights_name(r), self.name), device)
        new = learn_tree_softmax(
            scorer,
            forest.trees[r],
            data.train,
            gap=config.gap,
            max_samples=config.tree_samples or None,
            seed=seed,
            device=device,
        )
        return Built(Forest(forest.trees + (new,)), dict(built.artifacts))

    def searcher(self, config: DeFoRecConfig, built: Built, device="cpu") -> Searcher:
        forest = _forest(built)
        device = resolve_device(device)
        rounds = sorted(
            int(m.group(1)) for m in map(re.compile(r"weights_round(\d+)\.pt$").match, built.artifacts) if m
        )
        if not rounds:
            require_artifact(built, _weights_name(len(forest) - 1), self.name)
        # an untrained last tree (relearnt, not yet trained) is left out of the search
        usable = [r for r in range(len(forest)) if r in rounds]
        scorers = [load_scorer(config, forest.trees[r], built.artifacts[_weights_name(r)], device) for r in usable]
        trees = [forest.trees[r] for r in usable]
        disc = (
            _two_tower_discriminator(built, forest.n_items, device)
            if config.discriminator == "two_tower"
            else scorer_discriminator(scorers[-1], trees[-1])
        )
        return DeFoRecSearcher(trees, scorers, disc, forest.n_items, device, usable, config.discriminator)


def scorer_discriminator(scorer: TDMScorer, tree: Tree):
    """(hist (U, L), items (U, C)) -> the last scorer's logit of the item's first leaf."""
    leaf = None

    def score(hist: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        nonlocal leaf
        if leaf is None:
            leaf = torch.as_tensor(tree.item_leaf.copy(), device=hist.device)
        return scorer.score(hist, leaf[items])

    return score


def _two_tower_discriminator(built: Built, n_items: int, device):
    from grove.models.baselines.two_tower import TwoTowerConfig, TwoTowerModel

    if "two_tower.pt" not in built.artifacts:
        raise StateError("this DeFoRec version has no 'two_tower.pt': construct it with discriminator='two_tower'")
    saved = bytes_to_state(built.artifacts["two_tower.pt"], "cpu")
    cfg = dict(saved["config"])
    cfg["hidden"] = tuple(cfg.get("hidden", ()))
    model = TwoTowerModel(n_items, TwoTowerConfig(**cfg))
    model.load_state_dict(saved["state"])
    model = model.to(device).eval()
    items_mat = model.item_matrix()

    def score(hist: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        user = model.user(hist)  # (U, d)
        return (items_mat[items] * user[:, None, :]).sum(-1)

    return score
