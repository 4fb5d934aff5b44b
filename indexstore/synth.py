"""Synthetic interactions with a planted hierarchy of interests.

The catalogue is a 3-level hierarchy: ``branching[0]`` top clusters, each with ``branching[1]``
sub-clusters, each with ``branching[2]`` leaf clusters; the items are spread at random over the
leaf clusters in near-equal blocks. An item's category is its sub-cluster's name
(``"c{top}.{sub}"``), so a category tree matches the planted structure two levels up.

Each user holds ``interests_per_user`` leaf clusters (top cluster drawn with Zipf-like weights,
then sub-cluster and leaf uniformly) and draws a time-ordered sequence as a sticky process:

* the sequence is cut into segments (a new one with probability ``p_switch`` at each step); a
  segment stays on one of the user's interests, chosen uniformly;
* inside a segment an event moves to a sibling leaf of the same sub-cluster with probability
  ``p_sibling`` (so neighbouring leaves are related, which a learnt tree can exploit);
* the item inside a leaf cluster follows a Zipf-like law over the leaf's items
  (rank = floor(size * u ** popularity_skew), u uniform);
* with probability ``p_noise`` an event is instead a uniformly random item rated 1-3; the other
  events are rated 4-5 (3 with probability 5%), so the positive filter (rating >= 4) removes
  mostly noise.

Consecutive positives of a user therefore share a leaf cluster most of the time and a top cluster
nearly always, while a random item shares a top cluster with probability ~1/branching[0]:
next-item prediction is learnable and tree methods beat random by a wide margin.
Everything is vectorised over events; the generator is deterministic given the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .interactions import Interactions, ItemCategories

_T0, _T1 = 1_400_000_000, 1_600_000_000  # range of users' first timestamps (epoch seconds)


@dataclass(frozen=True, eq=False)
class Hierarchy:
    """The planted structure.

    branching : (3,) clusters per level.
    leaf : (I,) int64 leaf cluster of each item (0..prod(branching)-1);
    sub : (I,) global sub-cluster (leaf // branching[2]); top : (I,) top cluster.
    leaf_offsets : (n_leaf+1,), leaf_items : (I,) -- CSR of each leaf's items, most popular first.
    """

    branching: tuple
    leaf: np.ndarray
    sub: np.ndarray
    top: np.ndarray
    leaf_offsets: np.ndarray
    leaf_items: np.ndarray


def default_branching(n_items: int) -> tuple[int, int, int]:
    """About 20 items per leaf cluster, at most 16 clusters per level."""
    b = int(np.clip(round((n_items / 20.0) ** (1.0 / 3.0)), 2, 16))
    return (b, b, b)


def planted_hierarchy(n_items: int, seed: int, branching: tuple | None = None) -> Hierarchy:
    """The hierarchy `synthesize(n_items, ..., seed, branching=...)` plants (same seed)."""
    branching = tuple(int(b) for b in (branching or default_branching(n_items)))
    if len(branching) != 3 or min(branching) < 1:
        raise InputError(f"branching must be 3 positive ints (top, sub, leaf), got {branching}")
    n_leaf = int(np.prod(branching))
    if n_items < n_leaf:
        raise InputError(f"{n_items} items cannot fill {n_leaf} leaf clusters {branching}; use a smaller branching")
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    leaf_items = rng.permutation(n_items)  # (I,) block l of this order = leaf l
    leaf_of_slot = (np.arange(n_items, dtype=np.int64) * n_leaf) // n_items
    leaf = np.empty(n_items, dtype=np.int64)
    leaf[leaf_items] = leaf_of_slot
    offsets = np.searchsorted(leaf_of_slot, np.arange(n_leaf + 1))
    return Hierarchy(
        branching,
        leaf,
        leaf // branching[2],
        leaf // (branching[1] * branching[2]),
        offsets.astype(np.int64),
        leaf_items.astype(np.int64),
    )


def synthesize(
    n_items: int,
    n_users: int,
    seed: int,
    *,
    branching: tuple | None = None,
    interests_per_user: int = 3,
    mean_length: float = 40.0,
    min_length: int = 12,
    max_length: int = 1000,
    p_switch: float = 0.1,
    p_sibling: float = 0.2,
    p_noise: float = 0.15,
    popularity_skew: float = 2.5,
    top_skew: float = 0.8,
) -> tuple[Interactions, ItemCategories]:
    """Generate interactions and categories with a planted hierarchy of interests.

    Parameters
    ----------
    n_items, n_users : catalogue and population sizes (raw ids "0".."n-1", dense = raw).
    seed : the only source of randomness.
    branching : (top, sub, leaf) clusters per level; default ~20 items per leaf cluster.
    interests_per_user : leaf clusters each user draws from.
    mean_length, min_length, max_length : events per user (min + geometric tail, capped).
    p_switch, p_sibling, p_noise : segment switch, sibling-leaf move and noise probabilities.
    popularity_skew : >1 skews item choice inside a leaf towards its first items.
    top_skew : Zipf exponent of the top clusters' popularity.

    Returns
    -------
    (Interactions with ratings and increasing timestamps per user, ItemCategories whose kept
    category is the item's sub-cluster name).
    """
    if n_items < 1 or n_users < 1:
        raise InputError(f"need at least one item and one user, got {n_items} items, {n_users} users")
    if not 1 <= min_length <= mean_length <= max_length:
        raise InputError(
            f"need 1 <= min_length <= mean_length <= max_length, got {min_length}, {mean_length}, {max_length}"
        )
    h = planted_hierarchy(n_items, seed, branching)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
    lengths = min_length - 1 + rng.geometric(1.0 / (mean_length - min_length + 1), size=n_users)
    lengths = np.minimum(lengths, max_length).astype(np.int64)  # (U,)
    interests = _interests(rng, h, n_users, interests_per_user, top_skew)  # (U, k) leaves
    user = np.repeat(np.arange(n_users, dtype=np.int32), lengths)  # (N,)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    leaf = _leaf_per_event(rng, h, interests, user, starts, p_switch, p_sibling)
    item = _item_in_leaf(rng, h, leaf, popularity_skew)
    noise = rng.random(user.shape[0]) < p_noise
    item[noise] = rng.integers(0, n_items, size=int(noise.sum()))
    rating = np.where(rng.random(user.shape[0]) < 0.5, 5.0, 4.0).astype(np.float32)
    rating[rng.random(user.shape[0]) < 0.05] = 3.0
    rating[noise] = rng.integers(1, 4, size=int(noise.sum())).astype(np.float32)
    ts = _timestamps(rng, user, starts, n_users)
    inter = Interactions(
        user, item.astype(np.int32), ts, rating, None, np.arange(n_users).astype(str), np.arange(n_items).astype(str)
    )
    return inter, _categories(h)


def _interests(rng, h: Hierarchy, n_users: int, k: int, top_skew: float) -> np.ndarray:
    """(U, k) leaf clusters: top ~ Zipf(top_skew), then sub and leaf uniform."""
    b0, b1, b2 = h.branching
    w = 1.0 / np.arange(1, b0 + 1) ** top_skew
    top = rng.choice(b0, size=(n_users, k), p=w / w.sum())
    return (top * b1 + rng.integers(0, b1, size=(n_users, k))) * b2 + rng.integers(0, b2, size=(n_users, k))


def _leaf_per_event(
    rng, h: Hierarchy, interests: np.ndarray, user: np.ndarray, starts: np.ndarray, p_switch: float, p_sibling: float
) -> np.ndarray:
    """(N,) leaf cluster of every event: sticky segments over the user's interests."""
    n = user.shape[0]
    new_segment = rng.random(n) < p_switch
    new_segment[starts] = True  # each user's first event opens a segment
    seg = np.cumsum(new_segment) - 1  # (N,) segment id of each event
    seg_user = user[new_segment]  # (S,)
    choice = rng.integers(0, interests.shape[1], size=seg_user.shape[0])
    leaf = interests[seg_user, choice][seg]  # (N,)
    b2 = h.branching[2]
    sibling = rng.random(n) < p_sibling
    leaf[sibling] = (leaf[sibling] // b2) * b2 + rng.integers(0, b2, size=int(sibling.sum()))
    return leaf


def _item_in_leaf(rng, h: Hierarchy, leaf: np.ndarray, skew: float) -> np.ndarray:
    """(N,) item drawn Zipf-like inside each event's leaf cluster."""
    size = h.leaf_offsets[leaf + 1] - h.leaf_offsets[leaf]  # (N,) >= 1
    rank = np.minimum((size * rng.random(leaf.shape[0]) ** skew).astype(np.int64), size - 1)
    return h.leaf_items[h.leaf_offsets[leaf] + rank]


def _timestamps(rng, user: np.ndarray, starts: np.ndarray, n_users: int) -> np.ndarray:
    """(N,) int64 strictly increasing per user: a start time + cumulated gaps (mean ~1 h)."""
    gaps = 1 + rng.exponential(3600.0, size=user.shape[0]).astype(np.int64)
    run = np.cumsum(gaps)
    first = rng.integers(_T0, _T1, size=n_users)
    return (first[user] + run - run[starts][user]).astype(np.int64)


def _categories(h: Hierarchy) -> ItemCategories:
    b0, b1, _ = h.branching
    names = np.asarray([f"c{t}.{s}" for t in range(b0) for s in range(b1)], dtype=object)
    kept = names[h.sub]  # (I,) object
    return ItemCategories(kept, np.arange(h.sub.shape[0], dtype=np.int32), kept.copy())
