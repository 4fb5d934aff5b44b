"""benchmarks.quality --merge (seeds run apart join into one table; runs that differ are refused), --combine
(runs of other methods or budgets make one table) and the per-item training signal it records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import quality


def _result(seeds, recall, configs=None, beams=(20, 50, 100)):
    rows = [
        {"model": "Item-CF", "method": "itemcf", "seed": s, "recall@10/exact": r, "precision@10/exact": r / 2}
        for s, r in zip(seeds, recall)
    ]
    return {
        "dataset": "ml-1m-subset",
        "dataset_label": "ML-1M subset",
        "command": f"run {seeds}",
        "quick": False,
        "machine": {"gpu": None, "cpu_count": 2, "cpu_model": "x", "torch": "2"},
        "complete": True,
        "settings": {
            "overrides": [],
            "tag": "",
            "seeds": seeds,
            "seeds_done": seeds,
            "beams": list(beams),
            "ks": [10, 20, 50],
            "test_users": "all",
            "methods": ["itemcf"],
            "device": "cpu",
            "cpu_threads": 2,
            "speed_repeats": 3,
        },
        "configs": configs or {"itemcf": {"neighbours": 100}},
        "lifecycle": {},
        "data": {"train_windows": 10, "test_users": 3, "n_items": 5},
        "per_seed_data": [{"seed": s} for s in seeds],
        "seconds": {"per_seed": {str(s): {"total": 1.0} for s in seeds}},
        "errors": [],
        "aggregate": quality.aggregate(rows),
        "rows": rows,
    }


def _write(tmp_path, name, result):
    path = tmp_path / name
    path.write_text(json.dumps(result))
    return path


def test_merge_joins_seeds_and_recomputes_mean_and_std(tmp_path):
    a = _write(tmp_path, "a.json", _result([0, 1], [0.10, 0.20]))
    b = _write(tmp_path, "b.json", _result([2], [0.30]))
    out = quality.main(["--merge", str(a), str(b), "--tag", "merged", "--out-dir", str(tmp_path)])["ml-1m-subset"]
    agg = out["aggregate"][0]["recall@10/exact"]
    assert out["settings"]["seeds_done"] == [0, 1, 2] and agg["n"] == 3 and out["complete"]
    assert agg["mean"] == pytest.approx(0.20) and agg["std"] == pytest.approx(0.10)
    assert (tmp_path / "quality_ml-1m-subset_merged.md").read_text().count("20.00 ± 10.00") == 1
    assert json.loads((tmp_path / "quality_ml-1m-subset_merged.json").read_text())["merged_from"] == [str(a), str(b)]


def test_merge_of_a_run_cut_short_is_complete_only_when_its_seeds_are_done(tmp_path):
    cut = _result([0, 1], [0.1, 0.2])
    cut["settings"]["seeds"], cut["complete"] = [0, 1, 2], False  # asked for 0 1 2, stopped after 0 1
    a = _write(tmp_path, "a.json", cut)
    b = _write(tmp_path, "b.json", _result([2], [0.3]))
    c = _write(tmp_path, "c.json", _result([3], [0.3]))
    assert quality.merge_results([a, b])["complete"]
    assert not quality.merge_results([a, c])["complete"]


@pytest.mark.parametrize(
    "other, what",
    [
        (_result([0], [0.3]), "seed comes twice"),
        (_result([2], [0.3], configs={"itemcf": {"neighbours": 50}}), "configs differs"),
        (_result([2], [0.3], beams=(50,)), "settings.beams"),
    ],
)
def test_merge_refuses_runs_that_differ(tmp_path, capsys, other, what):
    a = _write(tmp_path, "a.json", _result([0, 1], [0.1, 0.2]))
    b = _write(tmp_path, "b.json", other)
    with pytest.raises(SystemExit) as exc:
        quality.main(["--merge", str(a), str(b), "--tag", "m", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2 and what in capsys.readouterr().err
    assert not (tmp_path / "quality_ml-1m-subset_m.json").exists()


def _run(seeds, method, model, recall, overrides=(), lifecycle=None, configs=None, train_windows=10):
    r = _result(seeds, recall, configs=configs or {method: {"epochs": 4}})
    for row in r["rows"]:
        row["model"], row["method"] = model, method
    r["settings"]["methods"], r["settings"]["overrides"] = [method], list(overrides)
    r["lifecycle"] = lifecycle or {"jtm_relearns": 2}
    r["per_seed_data"] = [{"seed": s, "train_windows": train_windows, "test_users": 3, "n_items": 5} for s in seeds]
    r["aggregate"] = quality.aggregate(r["rows"])
    return r


def _with_baseline(run, recall):
    """The run also measured Item-CF on its seeds (as every quality run does)."""
    extra = [
        {"model": "Item-CF", "method": "itemcf", "seed": s, "recall@10/exact": v, "precision@10/exact": v / 2}
        for s, v in zip(run["settings"]["seeds_done"], recall)
    ]
    run["rows"] += extra
    run["configs"]["itemcf"] = {"neighbours": 100}
    run["aggregate"] = quality.aggregate(run["rows"])
    return run


def test_combine_makes_one_table_of_methods_and_budgets_run_apart(tmp_path):
    dr = _write(tmp_path, "dr.json", _with_baseline(_run([0, 1, 2], "dr", "DR J=1", [0.2, 0.3, 0.4]), [0.1, 0.2, 0.3]))
    tdm_small = _write(
        tmp_path,
        "t12k.json",
        _with_baseline(
            _run(
                [0],
                "tdm",
                "TDM initial tree",
                [0.05],
                overrides=["tdm.max_samples=12000"],
                configs={"tdm": {"max_samples": 12000}},
            ),
            [0.1],
        ),
    )
    tdm_big = _write(
        tmp_path,
        "t60k.json",
        _run(
            [0, 1],
            "tdm",
            "TDM initial tree",
            [0.07, 0.09],
            overrides=["tdm.max_samples=60000"],
            configs={"tdm": {"max_samples": 60000}},
        ),
    )
    out = quality.main(
        ["--combine", str(dr), str(tdm_small), str(tdm_big), "--tag", "all", "--out-dir", str(tmp_path)]
    )["ml-1m-subset"]
    by_model = {a["model"]: a for a in out["aggregate"]}
    # one label under two configs is told apart by the overrides; the baseline repeated on seed 0 is kept once
    assert set(by_model) == {
        "DR J=1",
        "Item-CF",
        "TDM initial tree [max_samples=12000]",
        "TDM initial tree [max_samples=60000]",
    }
    assert by_model["Item-CF"]["seeds"] == [0, 1, 2] and by_model["Item-CF"]["recall@10/exact"]["n"] == 3
    assert by_model["TDM initial tree [max_samples=60000]"]["recall@10/exact"]["mean"] == pytest.approx(0.08)
    assert out["repeats"] == [
        {"model": "Item-CF", "seed": 0, "file": str(tdm_small), "abs_diff": {"recall@10/exact": 0.0}}
    ]
    md = (tmp_path / "quality_ml-1m-subset_all.md").read_text()
    assert "| TDM initial tree [max_samples=60000] | 0,1 | " in md and "`t60k.json`: tdm, seeds [0, 1]" in md


@pytest.mark.parametrize(
    "change, what",
    [
        (lambda r: r["settings"].update(beams=[50]), "settings.beams"),
        (lambda r: r.update(dataset="ml-latest-small"), "dataset"),
        (lambda r: r["per_seed_data"][0].update(train_windows=11), "seed 0's split"),
    ],
)
def test_combine_refuses_runs_of_another_protocol(tmp_path, capsys, change, what):
    a = _write(tmp_path, "a.json", _run([0], "dr", "DR J=1", [0.2]))
    other = _run([0], "tdm", "TDM initial tree", [0.1])
    change(other)
    b = _write(tmp_path, "b.json", other)
    with pytest.raises(SystemExit) as exc:
        quality.main(["--combine", str(a), str(b), "--tag", "c", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2 and what in capsys.readouterr().err
    assert not (tmp_path / "quality_ml-1m-subset_c.json").exists()


def test_target_coverage_counts_the_training_signal_per_item():
    class _Train:
        targets = np.array([0, 0, 0, 0, 0, 1, 1, 2], dtype=np.int32)

    class _Data:
        train, n_items = _Train(), 4  # item 3 is nobody's target; items 1, 2 fewer than 5 times

    cov = quality.target_coverage(_Data())
    assert cov == {
        "windows_per_item": 2.0,
        "median_targets_per_item": 1.5,
        "items_never_target": 0.25,
        "items_under_5_targets": 0.75,
    }


@pytest.mark.parametrize(
    "overrides, says, never",
    [
        ([], [], ["overrides"]),
        (["tdm.epochs=1"], ["Config overrides (a budgeted run): `tdm.epochs=1`."], ["Lifecycle"]),
        (
            ["life.recforest_trees=[4]"],
            ["Lifecycle overrides: `life.recforest_trees=[4]` (every config at its `CONFIGS` size)."],
            ["budgeted"],
        ),
        (
            ["recforest.epochs=1", "life.recforest_trees=[4]"],
            [
                "Config overrides (a budgeted run): `recforest.epochs=1`.",
                "Lifecycle overrides: `life.recforest_trees=[4]`.",
            ],
            ["CONFIGS` size"],
        ),
    ],
)
def test_table_header_calls_a_run_budgeted_only_for_config_overrides(overrides, says, never):
    """A lifecycle override (which steps run) leaves the configs at full size: the header must not
    call such a run budgeted; a config override must be called budgeted."""
    result = _result([0], [0.1])
    result["settings"]["overrides"] = overrides
    header = quality.markdown(result).splitlines()[2]
    assert all(s in header for s in says) and not any(n in header for n in never)


def _timed(run, repeats, exact=None):
    """The run measured CPU speed (its first seed's rows carry users/s) with these timed-run counts."""
    for row in run["rows"]:
        row["users_per_s_cpu256/b100"] = 50.0
    run["settings"]["speed_repeats"] = repeats
    if exact is None:
        run["settings"].pop("exact_speed_repeats", None)  # a file from before the exact column had its count
    else:
        run["settings"]["exact_speed_repeats"] = exact
    run["aggregate"] = quality.aggregate(run["rows"])
    return run


def test_combined_speed_caption_says_each_runs_timed_run_counts(tmp_path):
    """Runs timed 3 and 5 times make one table: the caption must not claim the first run's count for
    every row, and each run's line says its own; runs without speed are not counted."""
    old = _write(tmp_path, "old.json", _timed(_run([0], "tdm", "TDM initial tree", [0.1]), 3))
    new = _write(tmp_path, "new.json", _timed(_run([0], "jtm", "JTM initial tree", [0.1]), 5, 5))
    quiet = _write(tmp_path, "quiet.json", _run([0], "dr", "DR J=1", [0.2]))
    quality.main(["--combine", str(old), str(new), str(quiet), "--tag", "all", "--out-dir", str(tmp_path)])
    md = (tmp_path / "quality_ml-1m-subset_all.md").read_text()
    assert "median of 3 runs" not in md.split("| model | train samples/s")[0].split("## Speed")[1]
    assert "as many as each run's line under 'Runs combined' says" in md
    assert "`old.json`: tdm, seeds [0]; CPU speed: median of 3 runs (exact: 1)" in md
    assert "`new.json`: jtm, seeds [0]; CPU speed: median of 5 runs (exact: 5)" in md
    assert "`quiet.json`: dr, seeds [0]\n" in md
    quality.main(["--combine", str(new), str(quiet), "--tag", "two", "--out-dir", str(tmp_path)])
    assert "median of 5 runs after a warm-up (exact: 5)" in (tmp_path / "quality_ml-1m-subset_two.md").read_text()
    quality.main(["--combine", str(quiet), str(quiet), "--tag", "none", "--out-dir", str(tmp_path)])
    assert "no run here records its count" in (tmp_path / "quality_ml-1m-subset_none.md").read_text()
