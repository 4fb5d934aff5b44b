"""Balanced k-means: clusters whose sizes are fixed in advance (equal, or differing by one).

The assignment step is RecForest's Algorithm 1 (appendix A.1) -- the clusters are filled one
after another, cluster ``j`` taking its ``cap_j`` best still-unassigned points -- with one
change: "best" is ranked by the *preference margin* ``d(x, c_j) - min_{j' > j} d(x, c_j')``
(how much closer the point is to ``c_j`` than to any cluster still to be filled) instead of
the raw distance ``d(x, c_j)``. For K = 2 this is exactly the optimal balanced split (sort the
points by ``d0 - d1`` and cut at the capacity), which is what TDM's binary k-means tree does;
for K > 2 it stops the first clusters from grabbing points that are much closer to a later
cluster. The update step is the usual mean of the assigned points. Iterations stop when no
assignment changes (the paper's rule) or after ``iters``.

Everything runs batched: ``balanced_kmeans_batched`` splits C independent point sets at once
(the clusters of one tree level), so a tree builder makes one call per level, not one per node.
Works on CPU and CUDA (all tensors on the points' device).
"""

from __future__ import annotations

import numpy as np
import torch

from grove.indexstore.errors import GroveError


def equal_caps(sizes: torch.Tensor, n_children: torch.Tensor, k: int) -> torch.Tensor:
    """Capacities that split ``sizes[c]`` points into ``n_children[c]`` parts differing by <= 1.

    Parameters
    ----------
    sizes : (C,) long -- points per set.
    n_children : (C,) long -- parts per set, ``1 <= n_children <= k``.
    k : int -- width of the result.

    Returns
    -------
    caps : (C, k) long -- ``caps[c, j]`` = size of part j (0 for ``j >= n_children[c]``); the
    larger parts come first, and each row sums to ``sizes[c]``.
    """
    j = torch.arange(k, device=sizes.device)[None, :]  # (1, k)
    kc = n_children[:, None]
    base = torch.div(sizes[:, None], kc, rounding_mode="floor")
    extra = (j < (sizes[:, None] - base * kc)).long()
    return torch.where(j < kc, base + extra, torch.zeros_like(base))


def _init_centroids(x: torch.Tensor, valid: torch.Tensor, k: int, gen: torch.Generator | None) -> torch.Tensor:
    """k distinct random points of every set as centroids. x (C, s, d), valid (C, s) -> (C, k, d)."""
    c, s, d = x.shape
    keys = torch.rand(c, s, generator=gen, device=x.device)
    keys = keys.masked_fill(~valid, 2.0)  # padding sorts after every real point
    kk = min(k, s)
    idx = keys.topk(kk, dim=1, largest=False).indices  # (C, kk)
    cent = x.gather(1, idx[..., None].expand(c, kk, d))
    if kk < k:  # sets smaller than k: the surplus centroids get capacity 0 and are never used
        cent = torch.cat([cent, cent.new_zeros(c, k - kk, d)], dim=1)
    return cent


def _assign(x, cent, valid, caps, caps_max: list[int]) -> torch.Tensor:
    """Capacity-constrained assignment (sequential fill by preference margin).

    x (C, s, d), cent (C, K, d), valid (C, s) bool, caps (C, K) long, caps_max[j] = max_c caps[c, j].
    Returns labels (C, s) long, -1 on padding.
    """
    c, s, _ = x.shape
    k = cent.shape[1]
    # squared distance up to the per-point constant |x|^2, which cancels in every margin.
    # Layout (C, K, s): every per-cluster slice below is contiguous.
    dist = torch.baddbmm((cent * cent).sum(-1)[:, :, None], cent, x.transpose(1, 2), alpha=-2.0)
    # closed clusters (capacity 0) and "no later cluster" get a large finite distance, so every
    # margin below is finite and the last open cluster's margin is ~ -BIG for all points.
    big = 1e30
    dist = dist.masked_fill((caps == 0)[:, :, None], big)
    # margin[:, j] = d(x, c_j) - min_{j' > j} d(x, c_j'): how much closer x is to c_j than to any
    # cluster filled after j. Computed in place over dist: (C, K, s).
    alt = torch.full_like(dist[:, 0], big)  # running min over the later clusters: (C, s)
    for j in range(k - 1, -1, -1):
        later = torch.minimum(alt, dist[:, j])
        dist[:, j] -= alt
        alt = later
    margin = dist
    labels = torch.full((c, s), -1, dtype=torch.long, device=x.device)
    taken = ~valid  # padding counts as taken: (C, s)
    for j in range(k - 1):  # the last cluster (j = K-1) takes what is left, below
        m = caps_max[j]
        if m == 0:
            continue
        key = margin[:, j].masked_fill(taken, float("inf"))  # (C, s)
        idx = key.topk(m, dim=1, largest=False, sorted=True).indices  # (C, m) best m per set
        take = torch.arange(m, device=x.device)[None, :] < caps[:, j : j + 1]  # (C, m)
        labels.scatter_(1, idx, torch.where(take, j, labels.gather(1, idx)))
        taken.scatter_(1, idx, taken.gather(1, idx) | take)
    # rows whose last open cluster is K-1 still have exactly caps[:, K-1] free points; rows with
    # fewer clusters filled their last one by the loop (it took all that was left).
    labels.masked_fill_(~taken, k - 1)
    return labels


