"""Catalogue scale (issue 23): per-sample cost bounded whatever the depth, sparse embedding
updates, windows kept as slices, sizes that cannot fit refused before allocating, evaluation
whose exhaustive reference is optional and can run on a sample of users."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_tdm import binary_tree

from grove.flows.cli import main
from grove.indexstore.errors import TooLargeError
from grove.indexstore.store import Store
from grove.models.deforec.training import level_negatives
from grove.models.memory import budget, parse_bytes
from grove.models.node_scorer import TDMScorer
from grove.models.optim import EmbeddingAdam
from grove.models.tree_training import negatives_per_level, spread_total


def _sizes(depth: int, arity: int = 2) -> np.ndarray:
    return np.array([arity**level for level in range(depth + 1)])


@pytest.mark.parametrize("depth", [14, 17, 20, 24, 30])
def test_tdm_negatives_total_is_bounded_at_any_depth_and_grows_towards_the_leaves(depth):
    n = negatives_per_level(_sizes(depth), 2.0, 1.3, total=200)
    assert n[0] == 0 and n.sum() == 200
    assert (n[1:] >= 1).all() and (np.diff(n[1:]) >= 0).all()  # more near the leaves
    assert (n[1:] <= _sizes(depth)[1:] - 1).all()


def test_tdm_negatives_below_the_cap_keep_the_geometric_schedule():
    """Shallow trees (the MovieLens corpora) keep ceil(2 * 1.3 ** (l - 1)) per level."""
    capped = negatives_per_level(_sizes(12), 2.0, 1.3, total=200)
    free = negatives_per_level(_sizes(12), 2.0, 1.3)
    np.testing.assert_array_equal(capped, free)
    assert free.sum() == 153


def test_spread_total_respects_room_and_weights():
    out = spread_total(10, np.array([1.0, 1.0, 100.0]), np.array([1, 3, 5]))
    assert out.tolist() == [1, 3, 5]  # the total exceeds the room: every level full
    out = spread_total(12, np.array([1.0, 2.0, 4.0, 8.0]), np.array([100, 100, 100, 100]))
    assert out.sum() == 12 and out.tolist() == sorted(out.tolist())


def test_deforec_negatives_are_m_per_level_up_to_the_total():
    assert level_negatives(_sizes(12), 40, 480).tolist() == [0, 1, 3, 7, 15, 31] + [40] * 7
    deep = level_negatives(_sizes(20), 40, 480)
    assert deep.sum() <= 480 and deep[-1] == deep[-5] < 40
    assert level_negatives(_sizes(20), 40, 0)[1:].sum() == 57 + 40 * 15  # 0: no cap


def test_a_training_step_updates_only_the_rows_it_read():
    """Sparse embedding updates: rows no batch looked up keep their weights bit for bit."""
    tree = binary_tree(32, 5)
    torch.manual_seed(0)
    scorer = TDMScorer(tree, dim=4, hidden=(8, 4))
    opt = EmbeddingAdam(scorer, lr=0.1)
    before = scorer.emb.weight.detach().clone()
    hist = torch.tensor([[3, 4, -1]])
    nodes = torch.tensor([[int(tree.item_leaf[5]), 1]])
    scorer(hist, nodes).sum().backward()
    assert scorer.emb.weight.grad.is_sparse
    opt.step()
    changed = (scorer.emb.weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    read = sorted({3, 4, 5} | set(scorer.node_rows(torch.tensor([1])).tolist()))
    assert changed == read


def test_memory_limit_parsing():
    assert parse_bytes("20GB") == 20 * 10**9 and parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1000") == 1000
    with pytest.raises(Exception, match="GROVE_MEMORY_LIMIT"):
        parse_bytes("lots")
    assert budget("cpu") > 10**9


@pytest.fixture(scope="module")
def url(make_synth_store) -> str:
    return make_synth_store("scale", n_items=300, n_users=400, seed=4)


def test_a_dim_that_cannot_fit_is_refused_before_anything_is_written(url, capsys):
    before = Store.open(url).list_versions()
    code = main(
        [
            "--store",
            url,
            "build",
            "--dataset",
            "synth",
            "huge-dim",
            "--method",
            "tdm",
            "--set",
            "dim=1000000000000",
            "--local",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "dim=1000000000000" in err[0] and "needs about" in err[0] and "PiB" in err[0]
    assert Store.open(url).list_versions() == before


def test_a_memory_limit_refuses_training_with_the_estimate(url, monkeypatch, capsys):
    assert (
        main(
            [
                "--store",
                url,
                "build",
                "--dataset",
                "synth",
                "small",
                "--method",
                "dr",
                "--set",
                "arity=8",
                "--set",
                "dim=8",
                "--local",
            ]
        )
        == 0
    )
    n = len(Store.open(url).list_versions())
    monkeypatch.setenv("GROVE_MEMORY_LIMIT", "100kB")
    assert main(["--store", url, "train", "small", "--local"]) == 2
    err = capsys.readouterr().err
    assert "dr train of 300 items" in err and "97.7 KiB" in err
    assert len(Store.open(url).list_versions()) == n


def test_memory_check_raises_too_large_error(monkeypatch):
    from grove.models.method import check_memory
    from grove.models.tdm.method import TDMConfig, TDMMethod

    monkeypatch.setenv("GROVE_MEMORY_LIMIT", "1MB")
    with pytest.raises(TooLargeError, match="tdm train of 1,000,000 items with arity=2, dim=24"):
        check_memory(TDMMethod(), TDMConfig(), 10**6, ("train",), "cpu")


def test_eval_without_and_with_a_sampled_exhaustive_reference(url, capsys):
    assert (
        main(
            [
                "--store",
                url,
                "build",
                "--dataset",
                "synth",
                "ev",
                "--method",
                "tdm",
                "--set",
                "dim=8",
                "--set",
                "hidden=[16,8]",
                "--set",
                "max_samples=600",
                "--local",
            ]
        )
        == 0
    )
    assert main(["--store", url, "train", "ev", "--local"]) == 0
    vid = Store.open(url).list_versions("ev")[-1].id
    assert (
        main(["--store", url, "eval", "ev", "--k", "10", "--beam", "10", "--users", "30", "--no-exhaustive", "--local"])
        == 0
    )
    rows = Store.open(url).metrics(vid)
    assert not any(r.beam is None or r.name == "fidelity" for r in rows)
    assert (
        main(
            [
                "--store",
                url,
                "eval",
                "ev",
                "--k",
                "10",
                "--beam",
                "10",
                "--users",
                "30",
                "--exhaustive",
                "--exhaustive-users",
                "12",
                "--local",
            ]
        )
        == 0
    )
    rows = Store.open(url).metrics(vid)
    exhaustive = [r for r in rows if r.beam is None]
    assert exhaustive and all(r.note == "12 users" for r in exhaustive)
    assert [r.name for r in rows if r.name == "fidelity"] == ["fidelity"]
    assert main(["--store", url, "eval", "ev", "--exhaustive-users", "0", "--local"]) == 2
