"""Streaming import (`grove.indexstore.bulk_import`): every format stores exactly what
`read_interactions` + `import_dataset` store; bad input is one InputError line naming file, line,
column and value, and leaves the store as it was."""

from __future__ import annotations

import datetime as dt
import gzip
import itertools

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grove.flows.cli import main
from grove.indexstore import bulk_import
from grove.indexstore.categories import read_item_categories
from grove.indexstore.errors import GroveError, InputError
from grove.indexstore.file_layout import InteractionFile
from grove.indexstore.readers import read_interactions
from grove.indexstore.store import Store

ROWS = [("10", "5", 4.0, 100), ("9", "30", 2.5, 50), ("10", "100", 5.0, 70), ("2", "5", 1.0, 10)]
_names = itertools.count()
_TABLES = ("datasets", "interactions", "user_ids", "item_ids", "items", "item_categories")


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def store(new_store_url, request) -> Store:
    """One store per backend for the module: every test imports under fresh names."""
    url = new_store_url(request.param, "bulk")
    Store.init(url)
    return Store.open(url)


def _standard_body(sep: str = ",", header: str | None = "user_id,item_id,rating,timestamp") -> str:
    lines = [header] if header else []
    lines += [sep.join([u, i, f"{r:g}", str(t)]) for u, i, r, t in ROWS]
    return "\n".join(lines) + "\n"


def same_as_reader(store: Store, path, fmt: str = "auto", items=None, **cols):
    """Import ``path`` both ways; assert the stored datasets are identical; return the import."""
    name = f"d{next(_names)}"
    ref = read_interactions(path, fmt, **cols)
    cats = read_item_categories(items, ref.item_raw, 0) if items else None
    store.import_dataset(f"{name}_ref", ref, cats)
    info = store.import_file(name, InteractionFile(path, fmt, **cols), items=items)
    got, want = store.load_interactions(name), store.load_interactions(f"{name}_ref")
    for col in ("user", "item", "ts", "user_raw", "item_raw"):
        np.testing.assert_array_equal(getattr(got, col), getattr(want, col), err_msg=col)
        assert getattr(got, col).dtype == getattr(want, col).dtype, col
    for col in ("rating", "behavior"):
        a, b = getattr(got, col), getattr(want, col)
        assert (a is None) == (b is None), col
        if a is not None:
            assert list(a) == list(b), col
    assert (info.n_users, info.n_items, info.n_interactions) == (want.n_users, want.n_items, len(want))
    if items:
        for a, b in zip(store.item_categories(name), store.item_categories(f"{name}_ref")):
            np.testing.assert_array_equal(a, b)
    return got


# ------------------------------------------------------------------------ same as the reader


def test_csv_with_header(store, tmp_path):
    p = tmp_path / "r.csv"
    p.write_text(_standard_body())
    got = same_as_reader(store, p)
    assert list(got.user_raw) == ["2", "9", "10"]  # numeric order, not "10" < "2"


def test_ml_latest_gzip(store, tmp_path):
    p = tmp_path / "ratings.csv.gz"
    p.write_bytes(gzip.compress(_standard_body(header="userId,movieId,rating,timestamp").encode()))
    same_as_reader(store, p)
    same_as_reader(store, p, fmt="ml-latest")


def test_ml_dat_plain_and_gz(store, tmp_path):
    body = _standard_body("::", header=None)
    (tmp_path / "ratings.dat").write_text(body)
    (tmp_path / "ratings.dat.gz").write_bytes(gzip.compress(body.encode()))
    same_as_reader(store, tmp_path / "ratings.dat")
    same_as_reader(store, tmp_path / "ratings.dat.gz")
    same_as_reader(store, tmp_path / "ratings.dat", fmt="ml-dat")


def test_ml_100k_and_headerless_tsv(store, tmp_path):
    p = tmp_path / "u.data"
    p.write_text(_standard_body("\t", header=None))
    same_as_reader(store, p)
    same_as_reader(store, p, fmt="ml-100k")
    same_as_reader(store, p, fmt="tsv")
    three = tmp_path / "three.csv"  # header-less user,item,timestamp
    three.write_text("1,2,100\n3,2,101\n")
    assert same_as_reader(store, three).rating is None