def _update(x, labels, valid, caps, old: torch.Tensor) -> torch.Tensor:
    """Mean of the points of every cluster; clusters of capacity 0 keep their old centroid."""
    k = caps.shape[1]
    # segment sums as one batched matmul with the one-hot assignment: (C, K, s) @ (C, s, d)
    onehot = (labels[:, None, :] == torch.arange(k, device=x.device)[None, :, None]) & valid[:, None, :]
    sums = torch.bmm(onehot.to(x.dtype), x)  # (C, K, d)
    mean = sums / caps.clamp(min=1)[..., None].to(x.dtype)
    return torch.where((caps > 0)[..., None], mean, old)


def balanced_kmeans_batched(
    x: torch.Tensor, sizes: torch.Tensor, caps: torch.Tensor, iters: int = 10, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Balanced k-means on C independent point sets at once.

    Parameters
    ----------
    x : (C, s, d) float -- set c holds its points in rows ``[0, sizes[c])``; the rest is padding.
    sizes : (C,) long -- points per set.
    caps : (C, K) long -- exact size of every cluster of every set; rows sum to ``sizes``.
    iters : int -- at most this many assign/update rounds (stops early when nothing changes).
    generator : torch.Generator on x's device -- seeds the centroid initialisation.

    Returns
    -------
    labels : (C, s) long -- cluster of every point in ``[0, K)``; -1 on padding. Cluster j of set
    c holds exactly ``caps[c, j]`` points.
    """
    c, s, _ = x.shape
    x = x.float()
    valid = torch.arange(s, device=x.device)[None, :] < sizes[:, None]  # (C, s)
    caps_max = caps.max(dim=0).values.tolist() if c else []  # host copy once: loop bounds
    cent = _init_centroids(x, valid, caps.shape[1], generator)
    labels = _assign(x, cent, valid, caps, caps_max)
    for _ in range(max(iters, 1) - 1):
        cent = _update(x, labels, valid, caps, cent)
        new = _assign(x, cent, valid, caps, caps_max)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def balanced_kmeans(x, k: int, iters: int = 10, seed: int = 0, device: str | torch.device | None = None):
    """Split n points into k clusters whose sizes differ by at most one.

    Parameters
    ----------
    x : (n, d) float32 numpy array or torch tensor.
    k : int -- number of clusters, ``1 <= k <= n``.
    iters : int -- maximum assign/update rounds.
    seed : int -- seeds the centroid initialisation (same seed, same labels).
    device : where to compute; default: x's device (CPU for numpy).

    Returns
    -------
    labels : (n,) int64 in ``[0, k)`` -- a numpy array for numpy input, else a tensor on
    ``device``. Cluster sizes are ``n // k`` or ``n // k + 1`` (exactly equal when k divides n);
    the larger clusters have the smaller labels.
    """
    as_numpy = isinstance(x, np.ndarray)
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise GroveError(f"balanced_kmeans needs points of shape (n, d), got {tuple(t.shape)}")
    n = t.shape[0]
    if not 1 <= k <= max(n, 1) or n == 0:
        raise GroveError(f"balanced_kmeans: k={k} must be between 1 and the number of points ({n})")
    dev = torch.device(device) if device is not None else t.device
    t = t.to(dev, torch.float32)
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed))
    sizes = torch.tensor([n], device=dev)
    caps = equal_caps(sizes, torch.tensor([k], device=dev), k)
    labels = balanced_kmeans_batched(t[None], sizes, caps, iters, gen)[0]
    return labels.cpu().numpy() if as_numpy else labels
