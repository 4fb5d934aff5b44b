"""Progress lines (models.progress): the final line, the parallel workers' tag and interval floor, quiet."""

from __future__ import annotations

from grove.models.progress import Progress


def test_final_line_has_counts_and_rate(capsys, monkeypatch):
    monkeypatch.delenv("GROVE_QUIET", raising=False)
    monkeypatch.delenv("GROVE_PROGRESS_PREFIX", raising=False)
    with Progress("training", total=4, unit="batch") as p:
        p.update(4, postfix="loss 0.5")
    line = capsys.readouterr().err.strip()
    assert line.startswith("training: 4/4 batch (100%)") and line.endswith("[loss 0.5]")


def test_worker_prefix_and_interval_floor(capsys, monkeypatch):
    monkeypatch.delenv("GROVE_QUIET", raising=False)
    monkeypatch.setenv("GROVE_PROGRESS_PREFIX", "[ml seed 1] ")
    monkeypatch.setenv("GROVE_PROGRESS_INTERVAL", "3600")
    with Progress("train", total=10, interval=0.0) as p:
        assert p.interval == 3600
        for _ in range(10):
            p.update(1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("[ml seed 1] train: 10/10")  # only the final line


def test_quiet(capsys, monkeypatch):
    monkeypatch.setenv("GROVE_QUIET", "1")
    with Progress("x", total=1) as p:
        p.update(1)
    assert capsys.readouterr().err == ""


def test_plain_lines_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("GROVE_QUIET", raising=False)
    monkeypatch.delenv("GROVE_PROGRESS", raising=False)
    monkeypatch.delenv("GROVE_PROGRESS_PREFIX", raising=False)
    with Progress("evaluate beam 50", total=3, unit="user") as p:  # pytest's stderr is no terminal
        assert p.bar is None
        p.update(3)
    assert capsys.readouterr().err.startswith("evaluate beam 50: 3/3 user (100%)")


def test_live_bar_shows_what_it_measures(capsys, monkeypatch):
    monkeypatch.delenv("GROVE_QUIET", raising=False)
    monkeypatch.setenv("GROVE_PROGRESS", "bar")
    with Progress("evaluate beam 50", total=1000, unit="user") as p:
        assert p.bar is not None
        p.update(400)
        p.update(600, postfix="recall 0.31")
    err = capsys.readouterr().err
    assert "evaluate beam 50" in err and "1,000/1,000 user" in err and "100%" in err and "recall 0.31" in err
    assert "━" in err  # the bar itself
