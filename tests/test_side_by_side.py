"""benchmarks.side_by_side: specs parsed or refused by name, rounds alternate the versions, ratios
are taken within a round, and a real store's versions are timed end to end."""

import json

import pytest
import torch

from benchmarks import side_by_side
from benchmarks.curves import batch_rows
from benchmarks.side_by_side import parse_spec, summarise, time_side_by_side

TDM = {"epochs": 1, "dim": 8, "hidden": [16, 8], "max_samples": 400, "neg_base": 1.0}


def test_specs_name_file_index_version_or_alias(tmp_path):
    f = tmp_path / "s.duckdb"
    f.write_bytes(b"")
    assert parse_spec(f"{f}:movies") == (str(f), "movies", None, None)
    assert parse_spec(f"{f}:movies@7") == (str(f), "movies", 7, None)
    assert parse_spec(f"{f}:movies:production") == (str(f), "movies", None, "production")
    for bad, words in (
        (f"{f}", "expected FILE:INDEX"),
        (f"{f}:movies@x", "must be a number"),
        (f"{f}:movies:", "empty index or alias"),
        (f"{tmp_path}/none.duckdb:movies", "no such file"),
    ):
        with pytest.raises(SystemExit, match=words):
            parse_spec(bad)


class _Recorder:
    """A searcher that logs which version ran; ``cost`` extra rows of work per search."""

    def __init__(self, name, log, cost):
        self.name, self.log, self.cost = name, log, cost

    def search(self, h, k, beam):
        self.log.append(self.name)
        torch.randn(self.cost, 64).sum()
        return torch.zeros(h.shape[0], k), torch.zeros(h.shape[0], k, dtype=torch.long)


def test_rounds_rotate_the_order_and_every_version_runs_once_per_round():
    log = []
    searchers = [_Recorder(n, log, 10) for n in "abc"]
    rows = batch_rows(torch.zeros(5, 3, dtype=torch.long), 4)
    assert rows.shape[0] == 8
    speeds = time_side_by_side(searchers, rows, k=2, beam=1, batch=4, rounds=3)
    assert len(speeds) == 3 and all(len(r) == 3 and min(r) > 0 for r in speeds)
    timed = log[3 * 2 :]  # after one warm-up pass (2 batches) of each
    firsts = [timed[r * 6] for r in range(3)]  # the first searcher of each round
    assert firsts == ["a", "b", "c"]


def test_ratios_are_taken_within_each_round():
    speeds = [[100.0, 50.0], [200.0, 100.0], [10.0, 6.0]]  # the machine's speed drifts 20x
    a, b = summarise(speeds)
    assert a["ratio_to_first"] == 1.0 and b["ratio_to_first"] == 0.5
    assert (b["ratio_min"], b["ratio_max"]) == (0.5, 0.6)
    assert b["users_per_s"] == 50.0


def test_two_versions_of_a_store_side_by_side(make_synth_store, tmp_path):
    from grove.flows import steps

    url = make_synth_store("side", n_items=200, n_users=300, seed=4)
    v1 = steps.train(url, steps.construct(url, "t", "tdm", TDM, "synth").version_id).version_id
    v2 = steps.train(url, steps.relearn(url, v1).version_id).version_id
    file = url.removeprefix("duckdb:///")
    result = side_by_side.main(
        [
            f"{file}:t@{v1}",
            f"{file}:t",
            "--beams",
            "2",
            "5",
            "--rounds",
            "2",
            "--threads",
            "1",
            "--out-dir",
            str(tmp_path),
            "--tag",
            "t",
        ]
    )
    assert [v["version"] for v in result["versions"]] == [v1, v2]
    saved = json.loads((tmp_path / "side_by_side_t.json").read_text())
    for beam in ("2", "5"):
        first, second = saved["by_beam"][beam]
        assert first["ratio_to_first"] == 1.0 and second["users_per_s"] > 0
    table = (tmp_path / "side_by_side_t.md").read_text()
    assert f"{file}:t@{v1} (v{v1}) | tdm | 5 |" in table and f"{file}:t (v{v2}) | tdm | 2 |" in table
    with pytest.raises(SystemExit, match="at least two"):
        side_by_side.main([f"{file}:t"])
