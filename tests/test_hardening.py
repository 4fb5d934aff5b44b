"""Hardening (issue 25): each failure a hostile or careless user met has a test here.

1. `grove sql` reaches this store only: other files, databases, extensions and settings are
   refused, one statement at a time, with a timeout.
2. Sizes are bounded before anything is allocated; bad input is one line and exit 2, never a
   traceback, the store unchanged (property-based over the readers and the argument parsing).
4. A step that finishes while another process holds the store waits, then saves its result to
   a staging file that `grove versions write-staged` writes later.
(3, the service, is tests/test_service_limits.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import duckdb
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from grove.flows.cli import main
from grove.indexstore.store import Store


@pytest.fixture(scope="module")
def url(make_synth_store) -> str:
    url = make_synth_store("hard", n_items=300, n_users=400, seed=5)
    assert (
        main(
            [
                "--store",
                url,
                "build",
                "--dataset",
                "synth",
                "h",
                "--method",
                "tdm",
                "--set",
                "dim=8",
                "--set",
                "hidden=[16,8]",
                "--set",
                "max_samples=300",
                "--local",
            ]
        )
        == 0
    )
    assert main(["--store", url, "train", "h", "--local"]) == 0
    return url


def _snapshot(url: str) -> tuple:
    s = Store.open(url)
    return (
        tuple(d.name for d in s.list_datasets()),
        tuple(v.id for v in s.list_versions()),
        tuple((e.alias, e.to_version) for e in s.alias_history("h")),
    )


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


# ------------------------------------------------------------------------------ 1. grove sql
@pytest.mark.parametrize(
    "query, says",
    [
        ("ATTACH '{other}' AS o (READ_WRITE)", "ATTACH statements are not allowed"),
        ("COPY (SELECT 1) TO '{other}' (FORMAT csv)", "COPY statements are not allowed"),
        ("EXPORT DATABASE '{tmp}/exported'", "EXPORT statements are not allowed"),
        ("SELECT * FROM read_csv('/etc/passwd')", "file system operations are disabled"),
        ("SELECT * FROM read_text('/etc/passwd')", "file system operations are disabled"),
        ("SELECT * FROM glob('/root/*')", "file system operations are disabled"),
        ("LOAD json", "LOAD statements are not allowed"),
        ("INSTALL httpfs", "LOAD statements are not allowed"),
        ("SET memory_limit = '1GB'", "SET statements are not allowed"),
        ("PRAGMA version", "PRAGMA statements are not allowed"),
        ("CHECKPOINT", "CALL statements are not allowed"),
        ("SELECT 1; SELECT 2", "one statement per query, got 2"),
    ],
)
def test_sql_reaches_this_store_only(url, tmp_path, capsys, query, says):
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE aliases AS SELECT 1 AS a")
    con.close()
    before = other.read_bytes()
    assert main(["--store", url, "sql", query.format(other=other, tmp=tmp_path)]) == 2
    assert says in _one_line_error(capsys)
    assert other.read_bytes() == before and not (tmp_path / "exported").exists()


def test_sql_reads_views_describes_and_stops_a_long_query(url, capsys):
    assert main(["--store", url, "sql", "WITH v AS (SELECT * FROM v_versions) SELECT count(*) AS n FROM v"]) == 0
    assert main(["--store", url, "sql", "DESCRIBE versions"]) == 0
    capsys.readouterr()
    assert (
        main(["--store", url, "sql", "SELECT count(*) FROM range(100000000000) a, range(1000) b", "--timeout", "1"])
        == 2
    )
    assert "stopped after the 1 s timeout" in _one_line_error(capsys)


# ------------------------------------------------------------------ 2. bounds and one-line errors
@pytest.mark.parametrize(
    "argv, says",
    [
        (["retrieve", "h", "--history", "1,2", "--k", "1000000000"], "is more than the index's 300 items"),
        (["retrieve", "h", "--history", "1,2", "--k", "100000000000000000000"], "is more than the index's"),
        (["retrieve", "h", "--history", "1,2", "--beam", "10000000"], "beam = 10,000,000 is above the maximum"),
        (["retrieve", "h", "--history", "1,2", "--device", "bogus"], "unknown device 'bogus'"),
        (
            ["build", "--dataset", "synth", "x", "--method", "tdm", "--set", "arity=1000000000", "--local"],
            "arity = 1,000,000,000 is more than the dataset's 300 items",
        ),
        (
            ["build", "--dataset", "synth", "x", "--method", "tdm", "--set", "dim=1000000000000", "--local"],
            "dim=1000000000000",
        ),
        (
            ["build", "--dataset", "synth", "x", "--method", "tdm", "--set", 'device="tpu"', "--local"],
            "unknown device 'tpu'",
        ),
        (
            ["build", "--dataset", "synth", "x", "--method", "tdm", "--set", 'epochs="abc"', "--local"],
            "TDMConfig.epochs must be an integer, got 'abc'",
        ),
        (
            ["build", "--dataset", "synth", "x", "--method", "tdm", "--config", "[1,2]", "--local"],
            "--config must be a JSON object",
        ),
        (["data", "synth", "--name", "huge", "--items", "1000000000000", "--users", "10"], "--items must be in"),
        (["data", "synth", "--name", "huge", "--items", "1000000", "--users", "1000000000"], "needs about"),
        (["eval", "h", "--users", "-1", "--local"], "argument --users: expected a positive integer, got '-1'"),
        # an evaluation's lists are (users, k): an unbounded --k allocated them before searching
        (["eval", "h", "--k", "10,1000000000000", "--local"], "k = 1,000,000,000,000 is above the maximum of 10,000"),
        (["eval", "h", "--beam", "1000000000000", "--local"], "beam = 1,000,000,000,000 is above the maximum"),
        (["cycle", "c", "--dataset", "synth", "--method", "tdm", "--k", "20000", "--local"], "--k: k = 20,000"),
    ],
)
def test_bad_sizes_and_values_are_one_line_and_change_nothing(url, capsys, argv, says):
    before = _snapshot(url)
    assert main(["--store", url, *argv]) == 2
    assert says in _one_line_error(capsys)
    assert _snapshot(url) == before


_VALUES = st.one_of(
    st.integers(-10, 10**12).map(str),
    st.sampled_from(["", "x", "1.5", "-", "nan", "1e400", "[1,2]", '{"a":1}', "\x00", "é"]),
)
_OPTIONS = st.sampled_from(
    [
        "--k",
        "--beam",
        "--users",
        "--version",
        "--history",
        "--device",
        "--role",
        "--alias",
        "--exhaustive-users",
        "--set",
        "--config",
    ]
)


def test_an_evaluation_bounds_k_and_beam_and_its_lists_before_searching(url, monkeypatch):
    """The same bounds below the command line (a Prefect task, a Python caller); the lists of
    every pass, (users, max k) kept and filtered, are checked against the memory budget."""
    from grove.indexstore.errors import GroveError, TooLargeError
    from grove.models import lifecycle

    store = Store.open(url)
    vid = store.resolve("h", prefer=None).id
    n_metrics = len(store.metrics(vid))
    with pytest.raises(GroveError, match="k = 100,000,000 is above the maximum of 10,000 items per list"):
        lifecycle.evaluate(store, vid, ks=(10, 10**8), max_users=5, exhaustive=False)
    with pytest.raises(GroveError, match="beam = 65,537 is above the maximum of 65,536"):
        lifecycle.evaluate(store, vid, beams=(65_537,), max_users=5, exhaustive=False)
    monkeypatch.setenv("GROVE_MEMORY_LIMIT", "100kB")
    with pytest.raises(TooLargeError, match="the ranked lists of 2 evaluation pass.* of 5 users at k = 10,000"):
        lifecycle.evaluate(store, vid, ks=(10_000,), max_users=5, exhaustive=True)
    assert len(store.metrics(vid)) == n_metrics


# derandomized: the same examples on every run (an unseeded run once drew an input that allocated
# until the kernel killed pytest at 24 GB); the explicit examples are the inputs found so far
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    command=st.sampled_from(["retrieve", "eval", "versions show", "alias log", "rollback", "sql", "data show"]),
    opts=st.lists(st.tuples(_OPTIONS, _VALUES), max_size=4),
)
# `eval --k N` allocated two (users, N) int64 arrays before searching, and the search asked for N items:
# N ~ 10**8 grew past 12 GB (the OOM kill at 24 GB); 10**12 fails at once without the bound.
@example(command="eval", opts=[("--k", "1000000000000")])
@example(command="eval", opts=[("--beam", "1000000000000")])  # no bound, then an int32 overflow in the store
def test_any_arguments_exit_0_1_or_2_with_one_line_and_no_change(url, capsys, command, opts):
    before = _snapshot(url)
    argv = ["--store", url, *command.split(), "h", *[x for pair in opts for x in pair]]
    if command == "eval":
        argv += ["--local", "--users", "5", "--no-exhaustive"]
    code = main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    assert code in (0, 2) or (command == "rollback" and code == 1), (argv, code, out.err)
    if code == 2:
        assert len(out.err.strip().splitlines()) == 1, out.err
    if command not in ("rollback", "eval"):  # these two write (an alias move, metric rows) when valid
        assert _snapshot(url) == before


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.lists(st.sampled_from(["1", "2", "x", "", "1e400", "2020-01-01", "-3", '"q']), min_size=1, max_size=5),
            max_size=6,
        ).map(lambda rows: ("user,item,rating,timestamp\n" + "\n".join(",".join(r) for r in rows)).encode()),
    )
)
@example(body=b"\r\x01")  # a lone carriage return in the header line (csv.Error before the fix)
def test_any_file_imports_or_fails_with_one_line(url, tmp_path_factory, capsys, body):
    path = tmp_path_factory.mktemp("prop") / "ratings.csv"
    path.write_bytes(body)
    before = _snapshot(url)
    code = main(["--store", url, "data", "import", str(path), "--name", f"p{time.monotonic_ns()}"])
    out = capsys.readouterr()
    assert code in (0, 2) and "Traceback" not in out.err
    if code == 2:
        assert len(out.err.strip().splitlines()) == 1, out.err
        assert _snapshot(url) == before


# ------------------------------------------------------------------------------ 4. no lost training
HOLD = textwrap.dedent("""
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])          # a writer's lock on the store file
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def test_a_result_survives_a_store_held_longer_than_the_wait(url, monkeypatch, capsys):
    from grove.indexstore.errors import StoreBusyError
    from grove.models import lifecycle

    store = Store.open(url)
    base = store.resolve("h", prefer=None)
    n_before = len(store.list_versions("h"))
    # the train step's work, then the writer's lock taken by another process before its write
    loaded = lifecycle.load(store, base.id)
    data = lifecycle.split_data(store, loaded.dataset, loaded.split, loaded.recipe.config)
    built, recipe = lifecycle.advance(loaded.recipe, loaded.built, data, "train")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, url[len("duckdb:///") :], "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("GROVE_WRITE_WAIT", "1")
        with pytest.raises(StoreBusyError) as exc:
            lifecycle.write(store, "h", recipe, built, loaded.dataset, loaded.split, base.id)
    finally:
        holder.kill()
        holder.wait()
    message = str(exc.value)
    assert "is locked by" in message and "grove versions write-staged " in message
    staged = message.rsplit("write-staged ", 1)[1].rstrip("`")
    assert os.path.exists(staged) and len(Store.open(url).list_versions("h")) == n_before
    assert main(["--store", url, "versions", "write-staged", staged]) == 0
    assert "wrote version" in capsys.readouterr().out and not os.path.exists(staged)
    written = Store.open(url).list_versions("h")[-1]
    assert written.parent_id == base.id and written.note == "train round 0"
    _, _, artifacts = Store.open(url).read_version(written.id)
    assert set(artifacts) == {"weights.pt"}


def test_a_long_sql_reader_delays_a_write_without_losing_it(url, monkeypatch):
    """Issue 25.5: while a long `grove sql` query reads the store in another process, a finished
    step still writes its version (at once, or after waiting: the query's timeout bounds the wait)."""
    from grove.models import lifecycle

    store = Store.open(url)
    base = store.resolve("h", prefer=None)
    loaded = lifecycle.load(store, base.id)
    data = lifecycle.split_data(store, loaded.dataset, loaded.split, loaded.recipe.config)
    built, recipe = lifecycle.advance(loaded.recipe, loaded.built, data, "train")
    reader = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "grove.flows.cli",
            "--store",
            url,
            "sql",
            "SELECT count(*) FROM range(100000000000) a, range(1000) b",
            "--timeout",
            "4",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # the query is running and holds the file
        assert reader.poll() is None
        monkeypatch.setenv("GROVE_WRITE_WAIT", "60")
        info = lifecycle.write(store, "h", recipe, built, loaded.dataset, loaded.split, base.id)
    finally:
        reader.wait(timeout=60)
    assert "stopped after the 4 s timeout" in reader.stderr.read()
    assert info.parent_id == base.id and Store.open(url).version(info.id).note == "train round 0"
