"""Writing a benchmark's results: ``<stem>.json`` (everything measured) beside ``<stem>.md`` (the
table the README copies), rewritten together so that the two never disagree."""
from __future__ import annotations

import json
import pathlib
from typing import Callable


def write_json_and_markdown(stem: str | pathlib.Path, result: dict, markdown: Callable[[dict], str]) -> None:
    """``result`` as indented JSON to ``<stem>.json`` and ``markdown(result)`` to ``<stem>.md``."""
    stem = str(stem)
    pathlib.Path(stem + ".json").write_text(json.dumps(result, indent=2))
    pathlib.Path(stem + ".md").write_text(markdown(result))
