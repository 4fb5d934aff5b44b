"""Moving index structures in and out of the store's tables through the bulk paths.

Every function here takes the bulk channel of an open transaction (`grove.indexstore.backends.bulk`:
DuckDB's registered arrow tables, or PostgreSQL's COPY) so that the caller decides the
transaction; arrays travel as pyarrow tables and come back as arrow/numpy, never row by row.
Artifacts: one row each in ``artifacts`` (sha256, size), their bytes in ``artifact_chunks``.

Layout (DESIGN.md):

* ``nodes(version_id, tree, node, level, parent, item)`` -- every node of every tree
  (``tree`` = index of the tree in a forest, 0 for a single tree).
* ``item_paths(version_id, tree, item, leaf, path INTEGER[], score)`` -- trees: one row per leaf
  with its K-way code from the root (score NULL); codes: one row per (item, j) with ``tree = j``,
  ``leaf`` NULL, the D codes and the path's score.

Reading a tree uses only ``nodes`` (``item_paths`` is derived, for SQL); the structure is rebuilt
through its validating constructor, so a broken stored structure raises `StructureError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from typing import cast

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from grove.indexstore.backends import Bulk
from grove.indexstore.entities import utcnow
from grove.indexstore.errors import IntegrityError, StructureError
from grove.indexstore.structures import Forest, PathCodes, Structure, Tree


# --------------------------------------------------------------------------------- shapes
def shape_of(structure: Structure) -> dict:
    """The parameters that rebuild ``structure`` exactly, stored as ``versions.shape``."""
    if isinstance(structure, PathCodes):
        return {
            "n_items": structure.n_items,
            "arity": structure.arity,
            "n_paths": structure.n_paths,
            "depth": structure.depth,
        }
    trees = structure.trees if isinstance(structure, Forest) else (structure,)
    n_nodes = [t.n_nodes for t in trees]
    return {
        "n_items": trees[0].n_items,
        "arity": trees[0].arity,
        "arities": [t.arity for t in trees],
        "n_trees": len(trees),
        "n_nodes": n_nodes,
        "depth": [t.depth for t in trees],
        "total_nodes": int(sum(n_nodes)),
    }


# ---------------------------------------------------------------------------------- trees
def leaf_paths(tree: Tree) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K-way codes of every leaf as a ragged array.

    Returns (leaves (L,) int64, lengths (L,) int32 = level of each leaf, values (sum lengths,)
    int32 = the codes root->leaf, leaf after leaf). Uses ``tree.node_paths`` when the tree has
    already computed it; otherwise walks up from the leaves only (depth passes over L leaves,
    no (M, depth) matrix).
    """
    leaves = tree.leaves
    lengths = tree.level[leaves].astype(np.int32)
    depth = tree.depth
    if "node_paths" in tree.__dict__:  # already cached by whoever built the tree
        paths = tree.node_paths[leaves]
    else:
        parent = tree.parent
        # breadth-first order: a node's siblings are contiguous, the first is the first node
        # whose parent equals its parent -> child index = node - first sibling.
        nodes = np.arange(tree.n_nodes, dtype=np.int64)
        child_index = nodes - np.searchsorted(parent, parent, side="left")
        paths = np.empty((leaves.shape[0], depth), dtype=np.int32)  # (L, depth)
        cur = leaves.copy()
        for d in range(depth, 0, -1):  # fill column d-1 for leaves at level >= d
            at = lengths >= d
            if at.all():
                paths[:, d - 1] = child_index[cur]
                cur = parent[cur]
            else:
                paths[at, d - 1] = child_index[cur[at]]
                cur[at] = parent[cur[at]]
    if (lengths == depth).all():
        values = np.ascontiguousarray(paths, dtype=np.int32).reshape(-1)
    else:
        values = paths[np.arange(depth)[None, :] < lengths[:, None]].astype(np.int32)
    return leaves, lengths, values


def list_array(lengths: np.ndarray, values: np.ndarray) -> pa.ListArray:
    """A ragged int32 column: row i holds the next ``lengths[i]`` of ``values``."""
    offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int32()))


def write_tree(bulk: Bulk, version_id: int, tree_no: int, tree: Tree) -> None:
    """Insert the nodes and leaf paths of one tree."""
    m = tree.n_nodes
    nodes = pa.table(
        {"node": np.arange(m, dtype=np.int64), "level": tree.level, "parent": tree.parent, "item": tree.item}
    )
    bulk.write("nodes", nodes, {"version_id": version_id, "tree": tree_no})
    leaves, lengths, values = leaf_paths(tree)
    paths = pa.table({"item": tree.item[leaves], "leaf": leaves, "path": list_array(lengths, values)})
    bulk.write("item_paths", paths, {"version_id": version_id, "tree": tree_no})  # score NULL


