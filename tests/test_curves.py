"""benchmarks.curves: indexes trained into a store and timed later are the indexes that were trained.

Invariants: the curve measured from a stored version (``--from-store``) equals the one measured
right after training (same recall at every beam: the version round trip loses nothing); stores of
different splits are refused; a store without ``curves-*`` indexes is refused by name.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import curves


def write_movielens(folder, n_users: int = 120, n_items: int = 90, seed: int = 0) -> None:
    """A small dataset in ml-latest-small's format: users rate items of 'their' genre higher."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    genres = ["Action", "Comedy", "Drama"]
    with open(folder / "movies.csv", "w") as f:
        f.write("movieId,title,genres\n")
        for i in range(n_items):
            f.write(f"{i + 1},Movie {i} (2000),{genres[i % 3]}\n")
    with open(folder / "ratings.csv", "w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for u in range(n_users):
            g = u % 3
            liked = rng.permutation([i for i in range(n_items) if i % 3 == g])[:25]
            other = rng.permutation([i for i in range(n_items) if i % 3 != g])[:10]
            for t, i in enumerate(rng.permutation(np.concatenate([liked, other]))):
                rating = 5.0 if i % 3 == g else 2.0
                f.write(f"{u + 1},{i + 1},{rating},{1_000_000 + 60 * t}\n")


def run(tmp_path, data_dir, *args) -> dict:
    return curves.main(
        [
            "--dataset",
            "ml-latest-small",
            "--data-dir",
            str(data_dir),
            "--quick",
            "--methods",
            "dr",
            "--beams",
            "2",
            "10",
            "--k",
            "10",
            "--threads",
            "1",
            "--out-dir",
            str(tmp_path / "out"),
            *args,
        ]
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curves")
    write_movielens(tmp / "data" / "ml-latest-small")
    store = tmp / "a.duckdb"
    measured = run(tmp, tmp / "data", "--store", str(store), "--tag", "direct")
    return tmp, store, measured


def test_stored_index_gives_the_curve_measured_after_training(trained):
    tmp, store, measured = trained
    again = curves.main(
        [
            "--dataset",
            "ml-latest-small",
            "--from-store",
            str(store),
            "--quick",
            "--beams",
            "2",
            "10",
            "--k",
            "10",
            "--threads",
            "1",
            "--out-dir",
            str(tmp / "out"),
            "--tag",
            "stored",
        ]
    )
    assert list(again["methods"]) == ["dr"]
    assert again["split_fingerprint"] == measured["split_fingerprint"]
    first, second = measured["methods"]["dr"], again["methods"]["dr"]
    assert first["version"] == second["version"]
    assert [p["beam"] for p in second["points"]] == [2, 10]
    assert [p["recall"] for p in second["points"]] == [p["recall"] for p in first["points"]]
    assert all(p["users_per_s"] > 0 for p in second["points"])
    assert second["config"]["epochs"] == 1  # the version's own config (QUICK caps), recorded
    saved = json.loads((tmp / "out" / "curves_ml-latest-small_stored_quick.json").read_text())
    assert saved["methods"]["dr"]["points"] == second["points"]
    assert (tmp / "out" / "curves_ml-latest-small_stored_quick.png").stat().st_size > 0
    table = (tmp / "out" / "curves_ml-latest-small_stored_quick.md").read_text()
    assert table.count("| DR (J=3, EM x1) | beam |") == 2 and "| two-tower exact |" in table
    assert "exact" in saved["two_tower"]


def test_train_only_writes_versions_and_measures_nothing(tmp_path, trained):
    tmp, *_ = trained
    result = run(tmp_path, tmp / "data", "--train-only", "--store", str(tmp_path / "b.duckdb"))
    assert result["methods"] == {}
    assert not (tmp_path / "out" / "curves_ml-latest-small_quick.json").exists()
    with pytest.raises(SystemExit, match="curves-dr is in both"):
        curves.main(
            [
                "--dataset",
                "ml-latest-small",
                "--from-store",
                str(tmp_path / "b.duckdb"),
                str(tmp / "a.duckdb"),
                "--quick",
            ]
        )


def test_stores_of_different_splits_are_refused(tmp_path, trained):
    tmp, store, _ = trained
    write_movielens(tmp_path / "other" / "ml-latest-small", seed=1)
    run(tmp_path, tmp_path / "other", "--train-only", "--store", str(tmp_path / "c.duckdb"))
    with pytest.raises(SystemExit, match="differs from"):
        curves.main(["--dataset", "ml-latest-small", "--from-store", str(store), str(tmp_path / "c.duckdb"), "--quick"])


def test_bad_arguments_are_refused(tmp_path, trained):
    tmp, store, _ = trained
    with pytest.raises(SystemExit, match="no curves-tdm index"):
        curves.main(["--dataset", "ml-latest-small", "--from-store", str(store), "--methods", "tdm", "--quick"])
    with pytest.raises(SystemExit, match="no such file"):
        curves.main(["--dataset", "ml-latest-small", "--from-store", str(tmp_path / "none.duckdb")])
    with pytest.raises(SystemExit, match="--train-only needs --store"):
        curves.main(["--train-only", "--methods", "dr"])
    with pytest.raises(SystemExit, match="not among the methods"):
        curves.main(
            [
                "--methods",
                "dr",
                "--set",
                "tdm.epochs=1",
                "--store",
                str(tmp_path / "d.duckdb"),
                "--data-dir",
                str(tmp / "data"),
                "--dataset",
                "ml-latest-small",
            ]
        )
