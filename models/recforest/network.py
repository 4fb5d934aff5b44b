"""RecForest's network: one transformer encoder over the behaviour sequence, shared by all trees,
and one transformer decoder per tree that emits the K-way code of a leaf level by level
(appendix B, Algorithm 3), with key/value-cached incremental decoding for beam search
(Algorithm 4).

Shapes: U users, P paths per user (beams or candidates), S decoder steps, L history positions,
h hidden, nh heads, dh = h / nh, H tree depth, K arity.

Choices where the appendix is silent
-------------------------------------
* Encoder: pre-norm ``nn.TransformerEncoder`` with learnt absolute positions ("Abs", the best
  positional embedding of Table 8); padding (-1) maps to an extra embedding row and is masked.
  An all-padding history keeps position 0 visible (its padding embedding) so that a user with no
  behaviour gets the model's prior instead of NaNs.
* Decoder: pre-norm layers of causal self-attention, cross-attention to the encoder output and a
  feed-forward block. The embedding of the code chosen at level l (one table per tree and level,
  "the embedding of each branch") is the input of step l+1 and is tied to the output layer of
  level l (logits = state . code embedding + bias): one learnt index parameter per branch.
* Cross-attention folds the P paths of a user into the query length, so the encoder output is
  never copied per beam; self-attention keeps a per-path cache of keys/values.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from grove.indexstore.samples import MAX_BEHAVIOURS

# Sequences per attention call: a CUDA kernel's grid puts the batch on an axis of at most 65,535
# blocks; a beam search's self-attention runs users x beam sequences (4,096 x 50 on an H200 failed
# with "invalid argument" in half precision), so larger batches are split.
ATTENTION_CHUNK = 1 << 15


def attention_in_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool) -> torch.Tensor:
    """`F.scaled_dot_product_attention` of (N, nh, S, dh) sequences in pieces of at most
    `ATTENTION_CHUNK` along N (each sequence is independent: the same result)."""
    return _attention_in_chunks(q, k, v, is_causal, ATTENTION_CHUNK)


@torch.jit.script_if_tracing  # a trace keeps the split for every N (`grove.models.scripted`)
def _attention_in_chunks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, chunk: int
) -> torch.Tensor:
    if q.shape[0] <= chunk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    return torch.cat(
        [
            F.scaled_dot_product_attention(q[i : i + chunk], k[i : i + chunk], v[i : i + chunk], is_causal=is_causal)
            for i in range(0, q.shape[0], chunk)
        ]
    )


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of one query over a few keys, q (N, nh, 1, dh), k / v (N, nh, s, dh) ->
    (N, nh, 1, dh), as products and sums: a cached decoder step attends over its s <= H
    earlier steps, and inside a compiled graph these few operators fuse with their neighbours
    into one loop, where `F.scaled_dot_product_attention` stays a separate kernel call."""
    w = torch.softmax((q * k).sum(-1) * q.shape[-1] ** -0.5, dim=-1)  # (N, nh, s)
    return (w.unsqueeze(-1) * v).sum(2, keepdim=True)


