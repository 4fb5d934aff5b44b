"""YouTube product-DNN baseline (Covington et al. 2016, as used in the TDM paper §5.2).

user vector u = MLP(pool(behaviour embeddings)), item vector = a row of an item table,
preference = u · e_item, retrieval = exact inner-product top-k over every item.

Choices (the papers leave them open):
* Pooling: ``"mean"`` (the YouTube paper's averaged watch embeddings; padding masked) or
  ``"windows"`` (TDM's "same input features": the 69 behaviours in the 10 time windows
  [1,1,1,2,2,2,10,10,20,20], a mean per window, concatenated). An empty history pools to the
  zero vector, so the model still answers (its prior user vector).
* Behaviour (input) embeddings and output item embeddings are separate tables, as in YouTube's
  softmax; ``share_embeddings=True`` ties them.
* MLP: ``hidden`` layers with PReLU, then a linear map to ``dim`` (TDM: 128-64-24).
* Loss: sampled softmax with ``negatives`` negatives shared by the mini-batch, drawn with
  replacement from ``sampler``: ``"uniform"`` or ``"log_uniform"`` (Zipf over items ranked by
  training popularity, TensorFlow's log-uniform candidate sampler, drawn by inverting its CDF:
  O(negatives) per step, not O(items)). Every logit is corrected by -log Q(item) (Q = expected
  count of the item among the samples; for uniform it cancels), and negatives equal to the
  row's target are masked ("accidental hits").
* Adam, constant learning rate, reshuffled mini-batches, ``epochs`` passes (or ``max_steps``);
  the embedding tables take sparse updates (`grove.models.optim.EmbeddingAdam`), so a step's cost
  does not grow with the catalogue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from grove.indexstore.errors import GroveError
from grove.indexstore.samples import MAX_BEHAVIOURS, SplitData
from grove.models.baselines.flat import BruteForceSearcher, FlatMethod, behaviour_mask
from grove.models.distributed import batches, epoch_order, worker_generator
from grove.models.memory import FLOAT, adam_table
from grove.models.method import Built, MethodConfig, bytes_to_state, require_artifact, resolve_device, state_to_bytes
from grove.models.optim import EmbeddingAdam
from grove.models.progress import Progress
from grove.models.windows import DeviceWindows

WINDOWS = (1, 1, 1, 2, 2, 2, 10, 10, 20, 20)  # TDM time windows over the 69 behaviours


@dataclass(frozen=True)
class TwoTowerConfig(MethodConfig):
    dim: int = 24
    hidden: tuple[int, ...] = (128, 64)
    pooling: str = "mean"  # 'mean' | 'windows'
    share_embeddings: bool = False
    negatives: int = 100
    sampler: str = "log_uniform"  # 'log_uniform' | 'uniform'
    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    max_steps: int = 0  # 0: no cap beyond epochs
    device: str = "auto"  # training device; 'auto' = CUDA when available

    def __post_init__(self):
        if self.pooling not in ("mean", "windows"):
            raise ValueError(f"pooling must be 'mean' or 'windows', got {self.pooling!r}")
        if self.sampler not in ("uniform", "log_uniform"):
            raise ValueError(f"sampler must be 'uniform' or 'log_uniform', got {self.sampler!r}")
        if min(self.dim, self.negatives, self.batch_size, self.epochs) <= 0 or self.lr <= 0:
            raise ValueError("dim, negatives, batch_size, epochs and lr must be positive")


def window_matrix(length: int = MAX_BEHAVIOURS) -> torch.Tensor:
    """(length, 10) float one-hot: column w marks the behaviour positions of time window w."""
    win = np.repeat(np.arange(len(WINDOWS)), WINDOWS)[:length]
    out = np.zeros((length, len(WINDOWS)), dtype=np.float32)
    out[np.arange(win.shape[0]), win] = 1.0
    return torch.from_numpy(out)


class TwoTowerModel(nn.Module):
    """Behaviours -> user vector (B, dim); items -> rows of ``item_emb`` (n_items, dim)."""

    windows: torch.Tensor  # (69, 10) buffer: one-hot time windows

    def __init__(self, n_items: int, config: TwoTowerConfig):
        super().__init__()
        self.n_items, self.pooling = n_items, config.pooling
        self.item_emb = nn.Embedding(n_items, config.dim, sparse=True)
        nn.init.normal_(self.item_emb.weight, std=0.05)
        self.input_emb = None if config.share_embeddings else nn.Embedding(n_items, config.dim, sparse=True)
        if self.input_emb is not None:
            nn.init.normal_(self.input_emb.weight, std=0.05)
        self.register_buffer("windows", window_matrix(), persistent=False)  # (69, 10)
        width = config.dim * (len(WINDOWS) if config.pooling == "windows" else 1)
        layers: list[nn.Module] = []
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.PReLU()]
            width = h
        layers.append(nn.Linear(width, config.dim))
        self.mlp = nn.Sequential(*layers)

    def user(self, histories: torch.Tensor) -> torch.Tensor:
        """(B, L) int ids, -1 padded -> (B, dim) user vectors."""
        ids, mask = behaviour_mask(histories, self.n_items)
        table = self.item_emb if self.input_emb is None else self.input_emb
        emb = table(ids) * mask.unsqueeze(-1)  # (B, L, d), padding zeroed
        m = mask.float()
        if self.pooling == "mean":
            pooled = emb.sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)  # (B, d)
        else:
            w = self.windows[: ids.shape[1]]  # (L, 10)
            sums = torch.einsum("bld,lw->bwd", emb, w)  # (B, 10, d)
            counts = (m @ w).clamp(min=1.0).unsqueeze(-1)  # (B, 10, 1)
            pooled = (sums / counts).flatten(1)  # (B, 10 d)
        return self.mlp(pooled)

    def item_matrix(self) -> torch.Tensor:
        return self.item_emb.weight  # (n_items, d)


class NegativeSampler:
    """Negatives shared by a mini-batch, drawn with replacement in O(count) per draw.

    ``"uniform"``: every item alike. ``"log_uniform"``: items ranked by training popularity
    (0 = most popular) and rank r drawn with P(r) = (log(r + 2) - log(r + 1)) / log(n + 1), whose
    CDF log(r + 2) / log(n + 1) inverts to r = floor((n + 1) ** u) - 1 for u uniform in [0, 1).

    Attributes
    ----------
    log_q : (n_items,) float32 log of each item's expected count among ``count`` samples (the
        sampled-softmax correction).
    """

    def __init__(self, popularity: np.ndarray, sampler: str, count: int, device: torch.device):
        n = int(popularity.shape[0])
        self.n, self.count, self.sampler, self.device = n, count, sampler, device
        if sampler == "uniform":
            probs = np.full(n, 1.0 / n)
            self.by_rank = None
        else:
            by_rank = np.lexsort((np.arange(n), -np.asarray(popularity)))  # item of rank r
            rank = np.empty(n, dtype=np.int64)
            rank[by_rank] = np.arange(n)
            probs = (np.log(rank + 2.0) - np.log(rank + 1.0)) / math.log(n + 1.0)
            self.by_rank = torch.as_tensor(by_rank, device=device)
        self.log_q = torch.as_tensor(np.log(probs * count), dtype=torch.float32, device=device)

    def draw(self, gen: torch.Generator) -> torch.Tensor:
        """(count,) long negatives (drawn on the CPU generator ``gen``, returned on the device)."""
        if self.by_rank is None:
            return torch.randint(self.n, (self.count,), generator=gen).to(self.device)
        u = torch.rand(self.count, generator=gen, dtype=torch.float64)
        rank = (torch.exp(u * math.log(self.n + 1.0)).floor().long() - 1).clamp_(0, self.n - 1)
        return self.by_rank[rank.to(self.device)]


def sampled_softmax_loss(
    user: torch.Tensor, items: nn.Embedding, targets: torch.Tensor, negatives: torch.Tensor, log_q: torch.Tensor
) -> torch.Tensor:
    """Mean sampled-softmax cross entropy.

    user (B, d); items the (n_items, d) item table (looked up, so its gradient is sparse);
    targets (B,) long; negatives (S,) long shared by the batch; log_q (n_items,) log expected
    count of each item among the S samples.
    """
    pos = (user * items(targets)).sum(-1) - log_q[targets]  # (B,)
    neg = user @ items(negatives).T - log_q[negatives]  # (B, S)
    neg = neg.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)  # (B, 1 + S), the target at column 0
    return F.cross_entropy(logits, torch.zeros_like(targets))


def train_two_tower(
    data: SplitData, config: TwoTowerConfig, device: str | torch.device | None = None
) -> tuple[TwoTowerModel, np.ndarray]:
    """Train the two-tower model on ``data.train`` (behaviours -> target).

    Parameters
    ----------
    device : training device; default ``config.device``.

    Returns
    -------
    (model in eval mode on ``device``, item embeddings (n_items, dim) float32 numpy).
    Same seed and device give the same weights.
    """
    dev = resolve_device(config.device if device is None else device)
    if len(data.train) == 0:
        raise GroveError(f"split {data.dataset}/{data.split} has no training samples")
    torch.manual_seed(config.seed)
    gen = worker_generator(config.seed, "cpu")  # this worker's negatives
    model = TwoTowerModel(int(data.n_items), config).to(dev)
    opt = EmbeddingAdam(model, lr=config.lr)
    sampler = NegativeSampler(np.asarray(data.item_popularity), config.sampler, config.negatives, dev)
    windows = DeviceWindows(data.train, dev)
    n = len(windows)
    per_epoch = math.ceil(n / config.batch_size)
    total = per_epoch * config.epochs if config.max_steps <= 0 else min(per_epoch * config.epochs, config.max_steps)
    model.train()
    step = 0
    with Progress("two-tower training", total=total, unit="batch") as progress:
        epoch = 0
        while step < total:
            for idx in batches(epoch_order(n, config.seed, epoch, dev), config.batch_size):
                loss = sampled_softmax_loss(
                    model.user(windows.behaviours(idx)),
                    model.item_emb,
                    windows.targets[idx],
                    sampler.draw(gen),
                    sampler.log_q,
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                progress.update(1, postfix=f"loss {loss.item():.3f}" if step % 50 == 0 else "")
                if step >= total:
                    break
            epoch += 1
    model.eval()
    return model, model.item_matrix().detach().cpu().numpy().astype(np.float32)


class TwoTowerSearcher(BruteForceSearcher):
    """Exact inner-product top-k of the user vector against every item vector."""

    def __init__(self, model: TwoTowerModel, device: torch.device):
        super().__init__(model.n_items, device)
        self.model = model.to(self.device).eval()
        self.items = self.model.item_matrix().detach()  # (N, d)

    def _prepare(self, histories: torch.Tensor) -> torch.Tensor:
        return self.model.user(histories)  # (B, d)

    def _score_chunk(self, user: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return user @ self.items[lo:hi].T  # (B, hi - lo)


class TwoTowerMethod(FlatMethod[TwoTowerConfig]):
    name: ClassVar[str] = "two_tower"
    config_cls: ClassVar[type[MethodConfig]] = TwoTowerConfig
    size_fields = ("dim", "hidden", "negatives", "batch_size")

    def memory_bytes(self, config: TwoTowerConfig, n_items: int, verb: str) -> int:
        """Two (n_items, dim) tables (one if shared), with Adam and copies when training."""
        rows = n_items * (1 if config.share_embeddings else 2)
        if verb in ("construct", "relearn"):
            return n_items * 8 * 2
        return adam_table(rows, config.dim) if verb == "train" else rows * config.dim * FLOAT

    def train(self, config: TwoTowerConfig, built: Built, data: SplitData, seed: int) -> Built:
        """Train from scratch (seeded by ``seed``); the artifact is ``weights.pt``."""
        self.check_data(built, data)
        cfg = TwoTowerConfig(**{**config.to_dict(), "seed": int(seed)})
        model, _ = train_two_tower(data, cfg)
        state = {"model": {k: v.cpu() for k, v in model.state_dict().items()}}
        return Built(built.structure, {"weights.pt": state_to_bytes(state)})

    def searcher(self, config: TwoTowerConfig, built: Built, device: str | torch.device = "cpu") -> TwoTowerSearcher:
        dev = resolve_device(device)
        state = bytes_to_state(require_artifact(built, "weights.pt", self.name), dev)
        model = TwoTowerModel(built.structure.n_items, config)
        model.load_state_dict(state["model"])
        return TwoTowerSearcher(model, dev)
