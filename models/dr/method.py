"""Deep Retrieval (Gao et al. 2020) as a grove `Method` of kind 'codes'.

Verbs (see `grove.models.method`):

* ``construct`` -- random `PathCodes`: J distinct paths of D codes in [0, K) per item (seeded).
* ``train``     -- trains the GRU encoder, the structure model and the softmax reranker for the
  current codes (`grove.models.dr.training`), warm-starting from the version's weights if it has any.
* ``relearn``   -- E-step (beam-search path scores) + M-step (penalised coordinate descent) ->
  new `PathCodes`; the weights are kept (`grove.models.dr.em`).
* ``searcher``  -- `DRSearcher`: beam search over the grid, items of the B paths through the
  inverted index, softmax rerank, top-k (`grove.models.dr.search`).

Artifacts: ``{"weights.pt": state_to_bytes({"model": state_dict, "epochs_done": int,
"n_items": int})}``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from grove.indexstore.errors import GroveError, StructureError
from grove.indexstore.samples import SplitData, TrainingSamples
from grove.indexstore.structures import PathCodes
from grove.models.dr.em import estep_scores, mstep, pool_coverage, pool_warning, random_codes
from grove.models.dr.network import DRNet
from grove.models.dr.search import PathIndex, beam_search
from grove.models.dr.training import train_epochs
from grove.models.memory import FLOAT, adam_table
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
from grove.models.precision import search_mode
from grove.models.topk import empty_topk, merge_topk, padded_topk, ranked
from grove.models.tree_training import subsample

WEIGHTS = "weights.pt"


@dataclass(frozen=True)
class DRConfig(MethodConfig):
    """Build-time knobs of Deep Retrieval (query-time beam and k are `search` arguments).

    Defaults follow the paper (§4.3: K=50-100, D=3, J=3, alpha 3e-5 for MovieLens; §4.1: two
    joint epochs then two with the softmax frozen). ``estep_beam`` (S, paths per sample in the
    E-step) and ``estep_pool`` (candidate paths kept per item) are not given by the paper.
    ``max_samples`` > 0 caps the training samples used per train / E-step (seeded subset).
    ``softmax_samples``: None (default) = a full softmax over the items up to
    ``FULL_SOFTMAX_MAX_ITEMS`` items (the paper's setting; every benchmark corpus) and a sampled
    softmax with ``SAMPLED_SOFTMAX_NEGATIVES`` uniform negatives above, where a full softmax
    would cost O(items) per sample; 0 = always full; > 0 = sampled with that many.

    Choosing alpha: the M-step weighs log-scores (differences of order 1) against the marginal
    penalty alpha * ((n+1)^4 - n^4) / 4 ~ alpha * n^3 of joining a path of n items, so the path
    size where the penalty bites scales as alpha^(-1/3) and the right alpha depends on the
    corpus (the paper: 3e-5 for MovieLens-20M, 3e-7 for Amazon Books). On ml-1m-subset (3,615
    items, K=50) alpha 3e-3 keeps the top path at ~11 items and ~400 candidates per user at beam
    50 with no recall lost against the brute force (benchmarks/README.md, dr). The E-step can
    only offer paths that some user's beam reaches: relearning from an undertrained structure
    model crowds the items onto a few paths whatever alpha is (`grove.models.dr.em.pool_warning`).
    """

    arity: int = 100
    depth: int = 3
    n_paths: int = 3
    dim: int = 64
    hidden: int = 128
    epochs: int = 4
    joint_epochs: int = 2
    batch_size: int = 256
    lr: float = 1e-3
    softmax_samples: int | None = None
    alpha: float = 3e-5
    estep_beam: int = 20
    estep_pool: int = 20
    mstep_iters: int = 4
    max_samples: int = 0
    device: str = "auto"

    def __post_init__(self):
        checks = [
            ("arity", self.arity >= 2),
            ("depth", self.depth >= 1),
            ("n_paths", self.n_paths >= 1),
            ("dim", self.dim >= 1),
            ("hidden", self.hidden >= 1),
            ("epochs", self.epochs >= 0),
            ("joint_epochs", self.joint_epochs >= 0),
            ("batch_size", self.batch_size >= 1),
            ("lr", self.lr > 0),
            ("softmax_samples", self.softmax_samples is None or self.softmax_samples >= 0),
            ("alpha", self.alpha >= 0),
            ("estep_beam", self.estep_beam >= 1),
            ("estep_pool", self.estep_pool >= self.n_paths),
            ("mstep_iters", self.mstep_iters >= 1),
            ("max_samples", self.max_samples >= 0),
        ]
        for name, ok in checks:
            if not ok:
                raise GroveError(f"DRConfig.{name} = {getattr(self, name)!r} is out of range")
        if self.n_paths > self.arity**self.depth:
            raise GroveError(
                f"DRConfig.n_paths = {self.n_paths} exceeds the K^D = {self.arity**self.depth} paths of the grid"
            )


# the full softmax's cost per sample grows with the catalogue: above this many items the default
# is a sampled softmax (`DRConfig.softmax_samples`)
FULL_SOFTMAX_MAX_ITEMS = 20_000
SAMPLED_SOFTMAX_NEGATIVES = 2_048


def softmax_samples(config: DRConfig, n_items: int) -> int:
    """Negatives of the reranker's sampled softmax for a corpus of ``n_items`` (0 = full)."""
    if config.softmax_samples is not None:
        return config.softmax_samples
    return 0 if n_items <= FULL_SOFTMAX_MAX_ITEMS else SAMPLED_SOFTMAX_NEGATIVES


def new_net(config: DRConfig, n_items: int) -> DRNet:
    return DRNet(
        n_items,
        config.arity,
        config.depth,
        config.dim,
        config.hidden,
        sparse_softmax=softmax_samples(config, n_items) > 0,
    )


def load_net(config: DRConfig, built: Built, device: torch.device) -> tuple[DRNet, int]:
    """The trained net of a version on ``device`` and its epochs_done; StateError if untrained."""
    state = bytes_to_state(require_artifact(built, WEIGHTS, "dr"), "cpu")
    net = new_net(config, int(state["n_items"]))
    net.load_state_dict(state["model"])
    return net.to(device).eval(), int(state["epochs_done"])


def _check(config: DRConfig, structure, n_items: int | None = None) -> PathCodes:
    if not isinstance(structure, PathCodes):
        raise StructureError(f"Deep Retrieval needs a PathCodes structure, got {type(structure).__name__}")
    want = (config.n_paths, config.depth)
    if structure.arity != config.arity or structure.codes.shape[1:] != want:
        raise StructureError(
            f"codes have K={structure.arity}, (J, D)={structure.codes.shape[1:]} but the "
            f"config says K={config.arity}, (J, D)={want}"
        )
    if n_items is not None and structure.n_items != n_items:
        raise StructureError(f"codes cover {structure.n_items} items but the data has {n_items}")
    return structure


def _samples(config: DRConfig, data: SplitData, seed: int) -> TrainingSamples:
    """The training samples, a seeded subset if ``max_samples`` caps them."""
    if len(data.train) == 0:
        raise GroveError(f"split {data.dataset}/{data.split} has no training samples")
    return data.train.subset(subsample(len(data.train), config.max_samples or None, seed))


class DRMethod(Method[DRConfig]):
    name = "dr"
    kind = "codes"
    config_cls = DRConfig
    relearns = True
    size_fields = ("arity", "depth", "n_paths", "dim", "hidden", "batch_size", "softmax_samples")

    def memory_bytes(self, config: DRConfig, n_items: int, verb: str) -> int:
        """Two (n_items, dim) tables (encoder, reranker) with Adam and the saved copies, the
        codes, the full softmax's (batch, n_items) logits when it is used, the E-step's
        candidate pools."""
        codes = n_items * config.n_paths * (config.depth * 8 + 8) * 2
        if verb == "construct":
            return codes
        tables = 2 * (n_items + 1) * config.dim * FLOAT
        if verb == "search":
            return tables + codes
        if verb == "relearn":
            return tables + codes + n_items * config.estep_pool * 8 * 6
        logits = 3 * config.batch_size * n_items * FLOAT if softmax_samples(config, n_items) == 0 else 0
        return adam_table(2 * (n_items + 1), config.dim) + codes + logits

    def construct(self, config: DRConfig, data: SplitData, seed: int) -> Built:
        return Built(random_codes(data.n_items, config.n_paths, config.arity, config.depth, seed))

    def train(self, config: DRConfig, built: Built, data: SplitData, seed: int) -> Built:
        codes = _check(config, built.structure, data.n_items)
        device = resolve_device(config.device)
        torch.manual_seed(seed)
        if WEIGHTS in built.artifacts:  # warm start: keep the weights of the previous round
            net, done = load_net(config, built, device)
        else:
            net, done = new_net(config, data.n_items).to(device), 0
        train_epochs(
            net,
            codes,
            _samples(config, data, seed),
            epochs=config.epochs,
            joint_epochs=config.joint_epochs,
            epochs_done=done,
            batch_size=config.batch_size,
            lr=config.lr,
            softmax_samples=softmax_samples(config, data.n_items),
            seed=seed,
            device=device,
        )
        state = {
            "model": {k: v.cpu() for k, v in net.state_dict().items()},
            "epochs_done": done + config.epochs,
            "n_items": data.n_items,
        }
        return Built(codes, {**built.artifacts, WEIGHTS: state_to_bytes(state)})

    def relearn(self, config: DRConfig, built: Built, data: SplitData, seed: int) -> Built:
        codes = _check(config, built.structure, data.n_items)
        device = resolve_device(config.device)
        net, _ = load_net(config, built, device)
        cands = estep_scores(
            net,
            _samples(config, data, seed),
            data.n_items,
            config.estep_beam,
            config.estep_pool,
            max(config.batch_size, 512),
            device,
        )
        message = pool_warning(pool_coverage(cands, config.n_paths), data.n_items)
        if message:
            warnings.warn(message, stacklevel=2)
        new_codes = mstep(cands, codes, config.alpha, config.mstep_iters, seed)
        return Built(new_codes, dict(built.artifacts))

    def searcher(self, config: DRConfig, built: Built, device: str | torch.device = "cpu") -> DRSearcher:
        codes = _check(config, built.structure)
        device = resolve_device(device)
        net, _ = load_net(config, built, device)
        return DRSearcher(net, codes, device)


class DRSearcher(Searcher):
    """Beam search over the grid + inverted index + softmax rerank, on one device.

    ``search`` returns (scores (B, k) float32, items (B, k) long), best first, padded -inf / -1;
    ``last_candidates()`` is the mean number of distinct candidate items per user of the last call.
    """

    RERANK_BUDGET = 1 << 24  # users * candidates * dim floats per rerank chunk (64 MiB)

    def __init__(self, net: DRNet, codes: PathCodes, device: torch.device):
        self.net, self.codes, self.device = net, codes, torch.device(device)
        self.n_items = codes.n_items
        self.index = PathIndex(codes, self.device)
        self._candidates: float | None = None

    def _encode(self, histories) -> torch.Tensor:
        if isinstance(histories, torch.Tensor):
            return self.net.encode(histories.to(self.device).long())
        return self.net.encode(torch.tensor(histories, dtype=torch.long, device=self.device))

    @search_mode
    def search(self, histories: torch.Tensor, k: int, beam: int) -> tuple[torch.Tensor, torch.Tensor]:
        if k < 1 or beam < 1:
            raise GroveError(f"k and beam must be >= 1, got k={k}, beam={beam}")
        u = self._encode(histories)  # (B, dim)
        paths, _ = beam_search(self.net.structure, u, beam)  # (B, beam, D)
        cands = self.index.items_of(paths)  # (B, C) distinct items, -1 padded
        self._candidates = float((cands >= 0).sum(1).float().mean()) if u.shape[0] else 0.0
        chunk = max(1, self.RERANK_BUDGET // max(cands.shape[1] * u.shape[1], 1))
        scores = torch.empty(cands.shape, device=self.device)
        for lo in range(0, u.shape[0], chunk):  # chunks of users bound the (b, C, dim) gather
            c = cands[lo : lo + chunk]
            scores[lo : lo + chunk] = self.net.softmax.score_items(u[lo : lo + chunk], c.clamp_min(0))
        return ranked(scores, cands, k)

    @search_mode
    def exhaustive(self, histories: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if k < 1:
            raise GroveError(f"k must be >= 1, got {k}")
        u = self._encode(histories)
        q = self.net.softmax.query(u)  # (B, dim)
        emb, bias = self.net.softmax.item_emb.weight, self.net.softmax.bias
        chunk = max(1024, self.RERANK_BUDGET // max(u.shape[0], 1))  # (B, chunk) logits at a time
        best = empty_topk(u.shape[0], k, self.device)
        for lo in range(0, self.n_items, chunk):  # running top-k over chunks of the catalogue
            hi = min(lo + chunk, self.n_items)
            best = merge_topk(best, padded_topk(q @ emb[lo:hi].T + bias[lo:hi], k, offset=lo), k)
        return best

    def last_candidates(self) -> float | None:
        return self._candidates