@torch.jit.script_if_tracing  # a trace keeps the width the data gives (`grove.models.scripted`)
def trim_padding(histories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """histories (U, L) -> (histories (U, L'), pad (U, L') bool): the columns up to the longest
    history of the batch; an empty history keeps column 0 (its padding embedding) visible."""
    pad = histories < 0
    width = int((~pad).sum(1).max().item()) if histories.numel() else 0
    width = max(width, 1)
    histories, pad = histories[:, :width], pad[:, :width].clone()
    pad[:, 0] = pad[:, 0] & ~pad.all(1)  # not &=, which TorchScript does not write back
    return histories, pad


class HistoryEncoder(nn.Module):
    """Transformer encoder over a nearest-first, -1-padded behaviour sequence."""

    def __init__(self, n_items: int, hidden: int, heads: int, layers: int, ff: int, dropout: float):
        super().__init__()
        self.n_items = n_items
        # row n_items = padding; sparse gradients: a step updates the rows it read (`grove.models.optim`)
        self.item = nn.Embedding(n_items + 1, hidden, sparse=True)
        self.pos = nn.Embedding(MAX_BEHAVIOURS, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, ff, dropout, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, histories: torch.Tensor, trim: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """histories (U, L<=69) long, -1 padded -> (memory (U, L', h), pad (U, L') bool).

        L' = longest non-padded history of the batch (histories are nearest first, so the
        columns past it are padding for every user and are cut); ``trim=False`` keeps L' = L
        (masked: the same memory up to float rounding) with no host sync and no shape taken
        from the data, as a compiled search needs."""
        if trim:
            histories, pad = trim_padding(histories)
        else:
            pad = histories < 0
            pad[:, 0] = pad[:, 0] & ~pad.all(1)  # an empty history keeps column 0 visible
        ids = torch.where(histories < 0, torch.full_like(histories, self.n_items), histories)
        pos = torch.arange(histories.shape[1], device=histories.device)
        x = self.item(ids) + self.pos(pos)[None]
        x = self.layers(x, src_key_padding_mask=pad) if self.training else self._inference_layers(x, pad)
        return self.norm(x), pad

    def _inference_layers(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """The encoder layers without dropout, written out: what ``nn.TransformerEncoder``'s
        inference fast path computes (the same values up to float rounding), as a few
        operators that ``torch.compile`` can fuse; its fused kernel masks padding through a
        softmax that alone costs more than the layer's matrix products at one user."""
        u, length, h = x.shape
        bias = torch.zeros(pad.shape, dtype=x.dtype, device=x.device).masked_fill(pad, float("-inf"))[:, None, None]
        for layer in cast(list[nn.TransformerEncoderLayer], list(self.layers.layers)):
            att = layer.self_attn
            nh = att.num_heads
            q, k, v = (
                F.linear(layer.norm1(x), att.in_proj_weight, att.in_proj_bias)
                .view(u, length, 3, nh, h // nh)
                .permute(2, 0, 3, 1, 4)
            )
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (U, nh, L, dh)
            x = x + att.out_proj(a.transpose(1, 2).reshape(u, length, h))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
        return x


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer over (U, P, S, h) with optional self-attention cache."""

    def __init__(self, hidden: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.heads, self.dh = heads, hidden // heads
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out1 = nn.Linear(hidden, hidden)
        self.q2 = nn.Linear(hidden, hidden)
        self.kv2 = nn.Linear(hidden, 2 * hidden)
        self.out2 = nn.Linear(hidden, hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, ff), nn.GELU(), nn.Linear(ff, hidden))
        self.drop = nn.Dropout(dropout)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (U, L, h) -> keys, values (U, nh, L, dh): computed once per query batch."""
        u, length, h = memory.shape
        kv = self.kv2(memory).view(u, length, 2, self.heads, self.dh).permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]

    def _dropped(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout in training; a search skips even the call (a few microseconds, per layer,
        per step, at batch 1)."""
        return self.drop(x) if self.training else x

    def forward(self, x, mem_k, mem_v, mem_bias, past=None):
        """x (U, P, S, h); mem_k/mem_v (U, nh, L, dh); mem_bias (U, 1, 1, L) additive mask;
        past: None or (k, v) each (U, P, nh, s, dh) for the s earlier steps (then S == 1).
        Returns x (U, P, S, h) and (k, v) (U, P, nh, s + S, dh) to cache."""
        u, p, s, h = x.shape
        nh, dh = self.heads, self.dh
        # (3, U*P, nh, S, dh) views of one projection: no copy before the attention
        q, k, v = self.qkv(self.ln1(x)).view(u * p, s, 3, nh, dh).permute(2, 0, 3, 1, 4).unbind(0)
        k, v = k.reshape(u, p, nh, s, dh), v.reshape(u, p, nh, s, dh)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=3), torch.cat([past[1], v], dim=3)
        sk = k.shape[3]
        if s == 1 and not q.is_cuda and torch.compiler.is_compiling():
            a = one_query_attention(q, k.view(u * p, nh, sk, dh), v.view(u * p, nh, sk, dh))
        else:
            causal = past is None and s > 1
            a = attention_in_chunks(q, k.view(u * p, nh, sk, dh), v.view(u * p, nh, sk, dh), is_causal=causal)
        x = x + self._dropped(self.out1(a.transpose(1, 2).reshape(u, p, s, h)))
        # cross-attention: the P*S queries of a user share the user's encoder output
        q2 = self.q2(self.ln2(x)).view(u, p * s, nh, dh).transpose(1, 2)  # (U, nh, P*S, dh)
        a2 = F.scaled_dot_product_attention(q2, mem_k, mem_v, attn_mask=mem_bias)
        x = x + self._dropped(self.out2(a2.transpose(1, 2).reshape(u, p, s, h)))
        x = x + self._dropped(self.ff(self.ln3(x)))
        return x, (k, v)


class PathDecoder(nn.Module):
    """One tree's decoder: from a start token, the K-way code of each of the H levels."""

    def __init__(self, arity: int, depth: int, hidden: int, heads: int, layers: int, ff: int, dropout: float):
        super().__init__()
        self.arity, self.depth = arity, depth
        self.start = nn.Parameter(torch.randn(hidden) * 0.02)
        self.level_pos = nn.Parameter(torch.randn(depth, hidden) * 0.02)
        self.code = nn.Parameter(torch.randn(depth, arity, hidden) / math.sqrt(hidden))  # (H, K, h)
        self.code_bias = nn.Parameter(torch.zeros(depth, arity))
        self.layers = nn.ModuleList(DecoderLayer(hidden, heads, ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)

    def decoder_layers(self) -> list[DecoderLayer]:
        """The decoder's layers, typed (a ModuleList holds plain Modules)."""
        return cast(list[DecoderLayer], list(self.layers))

    def memory_kv(self, memory: torch.Tensor, pad: torch.Tensor):
        """Per layer (k, v) of the encoder output and the additive padding bias (U, 1, 1, L)."""
        bias = torch.zeros(pad.shape, dtype=memory.dtype, device=memory.device)
        bias = bias.masked_fill(pad, float("-inf"))[:, None, None, :]
        return [layer.memory_kv(memory) for layer in self.decoder_layers()], bias

    def _inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (U, P, S-1) of levels 0..S-2 -> decoder inputs (U, P, S, h): start + codes."""
        u, p, s1 = codes.shape
        start = self.start.expand(u, p, 1, -1)
        if s1 == 0:
            return start + self.level_pos[0]
        # code[l, codes[..., l]] as a lookup in the flattened (H*K, h) table: the backward of
        # F.embedding accumulates rows in a fixed order, whereas advanced indexing's backward
        # (index_put_ with accumulate) adds with atomics on several CPU threads, so two trainings
        # with the same seed drifted apart (3.3e-4 in the weights after 15 steps on 2 threads,
        # benchmarks.reproducibility)
        rows = codes + self.arity * torch.arange(s1, device=codes.device)  # (U, P, S-1)
        emb = F.embedding(rows, self.code.reshape(-1, self.code.shape[-1]))  # (U, P, S-1, h)
        return torch.cat([start, emb], dim=2) + self.level_pos[: s1 + 1]

    def _logits(self, x: torch.Tensor, level0: int) -> torch.Tensor:
        """States (U, P, S, h) of steps level0.. -> log-probabilities (U, P, S, K)."""
        s = x.shape[2]
        w = self.code[level0 : level0 + s]  # (S, K, h)
        logits = torch.einsum("upsh,skh->upsk", self.norm(x), w) + self.code_bias[level0 : level0 + s]
        return torch.log_softmax(logits, dim=-1)

    def level_log_probs(self, mem, codes: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: codes (U, P, H) -> log p(code_l | codes_<l) per level (U, P, H, K)."""
        kvs, bias = mem
        x = self._inputs(codes[..., :-1])
        for layer, (mk, mv) in zip(self.layers, kvs):
            x, _ = layer(x, mk, mv, bias)
        return self._logits(x, 0)

    def path_log_probs(self, mem, codes: torch.Tensor) -> torch.Tensor:
        """codes (U, P, H) -> log p(path) (U, P), the sum over levels."""
        logp = self.level_log_probs(mem, codes)
        return logp.gather(-1, codes.unsqueeze(-1)).squeeze(-1).sum(-1)

    def step(self, mem, last_codes: torch.Tensor | None, level: int, cache):
        """One incremental step. last_codes (U, P) code chosen at level-1 (None at level 0);
        cache: per layer (k, v) or None. Returns log-probs (U, P, K) of level and new cache."""
        kvs, bias = mem
        if last_codes is None:
            u = bias.shape[0]
            x = (self.start + self.level_pos[0]).expand(u, 1, 1, -1)
        else:
            x = (self.code[level - 1][last_codes] + self.level_pos[level]).unsqueeze(2)
        new_cache = []
        for i, (layer, (mk, mv)) in enumerate(zip(self.layers, kvs)):
            x, kv = layer(x, mk, mv, bias, None if cache is None else cache[i])
            new_cache.append(kv)
        return self._logits(x, level)[:, :, 0], new_cache

    def all_leaf_log_probs(self, mem) -> torch.Tensor:
        """`all_leaf_log_probs` of this decoder."""
        return all_leaf_log_probs(self, mem)

    def beam_search(self, mem, beam: int, use_cache: bool = True):
        """`path_beam_search` of this decoder."""
        return path_beam_search(self, mem, beam, use_cache)


class StepDecoder(Protocol):
    """What the searches over one tree's paths call: a `PathDecoder`, or its modules traced by
    `grove.models.scripted` (which stand in for it to check them)."""

    arity: int
    depth: int

    def step(self, mem, last_codes: torch.Tensor | None, level: int, cache) -> tuple[torch.Tensor, list]: ...

    def level_log_probs(self, mem, codes: torch.Tensor) -> torch.Tensor: ...


def all_leaf_log_probs(dec: StepDecoder, mem) -> torch.Tensor:
    """log p(path) of every leaf, (U, K^H) in leaf-code order (the path read as a base-K int,
    first level most significant): the tree expanded level by level with the cache, one
    decoder step per internal node (1 + K + ... + K^(H-1) in all) instead of H steps for
    each of the K^H leaves as teacher forcing takes. Memory: the cache of the K^(H-1) last
    prefixes, (U, K^(H-1), heads, H-1, dh) per layer -- chunk users for deep trees."""
    u = mem[1].shape[0]
    dev = mem[1].device
    scores = torch.zeros(u, 1, device=dev)
    cache, last = None, None
    for level in range(dec.depth):
        logp, cache = dec.step(mem, last, level, cache)  # (U, P, K), P = K^level prefixes
        scores = (scores[:, :, None] + logp).reshape(u, -1)  # prefix p, child c -> p * K + c
        if level + 1 < dec.depth:
            p = scores.shape[1]
            last = (torch.arange(p, device=dev) % dec.arity).expand(u, p)
            cache = [(k.repeat_interleave(dec.arity, dim=1), v.repeat_interleave(dec.arity, dim=1)) for k, v in cache]
    return scores


def path_beam_search(dec: StepDecoder, mem, beam: int, use_cache: bool = True):
    """Top-`beam` paths by log-probability, batched over users and beams.

    Returns codes (U, B', H) long and log-probs (U, B') best first, B' = min(beam, K^H).
    ``use_cache=False`` recomputes the whole prefix at every step (reference for tests)."""
    codes, scores, _, _, _ = beam_search_with_siblings(dec, mem, beam, use_cache)
    return codes, scores


def path_codes(digits: torch.Tensor, k: int) -> torch.Tensor:
    """K-way paths (..., h) -> their codes (...), the path read as a base-K int, first level most
    significant (place values from Python ints: a compiled graph holds them as constants)."""
    h = digits.shape[-1]
    place = torch.tensor([k**i for i in range(h - 1, -1, -1)], dtype=torch.long, device=digits.device)
    return (digits * place).sum(-1)


def find_in_rows(codes: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each of values (U, N) sits in the same row of codes (U, M): (position (U, N), found
    (U, N) bool); where not found, position is some index in range."""
    ordered, order = codes.sort(dim=1)
    pos = torch.searchsorted(ordered, values).clamp(max=ordered.shape[1] - 1)
    return order.gather(1, pos), ordered.gather(1, pos) == values


class BeamLevel(NamedTuple):
    """What one level of a beam search computed for the P prefixes it stepped: prefixes (U, P, l)
    codes, children (U, P, K) log p(prefix, child), and the decoder cache, per layer (k, v)
    (U, P, nh, l + 1, dh): a child of one of these prefixes is one decoder step away."""

    prefixes: torch.Tensor
    children: torch.Tensor
    cache: list


def beam_search_with_siblings(dec: StepDecoder, mem, beam: int, use_cache: bool = True):
    """`path_beam_search`, and what its levels scored on the way: every child of the last
    level's P kept prefixes (the beam's leaves and their siblings), and earlier levels' states.

    Returns codes (U, B', H), log-probs (U, B'), parents (U, P, H-1) long (P = min(beam,
    K^(H-1))), children (U, P, K) log p(parent path, child): the leaves of a final ranking
    that sit under one of these parents need no further decoder step; and per level l a
    `BeamLevel` (a node whose parent it stepped is one step away), kept for the levels that
    stepped every prefix (K^l <= beam) and for level H-2, else None, so that a large batch
    does not hold every level's cache (empty without the cache)."""
    u = mem[1].shape[0]
    dev = mem[1].device
    codes = torch.zeros(u, 1, 0, dtype=torch.long, device=dev)
    scores = torch.zeros(u, 1, device=dev)
    cache = None
    rows = torch.arange(u, device=dev)[:, None]
    children = scores[:, :, None]
    parents = codes
    levels: list[BeamLevel | None] = []
    for level in range(dec.depth):
        if use_cache:
            last = None if level == 0 else codes[:, :, -1]
            logp, cache = dec.step(mem, last, level, cache)
        else:
            padded = torch.cat([codes, codes.new_zeros(u, codes.shape[1], 1)], dim=2)
            logp = dec.level_log_probs(mem, padded)[:, :, level]
        children, parents = scores[:, :, None] + logp, codes  # (U, P, K), (U, P, level)
        if cache is not None:
            keep = level == dec.depth - 2 or children.shape[1] == dec.arity**level
            levels.append(BeamLevel(parents, children, cache) if keep else None)
        cand = children.reshape(u, -1)  # (U, P*K)
        scores, idx = cand.topk(min(beam, cand.shape[1]), dim=1)  # sorted, best first
        parent, code = idx // dec.arity, idx % dec.arity
        codes = torch.cat([codes[rows, parent], code[:, :, None]], dim=2)
        if use_cache and cache is not None and level + 1 < dec.depth:
            cache = [(k[rows, parent], v[rows, parent]) for k, v in cache]
    return codes, scores, parents, children, levels


def descend(
    dec: StepDecoder, mem, children: torch.Tensor, cache: list, up: torch.Tensor, code: torch.Tensor, level: int
):
    """One level down a sub-tree: for the G nodes (U, G) at ``level``, child ``code`` of row
    ``up`` of the level above (children (U, P, K) log p(prefix, child) and its cache), their
    log p (U, G), their children's conditional log-probs (U, G, K) and joint ones (U, G, K),
    and their cache. What `prefix_log_probs` repeats; a compiled search compiles it whole."""
    rows = torch.arange(up.shape[0], device=up.device)[:, None]
    head = children[rows, up, code]
    cache = [(kk[rows, up], vv[rows, up]) for kk, vv in cache]
    logp, cache = dec.step(mem, code, level, cache)
    return head, logp, head[..., None] + logp, cache


def prefix_log_probs(
    dec: StepDecoder, mem, parents: torch.Tensor, start: BeamLevel | None = None, down=descend
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of given parent paths and of each of their K children, decoded level by level with
    the cache over the distinct prefixes only: one step per (user, internal node on the way to a
    parent), the nodes of a sub-tree of the tree `all_leaf_log_probs` expands whole.

    parents (U, W) long: parent codes (the first H-1 codes as a base-K int, any order, repeats
    allowed). ``start``: a beam search's `BeamLevel` of a level L <= H-2 that stepped every
    prefix of the parents at that level (a complete level: K^L <= beam); decoding resumes
    below it instead of from the root. ``down``: `descend` or a compiled one. Returns head
    (U, W) log p(parent path) and last (U, W, K) log p(child | parent). Memory: the cache of
    the W parents' prefixes, (U, W, heads, H-1, dh) per layer."""
    u, w = parents.shape
    k, depth = dec.arity, dec.depth
    if not w:
        return parents.new_zeros(u, 0, dtype=torch.float32), parents.new_zeros(u, 0, k, dtype=torch.float32)
    if start is None:
        logp, cache = dec.step(mem, None, 0, None)  # (U, 1, K): the root's children
        children, first = logp, 1
        slot = torch.zeros_like(parents)  # each parent's prefix among the level's rows
    else:
        first = start.prefixes.shape[2] + 1
        slot, _ = find_in_rows(path_codes(start.prefixes, k), parents // k ** (depth - first))
        children, cache = start.children, start.cache
    head = children.new_zeros(u, 1)
    for level in range(first, depth):
        prefix = parents // k ** (depth - 1 - level)  # (U, W) the first `level` codes
        new_slot, rep = prefix_groups(prefix)  # rep (U, G): one parent per distinct prefix
        up = slot.gather(1, rep)  # (U, G): its prefix one level up
        code = (prefix % k).gather(1, rep)  # (U, G): its code at level - 1
        head, logp, children, cache = down(dec, mem, children, cache, up, code, level)
        slot = new_slot
    return head.gather(1, slot), logp.gather(1, slot[..., None].expand(-1, -1, k))


def prefix_groups(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Group each row's entries by value: codes (U, P) ints -> slot (U, P), the group of each
    entry, and rep (U, W), one entry of each group (W = the most groups in a row; a row with
    fewer repeats its first entry, harmlessly)."""
    u, p = codes.shape
    sp, order = codes.sort(dim=1)
    new = torch.ones_like(sp, dtype=torch.bool)
    new[:, 1:] = sp[:, 1:] != sp[:, :-1]
    rank = new.long().cumsum(1) - 1  # (U, P) group, sorted order
    width = int(rank[:, -1].max().item()) + 1 if p else 0
    rep = torch.zeros(u, width, dtype=torch.long, device=codes.device)
    rep.scatter_(1, rank, order)  # any entry of the group will do: they are equal
    slot = torch.empty_like(rank).scatter_(1, order, rank)  # (U, P) entry -> its group
    return slot, rep


class RecForestNet(nn.Module):
    """The shared encoder and T decoders (one per tree, each with its own depth)."""

    def __init__(
        self,
        n_items: int,
        arity: int,
        depths: list[int],
        hidden: int = 96,
        heads: int = 4,
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        ff: int = 192,
        dropout: float = 0.1,
    ):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
        self.encoder = HistoryEncoder(n_items, hidden, heads, encoder_layers, ff, dropout)
        self.decoders = nn.ModuleList(PathDecoder(arity, d, hidden, heads, decoder_layers, ff, dropout) for d in depths)

    def decoder_list(self) -> list[PathDecoder]:
        """The decoders, one per tree, typed (a ModuleList holds plain Modules)."""
        return cast(list[PathDecoder], list(self.decoders))

    def memories(self, histories: torch.Tensor, trim: bool = True) -> list:
        """Encode once; per tree the decoder's cross-attention keys/values and padding bias.
        ``trim``: `HistoryEncoder.forward`'s."""
        memory, pad = self.encoder(histories, trim)
        return [dec.memory_kv(memory, pad) for dec in self.decoder_list()]

    def loss(self, histories: torch.Tensor, codes: list[torch.Tensor]) -> torch.Tensor:
        """Algorithm 3: cross-entropy of every level summed over levels and trees, batch mean.
        histories (U, 69); codes[t] (U, H_t) the target leaf's code in tree t."""
        total = histories.new_zeros((), dtype=torch.float32)
        for dec, mem, c in zip(self.decoder_list(), self.memories(histories), codes):
            total = total - dec.path_log_probs(mem, c[:, None, :]).mean()
        return total
