"""Batch retrieval and evaluation as a job (issue 26): `grove retrieve --users-file/--split --out` and
`grove eval --ray`, in process and on a local Ray (the real engines, ``ray.init(num_cpus=2)``).

* a job's rows are the retriever's answers for the same histories, in input order, ranks from 1;
* a Ray run (2 actors) writes the in-process run's file, row for row;
* ``--split``: the held-out users of the split, the lists the model gives their histories;
* ``grove eval --ray`` stores the in-process evaluation's metrics, value for value;
* bad input: one-line error, exit 2, no output file (not even a partial one);
* the one-history ``grove retrieve`` still answers as before.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grove.flows import steps
from grove.flows.cli import main
from grove.indexstore.store import Store
from grove.models.lifecycle import Recipe, split_data
from grove.models.retriever import Retriever

TDM = {"epochs": 1, "dim": 8, "hidden": [16, 8], "max_samples": 1500, "neg_base": 1.0, "device": "cpu"}
INDEX = "batch-tdm"


@pytest.fixture(scope="module")
def url(make_synth_store) -> str:
    """A store with an untrained (construct) and a trained TDM version of INDEX."""
    url = make_synth_store("batch", n_items=300, n_users=400, seed=3)
    vid = steps.construct(url, INDEX, "tdm", TDM, "synth").version_id
    steps.train(url, vid)
    return url


@pytest.fixture(scope="module")
def users_file(url, tmp_path_factory) -> str:
    """200 users (string ids) with histories of raw ids: random lengths, an empty and a null
    history, unknown ids."""
    raw = Store.open(url).item_raw_ids("synth")
    rng = np.random.default_rng(0)
    hist = [[str(x) for x in rng.choice(raw, int(rng.integers(1, 30)))] for _ in range(200)]
    hist[5], hist[6], hist[7] = [], None, ["no-such-item", str(raw[3]), "nor-this"]
    path = tmp_path_factory.mktemp("users") / "users.parquet"
    pq.write_table(pa.table({"user": [f"u{i}" for i in range(200)], "history": hist}), path, row_group_size=70)
    return str(path)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for this module (2 CPUs, no dashboard), shut down after it."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def grove(url, *args) -> int:
    return main(["--store", url, *args])


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- in process
def test_rows_are_the_retrievers_answers_in_input_order(url, users_file, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    args = ["retrieve", INDEX, "--users-file", users_file, "--out", str(out), "--k", "7", "--beam", "20"]
    assert grove(url, *args, "--batch-size", "200") == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "for 200 users" in captured.out
    assert "2 unknown item id(s) ignored" in captured.err
    got = pq.read_table(out)
    assert got.schema.names == ["user", "rank", "item", "score"]
    assert (got.schema.field("rank").type, got.schema.field("score").type) == (pa.int32(), pa.float32())

    # the same 200 histories in one retrieve_raw call (one chunk, the job's batch size)
    table = pq.read_table(users_file)
    hist = [h or [] for h in table["history"].to_pylist()]
    retriever = Retriever.load(Store.open(url), INDEX, device="cpu")
    with pytest.warns(UserWarning, match="unknown"):
        res = retriever.retrieve_raw(hist, 7, 20)
    want = [(u, r + 1, i, s) for u, items, scores in zip(table["user"].to_pylist(), res.items, res.scores)
            for r, (i, s) in enumerate(zip(items, scores)) if i is not None]  # fmt: skip
    rows = list(zip(*(got[c].to_pylist() for c in got.schema.names)))
    assert [r[:3] for r in rows] == [w[:3] for w in want]
    np.testing.assert_array_equal(got["score"].to_numpy(), np.asarray([w[3] for w in want], dtype=np.float32))
    assert {"u5", "u6"} <= set(got["user"].to_pylist())  # empty / null history: the prior's answer

    # smaller chunks (cut across row groups) answer every user the same way without exclude_seen
    small = tmp_path / "small.parquet"
    assert grove(url, *args[:4], "--out", str(small), "--k", "7", "--beam", "20", "--batch-size", "32") == 0
    assert pq.read_table(small).select(["user", "rank", "item"]).equals(got.select(["user", "rank", "item"]))


def test_integer_ids_and_exclude_seen(url, tmp_path):
    """Integer user and item ids read as the dataset's raw ids; exclude_seen drops the history."""
    raw = Store.open(url).item_raw_ids("synth")
    hist = [[int(x) for x in raw[i : i + 12]] for i in range(0, 120, 12)]
    src = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"user": np.arange(10, dtype=np.int32), "history": hist}), src)
    out = tmp_path / "recs.parquet"
    assert grove(url, "retrieve", INDEX, "--users-file", str(src), "--out", str(out), "--k", "5", "--exclude-seen") == 0
    got = pq.read_table(out)
    assert got.schema.field("user").type == pa.int32()
    for user, items in zip(range(10), hist):
        mine = got.filter(pa.compute.equal(got["user"], user))
        assert mine["rank"].to_pylist() == list(range(1, mine.num_rows + 1))
        assert not {str(i) for i in items} & set(mine["item"].to_pylist())


