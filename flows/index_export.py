"""``grove export INDEX[@V] DIR`` and ``grove import-index DIR``: an index version as a folder of
plain files, and back as a new version.

The folder (`export_index`):

* ``manifest.json``: format, the version's index, id, method, kind, dataset, split, note and
  config (the recipe grove trains with), ``n_items`` / ``arity``, how to call the scripted model, and the
  SHA-256 and size of every other file;
* the structure as Parquet with raw item ids (`grove.indexstore.structure_files`): ``items``,
  ``nodes``, ``edges``, ``item_paths`` (trees and forests) or ``items``, ``item_paths`` (path codes);
* ``artifacts/NAME``: the version's model files byte for byte (state dicts, item vectors);
* the model as TorchScript where the method has one (`grove.models.scripted`): ``scorer.pt``
  (TDM, JTM: the node scorer), ``scorer_R.pt`` per tree (DeFoRec), ``encoder.pt`` +
  ``layer_d.pt`` + ``rerank.pt`` (Deep Retrieval), ``encoder.pt`` + ``decoder_t_step_l.pt`` +
  ``leaf_scorer_t.pt`` (RecForest) or ``user_tower.pt`` + ``item_vectors.parquet`` (two-tower),
  checked before writing to give grove's top-k.

A folder is written whole or not at all: files go to ``DIR.partial`` first, which is renamed at
the end; an existing DIR is refused. `import_index` checks every SHA-256, that the target store
has the dataset and split with the same items in the same order (model weights are indexed by
dense item id), rebuilds and validates the structure, and writes one new version (no parent;
its note names where it came from) in one transaction.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from grove.indexstore.errors import InputError, NotFoundError
from grove.indexstore.file_digest import file_sha256
from grove.indexstore.samples import pad_histories
from grove.indexstore.store import Store
from grove.indexstore.structure_files import read_items, read_structure, write_item_vectors, write_structure
from grove.models import lifecycle
from grove.models.scripted import Scripted, script

FORMAT = "grove-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARTIFACTS = "artifacts"
CHECK_USERS, CHECK_K, CHECK_BEAM = 64, 10, 20


@dataclass(frozen=True)
class Exported:
    """What `export_index` wrote: the folder, the version, its files and whether it holds a scorer."""

    folder: pathlib.Path
    version: int
    files: list[str]
    scripted: str | None


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``INDEX`` or ``INDEX@V`` -> (index, version or None)."""
    index, sep, version = ref.partition("@")
    if not sep:
        return ref, None
    try:
        return index, int(version)
    except ValueError:
        raise InputError(f"{ref!r}: expected INDEX or INDEX@VERSION (a version id)") from None


def export_index(
    store: Store, index: str, folder: str | os.PathLike, version: int | None = None, alias: str | None = None
) -> Exported:
    """Write a version of ``index`` (explicit, an alias, else production, else the newest) to
    ``folder``, which must not exist yet."""
    out = pathlib.Path(folder)
    if out.exists():
        raise InputError(f"{out}: already exists (an export is written to a new folder)")
    info = store.resolve(index, version=version, alias=alias)
    loaded = lifecycle.load(store, info.id)
    raw_ids = store.item_raw_ids(loaded.dataset)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / ARTIFACTS).mkdir(parents=True)
    try:
        files = write_structure(loaded.built.structure, raw_ids, partial)
        for name, data in sorted(loaded.built.artifacts.items()):
            (partial / ARTIFACTS / name).write_bytes(data)
            files.append(f"{ARTIFACTS}/{name}")
        made = script(lifecycle.searcher(loaded, "cpu"), _check_histories(info.shape), CHECK_K, CHECK_BEAM)
        if made is not None:
            for name, data in made.files.items():
                (partial / name).write_bytes(data)
                files.append(name)
            if made.item_vectors is not None:
                files.append(write_item_vectors(made.item_vectors, raw_ids, partial))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "index": info.index_name,
            "version": info.id,
            "method": info.method,
            "kind": info.kind,
            "dataset": info.dataset,
            "split": info.split,
            "note": info.note,
            "created_at": info.created_at.isoformat(),
            "config": info.config,
            "n_items": int(info.shape.get("n_items", len(raw_ids))),
            "arity": int(info.shape.get("arity", 0)),
            "scorer": _scorer_doc(made) if made is not None else None,
            "files": {name: _digest(partial / name) for name in files},
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return Exported(out, info.id, [MANIFEST, *files], made.kind if made is not None else None)


