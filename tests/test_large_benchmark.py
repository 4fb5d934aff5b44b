"""`benchmarks.large` and `benchmarks.train_scale` run end to end on tiny corpora (their
rehearsals): every step of every lifecycle reports its seconds and its own peak RSS, the
retrieval table has recall and users/s at batch 256 and 1, and the files are written."""

from __future__ import annotations

import json

import pytest

from benchmarks import large, train_scale


@pytest.mark.slow  # about a minute: the rehearsal runs every lifecycle step in its own process
def test_large_rehearsal_measures_every_step_and_writes_its_tables(tmp_path):
    out = str(tmp_path / "large")
    result = large.main(
        [
            "--quick",
            "--items",
            "600",
            "--users",
            "500",
            "--methods",
            "tdm",
            "two_tower",
            "--test-users",
            "20",
            "--batch1-users",
            "3",
            "--beams",
            "10",
            "50",
            "--ef",
            "16",
            "--nprobe",
            "4",
            "--work",
            str(tmp_path),
            "--out",
            out,
        ]
    )
    steps = [(s["method"], s["step"]) for s in result["steps"]]
    assert steps == [
        (None, "synth"),
        (None, "split"),
        ("tdm", "construct"),
        ("tdm", "train"),
        ("tdm", "relearn"),
        ("tdm", "train"),
        ("tdm", "evaluate"),
        ("tdm", "evaluate"),
        ("two_tower", "construct"),
        ("two_tower", "train"),
        ("two_tower", "evaluate"),
        ("two_tower", "ann"),
    ]
    assert all(s["seconds"] > 0 and 0.05 < s["peak_rss_gb"] < 6 for s in result["steps"])
    assert result["methods"]["tdm"]["before_relearn"]["beams"][0]["beam"] == 50  # the first trained version
    assert result["methods"]["two_tower"]["before_relearn"] is None
    tdm = result["methods"]["tdm"]["eval"]
    assert [b["beam"] for b in tdm["beams"]] == [10, 50] and tdm["users"] == 20
    assert all(0 <= b["recall"] <= 1 and b["users_per_s"] > 0 for b in tdm["beams"])
    assert tdm["batch1"]["users"] == 3 and tdm["batch1"]["users_per_s"] > 0
    ann = result["methods"]["two_tower"]["ann"]
    assert {"hnsw", "ivf"} <= set(ann) and ann["hnsw"]["points"][0]["param"] == 16
    saved = json.loads((tmp_path / "large.json").read_text())
    assert saved["methods"].keys() == {"tdm", "two_tower"}
    md = (tmp_path / "large.md").read_text()
    assert "| TDM | quick | 50 |" in md and "FAISS HNSW" in md and "peak RSS" in md
    assert "| TDM, initial structure trained once | quick | 50 |" in md
    assert (tmp_path / "large.png").stat().st_size > 1000
    # a second run reuses the stored corpus: no synth or split step
    again = large.main(
        [
            "--quick",
            "--items",
            "600",
            "--users",
            "500",
            "--methods",
            "two_tower",
            "--test-users",
            "5",
            "--batch1-users",
            "2",
            "--work",
            str(tmp_path),
            "--out",
            out,
        ]
    )
    assert [s["step"] for s in again["steps"]][:2] == ["construct", "train"]


def test_train_scale_times_each_trainer_at_every_size_side_by_side(tmp_path):
    result = train_scale.main(
        [
            "--sizes",
            "500",
            "2000",
            "--users",
            "300",
            "--trainers",
            "tdm",
            "deforec",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batch",
            "16",
            "--out",
            str(tmp_path / "ts"),
        ]
    )
    assert [r["trainer"] for r in result["rows"]] == ["tdm", "deforec"]
    for r in result["rows"]:
        assert set(r["sizes"]) == {"500", "2000"}
        assert all(len(v["step_s"]) == 2 and v["samples_per_s"] > 0 for v in r["sizes"].values())
    assert "2,000 / 500" in (tmp_path / "ts.md").read_text()
