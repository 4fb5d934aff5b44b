"""The benchmark scripts time medians of >= 5 runs after a warm-up by default (issue 7's rule),
and refuse run counts below 1 with a message naming the flag."""
import argparse

import pytest

from benchmarks import gpu, scale, store_roundtrip, tree_build


class _Parsed(Exception):
    def __init__(self, args):
        super().__init__("parsed")
        self.args_ = args


def _default_args(module, monkeypatch) -> argparse.Namespace:
    """The namespace ``module.main([])`` parses (its defaults), stopping right after parsing."""
    parse = argparse.ArgumentParser.parse_args

    def stop_after(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after)
    with pytest.raises(_Parsed) as exc:
        module.main([])
    monkeypatch.undo()
    return exc.value.args_


def test_scale_plan_times_every_step_at_least_five_times_at_every_size(monkeypatch):
    args = _default_args(scale, monkeypatch)
    specs = scale.plan(args)
    timed = [s for s in specs if s["task"] in ("kmeans", "jtm", "mstep", "store")]
    assert {s["task"] for s in timed} == {"kmeans", "jtm", "mstep", "store"}
    assert {s["n"] for s in timed} == {10_000, 100_000, 1_000_000}
    assert all(s["runs"] >= 5 for s in timed), [s for s in timed if s["runs"] < 5]
    search = [s for s in specs if s["task"] == "search"]
    assert len(search) == 3 and all(s["exhaustive_users"] >= 5 and s["batch_runs"] >= 5 for s in search)
    assert [s for s in specs if s["task"] == "growth"][0]["runs"] >= 5


def test_store_roundtrip_and_tree_build_default_to_five_runs(monkeypatch):
    assert _default_args(store_roundtrip, monkeypatch).runs >= 5
    builds = _default_args(tree_build, monkeypatch)
    assert builds.repeats >= 5 and builds.repeats_large >= 5


@pytest.mark.parametrize("module, argv, flag", [
    (scale, ["--repeats", "0"], "--repeats"),
    (scale, ["--exhaustive-users", "-1"], "--exhaustive-users"),
    (scale, ["--sizes", "10"], "--sizes"),
    (store_roundtrip, ["--runs", "0"], "--runs"),
    (tree_build, ["--repeats-large", "0"], "--repeats-large"),
    (store_roundtrip, ["--items", "10"], "--items"),
    (gpu, ["--cpu-batch", "0"], "--cpu-batch"),
])
def test_run_counts_below_one_are_refused_naming_the_flag(module, argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        module.main(argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
