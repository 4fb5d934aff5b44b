"""docs/TUTORIAL.md as a user runs it: every ``bash`` block in order, in an empty folder, with
the page's data path and port; every line of its ``text`` blocks must appear in the output
(whitespace-insensitive; ``...`` stands for text that differs between runs)."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUTORIAL = (ROOT / "docs" / "TUTORIAL.md").read_text()
SHARED = ROOT.parent / "shared"

pytestmark = pytest.mark.dataset


def _norm(line: str) -> str:
    return " ".join(line.split())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shown(output: list[str], line: str) -> bool:
    """``line`` of a text block is in ``output``: equal, or its ``...``-separated parts in order."""
    parts = [_norm(p) for p in line.split("...")]
    if len(parts) == 1:
        return parts[0] in output
    for out in output:
        at = 0
        for part in parts:
            at = out.find(part, at) if part else at
            if at < 0:
                break
            at += len(part)
        else:
            return True
    return False


def test_tutorial_runs_and_shows_what_it_says(tmp_path):
    if not (SHARED / "datasets" / "ml-1m-subset").is_dir():
        pytest.fail(f"the tutorial needs {SHARED / 'datasets' / 'ml-1m-subset'}")
    script = "\n".join(re.findall(r"```bash\n(.*?)```", TUTORIAL, re.S))
    script = script.replace("../shared/", f"{SHARED}/").replace("8765", str(_free_port()))
    env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}", "GROVE_QUIET": "1"}
    env.pop("GROVE_STORE", None)
    res = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    output = [_norm(line) for line in res.stdout.splitlines()]
    for block in re.findall(r"```text\n(.*?)```", TUTORIAL, re.S):
        for line in block.splitlines():
            if line.strip() and line.strip() != "...":
                assert _shown(output, line), f"not in the output: {line!r}\n{res.stdout[-4000:]}"
    assert (tmp_path / "tdm-export" / "scorer.pt").is_file()