def read_tree(bulk: Bulk, version_id: int, tree_no: int, n_nodes: int, n_items: int, arity: int) -> Tree:
    """Rebuild one tree from ``nodes`` (validated: a broken structure raises StructureError)."""
    cols = bulk.numpy("SELECT node, parent, item FROM nodes WHERE version_id = $1 AND tree = $2", [version_id, tree_no])
    node = np.asarray(cols["node"], dtype=np.int64)
    if node.shape[0] != n_nodes:
        raise IntegrityError(
            f"version {version_id} tree {tree_no} has {node.shape[0]} nodes stored, expected {n_nodes}"
        )
    if n_nodes and (node.min() < 0 or node.max() >= n_nodes or np.bincount(node, minlength=n_nodes).max() != 1):
        raise StructureError(f"version {version_id} tree {tree_no}: node numbers are not 0..{n_nodes - 1}")
    # rows come back in any order: scatter by node number (no ORDER BY sort needed)
    parent = np.empty(n_nodes, dtype=np.int64)
    item = np.empty(n_nodes, dtype=np.int64)
    parent[node] = cols["parent"]
    item[node] = cols["item"]
    try:
        return Tree(parent, item, n_items, arity)
    except StructureError as exc:
        raise StructureError(f"version {version_id} tree {tree_no} is broken: {exc}") from exc


# ---------------------------------------------------------------------------------- codes
def write_codes(bulk: Bulk, version_id: int, codes: PathCodes) -> None:
    """One item_paths row per (item, j): tree = j, D codes, score."""
    n, j, d = codes.codes.shape
    lengths = np.full(n * j, d, dtype=np.int32)
    table = pa.table(
        {
            "tree": np.tile(np.arange(j, dtype=np.int32), n),
            "item": np.repeat(np.arange(n, dtype=np.int64), j),
            "path": list_array(lengths, codes.codes.reshape(-1)),
            "score": codes.scores.reshape(-1).astype(np.float64),
        }
    )
    bulk.write("item_paths", table, {"version_id": version_id})  # leaf NULL


def read_codes(bulk: Bulk, version_id: int, n_items: int, n_paths: int, depth: int, arity: int) -> PathCodes:
    """Rebuild the PathCodes of a codes version (validated)."""
    t = bulk.arrow("SELECT tree, item, path, score FROM item_paths WHERE version_id = $1", [version_id])
    rows = n_items * n_paths
    if t.num_rows != rows:
        raise IntegrityError(f"version {version_id} has {t.num_rows} path rows stored, expected {rows}")
    path = t.column("path").combine_chunks()
    lengths = np.asarray(path.value_lengths().fill_null(-1))
    if (lengths != depth).any():
        i = int(np.flatnonzero(lengths != depth)[0])
        raise StructureError(f"version {version_id}: a stored path has {lengths[i]} codes, expected {depth}")
    slot = np.asarray(t.column("tree")).astype(np.int64)
    item = np.asarray(t.column("item")).astype(np.int64)
    if (slot < 0).any() or (slot >= n_paths).any() or (item < 0).any() or (item >= n_items).any():
        raise StructureError(f"version {version_id}: a stored path has an item or slot out of range")
    where = item * n_paths + slot  # (rows,) flat position of (item, j)
    flat = np.asarray(path.flatten()).reshape(rows, depth)
    score = np.asarray(t.column("score").combine_chunks().fill_null(np.nan), dtype=np.float32)
    if np.array_equal(where, np.arange(rows)):  # rows came back in write order: no scatter
        codes, scores = flat, score
    else:
        if np.bincount(where, minlength=rows).max() != 1:
            raise StructureError(f"version {version_id}: an (item, path) pair is stored twice")
        codes = np.empty((rows, depth), dtype=np.int32)
        codes[where] = flat
        scores = np.empty(rows, dtype=np.float32)
        scores[where] = score
    try:
        return PathCodes(codes.reshape(n_items, n_paths, depth), scores.reshape(n_items, n_paths), arity)
    except StructureError as exc:
        raise StructureError(f"version {version_id} is broken: {exc}") from exc


# ------------------------------------------------------------------------------ version row
def insert_version_row(conn, row: dict, structure: Structure) -> int:
    """Insert a 'ready' version row (its fields in ``row``, the structure's shape derived);
    returns its id. ``conn``: the SQLAlchemy connection of the caller's transaction."""
    params = {**row, "created_at": utcnow(), "shape": json.dumps(shape_of(structure))}
    return conn.execute(
        sa.text(
            "INSERT INTO versions (index_name, kind, method, parent_id, dataset, split, status, config, created_at, "
            "flow_run_id, note, shape) VALUES (:index_name, :kind, :method, :parent_id, :dataset, :split, 'ready', "
            ":config, :created_at, :flow_run_id, :note, :shape) RETURNING id"
        ),
        params,
    ).scalar_one()


