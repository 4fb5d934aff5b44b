"""Versions in the store: exact round trips, integrity checks, resolve, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from grove.indexstore.engine import make_engine
from grove.indexstore.entities import MetricRow
from grove.indexstore.errors import GroveError, IntegrityError, NotFoundError, StructureError
from grove.indexstore.store import Store
from grove.indexstore.structures import Forest, PathCodes, Tree


@pytest.fixture
def store(store_url) -> Store:
    Store.init(store_url)
    return Store.open(store_url)


def _tamper(url: str, sql: str, params: dict) -> None:
    """Change stored rows behind the store's back (either backend)."""
    engine = make_engine(url)
    with engine.begin() as con:
        con.execute(sa.text(sql), params)
    engine.dispose()


def ragged_tree(n: int, seed: int) -> Tree:
    """A random tree with leaves at different depths (via from_parents)."""
    rng = np.random.default_rng(seed)
    parent, item = [-1], [-1]
    frontier = [0]
    for it in range(n):  # attach each item as a leaf under a random internal node
        p = frontier[rng.integers(len(frontier))]
        if rng.random() < 0.3:  # sometimes add an internal node first
            parent.append(p)
            item.append(-1)
            frontier.append(len(parent) - 1)
            p = len(parent) - 1
        parent.append(p)
        item.append(it)
    # internal nodes without children would be leaves without items: give them a duplicate item
    kids = np.bincount(np.asarray(parent[1:]), minlength=len(parent))
    for node in np.flatnonzero((kids == 0) & (np.asarray(item) < 0)):
        item[node] = int(rng.integers(n))
    return Tree.from_parents(np.asarray(parent), np.asarray(item), n)


