"""Writing a benchmark's results, the one writer every script uses: ``<stem>.json`` (everything
measured) beside ``<stem>.md`` (the table the README copies), rewritten together so that the two
never disagree; `write_json` for the scripts whose results are read from JSON only."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable


def write_json(path: str | pathlib.Path, result: dict) -> None:
    """``result`` as indented JSON at ``path`` (numpy numbers written as floats)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")


def write_json_and_markdown(stem: str | pathlib.Path, result: dict, markdown: Callable[[dict], str]) -> None:
    """``result`` as indented JSON to ``<stem>.json`` and ``markdown(result)`` to ``<stem>.md``."""
    stem = str(stem)
    write_json(stem + ".json", result)
    pathlib.Path(stem + ".md").write_text(markdown(result))
