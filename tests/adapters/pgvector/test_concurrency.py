"""1,000 concurrent mixed operations through a pool of at most 10 connections, on the real embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.errors import StoreUnavailable
from oneiric_memory.records import MemoryRecord, SearchFilters, UpsertResult
from tests.foundation_fixtures import ADMIN_APP, ensure_database, eventually, opened_store, unit_vector
from tests.support import make_settings

pytestmark = pytest.mark.asyncio

OPERATIONS = 1000
POOL_MAX = 10
WORDS = ("postgres", "vector", "index", "deploy", "cache", "agent", "workflow", "billing", "kafka", "latency",
         "retry", "schema", "tenant", "search", "insight", "session")


async def _server_connections(admin: asyncpg.Connection) -> int:
    return int(await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'oneiric-memory' "
        "AND datname = current_database()"))


async def test_thousand_concurrent_mixed_operations(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    # acquire_timeout is raised because this test is about correctness under contention on a shared 2-core
    # machine, not latency: 1,000 queued operations on 10 connections may legitimately wait longer than 10 s.
    settings = make_settings(pg_data_dir, postgres={"max_connections": POOL_MAX, "acquire_timeout_s": 120.0})
    await ensure_database(pg_server)
    admin = await asyncpg.connect(host=pg_server.host, port=pg_server.port, user=pg_server.user,
                                  database=settings.postgres.database, server_settings={"application_name": ADMIN_APP})
    try:
        baseline = await _server_connections(admin)
        rng = random.Random(20261121)
        texts = [f"memory {i} about {rng.choice(WORDS)} and {rng.choice(WORDS)} in {rng.choice(WORDS)}"
                 for i in range(300)]
        vectors = [unit_vector(i) for i in range(len(texts))]
        written: dict[str, set[Any]] = {}
        results: list[UpsertResult] = []
        sizes: list[int] = []
        waiting: list[int] = []

        async with opened_store(settings) as store:
            seed = await store.upsert_many([MemoryRecord(content=texts[i], embedding=vectors[i]) for i in range(20)])
            results.append(seed)
            for i, memory_id in zip(range(20), seed.ids, strict=True):
                written.setdefault(texts[i], set()).add(memory_id)

            async def upsert(indexes: list[int]) -> None:
                batch = [MemoryRecord(content=texts[i], embedding=vectors[i] if i % 5 else None,
                                      metadata={"i": i}) for i in indexes]
                result = await store.upsert_many(batch)
                results.append(result)
                for i, memory_id in zip(indexes, result.ids, strict=True):
                    written.setdefault(texts[i], set()).add(memory_id)

            def operation(kind: int) -> Callable[[], Awaitable[Any]]:
                i = rng.randrange(len(texts))
                if kind < 30:  # batches of 1-5, overlapping other concurrent batches on purpose
                    indexes = [rng.randrange(len(texts)) for _ in range(rng.randint(1, 5))]
                    return lambda: upsert(indexes)
                if kind < 45:
                    return lambda: store.search_vector(vectors[i], limit=5)
                if kind < 60:
                    return lambda: store.search_text(rng.choice(WORDS), limit=5)
                if kind < 70:
                    return lambda: store.search_hybrid(rng.choice(WORDS), vectors[i], limit=5,
                                                       filters=SearchFilters(memory_types=["agent"]))
                if kind < 80:
                    return lambda: store.get(list(seed.ids[:5]))
                if kind < 90:
                    return lambda: store.count()
                return lambda: store.touch([seed.ids[i % len(seed.ids)]])

            operations = [operation(rng.randrange(100)) for _ in range(OPERATIONS)]
            done = asyncio.Event()

            async def sample() -> None:
                while not done.is_set():
                    stats = store.gate.stats()
                    sizes.append(max(stats.size, store.pool.get_size()))
                    waiting.append(stats.waiting)
                    await asyncio.sleep(0.002)

            sampler = asyncio.create_task(sample())
            outcomes = await asyncio.gather(*(op() for op in operations), return_exceptions=True)
            done.set()
            await sampler

            errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            assert errors == []
            assert max(sizes) <= POOL_MAX
            assert max(sizes) >= 2 and max(waiting) > 0  # the run really was concurrent and queued
            assert store.gate.stats().max_size == POOL_MAX

            # every write is readable: one id per distinct content, and exactly one "new" answer for it
            assert all(len(ids) == 1 for ids in written.values())
            ids = [next(iter(ids)) for ids in written.values()]
            stored = await store.get(ids)
            assert {memory.content for memory in stored} == set(written)
            assert await store.count() == len(written)
            assert sum(result.new_count for result in results) == len(written)

        assert await eventually(lambda: _back_to(admin, baseline)), "server connections did not return to baseline"
        assert store._pool is None
    finally:
        await admin.close()


async def _back_to(admin: asyncpg.Connection, baseline: int) -> bool:
    return await _server_connections(admin) == baseline


async def test_pool_exhaustion_is_a_bounded_wait(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    settings = make_settings(pg_data_dir, postgres={"max_connections": 1, "acquire_timeout_s": 0.2,
                                                    "retry_attempts": 2})
    async with opened_store(settings) as store:
        async with store.gate.acquire():
            with pytest.raises(StoreUnavailable, match="no PostgreSQL connection became free"):
                await store.count()
            assert store.gate.stats().in_use == 1
        assert await store.count() == 0
        assert store.gate.stats().waiting == 0