# ------------------------------------------------------------------------------ structure
def write_structure(bulk: Bulk, version_id: int, structure: Structure) -> None:
    if isinstance(structure, PathCodes):
        write_codes(bulk, version_id, structure)
        return
    trees = structure.trees if isinstance(structure, Forest) else (structure,)
    for t, tree in enumerate(trees):
        write_tree(bulk, version_id, t, tree)


def read_structure(bulk: Bulk, version_id: int, kind: str, shape: dict) -> Structure:
    if kind == "codes":
        return read_codes(bulk, version_id, shape["n_items"], shape["n_paths"], shape["depth"], shape["arity"])
    arities = shape.get("arities") or [shape["arity"]] * shape["n_trees"]
    trees = [
        read_tree(bulk, version_id, t, shape["n_nodes"][t], shape["n_items"], arities[t])
        for t in range(shape["n_trees"])
    ]
    return trees[0] if kind == "tree" else Forest(tuple(trees))


# ------------------------------------------------------------------------------ artifacts
ARTIFACT_CHUNK = 1 << 16  # bytes per artifact_chunks row (migration 0004 says why)
CHUNKS_PER_WRITE = 256  # chunks per bulk write: 16 MiB beside the artifact's own bytes


def write_artifacts(
    conn: sa.Connection, bulk: Bulk, version_id: int, artifacts: Mapping[str, bytes | bytearray | memoryview]
) -> None:
    """One ``artifacts`` row per artifact (sha256, size) and its bytes as ``artifact_chunks``
    rows of `ARTIFACT_CHUNK` bytes, ``seq`` 0, 1, ..."""
    step = ARTIFACT_CHUNK * CHUNKS_PER_WRITE
    for name, data in sorted(artifacts.items()):
        view = memoryview(data).cast("B")  # bytes, bytearray or a memoryview: counted in bytes
        conn.execute(
            sa.text("INSERT INTO artifacts (version_id, name, sha256, size) VALUES (:v, :n, :h, :s)"),
            {"v": version_id, "n": name, "h": hashlib.sha256(view).hexdigest(), "s": len(view)},
        )
        for first in range(0, len(view), step):
            parts = [
                bytes(view[at : at + ARTIFACT_CHUNK])
                for at in range(first, min(len(view), first + step), ARTIFACT_CHUNK)
            ]
            seq = first // ARTIFACT_CHUNK
            chunk = pa.table(
                {"seq": pa.array(range(seq, seq + len(parts)), pa.int32()), "data": pa.array(parts, pa.binary())}
            )
            bulk.write("artifact_chunks", chunk, {"version_id": version_id, "name": name})


def artifact_bytes(bulk: Bulk, version_id: int, name: str, sha256: str, size: int) -> bytes:
    """The bytes of one artifact, each chunk put in place by its ``seq`` as the rows stream in
    (no sort: memory is the artifact plus one batch of chunks); `IntegrityError` when they do not
    match the stored sha256 and size. Returned as the bytearray it was assembled in (bytes-like;
    a copy to ``bytes`` would double the peak for a model's weights)."""
    altered = IntegrityError(
        f"artifact {name!r} of version {version_id} does not match its "
        f"sha256 {sha256[:12]}...: the stored bytes were altered"
    )
    out = bytearray(size)
    seen = 0
    rows = bulk.rows(
        "SELECT seq, data FROM artifact_chunks WHERE version_id = $1 AND name = $2",
        [version_id, name],
        CHUNKS_PER_WRITE,
    )
    with contextlib.closing(rows):  # a raise below closes the stream (and its open result)
        for batch in rows:
            for seq, data in batch:
                at = seq * ARTIFACT_CHUNK
                if seq < 0 or at + len(data) > size:  # a row that cannot belong here
                    raise altered
                out[at : at + len(data)] = data
                seen += len(data)
    if seen != size or hashlib.sha256(out).hexdigest() != sha256:
        raise altered
    return cast(bytes, out)


def read_artifacts(conn: sa.Connection, bulk: Bulk, version_id: int) -> dict[str, bytes]:
    """All artifacts of a version; raises IntegrityError when bytes do not match their sha256."""
    listed = conn.execute(
        sa.text("SELECT name, sha256, size FROM artifacts WHERE version_id = :v ORDER BY name"), {"v": version_id}
    ).all()
    return {name: artifact_bytes(bulk, version_id, name, sha, size) for name, sha, size in listed}
