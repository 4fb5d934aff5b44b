"""The benchmark scripts time medians of >= 5 runs after a warm-up by default (issue 7's rule),
and refuse run counts below 1 with a message naming the flag; the GPU profile's chunk sweep keeps
the top-k."""

import argparse
import json

import pytest

from benchmarks import curves, gpu, gpu_profile, precision, quality, relearn_chunks, scale, store_roundtrip, tree_build


class _Parsed(Exception):
    def __init__(self, args):
        super().__init__("parsed")
        self.args_ = args


def _default_args(module, monkeypatch, argv=()) -> argparse.Namespace:
    """The namespace ``module.main(argv)`` parses (its defaults), stopping right after parsing."""
    parse = argparse.ArgumentParser.parse_args

    def stop_after(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after)
    with pytest.raises(_Parsed) as exc:
        module.main(list(argv))
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
    assert _default_args(relearn_chunks, monkeypatch).runs >= 5
    builds = _default_args(tree_build, monkeypatch)
    assert builds.repeats >= 5 and builds.repeats_large >= 5


@pytest.mark.parametrize(
    "module, argv, flag",
    [
        (scale, ["--repeats", "0"], "--repeats"),
        (scale, ["--exhaustive-users", "-1"], "--exhaustive-users"),
        (scale, ["--sizes", "10"], "--sizes"),
        (store_roundtrip, ["--runs", "0"], "--runs"),
        (tree_build, ["--repeats-large", "0"], "--repeats-large"),
        (store_roundtrip, ["--items", "10"], "--items"),
        (gpu, ["--cpu-batch", "0"], "--cpu-batch"),
        (gpu_profile, ["--repeats", "0"], "--repeats"),
        (relearn_chunks, ["--runs", "0"], "--runs"),
    ],
)
def test_run_counts_below_one_are_refused_naming_the_flag(module, argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        module.main(argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_gpu_profile_chunk_sweep_returns_the_same_items_at_every_chunk_size(tmp_path):
    # a tiny run on whatever device is present; chunking a level's users must not change the top-k
    res = gpu_profile.main(
        [
            "--items",
            "3000",
            "--batch",
            "16",
            "--batches",
            "16",
            "--repeats",
            "1",
            "--trees",
            "1",
            "--beam",
            "8",
            "--k",
            "10",
            "--max-elements",
            "1",
            "65536",
            "--rows",
            "3",
            "--out-dir",
            str(tmp_path),
        ]
    )
    sizes = [r["max_elements"] for r in res["tdm_chunks"]]
    assert res["default_max_elements"] in sizes and 1 in sizes
    assert all(r["overlap_with_default"] == 1.0 for r in res["tdm_chunks"]), res["tdm_chunks"]
    assert {r["index"] for r in res["batches"]} == {"tdm", "recforest"}
    assert set(res["profiles"]) == {"tdm", "recforest"} and all(res["profiles"].values())
    saved = json.loads((tmp_path / "gpu_profile.json").read_text())
    assert saved["tdm_chunks"] == res["tdm_chunks"]
    assert "## TDM scorer chunk" in (tmp_path / "gpu_profile.md").read_text()


def test_relearn_chunks_gives_the_same_tree_at_every_chunk_size(tmp_path):
    # JTM's and DeFoRec's relearning score pairs in chunks; the chunk must not change the tree
    res = relearn_chunks.main(
        [
            "--items",
            "600",
            "--pairs",
            "60",
            "--runs",
            "1",
            "--sizes",
            "0",
            "1",
            str(1 << 24),
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert {r["relearner"] for r in res["rows"]} == {"jtm", "deforec"}
    assert sum(r["is_default"] for r in res["rows"]) == 2 and len(res["rows"]) == 6
    assert all(r["same_tree"] for r in res["rows"]), res["rows"]
    assert (tmp_path / "relearn_chunks_cpu.md").read_text().count("| yes |") == 6


@pytest.mark.parametrize("module", [curves, quality])
def test_repeated_set_options_add_up(module, monkeypatch):
    argv = ["--set", "tdm.epochs=1", "--set", "dr.max_samples=10", "jtm.gap=3"]
    assert _default_args(module, monkeypatch, argv).set == ["tdm.epochs=1", "dr.max_samples=10", "jtm.gap=3"]


def test_gpu_and_precision_benchmarks_time_five_runs_and_every_precision(monkeypatch):
    args = _default_args(gpu, monkeypatch)
    assert args.repeats >= 5 and args.precisions == ["fp32", "bf16", "fp16"] and args.cpu_precisions == ["fp32"]
    assert set(args.indexes) == {"tdm", "recforest", "dr"}
    args = _default_args(precision, monkeypatch, ["a.duckdb"])
    assert args.repeats >= 5 and args.precisions[0] == "fp32"


def test_recforest_reference_agrees_with_grove_and_times_both(tmp_path):
    from benchmarks import recforest_reference

    res = recforest_reference.main(
        ["--items", "400", "--cases", "2:5", "--users", "2", "--rounds", "2", "--out-dir", str(tmp_path)]
    )
    (row,) = res["rows"]
    assert row["top_k_overlap"] == 1.0 and len(row["ratios"]) == 2
    assert row["ms_per_user"]["reference"] > 0 and row["ms_per_user"]["grove"] > 0
    assert "| 2 | 5 |" in (tmp_path / "recforest_reference.md").read_text()


@pytest.mark.dataset
def test_variants_runs_each_variant_once_and_keeps_runs_already_measured(tmp_path, shared_datasets, capsys):
    """benchmarks.variants: a run per (method, fields, seed), written after each; a second call
    finds them in the results and runs nothing again."""
    from benchmarks import variants

    out = tmp_path / "variants"
    variants.main(["--quick", "--points", "tdm_network", "--seeds", "0", "--out", str(out)])
    first = json.loads((out.parent / "variants.json").read_text())
    assert [(r["fields"], r["seed"]) for r in first["runs"]] == [
        ({"network": "attention"}, 0),
        ({"network": "average"}, 0),
    ]
    assert "| tdm_network | average |" in (out.parent / "variants.md").read_text()
    capsys.readouterr()
    variants.main(["--quick", "--points", "tdm_network", "--seeds", "0", "--out", str(out)])
    assert "seed" not in capsys.readouterr().out
    assert json.loads((out.parent / "variants.json").read_text())["runs"] == first["runs"]
