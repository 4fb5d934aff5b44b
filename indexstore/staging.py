"""A finished version that could not be written, kept in a file until it can be.

When a step (train, relearn, construct) finishes while another process holds the store's lock
for longer than the write waits (``GROVE_WRITE_WAIT`` seconds, default 600), its result is not
lost: `stage` saves the whole version -- what `Store.write_version` would have written: index,
method, recipe, lineage, structure and artifacts -- to ``<store file>.staged/<index>-v<parent>-<time>.npz``
(numpy arrays and bytes, no pickle), and ``grove versions write-staged FILE`` writes it later
(`read_staged`, then `Store.write_version`; the file is removed once the version is in).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import pathlib

import numpy as np

from grove.indexstore.errors import InputError
from grove.indexstore.structures import Forest, PathCodes, Structure, Tree

WRITE_WAIT_ENV, DEFAULT_WRITE_WAIT = "GROVE_WRITE_WAIT", 600.0


def _arrays(structure: Structure) -> dict[str, np.ndarray]:
    if isinstance(structure, PathCodes):
        return {"codes": structure.codes, "scores": structure.scores, "arity": np.asarray(structure.arity)}
    trees = structure.trees if isinstance(structure, Forest) else (structure,)
    out: dict[str, np.ndarray] = {
        "n_trees": np.asarray(len(trees)),
        "forest": np.asarray(isinstance(structure, Forest)),
    }
    for t, tree in enumerate(trees):
        out.update(
            {
                f"tree{t}/parent": tree.parent,
                f"tree{t}/item": tree.item,
                f"tree{t}/n_items": np.asarray(tree.n_items),
                f"tree{t}/arity": np.asarray(tree.arity),
            }
        )
    return out


def _structure(arrays) -> Structure:
    if "codes" in arrays:
        return PathCodes(arrays["codes"], arrays["scores"], int(arrays["arity"]))
    trees = tuple(
        Tree(
            arrays[f"tree{t}/parent"],
            arrays[f"tree{t}/item"],
            int(arrays[f"tree{t}/n_items"]),
            int(arrays[f"tree{t}/arity"]),
        )
        for t in range(int(arrays["n_trees"]))
    )
    return Forest(trees) if bool(arrays["forest"]) else trees[0]


def stage(store_path: str, version: dict, structure: Structure, artifacts: dict[str, bytes]) -> pathlib.Path:
    """Save a version that could not be written; ``version`` holds `Store.write_version`'s other
    arguments (index_name, method, config, dataset, split, parent_id, note, flow_run_id)."""
    folder = pathlib.Path(f"{store_path}.staged")
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    path = folder / f"{version['index_name']}-v{version.get('parent_id') or 0}-{stamp}.npz"
    blobs = {f"artifact/{name}": np.frombuffer(data, dtype=np.uint8) for name, data in artifacts.items()}
    meta = np.frombuffer(json.dumps(version).encode(), dtype=np.uint8)
    arrays: dict[str, np.ndarray] = {"meta": meta, **_arrays(structure), **blobs}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    return path


def read_staged(path: str | pathlib.Path) -> tuple[dict, Structure, dict[str, bytes]]:
    """(version arguments, structure, artifacts) of a staged file; InputError if it is not one."""
    path = pathlib.Path(path)
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        version = json.loads(arrays.pop("meta").tobytes().decode())
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: not a staged grove version ({exc})") from None
    artifacts = {k[len("artifact/") :]: arrays[k].tobytes() for k in list(arrays) if k.startswith("artifact/")}
    return version, _structure({k: v for k, v in arrays.items() if not k.startswith("artifact/")}), artifacts
