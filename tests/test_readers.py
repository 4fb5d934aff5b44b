"""Readers: every supported format round-trips to the same dense arrays; bad input raises
InputError naming file, line, column and value."""

from __future__ import annotations

import gzip
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grove.indexstore.categories import read_item_categories
from grove.indexstore.errors import GroveError, InputError
from grove.indexstore.readers import read_interactions

# (user, item, rating, ts) in file order; raw ids are numbers whose numeric and string orders differ
ROWS = [("10", "5", 4.0, 100), ("9", "30", 2.5, 50), ("10", "100", 5.0, 70), ("2", "5", 1.0, 10)]


def _expect_standard(inter):
    assert list(inter.user_raw) == ["2", "9", "10"]  # numeric order, not "10" < "2"
    assert list(inter.item_raw) == ["5", "30", "100"]
    np.testing.assert_array_equal(inter.user, [2, 1, 2, 0])
    np.testing.assert_array_equal(inter.item, [0, 1, 2, 0])
    np.testing.assert_array_equal(inter.ts, [100, 50, 70, 10])
    np.testing.assert_allclose(inter.rating, [4.0, 2.5, 5.0, 1.0])
    assert inter.user.dtype == np.int32 and inter.item.dtype == np.int32
    assert inter.ts.dtype == np.int64 and inter.rating.dtype == np.float32
    # raw ids map back to the file's values
    assert [(inter.user_raw[u], inter.item_raw[i]) for u, i in zip(inter.user, inter.item)] == [
        (r[0], r[1]) for r in ROWS
    ]


def test_csv_with_header(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("user_id,item_id,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in ROWS))
    _expect_standard(read_interactions(p))


def test_ml_latest_header_and_gzip(tmp_path):
    p = tmp_path / "ratings.csv.gz"
    body = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in ROWS)
    p.write_bytes(gzip.compress(body.encode()))
    _expect_standard(read_interactions(p))
    _expect_standard(read_interactions(p, fmt="ml-latest"))


def test_ml_dat_plain_and_gz(tmp_path):
    body = "".join(f"{u}::{i}::{int(r) if r == int(r) else r}::{t}\n" for u, i, r, t in ROWS)
    (tmp_path / "ratings.dat").write_text(body)
    (tmp_path / "ratings.dat.gz").write_bytes(gzip.compress(body.encode()))
    for name in ("ratings.dat", "ratings.dat.gz"):
        _expect_standard(read_interactions(tmp_path / name))
    _expect_standard(read_interactions(tmp_path / "ratings.dat", fmt="ml-dat"))


def test_ml_100k_tab_separated(tmp_path):
    p = tmp_path / "u.data"
    p.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS))
    _expect_standard(read_interactions(p))
    _expect_standard(read_interactions(p, fmt="ml-100k"))


def test_parquet(tmp_path):
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
    _expect_standard(read_interactions(p))


def test_parquet_temporal_columns(tmp_path):
    import datetime as dt

    p = tmp_path / "t.parquet"
    stamps = [dt.datetime(2020, 1, 2, 0, 0, 1, 500000), dt.datetime(2020, 1, 2)]
    pq.write_table(
        pa.table(
            {
                "user": ["u1", "u2"],
                "item": [3, 4],
                "ts": pa.array(stamps, pa.timestamp("us")),
                "day": pa.array([dt.date(2020, 1, 2)] * 2),
            }
        ),
        p,
    )
    np.testing.assert_array_equal(read_interactions(p).ts, [1577923201, 1577923200])
    np.testing.assert_array_equal(read_interactions(p, time_col="day").ts, [1577923200] * 2)


def test_latin1_and_byte_order_mark(tmp_path):
    p = tmp_path / "r.csv"
    p.write_bytes(b"\xef\xbb\xbfuserId,movieId,timestamp\n1,2,3\n")
    assert list(read_interactions(p).user_raw) == ["1"]
    p.write_bytes("user,item,ts\nJos\xe9,1,5\n".encode("latin-1"))
    assert list(read_interactions(p).user_raw) == ["Jos\xe9"]


