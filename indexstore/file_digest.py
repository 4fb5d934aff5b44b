"""The SHA-256 of a file, read in 1 MiB blocks (memory flat in the file's size): names a data
snapshot by its content (`grove.flows.retrain`) and checks an export's files
(`grove.flows.index_export`)."""

from __future__ import annotations

import hashlib
import os

from grove.indexstore.errors import InputError


def file_sha256(path: str | os.PathLike, what: str = "file") -> str:
    """Hex SHA-256 of ``path``; an unreadable file is an InputError naming ``what`` and the path."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from None
    return h.hexdigest()
