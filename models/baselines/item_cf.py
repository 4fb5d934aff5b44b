"""Item-based collaborative filtering baseline (Sarwar et al. 2001; TDM paper §5.2).

Similarity: cosine over training users' item sets,
``sim(i, j) = |U_i ∩ U_j| / sqrt(|U_i| |U_j|)`` with U_i the training users who have i among
their positives (each user counted once per item; ``data.train_offsets/train_items``).
Each item keeps its top ``neighbours`` (M) most similar other items (sim > 0), stored as a
``(n_items, M)`` neighbour table padded with -1 / 0.

Score of item j for a user: ``Σ_{b in history} sim(b, j)`` over the (up to 69) behaviours;
a repeated behaviour counts each time. Items no behaviour points at score 0; ties, and the
zero-score tail (and an empty history), are ordered by training popularity through a prior
smaller than any stored similarity, so the list is always full (the popularity fallback).
The user's own behaviours may be retrieved (the paper notes Item-CF's low novelty); evaluation
with ``filter_seen`` removes them.

Building without scipy: co-occurrence counts are computed one block of items at a time. For the
interactions (u, i) with i in the block, every item j of u forms a pair (i, j); the pairs of a
block are counted with one `bincount` into a dense (block, n_items) matrix and reduced to its
top-M at once. Total work is Σ_u |items(u)|², memory bounded by ``pair_budget`` and
``dense_budget``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from grove.indexstore.errors import GroveError
from grove.indexstore.samples import SplitData
from grove.models.baselines.flat import BruteForceSearcher, FlatMethod, behaviour_mask
from grove.models.method import Built, MethodConfig, bytes_to_state, require_artifact, resolve_device, state_to_bytes
from grove.models.progress import Progress


@dataclass(frozen=True)
class ItemCFConfig(MethodConfig):
    neighbours: int = 100  # M, neighbours kept per item
    pair_budget: int = 1 << 24  # co-occurrence pairs materialised per block
    dense_budget: int = 1 << 25  # entries of the (block, n_items) count matrix
    device: str = "auto"  # build device; 'auto' = CUDA when available

    def __post_init__(self):
        if min(self.neighbours, self.pair_budget, self.dense_budget) <= 0:
            raise ValueError("neighbours, pair_budget and dense_budget must be positive")


@dataclass(frozen=True, eq=False)
class NeighbourTable:
    """neighbours (N, M) int64 (-1 padded), similarity (N, M) float32 (0 padded), best first;
    popularity (N,) int64: training users per item."""

    neighbours: torch.Tensor
    similarity: torch.Tensor
    popularity: torch.Tensor


def _user_item_sets(offsets: np.ndarray, items: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR histories -> distinct (user, item) pairs sorted by user then item: (users, items) int64."""
    counts = np.diff(np.asarray(offsets, dtype=np.int64)).astype(np.int64)
    users = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
    items = np.asarray(items, dtype=np.int64)
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise GroveError(f"training item id {int(items.max())} is out of range [0, {n_items})")
    keys = np.unique(users * n_items + items)
    return keys // n_items, keys % n_items