def complete_tree(n: int, k: int, depth: int, seed: int) -> Tree:
    """Complete K-ary tree of K^depth leaves over n items (items duplicated to fill it)."""
    rng = np.random.default_rng(seed)
    leaves = k**depth
    items = np.concatenate([rng.permutation(n), rng.integers(0, n, leaves - n)])
    digits = (np.arange(leaves)[:, None] // k ** np.arange(depth - 1, -1, -1)) % k
    return Tree.from_paths(digits, items, n, k)


def test_tree_round_trip_exact(store):
    tree = ragged_tree(200, 0)
    info = store.write_version(
        "t", "tdm", tree, {"method": "tdm", "config": {"epochs": 2}}, artifacts={"weights.pt": b"\x00\x01" * 100}
    )
    got, back, arts = store.read_version(info.id)
    assert back.equals(tree) and np.array_equal(back.level, tree.level)
    assert arts == {"weights.pt": b"\x00\x01" * 100}
    assert got.config == {"method": "tdm", "config": {"epochs": 2}} and got.status == "ready"
    # item_paths holds one row per leaf with its K-way path
    cols, rows = store.query(f"SELECT leaf, path FROM item_paths WHERE version_id = {info.id} ORDER BY leaf")
    leaves, _, paths = tree.leaf_paths()
    assert [r[0] for r in rows] == leaves.tolist()
    assert all(r[1] == [int(c) for c in p if c >= 0] for r, p in zip(rows, paths))


def test_forest_round_trip_with_duplicated_items(store):
    forest = Forest((complete_tree(50, 4, 3, 1), complete_tree(50, 4, 3, 2), ragged_tree(50, 3)))
    info = store.write_version("f", "recforest", forest, {})
    back = store.read_structure(info.id)
    assert isinstance(back, Forest) and back.equals(forest)
    _, rows = store.query(f"SELECT count(*) FROM v_multi_leaf_items WHERE version_id = {info.id} AND tree = 0")
    assert rows[0][0] > 0  # 64 leaves over 50 items: some items sit at two leaves


def test_codes_round_trip_exact(store):
    rng = np.random.default_rng(0)
    ids = np.stack([rng.choice(7**3, 3, replace=False) for _ in range(100)])
    codes = (ids[:, :, None] // 7 ** np.arange(2, -1, -1)) % 7
    pc = PathCodes(codes, rng.standard_normal((100, 3)).astype(np.float32), 7)
    info = store.write_version("dr", "dr", pc, {"J": 3})
    back = store.read_structure(info.id)
    assert back.equals(pc)
    _, rows = store.query(f"SELECT used_paths, arity, depth FROM v_path_summary WHERE version_id = {info.id}")
    assert rows[0] == (np.unique(pc.path_ids()).size, 7, 3)


def test_artifacts_round_trip_through_chunks(store, store_url):
    """An artifact's bytes are stored as 64 KiB rows in order and read back exactly; an empty
    artifact has no rows."""
    from grove.indexstore.version_io import ARTIFACT_CHUNK, CHUNKS_PER_WRITE

    big = np.random.default_rng(0).bytes(ARTIFACT_CHUNK * (CHUNKS_PER_WRITE + 2) + 123)  # two bulk writes
    arts = {"big.pt": big, "empty": b"", "small": b"abc"}
    ints = np.arange(3, dtype=np.int32)  # any bytes-like value is taken as it is, counted in bytes
    given = {**arts, "small": bytearray(b"abc"), "view": memoryview(ints)}
    info = store.write_version("t", "tdm", ragged_tree(20, 0), {}, artifacts=given)
    assert store.read_version(info.id)[2] == {**arts, "view": ints.tobytes()}
    engine = make_engine(store_url)
    with engine.connect() as con:
        rows = con.execute(
            sa.text(
                "SELECT name, count(*), max(seq), max(octet_length(data)) FROM artifact_chunks "
                "WHERE version_id = :v GROUP BY name ORDER BY name"
            ),
            {"v": info.id},
        ).all()
    engine.dispose()
    n_big = -(-len(big) // ARTIFACT_CHUNK)
    assert [tuple(r) for r in rows] == [
        ("big.pt", n_big, n_big - 1, ARTIFACT_CHUNK),
        ("small", 1, 0, 3),
        ("view", 1, 0, 12),
    ]


def test_tampered_artifact_is_refused(store, store_url):
    info = store.write_version("t", "tdm", ragged_tree(20, 0), {}, artifacts={"w": b"abcdef"})
    _tamper(store_url, "UPDATE artifact_chunks SET data = :d WHERE version_id = :v", {"d": b"abcdeX", "v": info.id})
    with pytest.raises(IntegrityError, match="sha256"):
        store.read_version(info.id)


def test_misplaced_artifact_chunk_is_refused(store, store_url):
    info = store.write_version("t", "tdm", ragged_tree(20, 0), {}, artifacts={"w": b"abcdef"})
    _tamper(store_url, "UPDATE artifact_chunks SET seq = 7 WHERE version_id = :v", {"v": info.id})
    with pytest.raises(IntegrityError, match="sha256"):
        store.read_version(info.id)


def test_broken_stored_structure_is_refused(store, store_url):
    info = store.write_version("t", "tdm", ragged_tree(20, 0), {})
    _tamper(store_url, "UPDATE nodes SET parent = node WHERE version_id = :v AND node = 5", {"v": info.id})  # cycle
    with pytest.raises(StructureError, match="broken"):
        store.read_structure(info.id)


def test_misuse_raises_and_leaves_store_unchanged(store):
    t = ragged_tree(20, 0)
    v1 = store.write_version("t", "tdm", t, {})
    with pytest.raises(GroveError, match="holds tdm tree"):
        store.write_version("t", "dr", PathCodes(np.zeros((20, 1, 2)), np.zeros((20, 1)), 2), {})
    with pytest.raises(NotFoundError):
        store.write_version("t", "tdm", t, {}, parent_id=999)
    with pytest.raises(NotFoundError, match="unknown dataset"):
        store.write_version("t", "tdm", t, {}, dataset="nope")
    with pytest.raises(GroveError, match="JSON"):
        store.write_version("t", "tdm", t, {"x": object()})
    with pytest.raises(GroveError):
        store.write_version("t", "tdm", "not a tree", {})
    assert [v.id for v in store.list_versions()] == [v1.id]
    with pytest.raises(NotFoundError):
        store.read_version(v1.id + 100)


def test_resolve_and_metrics(store):
    t = ragged_tree(20, 0)
    a = store.write_version("t", "tdm", t, {})
    b = store.write_version("t", "tdm", t, {}, parent_id=a.id)
    other = store.write_version("u", "tdm", t, {})
    assert store.resolve("t").id == b.id  # newest when no production alias
    store.set_alias("t", "production", a.id, "first")
    assert store.resolve("t").id == a.id
    assert store.resolve("t", version=b.id).id == b.id
    with pytest.raises(GroveError, match="belongs to index"):
        store.resolve("t", version=other.id)
    with pytest.raises(NotFoundError):
        store.resolve("t", alias="staging")
    with pytest.raises(NotFoundError):
        store.resolve("nope")
    store.record_metrics(
        b.id,
        [
            MetricRow("valid", "recall", 10, 0.25, 50, True),
            {"role": "valid", "name": "precision", "k": 10, "value": 0.5, "beam": 50, "filtered": True},
        ],
    )
    got = store.metrics(b.id)
    assert {(m.name, m.value) for m in got} == {("recall", 0.25), ("precision", 0.5)}
    assert [v.id for v in store.lineage(b.id)] == [b.id, a.id]
    _, rows = store.query(f"SELECT ancestor_id, depth FROM v_lineage WHERE version_id = {b.id} ORDER BY depth")
    assert rows == [(b.id, 0), (a.id, 1)]


def test_diff_counts_moved_items(store):
    t1 = complete_tree(16, 2, 4, 0)
    _, items, paths = t1.leaf_paths()
    swapped = items.copy()
    swapped[[0, 15]] = swapped[[15, 0]]  # two items trade places at opposite ends of the tree
    t2 = Tree.from_paths(paths, swapped, 16, 2)
    a = store.write_version("t", "tdm", t1, {})
    b = store.write_version("t", "tdm", t2, {})
    d = store.diff(a.id, b.id)
    part = d.parts[0]
    assert part.n_moved == 2 and set(part.sample) == {int(items[0]), int(items[15])}
    assert part.agreement[0] == 1.0 and part.agreement[1] == pytest.approx(14 / 16)
    _, rows = store.query(f"SELECT count(*) FROM item_moves({a.id}, {b.id})")
    assert rows[0][0] == 2