def test_parquet(store, tmp_path):
    p = tmp_path / "r.parquet"
    cols = list(zip(*ROWS))
    pq.write_table(
        pa.table(
            {
                "user": pa.array([int(x) for x in cols[0]]),
                "item": list(cols[1]),
                "rating": list(cols[2]),
                "ts": list(cols[3]),
            }
        ),
        p,
    )
    same_as_reader(store, p)
    same_as_reader(store, p, fmt="parquet")


def test_parquet_temporal_and_typed_columns(store, tmp_path):
    p = tmp_path / "t.parquet"
    stamps = [
        dt.datetime(2020, 1, 2, 0, 0, 1, 500000),
        dt.datetime(2020, 1, 2),
        dt.datetime(1969, 12, 31, 23, 59, 59, 500000),
    ]
    pq.write_table(
        pa.table(
            {
                "user": ["u1", " u2", "u1"],
                "item": pa.array([3, 4, 30], pa.int16()),
                "ts": pa.array(stamps, pa.timestamp("us")),
                "ns": pa.array(stamps, pa.timestamp("ns")),
                "utc": pa.array(stamps, pa.timestamp("ms", tz="UTC")),
                "day": pa.array([dt.date(2020, 1, 2)] * 3),
                "secs": pa.array([1.5, -0.5, 7.0]),
                "rating": pa.array([1, 2, 3], pa.int8()),
                "kind": ["click", None, "buy"],
            }
        ),
        p,
    )
    got = same_as_reader(store, p, behavior_col="kind")
    np.testing.assert_array_equal(got.ts, [1577923201, 1577923200, -1])
    for time_col in ("ns", "utc", "day", "secs"):
        same_as_reader(store, p, time_col=time_col)


