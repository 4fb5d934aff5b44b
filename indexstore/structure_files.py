"""An index structure as Parquet files with raw item ids, and back (``grove export`` /
``grove import-index``).

Files, for a tree (or each tree of a forest, told apart by ``tree``):

* ``items.parquet``: ``item`` (dense id, int64), ``raw`` (the dataset's item id, string), one row
  per item in dense order: the numbering every other file and the model weights use.
* ``nodes.parquet``: ``tree``, ``node`` (breadth-first, root 0), ``level``, ``parent`` (-1 at the
  root), ``item`` (dense id at a leaf, -1 inside), ``raw`` (the leaf's raw item id, null inside).
* ``edges.parquet``: ``tree``, ``parent``, ``child``, ``position`` (the child's index among its
  siblings), one row per non-root node.
* ``item_paths.parquet``: ``tree``, ``item``, ``raw``, ``leaf``, ``path`` (child positions root
  -> leaf).

For Deep Retrieval's path codes, ``items.parquet`` and ``item_paths.parquet`` only: ``path``
(``j`` of J), ``item``, ``raw``, ``codes`` (D codes in [0, K)), ``score``. Item vectors (the
two-tower's) go to ``item_vectors.parquet``: ``item``, ``raw``, ``vector``.

Reading back checks the files against each other and rebuilds a validated structure
(`Tree`, `Forest`, `PathCodes`); a file that does not fit raises `InputError` naming it.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from grove.indexstore.errors import InputError, StructureError
from grove.indexstore.structures import Forest, PathCodes, Structure, Tree
from grove.indexstore.version_io import leaf_paths, list_array

ITEMS, NODES, EDGES, PATHS = "items.parquet", "nodes.parquet", "edges.parquet", "item_paths.parquet"
VECTORS = "item_vectors.parquet"


def _raw(raw_ids: np.ndarray, dense: np.ndarray) -> pa.Array:
    """Raw ids of dense ids, null where the dense id is -1."""
    inside = dense < 0
    return pa.array(raw_ids[np.maximum(dense, 0)].astype(str), mask=inside, type=pa.string())


def write_structure(structure: Structure, raw_ids: np.ndarray, folder: pathlib.Path) -> list[str]:
    """Write ``structure`` (dense item ids) with ``raw_ids`` (n_items,) into ``folder``; returns
    the file names written."""
    n = structure.n_items
    if raw_ids.shape[0] != n:
        raise InputError(f"the index has {n} items but its dataset has {raw_ids.shape[0]}")
    dense = np.arange(n, dtype=np.int64)
    pq.write_table(pa.table({"item": dense, "raw": pa.array(raw_ids.astype(str))}), folder / ITEMS)
    if isinstance(structure, PathCodes):
        _, j, d = structure.codes.shape
        table = pa.table(
            {
                "path": np.tile(np.arange(j, dtype=np.int32), n),
                "item": np.repeat(dense, j),
                "raw": pa.array(np.repeat(raw_ids.astype(str), j)),
                "codes": list_array(np.full(n * j, d, dtype=np.int32), structure.codes.reshape(-1)),
                "score": structure.scores.reshape(-1).astype(np.float32),
            }
        )
        pq.write_table(table, folder / PATHS)
        return [ITEMS, PATHS]
    trees = structure.trees if isinstance(structure, Forest) else (structure,)
    nodes, edges, paths = [], [], []
    for t, tree in enumerate(trees):
        m = tree.n_nodes
        node = np.arange(m, dtype=np.int64)
        col = np.full(m, t, dtype=np.int32)
        nodes.append(
            pa.table(
                {
                    "tree": col,
                    "node": node,
                    "level": tree.level.astype(np.int32),
                    "parent": tree.parent,
                    "item": tree.item,
                    "raw": _raw(raw_ids, tree.item),
                }
            )
        )
        edges.append(
            pa.table(
                {
                    "tree": col[1:],
                    "parent": tree.parent[1:],
                    "child": node[1:],
                    "position": tree.child_index[1:].astype(np.int32),
                }
            )
        )
        leaves, lengths, values = leaf_paths(tree)
        items = tree.item[leaves]
        paths.append(
            pa.table(
                {
                    "tree": np.full(leaves.shape[0], t, dtype=np.int32),
                    "item": items,
                    "raw": _raw(raw_ids, items),
                    "leaf": leaves,
                    "path": list_array(lengths, values),
                }
            )
        )
    pq.write_table(pa.concat_tables(nodes), folder / NODES)
    pq.write_table(pa.concat_tables(edges), folder / EDGES)
    pq.write_table(pa.concat_tables(paths), folder / PATHS)
    return [ITEMS, NODES, EDGES, PATHS]


def write_item_vectors(vectors: np.ndarray, raw_ids: np.ndarray, folder: pathlib.Path) -> str:
    """``item_vectors.parquet``: ``item``, ``raw``, ``vector`` (d float32) per item; returns its name."""
    n, d = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(flat, d)
    items = np.arange(n, dtype=np.int64)
    pq.write_table(pa.table({"item": items, "raw": pa.array(raw_ids.astype(str)), "vector": column}), folder / VECTORS)
    return VECTORS


def read_items(folder: pathlib.Path) -> np.ndarray:
    """The raw item ids (n_items,) in dense order, checked to number 0..n-1."""
    t = _read(folder, ITEMS, ("item", "raw"))
    dense = np.asarray(t.column("item"), dtype=np.int64)
    if not np.array_equal(dense, np.arange(dense.shape[0])):
        raise InputError(f"{folder / ITEMS}: column 'item' must be 0..n-1 in order")
    return np.asarray(t.column("raw").to_pylist(), dtype=object)


def read_structure(folder: pathlib.Path, kind: str, n_items: int, arity: int) -> Structure:
    """The structure of ``kind`` ('tree', 'forest', 'codes') written by `write_structure`."""
    try:
        if kind == "codes":
            return _read_codes(folder, n_items, arity)
        t = _read(folder, NODES, ("tree", "node", "parent", "item"))
        tree_no = np.asarray(t.column("tree"), dtype=np.int64)
        node = np.asarray(t.column("node"), dtype=np.int64)
        parent = np.asarray(t.column("parent"), dtype=np.int64)
        item = np.asarray(t.column("item"), dtype=np.int64)
        trees = []
        for no in range(int(tree_no.max()) + 1 if tree_no.size else 0):
            at = tree_no == no
            if not np.array_equal(node[at], np.arange(int(at.sum()))):
                raise InputError(f"{folder / NODES}: tree {no}'s nodes must be 0..m-1 in order")
            trees.append(Tree(parent[at], item[at], n_items, arity))
        if not trees:
            raise InputError(f"{folder / NODES}: no nodes")
        if kind == "tree":
            if len(trees) != 1:
                raise InputError(f"{folder / NODES}: a tree index holds one tree, found {len(trees)}")
            return trees[0]
        return Forest(tuple(trees))
    except StructureError as exc:
        raise InputError(f"{folder}: the structure is broken: {exc}") from None


def _read_codes(folder: pathlib.Path, n_items: int, arity: int) -> PathCodes:
    t = _read(folder, PATHS, ("path", "item", "codes", "score"))
    j = np.asarray(t.column("path"), dtype=np.int64)
    item = np.asarray(t.column("item"), dtype=np.int64)
    n_paths = int(j.max()) + 1 if j.size else 0
    if t.num_rows != n_items * n_paths or not np.array_equal(item * n_paths + j, np.arange(t.num_rows)):
        raise InputError(f"{folder / PATHS}: expected {n_paths} paths per item for items 0..{n_items - 1}, in order")
    codes = t.column("codes").combine_chunks()
    depth = int(codes.value_lengths()[0].as_py()) if t.num_rows else 0
    values = np.asarray(codes.flatten(), dtype=np.int64)
    if values.shape[0] != t.num_rows * depth:
        raise InputError(f"{folder / PATHS}: every path must have {depth} codes")
    scores = np.asarray(t.column("score"), dtype=np.float32).reshape(n_items, n_paths)
    try:
        return PathCodes(values.reshape(n_items, n_paths, depth), scores, arity)
    except StructureError as exc:
        raise InputError(f"{folder / PATHS}: {exc}") from None


def _read(folder: pathlib.Path, name: str, columns: tuple[str, ...]) -> pa.Table:
    path = folder / name
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable parquet file ({exc})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r}")
    return table
