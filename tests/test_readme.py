"""The README's promises: exactly two set-up commands (the second is what CI runs), the main
job runs (small, in-process), and the five SQL queries it shows run on the store it builds."""

from __future__ import annotations

import pathlib
import re

import pytest

from flows.cli import main
from indexstore.store import Store

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
