"""Fixed-shape top-k lists, the one set of helpers every searcher uses: ``(scores (B, k) float32,
items (B, k) int64)``, best first, padded with -inf / -1 (the `grove.models.method.Searcher` contract)."""

from __future__ import annotations

import torch


def ranked(scores: torch.Tensor, items: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best k of (B, C) candidate ``items`` (-1 = none) by their (B, C) ``scores``."""
    scores = scores.masked_fill(items < 0, float("-inf"))
    kk = min(k, scores.shape[1])
    top, idx = torch.topk(scores, kk, dim=1)
    best = torch.gather(items, 1, idx)
    best = torch.where(torch.isfinite(top), best, torch.full_like(best, -1))
    if kk < k:
        top = torch.cat([top, top.new_full((scores.shape[0], k - kk), float("-inf"))], dim=1)
        best = torch.cat([best, best.new_full((scores.shape[0], k - kk), -1)], dim=1)
    return top.float(), best.long()


def padded_topk(scores: torch.Tensor, k: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of ``scores`` (B, N) over items ``offset .. offset + N - 1``."""
    b, n = scores.shape
    kk = min(k, n)
    val, idx = torch.topk(scores, kk, dim=1) if kk > 0 else (scores[:, :0], scores[:, :0].long())
    val, idx = val.float(), idx.long() + offset
    if kk < k:
        val = torch.cat([val, val.new_full((b, k - kk), float("-inf"))], dim=1)
        idx = torch.cat([idx, idx.new_full((b, k - kk), -1)], dim=1)
    return val, idx


def merge_topk(
    best: tuple[torch.Tensor, torch.Tensor], new: tuple[torch.Tensor, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two (B, k) top-k lists into one (padding -inf / -1 stays last): a running top-k over
    chunks of a catalogue, started from `empty_topk`."""
    val = torch.cat([best[0], new[0]], dim=1)  # (B, 2k)
    idx = torch.cat([best[1], new[1]], dim=1)
    top_val, pos = torch.topk(val, k, dim=1)
    return top_val, torch.gather(idx, 1, pos)


def empty_topk(b: int, k: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k) of padding: -inf / -1 (the start of a running top-k)."""
    return (torch.full((b, k), float("-inf"), device=device), torch.full((b, k), -1, dtype=torch.long, device=device))


def unique_rows(items: torch.Tensor) -> torch.Tensor:
    """(U, C) item ids (-1 holes) -> same shape, each item kept once per row, others -1."""
    s, _ = items.sort(dim=1)
    dup = torch.zeros_like(s, dtype=torch.bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    return torch.where(dup, torch.full_like(s, -1), s)
