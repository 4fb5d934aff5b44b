"""Deep Retrieval's networks: GRU user encoder, D-layer structure model, softmax reranker.

`DRNet` holds the three parts that share one user embedding (paper §2.1, §3.3, §4.1):

* `GRUEncoder` -- histories (B, 69), nearest first, -1 padded -> user embedding u (B, dim).
  The GRU reads the behaviours oldest -> newest (the row's valid prefix is reversed by a gather)
  and u is its output at the newest behaviour, so padding never enters the state.
* `StructureModel` -- D layers of width K. Layer d is an MLP with a skip connection over
  concat(u, e_0(c_0), ..., e_{d-1}(c_{d-1})) followed by a softmax over K (Eq. 1):
  log p(c|x) = sum_d log p(c_d | x, c_<d). ``e_d`` is a per-layer code embedding table ("path
  embeddings", K x dim), so the input of layer d has size dim * (d + 1) as in §2.1.
* `SoftmaxHead` -- logits over all items, ``W u · E_v + b_v``; it reranks retrieved items and
  gives DR's brute-force reference (§4.2).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class GRUEncoder(nn.Module):
    """Behaviour sequence -> user embedding.

    Parameters
    ----------
    n_items : item ids are in [0, n_items); -1 is padding (mapped to row n_items).
    dim : embedding and GRU state size.
    """

    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.n_items = n_items
        # sparse gradients: a step updates the rows it read (`grove.models.optim`)
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=n_items, sparse=True)
        self.gru = nn.GRU(dim, dim, batch_first=True)

    def forward(self, histories: torch.Tensor) -> torch.Tensor:
        """histories (B, L) long, nearest first, -1 padded -> u (B, dim); the GRU runs over the
        longest history of the batch only."""
        hist = histories.long()
        lengths = (hist >= 0).sum(1)  # (B,)
        return self._encode(hist, lengths, max(int(lengths.max()) if hist.shape[0] else 0, 1))

    def forward_full_width(self, histories: torch.Tensor) -> torch.Tensor:
        """`forward` over all L columns: the same vectors (the GRU is causal and its state is
        read at each user's last behaviour), with no width taken from the data, as a trace
        needs (`grove.models.scripted`)."""
        hist = histories.long()
        return self._encode(hist, (hist >= 0).sum(1), hist.shape[1])

    def _encode(self, hist: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
        # oldest-first order of the valid prefix: position t takes column lengths-1-t
        t = torch.arange(width, device=hist.device)
        src = lengths[:, None] - 1 - t[None, :]  # (B, width)
        ok = src >= 0
        seq = torch.gather(hist, 1, src.clamp_min(0))
        seq = torch.where(ok & (seq >= 0), seq, torch.full_like(seq, self.n_items))
        out, _ = self.gru(self.item_emb(seq))  # (B, width, dim)
        last = (lengths - 1).clamp_min(0)  # empty history -> the padding step's state
        return out[torch.arange(hist.shape[0], device=hist.device), last]


class SkipMLP(nn.Module):
    """z = x + W2 relu(W1 x); logits = W3 relu(z): one layer of the structure model."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, in_dim)
        self.out = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x + self.fc2(F.relu(self.fc1(x)))
        return self.out(F.relu(z))


class StructureModel(nn.Module):
    """p(c | u) over the D x K grid.

    Parameters
    ----------
    arity : K; depth : D; dim : user / path embedding size; hidden : MLP hidden size.
    """

    def __init__(self, arity: int, depth: int, dim: int, hidden: int):
        super().__init__()
        self.arity, self.depth, self.dim = arity, depth, dim
        self.layers = nn.ModuleList(SkipMLP(dim * (d + 1), hidden, arity) for d in range(depth))
        # code embeddings of layers 0..D-2 (the last layer's code feeds nothing)
        self.code_emb = nn.ModuleList(nn.Embedding(arity, dim) for _ in range(max(depth - 1, 0)))

    def layer_log_probs(self, u: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """log p(c_d | u, c_<d) for every c_d.

        u : (..., dim); prefix : (..., d) long codes of the layers above (d may be 0).
        Returns (..., K) log-probabilities of layer d = prefix.shape[-1].
        """
        d = prefix.shape[-1]
        parts = [u] + [self.code_emb[i](prefix[..., i]) for i in range(d)]
        return F.log_softmax(self.layers[d](torch.cat(parts, dim=-1)), dim=-1)

    def path_log_prob(self, u: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """log p(c | u) of given paths (Eq. 1).

        u : (B, dim); codes : (B, J, D) long. Returns (B, J).
        """
        uj = u[:, None, :].expand(-1, codes.shape[1], -1)  # (B, J, dim)
        total = torch.zeros(codes.shape[:2], device=u.device, dtype=u.dtype)
        for d in range(self.depth):  # D is small (3): one batched MLP call per layer
            logp = self.layer_log_probs(uj, codes[..., :d])  # (B, J, K)
            total = total + logp.gather(-1, codes[..., d : d + 1]).squeeze(-1)
        return total

    def multipath_loss(self, u: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Mean of -log sum_j p(pi_j(y) | x) over the batch (Eq. 3). codes (B, J, D)."""
        return -torch.logsumexp(self.path_log_prob(u, codes), dim=1).mean()


class SoftmaxHead(nn.Module):
    """Item logits from the shared user embedding: (W u) · E_v + b_v.

    ``sparse``: the item table gives sparse gradients (for the sampled softmax, which looks up
    a few rows per step; the full softmax reads the whole table and needs a dense one). The
    bias stays a dense (n_items,) parameter."""

    def __init__(self, n_items: int, dim: int, sparse: bool = False):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.item_emb = nn.Embedding(n_items, dim, sparse=sparse)
        self.bias = nn.Parameter(torch.zeros(n_items))
        nn.init.normal_(self.item_emb.weight, std=dim**-0.5)

    def query(self, u: torch.Tensor) -> torch.Tensor:
        return self.proj(u)  # (B, dim)

    def logits(self, u: torch.Tensor) -> torch.Tensor:
        """(B, dim) -> (B, n_items) logits over all items."""
        return self.query(u) @ self.item_emb.weight.T + self.bias

    def score_items(self, u: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of given items: u (B, dim), items (B, C) long >= 0 -> (B, C)."""
        q = self.query(u)
        return torch.einsum("bd,bcd->bc", q, self.item_emb(items)) + self.bias[items]

    def loss(
        self, u: torch.Tensor, target: torch.Tensor, n_samples: int = 0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Cross-entropy of the target item.

        n_samples 0: full softmax over all items. n_samples > 0: sampled softmax with
        ``n_samples`` uniform negatives shared by the batch (uniform proposal, so the logQ
        correction is a constant and cancels); negatives equal to the target are masked.
        """
        if n_samples <= 0:
            return F.cross_entropy(self.logits(u), target)
        q = self.query(u)
        neg = torch.randint(self.bias.shape[0], (n_samples,), device=u.device, generator=generator)
        pos_logit = (q * self.item_emb(target)).sum(-1) + self.bias[target]  # (B,)
        neg_logit = q @ self.item_emb(neg).T + self.bias[neg]  # (B, S)
        neg_logit = neg_logit.masked_fill(neg[None, :] == target[:, None], float("-inf"))
        logits = torch.cat([pos_logit[:, None], neg_logit], dim=1)
        return F.cross_entropy(logits, torch.zeros_like(target))


class DRNet(nn.Module):
    """Encoder + structure model + softmax head (shared user embedding, §3.3)."""

    def __init__(self, n_items: int, arity: int, depth: int, dim: int, hidden: int, sparse_softmax: bool = False):
        super().__init__()
        self.n_items = n_items
        self.encoder = GRUEncoder(n_items, dim)
        self.structure = StructureModel(arity, depth, dim, hidden)
        self.softmax = SoftmaxHead(n_items, dim, sparse=sparse_softmax)

    def encode(self, histories: torch.Tensor) -> torch.Tensor:
        return self.encoder(histories)
