"""Shared fixtures. Prefect and grove are kept off $HOME and quiet in tests."""

from __future__ import annotations

import os
import pathlib
import shutil
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


# ------------------------------------------------------------------------------- backends
BACKENDS = ("duckdb", "postgres")


class PostgresServer:
    """One throwaway PostgreSQL (pgserver's wheel, started in a temporary folder) for the whole
    session; `database()` gives each test its own fresh database, dropped by `drop`."""

    def __init__(self, root: pathlib.Path):
        import pgserver

        root.chmod(0o755)  # as root, pgserver runs the server as user `pgserver`
        self._root = root
        self._server = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
        self.uri = self._server.get_uri()  # postgresql://postgres:@/postgres?host=DIR
        self._socket = self.uri.split("host=", 1)[1]
        self._count = 0
        with self.admin() as con:  # a throwaway server: durability buys nothing here
            con.execute("ALTER SYSTEM SET fsync = off")
            con.execute("ALTER SYSTEM SET synchronous_commit = off")
            con.execute("ALTER SYSTEM SET full_page_writes = off")
            con.execute("SELECT pg_reload_conf()")

    def admin(self):
        import psycopg

        return psycopg.connect(self.uri, autocommit=True)

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@/{db}?host={self._socket}"

    def database(self, label: str = "t") -> str:
        """A new empty database; returns its grove URL."""
        self._count += 1
        name = f"grove_{''.join(c for c in label.lower() if c.isalnum())[:30]}_{self._count}"
        with self.admin() as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop(self, url: str) -> None:
        db = url.split("/")[-1].split("?")[0]
        with self.admin() as con:
            con.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")

    def stop(self) -> None:
        self._server.cleanup()  # pg_ctl stop, then its data folder is deleted
        shutil.rmtree(self._root, ignore_errors=True)


class _LazyServer:
    """Starts the `PostgresServer` at the first test that needs one (a DuckDB-only run starts none)."""

    def __init__(self):
        self.server: PostgresServer | None = None

    def get(self) -> PostgresServer:
        if self.server is None:
            self.server = PostgresServer(pathlib.Path(tempfile.mkdtemp(prefix="grove-pg-")))
        return self.server


@pytest.fixture(scope="session")
def _pg():
    lazy = _LazyServer()
    yield lazy
    if lazy.server is not None:
        lazy.server.stop()


@pytest.fixture
def pg_server(_pg) -> PostgresServer:
    """The session's PostgreSQL server (started on first use, stopped at the session's end)."""
    return _pg.get()


@pytest.fixture(scope="session")
def new_store_url(tmp_path_factory, _pg):
    """Factory ``new(backend, label) -> URL`` of an empty store (not yet initialised): a DuckDB
    file in its own temporary folder, or a fresh database on the session's PostgreSQL."""

    def new(backend: str, label: str = "store") -> str:
        if backend == "duckdb":
            return f"duckdb:///{tmp_path_factory.mktemp(label) / 'grove.duckdb'}"
        return _pg.get().database(label)

    return new


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """'duckdb' or 'postgres': a test using it (or `store_url`) runs once on each backend."""
    return request.param


@pytest.fixture
def store_url(backend, tmp_path, request, _pg) -> str:
    """A fresh empty store (not yet initialised) on each backend: a DuckDB file in the test's
    temporary folder, or a new database on the session's PostgreSQL (dropped afterwards)."""
    if backend == "duckdb":
        yield f"duckdb:///{tmp_path / 'grove.duckdb'}"
        return
    server = _pg.get()
    url = server.database(request.node.name.split("[")[0][5:])
    yield url
    server.drop(url)


@pytest.fixture
def duckdb_url(tmp_path) -> str:
    """A fresh DuckDB file URL, for tests of what only DuckDB has (file locks, spilling)."""
    return f"duckdb:///{tmp_path / 'grove.duckdb'}"


@pytest.fixture(scope="session")
def make_synth_store(new_store_url):
    """Factory ``make(label, n_items, n_users, seed, backend="duckdb") -> URL``: a fresh
    initialised store holding the synthetic dataset "synth" and its split "default" (both
    generated with ``seed``). Module fixtures call it once and share the store."""
    from grove.flows.datasets import split_dataset, synth_dataset
    from grove.indexstore.store import Store

    def make(label: str, n_items: int, n_users: int, seed: int, backend: str = "duckdb") -> str:
        url = new_store_url(backend, label)
        Store.init(url)
        store = Store.open(url)
        synth_dataset(store, "synth", n_items=n_items, n_users=n_users, seed=seed)
        split_dataset(store, "synth", "default", seed=seed)
        return url

    return make


@pytest.fixture(scope="session")
def store_trained():
    """``store(url, index, method, config, built) -> version id``: a trained index written as a
    version of the synthetic dataset "synth" / split "default", as a train step would."""
    from grove.indexstore.store import Store

    def store(url: str, index: str, method: str, config, built) -> int:
        return (
            Store.open(url)
            .write_version(
                index,
                method,
                built.structure,
                {"method": method, "config": config.to_dict(), "step": "train", "round": 0},
                dataset="synth",
                split="default",
                artifacts=built.artifacts,
            )
            .id
        )

    return store


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process without interpreter finalisation (after pytest has reported).

    DuckDB's nanobind bindings print hundreds of harmless "leaked instance" lines at
    interpreter exit, which bury the test summary in CI logs. Same exit status as pytest's."""
    if _EXIT_STATUS and os.environ.get("GROVE_TEST_FINALIZE") != "1":
        from grove.flows.quiet_exit import exit_quietly

        exit_quietly(_EXIT_STATUS[-1])
