"""Helpers for the operations tests: stores with custom settings, clustered vectors, table statistics."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.records import MemoryRecord
from oneiric_memory.settings import MemorySettings
from tests.support import make_settings

__all__ = ["clustered_vectors", "dead_tuples", "delete_rows", "load", "open_store", "vector_index_options"]

DIM = 32


def clustered_vectors(count: int, *, dim: int = DIM, clusters: int = 30, seed: int = 1) -> list[list[float]]:
    """A Gaussian mixture on the unit sphere: IVFFlat clusters it well, so bad settings show as low recall."""
    rng = random.Random(seed)

    def unit(values: list[float]) -> list[float]:
        norm = sum(x * x for x in values) ** 0.5
        return [x / norm for x in values]

    centers = [unit([rng.gauss(0, 1) for _ in range(dim)]) for _ in range(clusters)]
    return [unit([x + rng.gauss(0, 0.15) for x in centers[i % clusters]]) for i in range(count)]


@asynccontextmanager
async def open_store(pg_data_dir: Path, **overrides: Any) -> AsyncIterator[PgvectorMemoryStore]:
    """An initialized store on a fresh schema of the session's server (32-d unless overridden); dropped after."""
    postgres = {"vector_dimension": DIM, **overrides.pop("postgres", {})}
    settings: MemorySettings = make_settings(pg_data_dir, postgres=postgres, **overrides)
    store = PgvectorMemoryStore(settings)
    await store.init()
    try:
        yield store
    finally:
        if store._pool is not None:
            async with store.gate.acquire() as connection:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
        await store.cleanup()


async def load(store: PgvectorMemoryStore, vectors: list[list[float]], *, prefix: str = "memory",
               expires_at: datetime | None = None, bulk: bool = False, batch: int = 1000) -> list[uuid.UUID]:
    """Store one memory per vector; ``bulk`` drops the vector index during the load and rebuilds it after."""
    records = [MemoryRecord(content=f"{prefix} number {i} about topic {i % 7}", embedding=v, expires_at=expires_at)
               for i, v in enumerate(vectors)]
    ids: list[uuid.UUID] = []

    async def write() -> None:
        for start in range(0, len(records), batch):
            ids.extend((await store.upsert_many(records[start:start + batch])).ids)

    if bulk:
        async with store.bulk_loading():
            await write()
    else:
        await write()
    return ids


async def delete_rows(store: PgvectorMemoryStore, where: str, *args: Any) -> int:
    """DELETE and publish the dead tuples to the statistics at once (they are otherwise flushed lazily)."""
    async with store.gate.acquire() as connection:
        status = await connection.execute(f"DELETE FROM {store.table('memories')} WHERE {where}", *args)
        await connection.execute("SELECT pg_stat_force_next_flush()")
    return int(status.split()[-1])


async def dead_tuples(store: PgvectorMemoryStore, table: str = "memories") -> int:
    async with store.gate.acquire() as connection:
        return int(await connection.fetchval(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
            store.schema, table))


async def vector_index_options(store: PgvectorMemoryStore) -> list[tuple[str, str, bool, list[str]]]:
    """(name, method, valid, reloptions) of every vector index on memories."""
    async with store.gate.acquire() as connection:
        rows = await connection.fetch(
            "SELECT ic.relname, am.amname, i.indisvalid, coalesce(ic.reloptions, '{}') AS options FROM pg_index i "
            "JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am am ON am.oid = ic.relam "
            "WHERE n.nspname = $1 AND c.relname = 'memories' AND am.amname IN ('hnsw', 'ivfflat') ORDER BY 1",
            store.schema)
    return [(r[0], r[1], r[2], list(r[3])) for r in rows]
