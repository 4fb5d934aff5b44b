"""The CUDA path of every method: trained on the GPU, searched on the GPU, the same answers as
the same index searched on the CPU (skipped without CUDA; run on a GPU machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grove.indexstore.store import Store
from grove.models.lifecycle import split_data
from grove.models.method import config_from_dict
from grove.models.registry import get_method
from grove.models.retriever import Retriever

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TINY = {
    "tdm": {"epochs": 1, "dim": 8, "hidden": [16, 8], "max_samples": 3000, "device": "cuda"},
    "jtm": {"epochs": 1, "dim": 8, "hidden": [16, 8], "max_samples": 3000, "tree_samples": 3000, "device": "cuda"},
    "deforec": {"epochs": 1, "dim": 8, "negatives": 5, "max_samples": 3000, "tree_samples": 3000, "device": "cuda"},
    "recforest": {"arity": 8, "trees": 2, "hidden": 32, "ff": 64, "epochs": 1, "embeddings": "svd", "device": "cuda"},
    "dr": {
        "arity": 8,
        "depth": 2,
        "n_paths": 2,
        "dim": 16,
        "hidden": 32,
        "epochs": 2,
        "joint_epochs": 1,
        "device": "cuda",
    },
    "two_tower": {"epochs": 1, "dim": 8, "hidden": [16], "device": "cuda"},
    "itemcf": {"device": "cuda"},
}


@pytest.fixture(scope="module")
def url(make_synth_store) -> str:
    return make_synth_store("cuda", n_items=400, n_users=500, seed=3)


@pytest.mark.parametrize("name", sorted(TINY))
def test_trains_and_searches_on_cuda_like_on_cpu(url, name):
    store = Store.open(url)
    method = get_method(name)
    config = config_from_dict(method.config_cls, TINY[name])
    data = split_data(store, "synth", "default", config)
    built = method.train(config, method.construct(config, data, 0), data, 0)
    hist = torch.as_tensor(data.valid.histories[:64]).long()
    gpu = method.searcher(config, built, "cuda")
    cpu = method.searcher(config, built, "cpu")
    assert gpu.device.type == "cuda"
    s_gpu, i_gpu = gpu.search(hist.cuda(), 10, 20)
    s_cpu, i_cpu = cpu.search(hist, 10, 20)
    assert i_gpu.device.type == "cuda" and i_gpu.shape == (hist.shape[0], 10) == i_cpu.shape
    # float sums differ in the last bits between devices; near-ties may swap, rarely more
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i_gpu.cpu().tolist(), i_cpu.tolist())])
    assert overlap >= 0.95, overlap
    torch.testing.assert_close(s_gpu.cpu().sort(1).values, s_cpu.sort(1).values, atol=1e-3, rtol=1e-3)


def test_retriever_loads_onto_cuda(url, store_trained):
    store = Store.open(url)
    method = get_method("tdm")
    config = config_from_dict(method.config_cls, TINY["tdm"])
    data = split_data(store, "synth", "default", config)
    built = method.train(config, method.construct(config, data, 0), data, 0)
    version = store_trained(url, "cuda-tdm", "tdm", config, built)
    r = Retriever.load(store, "cuda-tdm", version=version, device="cuda")
    assert r.device.type == "cuda"
    scores, items = r.retrieve([[1, 2, 3], [], [5]], k=7, beam=20)
    assert items.shape == (3, 7) and (items[:, 0] >= 0).all()


def test_tdm_scorer_cuda_chunks_are_large_and_do_not_change_logits():
    from grove.models.node_scorer import TDMScorer, cuda_chunk_elements
    from grove.models.tree_builders import category_tree

    dev = torch.device("cuda")
    me = cuda_chunk_elements(dev)
    total = torch.cuda.get_device_properties(dev).total_memory
    assert 1 << 20 <= me <= min(1 << 28, max(1 << 20, total // 256))
    tree = category_tree(np.random.default_rng(0).integers(0, 20, 2000), 2, seed=0)
    torch.manual_seed(0)
    s = TDMScorer(tree, dim=8).to(dev).eval()
    gen = np.random.default_rng(1)
    hist = torch.as_tensor(gen.integers(-1, 2000, (300, 69)), device=dev)
    nodes = torch.as_tensor(gen.integers(0, len(tree.level), (300, 40)), device=dev)
    with torch.inference_mode():
        whole = s.score(hist, nodes)  # the default: one piece at this size
        torch.testing.assert_close(whole, s(hist, nodes))
        torch.testing.assert_close(s.score(hist, nodes, max_elements=1), whole, atol=1e-5, rtol=1e-5)
