"""Deep Retrieval retrieval: batched beam search over the D x K grid (appendix Algorithm 3), the
inverted path -> items index, and candidate gathering for the softmax rerank.

Everything is vectorised over users: one ``topk`` per layer over a (batch, B*K) matrix of
cumulative log-probabilities, one ``searchsorted`` to find the B paths in the index, one
``repeat_interleave`` gather for their items.
"""

from __future__ import annotations

import numpy as np
import torch

from grove.indexstore.structures import PathCodes
from grove.models.dr.network import StructureModel


def path_ids_of(paths: torch.Tensor, arity: int) -> torch.Tensor:
    """(..., D) long codes -> (...,) int64 path ids sum_d c_d * K^(D-1-d), as
    `PathCodes.path_ids`; a row holding a -1 code (no path, e.g. a beam wider than the grid)
    gives -1. Horner's rule over the D levels: no weight tensor to build (and copy to a GPU)
    on every call of the search and E-step loops."""
    ids = paths[..., 0].clamp_min(0)
    for d in range(1, paths.shape[-1]):
        ids = ids * arity + paths[..., d].clamp_min(0)
    return torch.where((paths >= 0).all(-1), ids, torch.full_like(ids, -1))


@torch.no_grad()
def beam_search(structure: StructureModel, u: torch.Tensor, beam: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top paths of every user by beam search (Algorithm 3).

    Parameters
    ----------
    structure : the structure model; u : (B, dim) user embeddings; beam : B (> 0).

    Returns
    -------
    paths : (B, beam, D) long codes, best first; rows padded with -1 where beam > K^D.
    logp : (B, beam) float log p(c|x) of each path; -inf where padded.
    """
    n, k, depth = u.shape[0], structure.arity, structure.depth
    prefix = torch.zeros(n, 1, 0, dtype=torch.long, device=u.device)  # (B, 1, 0)
    cum = torch.zeros(n, 1, device=u.device, dtype=u.dtype)  # (B, width) cumulative log p
    for _ in range(depth):
        width = prefix.shape[1]
        logp = structure.layer_log_probs(u[:, None, :].expand(-1, width, -1), prefix)  # (B, w, K)
        cand = (cum[:, :, None] + logp).reshape(n, width * k)  # (B, w*K)
        keep = min(beam, width * k)
        cum, idx = torch.topk(cand, keep, dim=1)  # (B, keep)
        parent, code = idx // k, idx % k
        prefix = torch.cat(
            [torch.gather(prefix, 1, parent[:, :, None].expand(-1, -1, prefix.shape[2])), code[:, :, None]], dim=2
        )  # (B, keep, d+1)
    if prefix.shape[1] < beam:  # fewer than `beam` paths exist (K^D < beam)
        pad = beam - prefix.shape[1]
        prefix = torch.cat([prefix, prefix.new_full((n, pad, depth), -1)], dim=1)
        cum = torch.cat([cum, cum.new_full((n, pad), float("-inf"))], dim=1)
    return prefix, cum


class PathIndex:
    """Inverted index path -> items, a CSR over the sorted distinct non-empty path ids.

    Parameters
    ----------
    codes : the `PathCodes` structure; device : where the index tensors live.

    Attributes
    ----------
    path_ids : (P,) int64 sorted distinct non-empty path ids.
    offsets : (P+1,) int64; items : (n_items * J,) int64 -- items of path p are
        ``items[offsets[p]:offsets[p+1]]`` (ascending item ids).
    """

    def __init__(self, codes: PathCodes, device: torch.device | str = "cpu"):
        pid = codes.path_ids().reshape(-1)  # (n_items*J,)
        item = np.repeat(np.arange(codes.n_items, dtype=np.int64), codes.n_paths)
        order = np.lexsort((item, pid))
        uniq, counts = np.unique(pid[order], return_counts=True)
        self.arity, self.depth = codes.arity, codes.depth
        self.path_ids = torch.as_tensor(uniq, device=device)
        self.offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(counts)]), device=device)
        self.items = torch.as_tensor(item[order], device=device)

    def path_sizes(self) -> torch.Tensor:
        """(P,) items per non-empty path."""
        return self.offsets[1:] - self.offsets[:-1]

    def lookup(self, path_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Start offset and size of each path id (any shape, -1 = none); size 0 when empty."""
        pos = torch.searchsorted(self.path_ids, path_id.clamp_min(0))
        pos_c = pos.clamp_max(self.path_ids.shape[0] - 1)
        hit = (self.path_ids[pos_c] == path_id) & (path_id >= 0)
        start = self.offsets[pos_c]
        size = torch.where(hit, self.offsets[pos_c + 1] - start, torch.zeros_like(start))
        return start, size

    def items_of(self, paths: torch.Tensor) -> torch.Tensor:
        """Candidate items of each user's paths, deduplicated.

        paths : (B, P, D) long codes, -1 rows = no path.
        Returns (B, C) long item ids, ascending per row, padded with -1 (C = the largest
        number of distinct candidates of a user, at least 1).
        """
        n = paths.shape[0]
        start, size = self.lookup(path_ids_of(paths, self.arity))  # (B, P) each
        seg = size.reshape(-1)  # (B*P,) segment lengths
        per_user = size.sum(1)  # (B,)
        width = max(int(per_user.max()) if n else 0, 1)
        total = int(seg.sum())
        out = torch.full((n, width), -1, dtype=torch.long, device=paths.device)
        if total:
            seg_first = torch.cumsum(seg, 0) - seg  # flat position of each segment's first item
            within = torch.arange(total, device=paths.device) - torch.repeat_interleave(seg_first, seg)
            src = torch.repeat_interleave(start.reshape(-1), seg) + within
            user = torch.repeat_interleave(torch.arange(n, device=paths.device), per_user)
            user_first = torch.cumsum(per_user, 0) - per_user
            col = torch.arange(total, device=paths.device) - user_first[user]
            out[user, col] = self.items[src]
        return dedup_rows(out)


def dedup_rows(items: torch.Tensor) -> torch.Tensor:
    """(B, C) long with -1 padding -> same shape, each row's distinct ids ascending, -1 after."""
    big = torch.iinfo(torch.long).max
    s, _ = torch.sort(torch.where(items >= 0, items, torch.full_like(items, big)), dim=1)
    dup = torch.zeros_like(s, dtype=torch.bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    s = torch.where(dup | (s == big), torch.full_like(s, big), s)
    s, _ = torch.sort(s, dim=1)
    return torch.where(s == big, torch.full_like(s, -1), s)
