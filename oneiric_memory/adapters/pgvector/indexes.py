"""Index DDL on the pool: the vector index's name, a rebuild after bulk loads, and IVFFlat sizing.

The concurrent rebuilds maintenance runs (``... CONCURRENTLY``, outside a transaction) are in :mod:`.direct`.
"""

from __future__ import annotations

import math
from typing import Literal

import asyncpg

from oneiric_memory.adapters.pgvector.schema import SchemaNames, quote_ident
from oneiric_memory.settings import PostgresSettings

__all__ = ["INDEX_BUILD_TIMEOUT_S", "build_vector_index", "drop_vector_index", "ivfflat_lists_for",
           "vector_index_name"]

INDEX_BUILD_TIMEOUT_S = 24 * 3600.0
"""Client-side timeout of an index build: on millions of rows it takes far longer than a query."""


def ivfflat_lists_for(rows: int) -> int:
    """pgvector's guidance: rows/1000 up to 1M rows, sqrt(rows) above; at least 1."""
    if rows <= 1_000_000:
        return max(1, rows // 1000)
    return max(1, int(math.sqrt(rows)))


async def vector_index_name(connection: asyncpg.Connection, schema: str) -> str | None:
    """Name of the vector index on ``schema.memories`` (valid or not), if any."""
    name = await connection.fetchval(
        "SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
        "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_am am ON am.oid = ic.relam "
        "WHERE n.nspname = $1 AND c.relname = 'memories' AND am.amname IN ('hnsw', 'ivfflat') LIMIT 1", schema)
    return str(name) if name is not None else None


async def drop_vector_index(connection: asyncpg.Connection, names: SchemaNames) -> None:
    """Drop the vector index (before a bulk load: searches take the exact path meanwhile)."""
    index = await vector_index_name(connection, names.schema)
    if index is not None:
        await connection.execute(f"DROP INDEX IF EXISTS {names.index(index)}")


async def build_vector_index(connection: asyncpg.Connection, names: SchemaNames, pg: PostgresSettings, *,
                             vector_type: str, index_type: Literal["hnsw", "ivfflat"] | None = None) -> str | None:
    """(Re)build the vector index in one transaction with a raised ``maintenance_work_mem`` and no statement
    timeout; IVFFlat ``lists`` come from the row count. Returns the index name (None: IVFFlat on no rows)."""
    kind = index_type or pg.index_type
    memories = names.table("memories")
    ops = f"{vector_type}_cosine_ops"
    rows = int(await connection.fetchval(f"SELECT count(*) FROM {memories} WHERE embedding IS NOT NULL"))
    if kind == "ivfflat" and rows == 0:
        return None  # an IVFFlat index built on no rows clusters nothing
    # Same connection: a second acquire while holding this one deadlocks a pool of size 1.
    existing = await vector_index_name(connection, names.schema)
    async with connection.transaction():
        await connection.execute(
            "SELECT set_config('maintenance_work_mem', $1, true), set_config('statement_timeout', '0', true)",
            pg.bulk_maintenance_work_mem)
        if existing is not None:
            await connection.execute(f"DROP INDEX IF EXISTS {names.index(existing)}")
        if kind == "hnsw":
            name = "memories_embedding_hnsw"
            ddl = (f"CREATE INDEX {quote_ident(name)} ON {memories} USING hnsw (embedding {ops}) "
                   f"WITH (m = {int(pg.hnsw_m)}, ef_construction = {int(pg.hnsw_ef_construction)})")
        else:
            name = "memories_embedding_ivfflat"
            lists = pg.ivfflat_lists or ivfflat_lists_for(rows)
            ddl = f"CREATE INDEX {quote_ident(name)} ON {memories} USING ivfflat (embedding {ops}) WITH (lists = {int(lists)})"
        # statement_timeout is off for this transaction; the client-side command timeout must be too
        await connection.execute(ddl, timeout=INDEX_BUILD_TIMEOUT_S)
        await connection.execute(
            f"UPDATE {names.table('embedding_meta')} SET index_built_rows = $1, index_built_at = now()", rows)
    await connection.execute(f"ANALYZE {memories}")
    return name