def test_split_mode_is_the_held_out_users(url, tmp_path):
    out = tmp_path / "split.parquet"
    assert grove(url, "retrieve", INDEX, "--split", "default", "--role", "test", "--out", str(out), "--k", "5",
                 "--beam", "20", "--batch-size", "4096") == 0  # fmt: skip
    got = pq.read_table(out)
    store = Store.open(url)
    vid = store.resolve(INDEX).id
    held = split_data(store, "synth", "default", Recipe.from_json(store.version(vid).config).config).test
    users = store.user_raw_ids("synth")[held.users]
    assert list(dict.fromkeys(got["user"].to_pylist())) == list(users)
    retriever = Retriever.load(store, INDEX, version=vid, device="cpu")
    _, items = retriever.retrieve(held.seen(), 5, 20)  # (U, 5) dense, one batch as the job's
    want = [str(x) for row in retriever.item_ids.raw_of(items) for x in row if x != ""]
    assert got["item"].to_pylist() == want


def test_one_history_mode_still_answers(url, capsys):
    raw = Store.open(url).item_raw_ids("synth")
    assert grove(url, "retrieve", INDEX, "--history", ",".join(raw[:4]), "--k", "6", "--json") == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["items"]) == 6 and res["unknown"] == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--users-file", "{dir}/missing.parquet"], "missing.parquet: no such file"),
        (["--users-file", "{dir}/text.parquet"], "not a readable parquet file"),
        (["--users-file", "{dir}/nohistory.parquet"], "no column 'history'"),
        (["--users-file", "{dir}/floatuser.parquet"], "column 'user': expected integers or strings, got double"),
        (["--users-file", "{dir}/strhistory.parquet"], "column 'history': expected a list of item ids"),
        (["--users-file", "{dir}/nulluser.parquet"], "nulluser.parquet row 151 column 'user': the user is null"),
        (["--users-file", "{dir}/nullitem.parquet"], "nullitem.parquet row 3 column 'history': a null item id"),
        (["--users-file", "{users}", "--k", "0"], "argument --k: expected positive integers"),
        (["--users-file", "{users}", "--k", "301"], "is more than the index's 300 items"),
        (["--users-file", "{users}", "--beam", "100000"], "beam = 100,000 is above the maximum"),
        (["--users-file", "{users}", "--batch-size", "5000"], "batch size must be an integer in [1, 4,096]"),
        (["--users-file", "{users}", "--version", "1"], "never trained"),
        (["--users-file", "{users}", "--version", "999"], "unknown version 999"),
        (["--users-file", "{users}", "--alias", "nope"], "has no alias 'nope'"),
        (["--split", "nope"], "dataset 'synth' has no split 'nope'"),
        (["--users-file", "{users}", "--split", "default"], "one of them"),
        (["--users-file", "{users}", "--history", "1,2"], "--history is one user's history"),
        (["--users-file", "{users}", "--actors", "2"], "add --ray"),
    ],
)
def test_bad_input_exit_2_and_no_output(url, users_file, tmp_path, capsys, extra, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "text.parquet").write_text("user,history\n")
    pq.write_table(pa.table({"user": ["a"], "items": [["1"]]}), folder / "nohistory.parquet")
    pq.write_table(pa.table({"user": [1.5], "history": [["1"]]}), folder / "floatuser.parquet")
    pq.write_table(pa.table({"user": ["a"], "history": ["1,2"]}), folder / "strhistory.parquet")
    names = [f"u{i}" for i in range(200)]
    names[150] = None  # in the 5th chunk of 32: earlier chunks are written, then the job fails
    pq.write_table(pa.table({"user": names, "history": [["1"]] * 200}), folder / "nulluser.parquet")
    pq.write_table(
        pa.table({"user": ["a", "b", "c"], "history": [["1"], [], ["2", None]]}), folder / "nullitem.parquet"
    )
    before = leftovers(folder)
    args = [a.format(dir=folder, users=users_file) for a in extra]
    out = folder / "out.parquet"
    assert grove(url, "retrieve", INDEX, "--batch-size", "32", *args, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert leftovers(folder) == before  # neither the output nor its temporary file


def test_out_is_needed_and_an_old_file_survives_a_failure(url, users_file, tmp_path, capsys):
    assert grove(url, "retrieve", INDEX, "--users-file", users_file) == 2
    assert "--out FILE.parquet" in capsys.readouterr().err
    out = tmp_path / "recs.parquet"
    out.write_bytes(b"old")
    assert grove(url, "retrieve", INDEX, "--users-file", users_file, "--out", str(out), "--k", "0") == 2
    assert out.read_bytes() == b"old"


# ------------------------------------------------------------------------------ on Ray
def test_ray_run_writes_the_in_process_file(url, users_file, tmp_path, local_ray, capsys):
    common = ["retrieve", INDEX, "--users-file", users_file, "--k", "6", "--beam", "20", "--exclude-seen"]
    here, there = tmp_path / "here.parquet", tmp_path / "ray.parquet"
    assert grove(url, *common, "--out", str(here), "--batch-size", "16") == 0
    assert grove(url, *common, "--out", str(there), "--batch-size", "16", "--ray", "--actors", "2") == 0
    assert "for 200 users" in capsys.readouterr().out
    a, b = pq.read_table(here), pq.read_table(there)
    assert a.num_rows > 0 and a.equals(b)  # row for row, scores bit for bit


def test_ray_actor_errors_come_back_as_grove_errors(url, tmp_path, local_ray, capsys):
    names = [f"u{i}" for i in range(100)]
    names[70] = None
    src = tmp_path / "nulluser.parquet"
    pq.write_table(pa.table({"user": names, "history": [["1"]] * 100}), src)
    out = tmp_path / "out.parquet"
    assert grove(url, "retrieve", INDEX, "--users-file", str(src), "--out", str(out), "--batch-size", "8", "--ray") == 2
    assert "nulluser.parquet row 71 column 'user': the user is null" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["nulluser.parquet"]


def test_eval_on_ray_stores_the_in_process_metrics(url, local_ray, capsys):
    store = Store.open(url)
    vid = store.resolve(INDEX).id
    args = ["eval", INDEX, "--k", "5,10", "--beam", "10,20", "--users", "90", "--exhaustive-users", "40"]
    assert grove(url, *args, "--local") == 0
    first = store.metrics(vid)
    assert grove(url, *args, "--ray", "--actors", "2") == 0
    assert "2 Ray actors" in capsys.readouterr().out
    second = store.metrics(vid)[len(first) :]

    def values(rows):
        return [
            (r.role, r.name, r.k, r.beam, r.filtered, r.note, r.value) for r in rows if r.name != "users_per_second"
        ]

    assert len(first) == len(second) and values(first) == values(second)
    assert {r.name for r in second} >= {"recall", "precision", "fidelity", "users_per_second"}


@pytest.mark.slow
def test_split_mode_on_ray_writes_the_in_process_file(url, tmp_path, local_ray):
    """The users of a split travel in the parts (no file for the actors to read)."""
    common = ["retrieve", INDEX, "--split", "default", "--role", "valid", "--k", "4", "--batch-size", "8"]
    here, there = tmp_path / "here.parquet", tmp_path / "ray.parquet"
    assert grove(url, *common, "--out", str(here)) == 0
    assert grove(url, *common, "--out", str(there), "--ray", "--actors", "2", "--threads", "1") == 0
    assert pq.read_table(here).num_rows > 0 and pq.read_table(here).equals(pq.read_table(there))


def test_a_chunk_with_nothing_found_still_counts_its_users(tmp_path):
    """Its placeholder row (rank 0) carries the chunk's counts and is not written."""
    from grove.flows.batch_io import RowsWriter, output_schema
    from grove.flows.batch_retrieve import _chunk_rows, _write
    from grove.models.batch_retrieval import TopK

    empty = TopK(np.full((3, 4), -np.inf, np.float32), np.full((3, 4), -1), np.full((3, 4), ""), unknown=2)
    counts = [0, 0]
    out = tmp_path / "recs.parquet"
    with RowsWriter(str(out), output_schema(pa.string())) as writer:
        assert _write(_chunk_rows(pa.array(["a", "b", "c"]), empty), writer, counts) == 3
    assert counts == [3, 2] and pq.read_table(out).num_rows == 0