def test_named_columns_strings_dates_behaviour(tmp_path):
    p = tmp_path / "events.tsv"
    p.write_text(
        "who\twhat\twhen\tkind\n"
        "bob\t007\t2020-01-02\tclick\n"
        "alice\t7\t2020-01-02T00:00:10\tbuy\n"
        "bob\t7\t2020-01-02 00:01:00\tclick\n"
    )
    inter = read_interactions(p, user_col="who", item_col="what", time_col="when", behavior_col="kind")
    assert list(inter.user_raw) == ["alice", "bob"]  # not all numeric: lexicographic
    assert list(inter.item_raw) == ["7", "007"] or list(inter.item_raw) == ["007", "7"]
    assert inter.item_raw[inter.item[0]] == "007"  # raw ids kept exactly
    base = 1577923200  # 2020-01-02T00:00:00Z
    np.testing.assert_array_equal(inter.ts, [base, base + 10, base + 60])
    assert inter.rating is None
    assert list(inter.behavior) == ["click", "buy", "click"]


def test_iso_with_offset_and_blank_lines(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("user,item,time\n1,1,2020-01-02T01:00:00+01:00\n\n2,1,2020-01-02T00:00:00Z\n")
    inter = read_interactions(p)
    np.testing.assert_array_equal(inter.ts, [1577923200, 1577923200])


def test_semicolon_and_case_insensitive_names(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("USER;Item;TS\n3;a;5\n1;b;6\n")
    inter = read_interactions(p, item_col="item")
    assert list(inter.user_raw) == ["1", "3"] and list(inter.item_raw) == ["a", "b"]


# ------------------------------------------------------------------------------ bad input


def _raises(path, match, **kw):
    with pytest.raises(InputError, match=match) as err:
        read_interactions(path, **kw)
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, GroveError)
    return msg


def test_missing_and_empty_files(tmp_path):
    _raises(tmp_path / "nope.csv", "file not found")
    (tmp_path / "empty.csv").write_text("")
    _raises(tmp_path / "empty.csv", "empty")
    (tmp_path / "header.csv").write_text("user,item,ts\n")
    _raises(tmp_path / "header.csv", "no interactions")
    with pytest.raises(InputError, match="unknown format"):
        read_interactions(tmp_path / "header.csv", fmt="xml")


def test_missing_or_misnamed_column_lists_columns(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("user,product,ts\n1,2,3\n")
    msg = _raises(p, "no item column")
    assert "columns found: user, product, ts" in msg
    msg = _raises(p, "'prod'", item_col="prod")
    assert "columns found: user, product, ts" in msg
    _raises(p, "'stars'", item_col="product", rating_col="stars")


def test_non_numeric_timestamp_and_rating_name_line_and_value(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("user,item,rating,ts\n1,1,4,100\n1,2,5,101\n2,1,3,yesterday\n")
    msg = _raises(p, "non-numeric timestamp")
    assert "line 4" in msg and "'ts'" in msg and "'yesterday'" in msg and str(p) in msg
    p.write_text("user,item,rating,ts\n1,1,4,100\n1,2,five,101\n")
    msg = _raises(p, "non-numeric rating")
    assert "line 3" in msg and "'rating'" in msg and "'five'" in msg
    p.write_text("user,item,ts\n1,1,2020-01-01\n1,2,2020-13-45\n")
    assert "line 3" in _raises(p, "non-numeric timestamp")


def test_malformed_line_reports_its_number(tmp_path):
    p = tmp_path / "ratings.dat"
    p.write_text("1::1::5::100\n1::2::4::101\n1::3::4\n")
    msg = _raises(p, "malformed line")
    assert "line 3" in msg and "expected 4 fields, found 3" in msg
    p = tmp_path / "r.csv"
    p.write_text("user,item,ts\n1,1,100\n1,2,101,7\n")
    assert "line 3" in _raises(p, "malformed line")


def test_missing_id(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("user,item,ts\n1,1,100\n,2,101\n")
    msg = _raises(p, "missing user id")
    assert "line 3" in msg
    p.write_text("user,item,ts\n1,1,100\n1, ,101\n")
    assert "line 3" in _raises(p, "missing item id")


# ------------------------------------------------------------------------------ categories


def test_movies_dat_latin1_and_random_keep(tmp_path):
    p = tmp_path / "movies.dat"
    p.write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Caf\xe9 (1999)::Drama\n"
        "3::Unseen::Horror\n"
        "4::Nothing::(no genres listed)\n".encode("latin-1")
    )
    item_raw = np.array(["1", "2", "4", "9"])
    cats = read_item_categories(p, item_raw, seed=0)
    assert cats.kept[0] in ("Animation", "Children's", "Comedy")
    assert cats.kept[1] == "Drama" and cats.kept[2] is None and cats.kept[3] is None
    pairs = sorted(zip(cats.pair_item.tolist(), cats.pair_category.tolist()))
    assert pairs == [(0, "Animation"), (0, "Children's"), (0, "Comedy"), (1, "Drama")]
    # same seed same choice; across seeds every category of item 0 gets chosen
    assert read_item_categories(p, item_raw, seed=0).kept[0] == cats.kept[0]
    chosen = {read_item_categories(p, item_raw, seed=s).kept[0] for s in range(40)}
    assert chosen == {"Animation", "Children's", "Comedy"}


def test_movies_csv_quoted_titles_and_generic_csv(tmp_path):
    p = tmp_path / "movies.csv"
    p.write_text(
        'movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama|Romance\n2,Heat (1995),Action\n'
    )
    cats = read_item_categories(p, np.array(["1", "2", "3"]), seed=1)
    assert cats.kept[0] in ("Comedy", "Drama", "Romance") and cats.kept[1] == "Action"
    assert cats.kept[2] is None and len(cats.pair_item) == 4
    g = tmp_path / "cats.csv"
    g.write_text("item,category\nb,x\na,y\nb,z\nb,x\n")
    cats = read_item_categories(g, np.array(["a", "b"]), seed=0)
    assert cats.kept[0] == "y" and cats.kept[1] in ("x", "z")
    assert sorted(zip(cats.pair_item.tolist(), cats.pair_category.tolist())) == [(0, "y"), (1, "x"), (1, "z")]


def test_category_bad_input(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_item_categories(tmp_path / "none.dat", np.array(["1"]), 0)
    p = tmp_path / "movies.dat"
    p.write_text("1::A::Drama\n2::B\n")
    with pytest.raises(InputError, match="line 2"):
        read_item_categories(p, np.array(["1"]), 0)
    c = tmp_path / "c.csv"
    c.write_text("item,label\n1,x\n")
    with pytest.raises(InputError, match="columns found: item, label"):
        read_item_categories(c, np.array(["1"]), 0)


# ------------------------------------------------------------------------------ shared data


@pytest.mark.dataset
def test_ml_1m_subset(shared_datasets):
    t = time.perf_counter()
    inter = read_interactions(shared_datasets / "ml-1m-subset" / "ratings_users0001-2999.dat.gz")
    elapsed = time.perf_counter() - t
    assert len(inter) == 487_650 and inter.n_users == 2999
    assert inter.user_raw[0] == "1" and inter.user_raw[-1] == "2999"
    assert elapsed < 5.0
    cats = read_item_categories(shared_datasets / "ml-1m-subset" / "movies.dat", inter.item_raw, seed=0)
    assert len(cats.kept) == inter.n_items and all(k is not None for k in cats.kept)


@pytest.mark.dataset
def test_ml_latest_small(shared_datasets):
    inter = read_interactions(shared_datasets / "ml-latest-small" / "ratings.csv")
    assert (len(inter), inter.n_users, inter.n_items) == (100_836, 610, 9_724)
    cats = read_item_categories(shared_datasets / "ml-latest-small" / "movies.csv", inter.item_raw, 0)
    assert len(cats.kept) == 9_724
    assert 0 < sum(k is None for k in cats.kept) < 100  # "(no genres listed)" movies
