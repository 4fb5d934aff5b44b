"""Reduced-precision and compiled search (grove.models.precision, TreeSearcher.compile): every
method searches in bf16 and fp16 with float32 results close to fp32's, switching back gives the
fp32 answers exactly, a compiled tree search gives the eager one's items, and an unknown
precision is refused everywhere a user can name one. On CUDA too when a GPU is present."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grove.indexstore.errors import GroveError
from grove.indexstore.store import Store
from grove.models import lifecycle
from grove.models.lifecycle import split_data
from grove.models.method import config_from_dict
from grove.models.registry import get_method
from grove.models.retriever import Retriever

TINY = {
    "tdm": {"epochs": 1, "dim": 8, "hidden": [16, 8], "max_samples": 1000},
    "jtm": {"epochs": 1, "dim": 8, "hidden": [16, 8], "max_samples": 1000, "tree_samples": 1000},
    "deforec": {"epochs": 1, "dim": 8, "negatives": 5, "max_samples": 1000, "tree_samples": 1000},
    "recforest": {"arity": 8, "trees": 2, "hidden": 32, "ff": 64, "epochs": 1, "embeddings": "svd"},
    "dr": {"arity": 8, "depth": 2, "n_paths": 2, "dim": 16, "hidden": 32, "epochs": 2, "joint_epochs": 1},
    "two_tower": {"epochs": 1, "dim": 8, "hidden": [16]},
    "itemcf": {},
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
K, BEAM = 10, 20


@pytest.fixture(scope="module")
def url(make_synth_store) -> str:
    return make_synth_store("precision", n_items=400, n_users=500, seed=3)


@pytest.fixture(scope="module")
def trained(url):
    """method -> (config, Built, held-out histories (64, 69)), trained once on the CPU."""
    store = Store.open(url)
    out = {}
    for name, values in TINY.items():
        method = get_method(name)
        config = config_from_dict(method.config_cls, values)
        data = split_data(store, "synth", "default", config)
        built = method.train(config, method.construct(config, data, 0), data, 0)
        out[name] = (config, built, torch.as_tensor(data.valid.histories[:64]).long())
    return out


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a.tolist(), b.tolist())]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(TINY))
def test_every_method_searches_in_reduced_precision_close_to_fp32(trained, name, device):
    config, built, hist = trained[name]
    method = get_method(name)
    searcher = method.searcher(config, built, device)
    hist = hist.to(device)
    s32, i32 = searcher.search(hist, K, BEAM)
    for precision in ("bf16", "fp16"):
        searcher.set_precision(precision)
        assert searcher.precision == precision
        s, i = searcher.search(hist, K, BEAM)
        assert s.dtype == torch.float32 and i.dtype == torch.int64 and i.shape == i32.shape
        # a few significant digits less: near-ties may swap, the lists stay nearly the same
        assert overlap(i32, i) >= 0.8, (precision, overlap(i32, i))
        # an item both lists hold has nearly the same score (a list may swap its tail items)
        same = (i[:, :, None] == i32[:, None, :]) & (i[:, :, None] >= 0)  # (B, K, K)
        row, at, at32 = same.nonzero(as_tuple=True)
        finite = torch.isfinite(s32[row, at32])
        torch.testing.assert_close(s[row, at][finite], s32[row, at32][finite], atol=0.1, rtol=0.05)
    searcher.set_precision("fp32")
    s_back, i_back = searcher.search(hist, K, BEAM)
    if device == "cpu":
        assert torch.equal(i_back, i32) and torch.equal(s_back, s32)
    else:  # CUDA's sparse products (Item-CF) add in any order: equal up to the last bits
        torch.testing.assert_close(s_back, s32)
        assert overlap(i_back, i32) >= 0.99


def test_tree_scorer_in_reduced_precision_keeps_its_mlp_and_logits_float32(trained):
    config, built, hist = trained["tdm"]
    searcher = get_method("tdm").searcher(config, built, "cpu")
    base = searcher.scorer
    searcher.set_precision("bf16")
    scorer = searcher.scorer
    assert scorer is not base and base.emb.weight.dtype == torch.float32  # the fp32 scorer is kept
    assert scorer.emb.weight.dtype == scorer.act_in.weight.dtype == scorer.windows.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in scorer.mlp.parameters())
    nodes = torch.arange(1, 9).expand(hist.shape[0], -1)
    with torch.no_grad():
        logits = scorer(hist, nodes)
        exact = base(hist, nodes)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, exact, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_tree_search_returns_the_eager_items(trained, device):
    config, built, hist = trained["tdm"]
    searcher = get_method("tdm").searcher(config, built, device)
    hist = hist.to(device)
    eager_s, eager_i = searcher.search(hist, K, BEAM)
    searcher.compile()  # each level's scoring
    for rows in (hist, hist[:7]):  # one graph for every batch size and level width (dynamic shapes)
        s, i = searcher.search(rows, K, BEAM)
        assert overlap(eager_i[: rows.shape[0]], i) >= 0.99
        torch.testing.assert_close(s, eager_s[: rows.shape[0]], atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # compiling the whole level loop takes ~1 minute on two cores
@pytest.mark.parametrize("device", DEVICES)
def test_whole_search_compiled_returns_the_eager_items(trained, device):
    config, built, hist = trained["tdm"]
    searcher = get_method("tdm").searcher(config, built, device)
    hist = hist[:5].to(device)
    eager_s, eager_i = searcher.search(hist, K, BEAM)
    searcher.compile(whole_search=True)
    first = searcher.search(hist, K, BEAM)
    again = searcher.search(hist, K, BEAM)  # a CUDA graph replay: the first answer must survive it
    for s, i in (first, again):
        assert overlap(eager_i, i) >= 0.99
        torch.testing.assert_close(s, eager_s, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(first[0], again[0])


def test_only_tree_searchers_compile(trained):
    config, built, _ = trained["dr"]
    with pytest.raises(GroveError, match="no compiled search"):
        get_method("dr").searcher(config, built, "cpu").compile()


@pytest.fixture(scope="module")
def tdm_version(trained, url, store_trained) -> int:
    """The tiny TDM index stored as version of the index 'prec-tdm'."""
    config, built, _ = trained["tdm"]
    return store_trained(url, "prec-tdm", "tdm", config, built)


def test_an_unknown_precision_is_refused_naming_the_choices(trained, url, tdm_version):
    config, built, _ = trained["recforest"]
    searcher = get_method("recforest").searcher(config, built, "cpu")
    with pytest.raises(GroveError, match="unknown precision 'fp8': use one of fp32, bf16, fp16"):
        searcher.set_precision("fp8")
    assert searcher.precision == "fp32"
    store = Store.open(url)
    info = store.version(tdm_version)
    with pytest.raises(GroveError, match="unknown precision"):
        Retriever.load(store, "prec-tdm", version=info.id, device="cpu", precision="half")
    with pytest.raises(GroveError, match="unknown precision"):
        lifecycle.searcher(lifecycle.load(store, info.id), "cpu", precision="int8")
    with pytest.raises(GroveError, match="unknown compile mode 'fast': use level or search"):
        Retriever.load(store, "prec-tdm", version=info.id, device="cpu", compile="fast")
    r = Retriever.load(store, "prec-tdm", version=info.id, device="cpu", precision="bf16")
    assert r.searcher.precision == "bf16"
    scores, items = r.retrieve([[1, 2, 3], [5]], k=5, beam=20)
    assert scores.dtype == np.float32 and items.shape == (2, 5)


def test_cli_retrieve_takes_a_precision_and_refuses_an_unknown_one(url, tdm_version, capsys):
    from grove.flows.cli import main

    args = ["retrieve", "prec-tdm", "--store", url, "--history", "1,2,3", "--k", "5", "--json"]
    assert main([*args, "--precision", "bf16"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 5
    assert main([*args, "--precision", "fp8"]) == 2
    assert "unknown precision 'fp8': use one of fp32, bf16, fp16" in capsys.readouterr().err


def test_service_config_refuses_an_unknown_precision():
    from grove.flows.service import ServiceConfig

    with pytest.raises(GroveError, match="unknown precision"):
        ServiceConfig(precision="fp64")
    with pytest.raises(GroveError, match="unknown compile mode"):
        ServiceConfig(compile="yes")
    assert ServiceConfig(precision="bf16").precision == "bf16"
    assert ServiceConfig().precision is None  # the device's default (what `grove serve` passes without --precision)