def test_latin1_and_byte_order_mark(store, tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbfuserId,movieId,timestamp\n1,2,3\n")
    same_as_reader(store, p)
    q = tmp_path / "latin.csv"
    q.write_bytes("user,item,ts\n1,1,4\nJos\xe9,1,5\n".encode("latin-1"))
    assert "Jos\xe9" in list(same_as_reader(store, q).user_raw)
    z = tmp_path / "movies_ratings.dat.gz"
    z.write_bytes(gzip.compress("1::Caf\xe9::5::100\n2::x::4::101\n".encode("latin-1")))
    same_as_reader(store, z)


def test_named_columns_strings_dates_behaviour(store, tmp_path):
    p = tmp_path / "events.tsv"
    p.write_text(
        "who\twhat\twhen\tkind\n"
        "bob\t007\t2020-01-02\tclick\n"
        "alice\t7\t2020-01-02T00:00:10\tbuy\n"
        "bob\t7\t2020-01-02 00:01:00\t\n"
        " carol \t 07\t2020-01-02 00:01:00.9\tclick\n"
    )
    got = same_as_reader(store, p, user_col="who", item_col="what", time_col="when", behavior_col="kind")
    assert list(got.item_raw) == ["007", "07", "7"]  # numeric, ties by string
    assert list(got.behavior) == ["click", "buy", "", "click"]


def test_iso_offsets_fractions_blank_lines_crlf(store, tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("user,item,time\n1,1,2020-01-02T01:00:00+01:00\n\n2,1,2020-01-02T00:00:00Z\n")
    same_as_reader(store, p)
    q = tmp_path / "crlf.csv"
    q.write_bytes(b"user,item,time,rating\r\n1,a,100.7,2.3\r\n2,b,-3.5,0.1\r\n1,b,1e3,5\r\n")
    got = same_as_reader(store, q)
    np.testing.assert_array_equal(got.ts, [100, -4, 1000])


def test_blank_lines_before_the_header(store, tmp_path):
    """read_interactions takes the header for a record here; the streaming import skips them."""
    p = tmp_path / "r.csv"
    p.write_bytes(b"\r\n\r\nuser,item,time\r\n1,a,100\r\n2,b,x\r\n")
    with pytest.raises(InputError, match="line 5 column 'time': non-numeric timestamp 'x'"):
        store.import_file("blank_lines", InteractionFile(p))
    p.write_bytes(b"\n\nuser,item,time\n1,a,100\n2,b,50\n")
    store.import_file("blank_lines", InteractionFile(p))
    got = store.load_interactions("blank_lines")
    np.testing.assert_array_equal(got.ts, [100, 50])
    assert list(got.user_raw) == ["1", "2"]


def test_semicolon_quotes_and_case_insensitive_names(store, tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("USER;Item;TS\n3;a;5\n1;b;6\n")
    same_as_reader(store, p, item_col="item")
    q = tmp_path / "q.csv"
    q.write_text('user,item,ts,behavior\n1,"a,b",5,"x ""y"""\n2,c,6,z\n')
    got = same_as_reader(store, q)
    assert list(got.item_raw) == ["a,b", "c"] and got.behavior[0] == 'x "y"'


def test_non_numeric_ids_sort_lexicographically(store, tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("user,item,ts\nb,10,1\na,9,2\n1_000,1e3,3\nB,nan,4\n")
    got = same_as_reader(store, p)
    assert list(got.user_raw) == ["1_000", "B", "a", "b"]


def test_many_rows_keep_file_order(store, tmp_path):
    """Past DuckDB's row groups and parallel CSV buffers, rows stay in file order."""
    rng = np.random.default_rng(0)
    n = 600_000  # ~17 MB: several of DuckDB's parallel CSV buffers
    users, items = rng.integers(0, 5000, n), rng.integers(0, 700, n)
    ts, rating = rng.integers(0, 10**9, n), rng.integers(1, 11, n) / 2
    body = "user,item,ts,rating\n" + "".join(f"{u},i{i},{t},{r}\n" for u, i, t, r in zip(users, items, ts, rating))
    (tmp_path / "big.csv").write_text(body)
    (tmp_path / "big.csv.gz").write_bytes(
        gzip.compress(body[: len(body) // 3].rsplit("\n", 1)[0].encode() + b"\n", compresslevel=1)
    )
    np.testing.assert_array_equal(same_as_reader(store, tmp_path / "big.csv").ts, ts)
    same_as_reader(store, tmp_path / "big.csv.gz")


def test_import_scale_benchmark_runs(tmp_path):
    """benchmarks/import_scale.py end to end on a small N: rows imported, file order kept."""
    from benchmarks import import_scale

    res = import_scale.main(
        ["--rows", "3000", "--runs", "1", "--work-dir", str(tmp_path), "--out", str(tmp_path / "scale")]
    )
    assert [(r["rows"], r["format"]) for r in res["rows"]] == [(3000, "csv"), (3000, "parquet")]
    assert all(r["file_order_kept"] and r["peak_rss_mb"] > 0 for r in res["rows"])
    assert "| 3,000 | parquet |" in (tmp_path / "scale.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scale.json", "scale.md"]  # data deleted


def test_items_file_categories(store, tmp_path):
    p = tmp_path / "ratings.dat"
    p.write_text(_standard_body("::", header=None))
    m = tmp_path / "movies.dat"
    m.write_bytes("5::A::Drama|Comedy\n30::B::Horror\n7::Unseen::Drama\n".encode("latin-1"))
    same_as_reader(store, p, items=m)


@pytest.mark.dataset
def test_ml_1m_subset_and_ml_latest_small(store, shared_datasets):
    got = same_as_reader(
        store,
        shared_datasets / "ml-1m-subset" / "ratings_users0001-2999.dat.gz",
        items=shared_datasets / "ml-1m-subset" / "movies.dat",
    )
    assert len(got.user) == 487_650
    same_as_reader(
        store,
        shared_datasets / "ml-latest-small" / "ratings.csv",
        items=shared_datasets / "ml-latest-small" / "movies.csv",
    )


def test_cli_import_streams(tmp_path, capsys, monkeypatch, store_url):
    """`grove data import` goes through the streaming path, not read_interactions."""
    import grove.indexstore.readers as readers

    monkeypatch.setattr(readers, "read_interactions", lambda *a, **k: pytest.fail("read in memory"))
    url = store_url
    Store.init(url)
    p = tmp_path / "r.csv"
    p.write_text(_standard_body())
    assert main(["--store", url, "data", "import", str(p), "--name", "r"]) == 0
    assert "4 interactions, 3 users, 3 items" in capsys.readouterr().out


# ------------------------------------------------------------------------------- bad input


def _state(store: Store):
    counts = ", ".join(f"(SELECT count(*) FROM {t})" for t in _TABLES)
    return (
        store.query(f"SELECT {counts}")[1],
        store.query(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        )[1],
        [d.name for d in store.list_datasets()],
    )


def refused(store: Store, path, match: str, fmt: str = "auto", items=None, **cols) -> str:
    """Import must raise one InputError line matching ``match`` and change nothing."""
    before = _state(store)
    with pytest.raises(InputError, match=match) as err:
        store.import_file(f"bad{next(_names)}", InteractionFile(path, fmt, **cols), items=items)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert _state(store) == before
    return msg


def test_missing_empty_and_header_only(store, tmp_path):
    refused(store, tmp_path / "nope.csv", "file not found")
    for name, data in (("empty.csv", b""), ("blank.csv", b" \n\r\n \n"), ("bom.csv", b"\xef\xbb\xbf")):
        (tmp_path / name).write_bytes(data)
        refused(store, tmp_path / name, "empty")
    (tmp_path / "header.csv").write_text("user,item,ts\n")
    refused(store, tmp_path / "header.csv", "no interactions")
    with pytest.raises(InputError, match="unknown format"):
        InteractionFile(tmp_path / "header.csv", "xml")


def test_missing_or_misnamed_column_lists_columns(store, tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("user,product,ts\n1,2,3\n")
    assert "columns found: user, product, ts" in refused(store, p, "no item column")
    assert "columns found: user, product, ts" in refused(store, p, "'prod'", item_col="prod")
    refused(store, p, "'stars'", item_col="product", rating_col="stars")
    q = tmp_path / "four.dat"
    q.write_text("1::2::3::4::5\n")
    refused(store, q, "5 fields per line")


def test_bad_timestamp_and_rating_name_line_column_value(store, tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("user,item,rating,ts\n1,1,4,100\n1,2,5,101\n2,1,3,yesterday\n")
    msg = refused(store, p, "non-numeric timestamp")
    assert "line 4" in msg and "'ts'" in msg and "'yesterday'" in msg
    p.write_text("user,item,rating,ts\n1,1,4,100\n\n1,2,five,101\n")
    msg = refused(store, p, "non-numeric rating")
    assert "line 4" in msg and "'rating'" in msg and "'five'" in msg
    p.write_text("user,item,ts\n1,1,2020-01-01\n1,2,2020-13-45\n")
    assert "line 3" in refused(store, p, "non-numeric timestamp '2020-13-45'")
    p.write_text("user,item,ts\n1,1,epoch\n")
    refused(store, p, "line 2 column 'ts': non-numeric timestamp 'epoch'")
    p.write_text("user,item,ts,rating\n1,1,1,4\n1,2,2,\n")
    refused(store, p, "line 3 column 'rating': missing rating")


@pytest.mark.parametrize("value", ["1e400", "inf", "-Infinity", "nan", "1e39"])
def test_non_finite_rating_is_refused(store, tmp_path, value):
    p = tmp_path / "r.csv"
    p.write_text(f"user,item,rating,ts\n1,1,4,100\n1,2,{value},101\n")
    msg = refused(store, p, "rating")
    assert "line 3" in msg and "'rating'" in msg and repr(value) in msg
    assert ("out of range" if value == "1e39" else "non-finite rating") in msg


def test_malformed_line_reports_its_number(store, tmp_path):
    p = tmp_path / "ratings.dat"
    p.write_text("1::1::5::100\n1::2::4::101\n1::3::4\n")
    msg = refused(store, p, "malformed line")
    assert "line 3" in msg and "expected 4 fields, found 3" in msg
    p = tmp_path / "r.csv"
    p.write_text('user,item,ts\n1,"a\nb",100\n\n1,2,101,7\n')  # a quoted line break, a blank line
    assert "line 5" in refused(store, p, "malformed line")
    g = tmp_path / "r.csv.gz"
    g.write_bytes(gzip.compress(b"user,item,ts\n1,1,100\n1,2\n"))
    assert "line 3" in refused(store, g, "expected 3 fields, found 2")


def test_missing_id(store, tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("user,item,ts\n1,1,100\n,2,101\n")
    assert "line 3 column 'user'" in refused(store, p, "missing user id")
    p.write_text("user,item,ts\n1,1,100\n1, ,101\n")
    assert "line 3 column 'item'" in refused(store, p, "missing item id")


def test_bad_values_in_gzip_and_latin1_files(store, tmp_path):
    g = tmp_path / "r.dat.gz"
    g.write_bytes(gzip.compress(b"1::1::5::100\n1::2::x::101\n"))
    assert "line 2 column 'rating'" in refused(store, g, "non-numeric rating 'x'")
    q = tmp_path / "latin.csv"
    q.write_bytes("user,item,ts\nJos\xe9,1,5\nJos\xe9,2,later\n".encode("latin-1"))
    assert "line 3" in refused(store, q, "non-numeric timestamp 'later'")


def test_parquet_bad_values_name_the_row(store, tmp_path):
    p = tmp_path / "r.parquet"
    pq.write_table(pa.table({"user": [1, 2], "item": [1, 2], "ts": [1, None]}), p)
    assert "row 2 column 'ts'" in refused(store, p, "missing timestamp")
    pq.write_table(pa.table({"user": [1, 2], "item": [1, 2], "ts": [1, 2], "rating": [1.0, np.nan]}), p)
    assert "row 2 column 'rating'" in refused(store, p, "non-finite rating 'nan'")
    pq.write_table(pa.table({"user": ["a", None], "item": [1, 2], "ts": [1, 2]}), p)
    refused(store, p, "row 2 column 'user': missing user id")


def test_corrupt_gzip_garbage_and_not_parquet(store, tmp_path):
    whole = gzip.compress(b"user,item,ts\n" + b"".join(b"%d,%d,%d\n" % (k, k, k) for k in range(200_000)))
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[: len(whole) // 2])  # a good start, then the stream ends
    refused(store, cut, "corrupt gzip")
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    refused(store, bad, "corrupt gzip")
    csv = tmp_path / "r.csv"
    csv.write_text("user,item,ts\n1,1,1\n")
    refused(store, csv, "not a readable Parquet file", fmt="parquet")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    refused(store, junk, "binary data")
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(b"PAR1" + b"\x00" * 64)
    refused(store, fake, "not a readable Parquet file")


def test_items_file_and_name_refused_first(store, tmp_path):
    p = tmp_path / "r.csv"
    p.write_text(_standard_body())
    before = _state(store)
    with pytest.raises(InputError, match="file not found: .*movies.dat"):
        store.import_file("no_items", InteractionFile(p), items=str(tmp_path / "movies.dat"))
    assert _state(store) == before
    store.import_file("taken", InteractionFile(p))
    before = _state(store)
    with pytest.raises(GroveError, match="already exists"):
        store.import_file("taken", InteractionFile(p))
    assert _state(store) == before


# ---------------------------------------------------------------------------- memory cap


def test_import_settings_set_and_restore(tmp_path, monkeypatch):
    path = tmp_path / "m.duckdb"
    con = duckdb.connect(str(path))
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET temp_directory = ?", [str(tmp_path / "elsewhere")])
    now = (
        "SELECT current_setting('memory_limit'), current_setting('temp_directory'), "
        "current_setting('preserve_insertion_order')"
    )
    before = con.execute(now).fetchone()
    monkeypatch.setenv(bulk_import.MEMORY_ENV, "300MB")
    with bulk_import.import_settings(con):
        assert con.execute(now).fetchone() == ("286.1 MiB", f"{path}.tmp", True)
    assert con.execute(now).fetchone() == before
    monkeypatch.setenv(bulk_import.MEMORY_ENV, "lots")
    with pytest.raises(GroveError, match="GROVE_IMPORT_MEMORY"):
        with bulk_import.import_settings(con):
            pass
    con.close()
