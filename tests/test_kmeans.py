"""Balanced k-means: exact cluster sizes, determinism, batched sets, clustering quality, misuse."""

import numpy as np
import pytest
import torch

from grove.indexstore.errors import GroveError
from grove.models.kmeans import balanced_kmeans, balanced_kmeans_batched, equal_caps


@pytest.mark.parametrize("n,k", [(120, 4), (121, 4), (97, 7), (50, 2), (18, 18), (1000, 18)])
def test_sizes_differ_by_at_most_one(n, k):
    x = np.random.default_rng(n).standard_normal((n, 5)).astype(np.float32)
    labels = balanced_kmeans(x, k, iters=5, seed=0)
    sizes = np.bincount(labels, minlength=k)
    assert labels.shape == (n,) and labels.min() >= 0 and labels.max() < k
    assert sizes.max() - sizes.min() <= 1
    if n % k == 0:
        assert (sizes == n // k).all()


def test_same_seed_same_labels_and_torch_input():
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    a = balanced_kmeans(x, 6, seed=3)
    b = balanced_kmeans(x, 6, seed=3)
    t = balanced_kmeans(torch.from_numpy(x), 6, seed=3)
    assert np.array_equal(a, b)
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), a)


def test_recovers_planted_equal_clusters():
    # 4 well separated blobs of 50 points each: balanced k-means must find them exactly
    rng = np.random.default_rng(1)
    centres = np.eye(4, 6, dtype=np.float32) * 20
    truth = np.repeat(np.arange(4), 50)
    x = centres[truth] + rng.standard_normal((200, 6)).astype(np.float32) * 0.3
    perm = rng.permutation(200)
    labels = balanced_kmeans(x[perm], 4, iters=20, seed=0)
    # every found cluster is one planted blob
    for c in range(4):
        assert len(set(truth[perm][labels == c])) == 1


def test_binary_split_by_margin_is_spatially_coherent():
    # 1-d points: a balanced 2-split must cut the sorted line in the middle
    x = np.linspace(-1, 1, 101, dtype=np.float32)[:, None]
    labels = balanced_kmeans(x, 2, iters=20, seed=0)
    left = labels[0]
    assert (labels[:51] == left).all() and (labels[51:] != left).all()


def test_batched_sets_with_padding_and_uneven_caps():
    torch.manual_seed(0)
    sizes = torch.tensor([10, 7, 3])
    caps = equal_caps(sizes, torch.tensor([3, 2, 3]), 3)
    assert caps.tolist() == [[4, 3, 3], [4, 3, 0], [1, 1, 1]]
    x = torch.randn(3, 10, 4)
    gen = torch.Generator().manual_seed(0)
    labels = balanced_kmeans_batched(x, sizes, caps, iters=5, generator=gen)
    for c in range(3):
        got = torch.bincount(labels[c, : sizes[c]], minlength=3)
        assert got.tolist() == caps[c].tolist()
        assert (labels[c, sizes[c] :] == -1).all()


def test_misuse_raises():
    x = np.zeros((5, 2), np.float32)
    with pytest.raises(GroveError):
        balanced_kmeans(x, 6)
    with pytest.raises(GroveError):
        balanced_kmeans(x, 0)
    with pytest.raises(GroveError):
        balanced_kmeans(np.zeros(5, np.float32), 2)
