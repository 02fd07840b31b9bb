"""Helpers shared by the foundation tests (store writes, hostile input, migrations, concurrency).

Imported explicitly by those test modules; everything here talks to the real embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.settings import MemorySettings

__all__ = ["ADMIN_APP", "admin_connection", "ensure_database", "eventually", "opened_store", "unit_vector"]

ADMIN_APP = "om-test-admin"


def unit_vector(seed: int, dim: int = 768) -> list[float]:
    """A deterministic, L2-normalized Gaussian vector."""
    rng = random.Random(seed)
    values = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = sum(v * v for v in values) ** 0.5
    return [v / norm for v in values]


@asynccontextmanager
async def opened_store(settings: MemorySettings) -> AsyncIterator[PgvectorMemoryStore]:
    """An initialized store on ``settings``; its schema is dropped and its pool closed afterwards."""
    store = PgvectorMemoryStore(settings)
    await store.init()
    try:
        yield store
    finally:
        try:
            if store._pool is not None:
                async with store.gate.acquire() as connection:
                    await connection.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
        finally:
            await store.cleanup()


async def admin_connection(store: PgvectorMemoryStore) -> asyncpg.Connection:
    """A separate connection to the store's database, outside its pool and with its own application_name."""
    return await asyncpg.connect(**store.connect_params.as_kwargs(),
                                 server_settings={"application_name": ADMIN_APP})


async def eventually(probe: Callable[[], Awaitable[Any]], *, timeout_s: float = 15.0, interval_s: float = 0.05) -> Any:
    """Poll ``probe`` until it returns a truthy value (bounded wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval_s)


async def ensure_database(info: EmbeddedConnectInfo, name: str = "oneiric_memory") -> None:
    """Create the store's database on the session server if no store has done it yet."""
    connection = await asyncpg.connect(host=info.host, port=info.port, user=info.user, database="postgres",
                                       server_settings={"application_name": ADMIN_APP})
    try:
        if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