def import_index(store: Store, folder: str | os.PathLike, index: str | None = None) -> int:
    """Read an export back as a new version of ``index`` (default: the exported index's name);
    returns its id. The store is unchanged when anything does not check."""
    src = pathlib.Path(folder)
    manifest = _manifest(src)
    for name, want in manifest["files"].items():
        parts = pathlib.PurePosixPath(name).parts
        if not parts or name.startswith("/") or ".." in parts:
            raise InputError(f"{src / MANIFEST}: file name {name!r} is not inside the export")
        path = src / name
        if not path.is_file():
            raise InputError(f"{path}: listed in the manifest but missing")
        got = _digest(path)
        if got["sha256"] != want["sha256"]:
            raise InputError(f"{path}: SHA-256 differs from the manifest's (the file was changed or truncated)")
    dataset, split = manifest["dataset"], manifest["split"]
    raw = read_items(src)
    _same_items(store, dataset, split, raw)
    structure = read_structure(src, manifest["kind"], len(raw), manifest["arity"])
    artifacts = {
        name.split("/", 1)[1]: (src / name).read_bytes() for name in manifest["files"] if name.startswith(ARTIFACTS)
    }
    info = store.write_version(
        index_name=index or manifest["index"],
        method=manifest["method"],
        structure=structure,
        config=manifest["config"],
        dataset=dataset,
        split=split,
        artifacts=artifacts,
        note=f"imported from {src.name} ({manifest['index']} version {manifest['version']})",
    )
    return info.id


def _same_items(store: Store, dataset: str, split: str, raw: np.ndarray) -> None:
    try:
        store.split(dataset, split)
    except NotFoundError as exc:
        raise InputError(
            f"{exc}: import the exported index's data into this store first "
            f"(grove data import ... --name {dataset}; grove data split {dataset} --split {split})"
        ) from None
    have = store.item_raw_ids(dataset).astype(str)
    if have.shape[0] != raw.shape[0] or not np.array_equal(have, raw.astype(str)):
        where = next((i for i in range(min(len(have), len(raw))) if have[i] != str(raw[i])), min(len(have), len(raw)))
        raise InputError(
            f"dataset {dataset!r} of this store numbers its items differently from the export "
            f"({len(have):,} items here, {len(raw):,} exported; first difference at dense id {where}): "
            "the model's weights are indexed by dense id, import the same data file"
        )


def _manifest(src: pathlib.Path) -> dict:
    path = src / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: no such file (not a grove export)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not a grove index export (format {FORMAT!r} expected)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: format version {manifest.get('format_version')!r}, this grove reads {FORMAT_VERSION}"
        )
    for field in ("index", "method", "kind", "dataset", "split", "config", "arity", "files"):
        if field not in manifest:
            raise InputError(f"{path}: field {field!r} missing")
    return manifest


def _digest(path: pathlib.Path) -> dict:
    return {"sha256": file_sha256(path, "export file"), "bytes": path.stat().st_size}


def _check_histories(shape: dict) -> torch.Tensor:
    """(64, 69) seeded random histories of 1..69 items: the scripted scorer's check."""
    n = int(shape["n_items"])
    gen = np.random.default_rng(0)
    rows = [gen.integers(0, n, int(gen.integers(1, 70))) for _ in range(CHECK_USERS)]
    return torch.as_tensor(pad_histories(rows).astype(np.int64))


def _scorer_doc(made: Scripted) -> dict:
    return {
        "kind": made.kind,
        "files": sorted(made.files),
        "histories": "(U, 69) int64 dense item ids of items.parquet, nearest first, -1 padded",
        **made.doc,
        "checked": f"driven by it, grove's search returns the version's top-{CHECK_K} (beam {CHECK_BEAM}) "
        f"for {CHECK_USERS} random histories",
    }
