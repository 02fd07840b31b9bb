"""Shared fixtures: one real embedded PostgreSQL per test session, and one schema per test.

Helpers that tests import live in :mod:`tests.support` (this file is pytest's, never imported as a module).

Each test gets its own ``db_schema`` on the shared server, so tests are isolated without restarting
PostgreSQL. Nothing here is mocked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo, EmbeddedPostgres
from oneiric_memory.settings import MemorySettings
from tests.support import make_settings

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
# pytest-xdist's workers start with COLUMNS=80 in their environment; the CLI's tables honour COLUMNS (160 columns
# when piped otherwise), so under `pytest -n 2` they would fold the ids and paths a serial run shows whole.
os.environ.pop("COLUMNS", None)


@pytest.fixture(autouse=True)
def _restore_logging_config() -> Iterator[None]:
    """Every test starts from the library's own logging configuration (stderr, INFO, uncached).

    Restoring "whatever was there before the test" is not enough: a module- or session-scoped fixture (an
    in-process CLI or MCP server, Oneiric's own ``configure_logging``) can leave a WARNING level filter or cached
    loggers behind before any test's snapshot is taken, and ``capture_logs()`` then sees nothing."""
    import structlog

    from oneiric_memory.observability import configure_logging

    saved = structlog.get_config()
    saved["processors"] = list(saved["processors"])  # get_config hands out the live list
    configure_logging()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def pg_data_dir() -> Iterator[Path]:
    """A private data folder for this session's embedded server; deleted at the end."""
    root = Path(tempfile.mkdtemp(prefix="om-test-"))
    yield root / "pgdata"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(pg_data_dir: Path) -> Iterator[EmbeddedConnectInfo]:
    """Start the embedded PostgreSQL once; tests attach to it through their own stores."""
    import asyncio

    server = EmbeddedPostgres(pg_data_dir)
    info = asyncio.run(server.start())
    yield info
    asyncio.run(server.stop())


@pytest.fixture(scope="module")
def sb_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """HOME at a folder that does not exist, for a test module that starts Session-Buddy in process: its
    start-up skips its slow extension downloads."""
    home = tmp_path_factory.mktemp("sb-home") / "absent"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        yield home


@pytest.fixture
def settings(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> MemorySettings:
    return make_settings(pg_data_dir)


@pytest_asyncio.fixture
async def store(settings: MemorySettings) -> AsyncIterator[PgvectorMemoryStore]:
    """An initialized store on a fresh schema; the schema is dropped afterwards."""
    memory_store = PgvectorMemoryStore(settings)
    await memory_store.init()
    try:
        yield memory_store
    finally:
        if memory_store._pool is not None:
            async with memory_store.gate.acquire() as connection:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{memory_store.schema}" CASCADE')
        await memory_store.cleanup()
