"""The README's promises: exactly two set-up commands (the second is what CI runs), the main
job runs (small, in-process), and the five SQL queries it shows run on the store it builds."""

from __future__ import annotations

import ast
import os
import pathlib
import re
import subprocess
import sys
from importlib import metadata

import pytest

from grove.flows.cli import main
from grove.indexstore.store import Store

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

SMALL_DEMO = [
    "demo",
    "--synth-items",
    "300",
    "--synth-users",
    "400",
    "--users",
    "40",
    "--local",
    "--set",
    "dim=8",
    "--set",
    "hidden=[16,8]",
    "--set",
    "max_samples=1500",
]


def setup_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def sql_queries() -> list[str]:
    block = re.search(r"```sql\n(.*?)```", README, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("--")]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    first, second = setup_commands()
    assert README.lstrip().startswith("# grove") and README.index("```bash") < README.index("\n## ")
    assert first.endswith("grove demo") and "pip install" in first
    assert second.endswith("python -m pytest -q") and "'.[test]'" in second
    assert second in (ROOT / ".ci" / "run").read_text()


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> str:
    url = f"duckdb:///{tmp_path_factory.mktemp('readme') / 'grove.duckdb'}"
    assert main(["--store", url, *SMALL_DEMO]) == 0
    return url


def test_main_job_runs_a_cycle_and_promotes(demo_store):
    store = Store.open(demo_store)
    versions = store.list_versions("demo-synth-tdm")
    assert [v.note for v in versions] == ["construct", "train round 0", "relearn round 1", "train round 1"]
    assert store.aliases("demo-synth-tdm") == {"production": versions[-1].id}
    assert any(r.name == "recall" for r in store.metrics(versions[-1].id))


def test_the_five_readme_queries_run(demo_store, capsys):
    queries = sql_queries()
    assert len(queries) == 5
    for q in queries:
        capsys.readouterr()
        assert main(["--store", demo_store, "sql", q]) == 0, q
        out = capsys.readouterr().out
        assert len(out.strip().splitlines()) >= 3, (q, out)  # header, rule, at least one row


def test_python_section_runs_from_a_folder_with_its_own_models_and_migrations(tmp_path):
    """The README's Python block, run as a user would: in a project folder whose own
    ``models.py`` and ``migrations/`` would shadow grove's if grove installed those names."""
    code = re.search(r"## Python\n.*?```python\n(.*?)```", README, re.S).group(1)
    (tmp_path / "models.py").write_text("MINE = True\n")
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "__init__.py").write_text("")
    script = "import models, migrations\nassert models.MINE\n" + code + "\nassert models.MINE\n"
    (tmp_path / "example.py").write_text(script)
    env = {**os.environ, "GROVE_QUIET": "1", "GROVE_STORE": ""}
    res = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    recommended = re.search(r"recommended: (\[.*\])", res.stdout).group(1)
    items = ast.literal_eval(recommended)
    assert len(items) == 10 and all(isinstance(i, str) for i in items)
    assert (tmp_path / "grove.duckdb").exists()


def test_one_import_name():
    """The distribution installs `grove` and nothing else at the top level; the public names
    resolve lazily and `grove.models` is the repository's models/ folder."""
    import grove

    dist = metadata.distribution("grove")
    assert (dist.read_text("top_level.txt") or "").split() == ["grove"]
    for name in grove.__all__:
        assert getattr(grove, name) is not None, name
    assert grove.__version__ == dist.version
    assert pathlib.Path(grove.models.__file__).resolve().parent == ROOT / "models"
