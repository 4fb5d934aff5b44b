"""Shared fixtures. Prefect and grove are kept off $HOME and quiet in tests."""

from __future__ import annotations

import os
import pathlib
import tempfile

import pytest

_PREFECT_HOME = pathlib.Path(tempfile.mkdtemp(prefix="grove-prefect-"))
os.environ.setdefault("PREFECT_HOME", str(_PREFECT_HOME))
os.environ.setdefault("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{_PREFECT_HOME}/prefect.db")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("GROVE_QUIET", "1")

SHARED_DATASETS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture
def shared_datasets() -> pathlib.Path:
    """../shared/datasets, or skip the test when it is absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip("../shared/datasets is absent")
    return SHARED_DATASETS


@pytest.fixture
def store_url(tmp_path) -> str:
    """A fresh DuckDB file URL in the test's temporary directory (not yet initialised)."""
    return f"duckdb:///{tmp_path / 'grove.duckdb'}"


@pytest.fixture(scope="session")
def make_synth_store(tmp_path_factory):
    """Factory ``make(label, n_items, n_users, seed) -> URL``: a fresh initialised DuckDB store in
    its own temporary folder, holding the synthetic dataset "synth" and its split "default"
    (both generated with ``seed``). Module fixtures call it once and share the store."""
    from flows.datasets import split_dataset, synth_dataset
    from indexstore.store import Store

    def make(label: str, n_items: int, n_users: int, seed: int) -> str:
        url = f"duckdb:///{tmp_path_factory.mktemp(label) / 'grove.duckdb'}"
        Store.init(url)
        store = Store.open(url)
        synth_dataset(store, "synth", n_items=n_items, n_users=n_users, seed=seed)
        split_dataset(store, "synth", "default", seed=seed)
        return url

    return make


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process without interpreter finalisation (after pytest has reported).

    DuckDB's nanobind bindings print hundreds of harmless "leaked instance" lines at
    interpreter exit, which bury the test summary in CI logs. Same exit status as pytest's."""
    if _EXIT_STATUS and os.environ.get("GROVE_TEST_FINALIZE") != "1":
        from flows.quiet_exit import exit_quietly

        exit_quietly(_EXIT_STATUS[-1])