def _blocks(load: np.ndarray, n_items: int, pair_budget: int, dense_budget: int) -> list[tuple[int, int]]:
    """Split items 0..N-1 into contiguous blocks with at most ``pair_budget`` pairs (unless one
    item alone has more) and at most ``dense_budget // N`` items each."""
    max_rows = max(1, dense_budget // max(n_items, 1))
    cum = np.concatenate([[0], np.cumsum(load)])
    out, lo = [], 0
    while lo < n_items:
        hi = int(np.searchsorted(cum, cum[lo] + pair_budget, side="right")) - 1
        hi = min(max(hi, lo + 1), lo + max_rows, n_items)
        out.append((lo, hi))
        lo = hi
    return out


def build_neighbours(data: SplitData, config: ItemCFConfig, device: str | torch.device | None = None) -> NeighbourTable:
    """The top-M cosine neighbour table of every item from the training users (see module doc)."""
    dev = resolve_device(config.device if device is None else device)
    n = int(data.n_items)
    users, items = _user_item_sets(data.train_offsets, data.train_items, n)
    n_users = len(data.train_offsets) - 1
    user_len = np.bincount(users, minlength=n_users)  # (U,) distinct items per user
    user_off = np.concatenate([[0], np.cumsum(user_len)])
    pop = np.bincount(items, minlength=n)  # (N,) |U_i|
    load = np.bincount(items, weights=user_len[users], minlength=n)  # pairs whose first item is i
    by_item = np.argsort(items, kind="stable")  # interactions grouped by item
    item_off = np.concatenate([[0], np.cumsum(pop)])
    m = min(config.neighbours, max(n - 1, 1))
    t_items, t_users = torch.as_tensor(items, device=dev), torch.as_tensor(users, device=dev)
    t_by_item = torch.as_tensor(by_item, device=dev)
    t_len, t_off = torch.as_tensor(user_len, device=dev), torch.as_tensor(user_off[:-1], device=dev)
    norm = torch.as_tensor(pop, device=dev, dtype=torch.float32).sqrt()  # (N,)
    nb = torch.full((n, m), -1, dtype=torch.int64, device=dev)
    sim = torch.zeros((n, m), dtype=torch.float32, device=dev)
    blocks = _blocks(load, n, config.pair_budget, config.dense_budget)
    with Progress("item-cf neighbours", total=n, unit="item") as progress:
        for lo, hi in blocks:
            sel = t_by_item[int(item_off[lo]) : int(item_off[hi])]  # interactions with item in block
            first, owner = t_items[sel], t_users[sel]  # (T,)
            reps = t_len[owner]  # partners per interaction
            row = torch.repeat_interleave(torch.arange(sel.shape[0], device=dev), reps)  # (P,)
            start = torch.cumsum(reps, 0) - reps
            within = torch.arange(row.shape[0], device=dev) - start[row]
            partner = t_items[t_off[owner][row] + within]  # (P,) the user's other items
            keys = (first[row] - lo) * n + partner
            counts = torch.bincount(keys, minlength=(hi - lo) * n).view(hi - lo, n).float()
            block_sim = counts / (norm[lo:hi, None] * norm[None, :]).clamp(min=1e-12)  # (b, N)
            block_sim[torch.arange(hi - lo, device=dev), torch.arange(lo, hi, device=dev)] = 0.0
            val, idx = torch.topk(block_sim, m, dim=1)
            nb[lo:hi] = torch.where(val > 0, idx, torch.full_like(idx, -1))
            sim[lo:hi] = val.clamp(min=0.0)
            progress.update(hi - lo)
    return NeighbourTable(nb.cpu(), sim.cpu(), torch.as_tensor(pop, dtype=torch.int64))


class ItemCFSearcher(BruteForceSearcher):
    """Σ of neighbour similarities per item, plus a popularity prior below any similarity."""

    def __init__(self, table: NeighbourTable, device: torch.device):
        super().__init__(table.neighbours.shape[0], device)
        self.neighbours = table.neighbours.to(self.device)  # (N, M)
        self.similarity = table.similarity.to(self.device)  # (N, M)
        n = self.n_items
        pop = table.popularity.to(self.device)
        rank = torch.empty(n, dtype=torch.float32, device=self.device)
        order = torch.argsort(-pop, stable=True)  # most popular first, ties by item id
        rank[order] = torch.arange(n, 0, -1, device=self.device, dtype=torch.float32) / (n + 1)
        positive = self.similarity[self.similarity > 0]
        floor = float(positive.min()) if positive.numel() else 1.0
        self.prior = rank * (1e-3 * floor)  # (N,) in (0, 1e-3 * smallest similarity)

    def _prepare(self, histories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = behaviour_mask(histories, self.n_items)  # (B, L)
        nb = self.neighbours[ids]  # (B, L, M)
        w = self.similarity[ids] * mask.unsqueeze(-1)  # padding contributes nothing
        return nb.flatten(1), w.flatten(1)  # (B, L M)

    def _score_chunk(self, state, lo: int, hi: int) -> torch.Tensor:
        nb, w = state
        inside = (nb >= lo) & (nb < hi)
        scores = self.prior[lo:hi].expand(nb.shape[0], hi - lo).clone()  # (B, hi - lo)
        return scores.scatter_add_(1, torch.where(inside, nb - lo, 0), torch.where(inside, w, 0.0))


class ItemCFMethod(FlatMethod[ItemCFConfig]):
    name: ClassVar[str] = "itemcf"
    config_cls: ClassVar[type[MethodConfig]] = ItemCFConfig
    size_fields = ("neighbours", "pair_budget", "dense_budget")

    def memory_bytes(self, config: ItemCFConfig, n_items: int, verb: str) -> int:
        """The (n_items, M) neighbour table and similarities, a block's pairs and dense counts."""
        table = n_items * config.neighbours * 12
        if verb != "train":
            return table if verb == "search" else n_items * 16
        return table + config.pair_budget * 8 * 4 + config.dense_budget * 8 * 2

    def train(self, config: ItemCFConfig, built: Built, data: SplitData, seed: int) -> Built:
        """Build the neighbour table (deterministic; ``seed`` unused). Artifact ``neighbours.pt``."""
        self.check_data(built, data)
        table = build_neighbours(data, config)
        state = {"neighbours": table.neighbours, "similarity": table.similarity, "popularity": table.popularity}
        return Built(built.structure, {"neighbours.pt": state_to_bytes(state)})

    def searcher(self, config: ItemCFConfig, built: Built, device: str | torch.device = "cpu") -> ItemCFSearcher:
        dev = resolve_device(device)
        state = bytes_to_state(require_artifact(built, "neighbours.pt", self.name), dev)
        table = NeighbourTable(state["neighbours"], state["similarity"], state["popularity"])
        return ItemCFSearcher(table, dev)
