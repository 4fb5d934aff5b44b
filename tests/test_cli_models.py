"""`grove build/train/relearn/eval/cycle/retrieve` (in-process, --local) on a real store, and the
bad inputs of the TDM/JTM issue: clear one-line errors, exit 2, nothing written."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from grove.flows.cli import main
from grove.flows.cli.common import parse_settings
from grove.indexstore.errors import GroveError
from grove.indexstore.store import Store
from grove.models.retriever import Retriever


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def url(make_synth_store, request) -> str:
    return make_synth_store("cli", n_items=300, n_users=400, seed=2, backend=request.param)


def grove(url, *args) -> int:
    return main(["--store", url, *args])


def n_versions(url) -> int:
    return len(Store.open(url).list_versions())


def test_parse_settings_merges_json_and_set():
    assert parse_settings('{"epochs": 2, "arity": 4}', ["arity=8", "device=cpu", "hidden=[32,16]"]) == {
        "epochs": 2,
        "arity": 8,
        "device": "cpu",
        "hidden": [32, 16],
    }
    with pytest.raises(GroveError, match="--set expects key=value"):
        parse_settings(None, ["epochs"])
    with pytest.raises(GroveError, match="not valid JSON"):
        parse_settings("{epochs", None)


def test_build_train_relearn_eval_retrieve(url, capsys):
    assert (
        grove(
            url,
            "build",
            "--dataset",
            "synth",
            "cli-tdm",
            "--method",
            "tdm",
            "--set",
            "epochs=1",
            "--set",
            "dim=8",
            "--set",
            "hidden=[16,8]",
            "--set",
            "max_samples=1500",
            "--set",
            "neg_base=1.0",
            "--local",
        )
        == 0
    )
    assert grove(url, "train", "cli-tdm", "--local") == 0
    assert grove(url, "eval", "cli-tdm", "--k", "10", "--beam", "20", "--users", "20", "--local") == 0
    assert "recall" in capsys.readouterr().out
    assert grove(url, "relearn", "cli-tdm", "--local") == 0
    assert grove(url, "train", "cli-tdm", "--local") == 0
    store = Store.open(url)
    versions = store.list_versions("cli-tdm")
    assert [v.note for v in versions] == ["construct", "train round 0", "relearn round 1", "train round 1"]
    capsys.readouterr()
    raw = store.item_raw_ids("synth")
    history = ",".join(raw[:5])
    assert grove(url, "retrieve", "cli-tdm", "--history", history, "--k", "7", "--beam", "20", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["items"]) == 7 and out["version"] == versions[-1].id
    assert out["scores"] == sorted(out["scores"], reverse=True)


def test_retrieval_round_trip_through_store_is_identical(url):
    """Loading the same version twice (store round trip) gives identical output."""
    store = Store.open(url)
    vid = store.list_versions("cli-tdm")[-1].id
    histories = [[1, 2, 3], [10, 11], [], [5] * 80]
    a = Retriever.load(store, "cli-tdm", version=vid, device="cpu").retrieve(histories, 10, 20)
    b = Retriever.load(store, "cli-tdm", version=vid, device="cpu").retrieve(histories, 10, 20)
    assert np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0])
    assert a[1].shape == (4, 10)  # the empty history is answered from the prior too
    seen = Retriever.load(store, "cli-tdm", version=vid, device="cpu").retrieve(histories, 10, 20, exclude_seen=True)
    assert not np.isin(seen[1][0], [1, 2, 3]).any()


def test_cycle_local(url):
    assert (
        grove(
            url,
            "cycle",
            "--dataset",
            "synth",
            "cli-cf",
            "--method",
            "itemcf",
            "--rounds",
            "2",
            "--k",
            "10",
            "--users",
            "20",
            "--local",
        )
        == 0
    )
    assert [v.note for v in Store.open(url).list_versions("cli-cf")] == ["construct", "train round 0"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["build", "--dataset", "synth", "x", "--method", "nope", "--local"], "unknown method 'nope'"),
        (
            ["build", "--dataset", "synth", "x", "--method", "tdm", "--set", "colour=1", "--local"],
            "unknown config field 'colour'",
        ),
        (["build", "--dataset", "nosuch", "x", "--method", "tdm", "--local"], "nosuch"),
        (["train", "no-such-index", "--local"], "no-such-index"),
        (["retrieve", "cli-tdm", "--history", "1,2", "--k", "0"], "argument --k: expected positive integers"),
        (["retrieve", "cli-tdm", "--history", "1,2", "--beam", "-3"], "argument --beam: expected positive integers"),
        (["retrieve", "cli-tdm", "--history", "1,2", "--k", "5,10"], "argument --k: this command takes one value"),
        (["retrieve", "cli-tdm", "--version", "1", "--history", "1,2"], "never trained"),
    ],
)
def test_bad_inputs_exit_2_and_write_nothing(url, capsys, args, message):
    before = n_versions(url)
    assert grove(url, *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert n_versions(url) == before


def test_unknown_history_ids_are_ignored_with_a_warning(url, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert grove(url, "retrieve", "cli-tdm", "--history", "zzz,1,yyy", "--k", "3", "--beam", "10") == 0
    assert not [w for w in caught if "unknown item id" in str(w.message)]  # the CLI's one line only
    captured = capsys.readouterr()
    assert captured.err.count("unknown item id") == 1 and "warning: 2 unknown item id(s) ignored" in captured.err
    lines = [line for line in captured.out.splitlines() if line.strip()]
    assert lines[1].split() == ["rank", "item", "score"] and len(lines) == 3 + 3  # title, header, rule, 3 rows
