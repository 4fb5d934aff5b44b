"""benchmarks.quality --merge (seeds run apart join into one table; runs that differ are refused), --combine
(runs of other methods or budgets make one table) and the per-item training signal it records."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import quality


def _result(seeds, recall, configs=None, beams=(20, 50, 100)):
    rows = [{"model": "Item-CF", "method": "itemcf", "seed": s, "recall@10/exact": r, "precision@10/exact": r / 2}
            for s, r in zip(seeds, recall)]
    return {"dataset": "ml-1m-subset", "dataset_label": "ML-1M subset", "command": f"run {seeds}", "quick": False,
            "machine": {"gpu": None, "cpu_count": 2, "cpu_model": "x", "torch": "2"}, "complete": True,
            "settings": {"overrides": [], "tag": "", "seeds": seeds, "seeds_done": seeds, "beams": list(beams),
                         "ks": [10, 20, 50], "test_users": "all", "methods": ["itemcf"], "device": "cpu",
                         "cpu_threads": 2, "speed_repeats": 3},
            "configs": configs or {"itemcf": {"neighbours": 100}}, "lifecycle": {},
            "data": {"train_windows": 10, "test_users": 3, "n_items": 5},
            "per_seed_data": [{"seed": s} for s in seeds],
            "seconds": {"per_seed": {str(s): {"total": 1.0} for s in seeds}}, "errors": [],
            "aggregate": quality.aggregate(rows), "rows": rows}


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


@pytest.mark.parametrize("other, what", [
    (_result([0], [0.3]), "seed comes twice"),
    (_result([2], [0.3], configs={"itemcf": {"neighbours": 50}}), "configs differs"),
    (_result([2], [0.3], beams=(50,)), "settings.beams"),
])
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
    extra = [{"model": "Item-CF", "method": "itemcf", "seed": s, "recall@10/exact": v, "precision@10/exact": v / 2}
             for s, v in zip(run["settings"]["seeds_done"], recall)]
    run["rows"] += extra
    run["configs"]["itemcf"] = {"neighbours": 100}
    run["aggregate"] = quality.aggregate(run["rows"])
    return run


def test_combine_makes_one_table_of_methods_and_budgets_run_apart(tmp_path):
    dr = _write(tmp_path, "dr.json", _with_baseline(_run([0, 1, 2], "dr", "DR J=1", [0.2, 0.3, 0.4]), [0.1, 0.2, 0.3]))
    tdm_small = _write(tmp_path, "t12k.json", _with_baseline(
        _run([0], "tdm", "TDM initial tree", [0.05], overrides=["tdm.max_samples=12000"],
             configs={"tdm": {"max_samples": 12000}}), [0.1]))
    tdm_big = _write(tmp_path, "t60k.json", _run([0, 1], "tdm", "TDM initial tree", [0.07, 0.09],
                                                   overrides=["tdm.max_samples=60000"], configs={"tdm": {"max_samples": 60000}}))
    out = quality.main(["--combine", str(dr), str(tdm_small), str(tdm_big), "--tag", "all",
                        "--out-dir", str(tmp_path)])["ml-1m-subset"]
    by_model = {a["model"]: a for a in out["aggregate"]}
    # one label under two configs is told apart by the overrides; the baseline repeated on seed 0 is kept once
    assert set(by_model) == {"DR J=1", "Item-CF", "TDM initial tree [max_samples=12000]",
                             "TDM initial tree [max_samples=60000]"}
    assert by_model["Item-CF"]["seeds"] == [0, 1, 2] and by_model["Item-CF"]["recall@10/exact"]["n"] == 3
    assert by_model["TDM initial tree [max_samples=60000]"]["recall@10/exact"]["mean"] == pytest.approx(0.08)
    assert out["repeats"] == [{"model": "Item-CF", "seed": 0, "file": str(tdm_small),
                               "abs_diff": {"recall@10/exact": 0.0}}]
    md = (tmp_path / "quality_ml-1m-subset_all.md").read_text()
    assert "| TDM initial tree [max_samples=60000] | 0,1 | " in md and "`t60k.json`: tdm, seeds [0, 1]" in md


@pytest.mark.parametrize("change, what", [
    (lambda r: r["settings"].update(beams=[50]), "settings.beams"),
    (lambda r: r.update(dataset="ml-latest-small"), "dataset"),
    (lambda r: r["per_seed_data"][0].update(train_windows=11), "seed 0's split"),
])
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
    assert cov == {"windows_per_item": 2.0, "median_targets_per_item": 1.5, "items_never_target": 0.25,
                   "items_under_5_targets": 0.75}
