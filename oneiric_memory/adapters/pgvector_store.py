"""``PgvectorMemoryStore``: the PostgreSQL + pgvector memory store (Oneiric category ``memory_store``).

Writes are validated first, then one transaction COPYs the batch into a staging table and merges it
with ``INSERT ... ON CONFLICT (project, memory_type, content_hash)``. Searches run one statement per call,
with every knob in ``set_config(..., true)`` (transaction-local, PgBouncer-safe) and a per-call choice
between the exact path (selective filters, via B-tree) and an HNSW scan with iterative scanning.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
from mcp_common.health import ComponentHealth, HealthStatus

from oneiric_memory.database import (
    ConnectParams,
    PoolGate,
    connect_once,
    create_pool,
    ensure_vector_extension,
    run_with_retries,
    wait_closed,
)
from oneiric_memory.embedded_server import EmbeddedPostgres
from oneiric_memory.errors import InvalidInput, SchemaMismatch, StoreError
from oneiric_memory.migrator import Migrator
from oneiric_memory.observability import INSTRUMENTS, Stopwatch, get_logger, register_gauge, span
from oneiric_memory.records import (
    MemoryRecord,
    SearchFilters,
    SearchHit,
    SearchMode,
    StoredMemory,
    UpsertResult,
    check_embedding,
    content_hash,
)
from oneiric_memory.search_sql import Params, filter_clause
from oneiric_memory.settings import MemorySettings, load_settings, validate_identifier

__all__ = ["OutboxInsight", "PendingMemory", "PgvectorMemoryStore", "SearchPlan", "pgvector_store_factory"]

_HIT_COLUMNS = ("m.id, m.project, m.memory_type, m.content, m.metadata, m.agent_id, m.workflow_id, m.repo_id, "
                "m.session_id, m.source_system, m.created_at")
_STAGING_COLUMNS = ("ord", "id", "project", "memory_type", "source_system", "agent_id", "workflow_id", "repo_id",
                    "session_id", "content", "content_hash", "metadata", "embedding", "embedding_model",
                    "created_at", "expires_at")


@dataclass(frozen=True, slots=True)
class OutboxInsight:
    """An insight to enqueue for Session-Buddy in the same transaction as its memory."""

    insight_id: str
    content: str
    insight_type: str = "general"
    topics: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PendingMemory:
    """A stored memory whose embedding is still pending (for backfill)."""

    project: str
    id: uuid.UUID
    content: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SearchPlan:
    """How a vector search was executed: ``exact`` (B-tree + sort) or ``ann`` (vector index scan)."""

    path: Literal["exact", "ann", "none"]
    matching_rows_capped: int | None
    ef_search: int


class PgvectorMemoryStore:
    """PostgreSQL + pgvector memory store. Build with :func:`pgvector_store_factory` under Oneiric."""

    category = "memory_store"
    provider = "pgvector"

    def __init__(self, settings: MemorySettings | None = None) -> None:
        self.settings = settings or load_settings()
        pg = self.settings.postgres
        self.schema = pg.db_schema
        self.dimension = pg.vector_dimension
        self.vector_type = pg.vector_type
        self._t = f'"{self.schema}"'
        self._embedded: EmbeddedPostgres | None = None
        self._params: ConnectParams | None = None
        self._pool: asyncpg.Pool | None = None
        self._read_pool: asyncpg.Pool | None = None
        self._gate: PoolGate | None = None
        self._read_gate: PoolGate | None = None
        self.extension_version: str | None = None
        self.bm25_extension: str | None = None
        self.embedding_model: str | None = None
        self._log = get_logger("oneiric_memory.store", domain="adapter", key=self.category, provider=self.provider)
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("the store is not initialized: await store.init() (the factory does this)")
        return self._pool

    @property
    def gate(self) -> PoolGate:
        if self._gate is None:
            raise StoreError("the store is not initialized: await store.init() (the factory does this)")
        return self._gate

    @property
    def connect_params(self) -> ConnectParams:
        if self._params is None:
            raise StoreError("the store is not initialized: await store.init()")
        return self._params

    def table(self, name: str) -> str:
        """Schema-qualified name of one of this package's tables (fixed names, validated schema)."""
        return f'{self._t}."{name}"'

    async def init(self) -> None:
        """Start/attach the database, check pgvector, migrate (if allowed), check the meta table, open pools."""
        pg = self.settings.postgres
        with span("store.init", embedded=pg.embedded):
            try:
                self._params = await self._resolve_params()
                bootstrap = await connect_once(self._params, pg)
                try:
                    self.extension_version = await ensure_vector_extension(
                        bootstrap, create=pg.create_extension, schema=self.schema)
                    vector_schema = await bootstrap.fetchval(
                        "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'")
                    self.bm25_extension = await bootstrap.fetchval(
                        "SELECT extname FROM pg_extension WHERE extname IN ('pg_textsearch', 'pg_search') "
                        "ORDER BY extname LIMIT 1")
                finally:
                    await bootstrap.close()
                migrator = Migrator(self._params, pg)
                if pg.auto_migrate:
                    await migrator.upgrade()
                else:
                    await migrator.require_head()
                self._pool = await create_pool(self._params, pg, vector_schema=str(vector_schema).strip('"'))
                self._gate = PoolGate(self._pool, pg.acquire_timeout_s)
                if pg.read_dsn is not None:
                    self._read_pool = await create_pool(ConnectParams.from_settings(pg, read=True), pg,
                                                        vector_schema=str(vector_schema).strip('"'))
                    self._read_gate = PoolGate(self._read_pool, pg.acquire_timeout_s)
                await self._check_meta()
            except BaseException:
                await self.cleanup()
                raise
        self._register_gauges()
        self._closed = False
        self._log.info("store-ready", schema=self.schema, embedded=pg.embedded, pgvector=self.extension_version)

    async def _resolve_params(self) -> ConnectParams:
        pg = self.settings.postgres
        if not pg.embedded:
            return ConnectParams.from_settings(pg)
        self._embedded = EmbeddedPostgres(self.settings.embedded_data_dir)
        info = await self._embedded.start()
        admin = ConnectParams(host=info.host, port=info.port, user=info.user, database="postgres")
        connection = await connect_once(admin, pg)
        try:
            exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", pg.database)
            if not exists:
                try:
                    await connection.execute(f'CREATE DATABASE "{_safe_db_name(pg.database)}"')
                except asyncpg.DuplicateDatabaseError:
                    pass
                except asyncpg.UniqueViolationError:
                    pass
        finally:
            await connection.close()
        return ConnectParams(host=info.host, port=info.port, user=info.user, database=pg.database)

    async def _check_meta(self) -> None:
        async with self.gate.acquire() as connection:
            row = await connection.fetchrow(f"SELECT model, dimension, vector_type FROM {self.table('embedding_meta')}")
        if row is None:
            raise SchemaMismatch(f"{self.table('embedding_meta')} is empty: run `oneiric-memory db upgrade`")
        if row["dimension"] != self.dimension or row["vector_type"] != self.vector_type:
            raise SchemaMismatch(
                f"schema {self.schema!r} stores {row['vector_type']}({row['dimension']}) vectors but the settings ask "
                f"for {self.vector_type}({self.dimension}): changing the dimension is a migration — use another "
                "postgres.db_schema, or re-create this one with `oneiric-memory db downgrade base` then "
                "`db upgrade` (this deletes its memories)",
                stored_dimension=row["dimension"], configured_dimension=self.dimension)
        self.embedding_model = row["model"]

    async def bind_embedding_model(self, model_id: str) -> None:
        """Record the embedding model on first use; refuse a different one (mixing vector spaces)."""
        async with self.gate.acquire() as connection:
            model = await connection.fetchval(
                f"UPDATE {self.table('embedding_meta')} SET model = coalesce(model, $1), updated_at = now() "
                "RETURNING model", model_id)
        self.embedding_model = model
        if model != model_id:
            raise SchemaMismatch(
                f"this database holds vectors from {model!r} but the embedder is {model_id!r}: mixing models makes "
                f"search meaningless. Switch back to {model!r}, or run `oneiric-memory db reembed` to mark every "
                "memory pending and re-embed it with the new model",
                stored_model=model, configured_model=model_id)

    async def switch_embedding_model(self, model_id: str) -> int:
        """Mark every embedding pending and adopt ``model_id`` (then backfill re-embeds). Returns rows reset."""
        async with self.gate.acquire() as connection, connection.transaction():
            status = await connection.execute(
                f"UPDATE {self.table('memories')} SET embedding = NULL, embedding_model = NULL "
                "WHERE embedding IS NOT NULL")
            await connection.execute(
                f"UPDATE {self.table('embedding_meta')} SET model = $1, updated_at = now()", model_id)
        self.embedding_model = model_id
        return int(status.split()[-1])

    def _register_gauges(self) -> None:
        def pool_numbers() -> list[tuple[float, dict[str, str]]]:
            if self._gate is None or self._closed:
                return []
            stats = self._gate.stats()
            return [(float(stats.size), {"state": "size"}), (float(stats.idle), {"state": "idle"}),
                    (float(stats.in_use), {"state": "in_use"}), (float(stats.waiting), {"state": "waiting"}),
                    (float(stats.max_size), {"state": "max"})]

        register_gauge("oneiric_memory.pool.connections", "PostgreSQL pool connections by state", "{connection}",
                       pool_numbers)

    async def cleanup(self) -> None:
        """Close pools gracefully (waiting for checked-out connections) and release the embedded server."""
        self._closed = True
        timeout = self.settings.postgres.command_timeout_s
        for pool in (self._read_pool, self._pool):
            if pool is not None:
                await wait_closed(pool, timeout)
        self._pool = self._read_pool = None
        self._gate = self._read_gate = None
        if self._embedded is not None:
            await self._embedded.stop()
            self._embedded = None

    async def __aenter__(self) -> PgvectorMemoryStore:
        await self.init()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.cleanup()

    # --- health ------------------------------------------------------------------------------------

    async def health(self) -> bool:
        """Cheap liveness probe for Oneiric's lifecycle; never raises."""
        if self._gate is None:
            return False
        try:
            async with asyncio.timeout(min(5.0, self.settings.postgres.acquire_timeout_s)):
                async with self._gate.acquire() as connection:
                    return bool(await connection.fetchval("SELECT true"))
        except Exception:
            return False

    async def component_health(self) -> ComponentHealth:
        """Latency, pool numbers, pgvector version, row estimate, model/dimension and vector-index validity."""
        watch = Stopwatch()
        if self._gate is None:
            return ComponentHealth(name="memory_store", status=HealthStatus.UNHEALTHY,
                                   message="not initialized", metadata={"schema": self.schema})
        try:
            async with asyncio.timeout(5.0), self._gate.acquire() as connection:
                row = await connection.fetchrow(
                    """
                    SELECT c.reltuples::bigint AS estimated_rows,
                           (SELECT bool_and(i.indisvalid) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                             JOIN pg_am am ON am.oid = ic.relam
                             WHERE i.indrelid = c.oid AND am.amname IN ('hnsw', 'ivfflat')) AS vector_index_valid,
                           (SELECT count(*) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                             JOIN pg_am am ON am.oid = ic.relam
                             WHERE i.indrelid = c.oid AND am.amname IN ('hnsw', 'ivfflat')) AS vector_indexes
                    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = $1 AND c.relname = 'memories'
                    """, self.schema)
        except Exception as exc:
            return ComponentHealth(name="memory_store", status=HealthStatus.UNHEALTHY,
                                   message=f"PostgreSQL unreachable: {type(exc).__name__}", latency_ms=watch.ms,
                                   metadata={"schema": self.schema})
        stats = self._gate.stats()
        status = HealthStatus.HEALTHY
        message = "ok"
        if row is not None and row["vector_indexes"] and not row["vector_index_valid"]:
            status, message = HealthStatus.DEGRADED, "a vector index is invalid: run `oneiric-memory maintain reindex`"
        elif row is not None and not row["vector_indexes"]:
            status, message = HealthStatus.DEGRADED, "no vector index: run `oneiric-memory maintain reindex`"
        if stats.max_size and stats.in_use / stats.max_size >= self.settings.maintenance.pool_busy_ratio \
                and stats.waiting > 0:
            status, message = HealthStatus.DEGRADED, "the connection pool is saturated: callers are waiting"
        return ComponentHealth(
            name="memory_store", status=status, message=message, latency_ms=round(watch.ms, 3),
            metadata={
                "schema": self.schema, "embedded": self.settings.postgres.embedded,
                "pgvector": self.extension_version, "bm25_extension": self.bm25_extension,
                "estimated_rows": max(int(row["estimated_rows"]), 0) if row else None,
                "embedding_model": self.embedding_model, "dimension": self.dimension,
                "vector_type": self.vector_type, "vector_index_valid": row["vector_index_valid"] if row else None,
                "pool_size": stats.size, "pool_idle": stats.idle, "pool_in_use": stats.in_use,
                "pool_max": stats.max_size, "pool_waiting": stats.waiting,
            })

    # --- writes ------------------------------------------------------------------------------------

    def validate(self, records: Sequence[MemoryRecord]) -> None:
        pg = self.settings.postgres
        if isinstance(records, (str, bytes)) or not isinstance(records, Sequence):
            raise InvalidInput("records must be a sequence of MemoryRecord")
        for index, record in enumerate(records):
            if not isinstance(record, MemoryRecord):
                raise InvalidInput(f"record {index} is a {type(record).__name__}, not a MemoryRecord", index=index)
            record.validate(dimension=self.dimension, max_content_bytes=pg.max_content_bytes, index=index)
            if record.embedding is not None and record.embedding_model and self.embedding_model \
                    and record.embedding_model != self.embedding_model:
                raise InvalidInput(
                    f"record {index}: embedding_model {record.embedding_model!r} differs from the store's "
                    f"{self.embedding_model!r}; re-embed with the store's model", index=index)

    async def upsert_many(
        self,
        records: Sequence[MemoryRecord],
        *,
        on_conflict: Literal["keep_first", "refresh"] | None = None,
        insights: Sequence[Sequence[OutboxInsight]] | None = None,
    ) -> UpsertResult:
        """Store a batch atomically; returns ids in input order and which records were new.

        ``insights[i]`` are enqueued in the outbox for ``records[i]``, in the same transaction.
        Records without an embedding are stored as pending.
        """
        self.validate(records)
        if insights is not None and len(insights) != len(records):
            raise InvalidInput("insights must have one entry (possibly empty) per record")
        if not records:
            return UpsertResult(ids=[], inserted=[])
        mode = on_conflict or self.settings.postgres.on_conflict
        rows, first_of = self._staging_rows(records)
        with span("store.upsert_many", rows=len(records), on_conflict=mode):
            INSTRUMENTS.batch_size.record(len(records), {"operation": "upsert"})
            result_rows = await run_with_retries(
                self.settings.postgres, "storing memories",
                lambda: self._upsert_transaction(rows, mode, records, insights))
        by_ord = {row["ord"]: row for row in result_rows}
        ids: list[uuid.UUID] = []
        inserted: list[bool] = []
        for index in range(len(records)):
            row = by_ord[first_of[index]]
            ids.append(row["id"])
            inserted.append(bool(row["inserted"]) and first_of[index] == index)
        result = UpsertResult(ids=ids, inserted=inserted)
        INSTRUMENTS.memories_stored.add(result.new_count)
        INSTRUMENTS.dedup_hits.add(result.duplicate_count)
        return result

    def _staging_rows(self, records: Sequence[MemoryRecord]) -> tuple[list[tuple[Any, ...]], list[int]]:
        rows: list[tuple[Any, ...]] = []
        seen: dict[tuple[str, str, str], int] = {}
        first_of: list[int] = []
        for index, record in enumerate(records):
            digest = content_hash(record.content)
            key = (record.project, record.memory_type, digest)
            if key in seen:
                first_of.append(seen[key])
                continue
            seen[key] = index
            first_of.append(index)
            embedding = list(record.embedding) if record.embedding is not None else None
            model = (record.embedding_model or self.embedding_model) if embedding is not None else None
            rows.append((index, uuid.uuid4(), record.project, record.memory_type, record.source_system,
                         record.agent_id, record.workflow_id, record.repo_id, record.session_id, record.content,
                         digest, json.dumps(record.metadata), embedding, model, record.created_at,
                         record.expires_at))
        return rows, first_of

    async def _upsert_transaction(
        self, rows: list[tuple[Any, ...]], mode: str, records: Sequence[MemoryRecord],
        insights: Sequence[Sequence[OutboxInsight]] | None,
    ) -> list[asyncpg.Record]:
        memories = self.table("memories")
        if mode == "refresh":
            conflict = ("DO UPDATE SET embedding = coalesce(EXCLUDED.embedding, m.embedding), "
                        "embedding_model = CASE WHEN EXCLUDED.embedding IS NULL THEN m.embedding_model "
                        "ELSE EXCLUDED.embedding_model END, metadata = m.metadata || EXCLUDED.metadata, "
                        "expires_at = EXCLUDED.expires_at, updated_at = now()")
        else:  # keep the first copy, but complete it if it is still pending
            conflict = ("DO UPDATE SET embedding = EXCLUDED.embedding, embedding_model = EXCLUDED.embedding_model, "
                        "updated_at = now() WHERE m.embedding IS NULL AND EXCLUDED.embedding IS NOT NULL")
        async with self.gate.acquire() as connection, connection.transaction():
            await connection.execute(
                f"CREATE TEMP TABLE om_staging (ord integer, id uuid, project text, memory_type text, "
                f"source_system text, agent_id text, workflow_id text, repo_id text, session_id text, content text, "
                f"content_hash text, metadata text, embedding {self._vector_sql_type()}, embedding_model text, "
                f"created_at timestamptz, expires_at timestamptz) ON COMMIT DROP")
            await connection.copy_records_to_table("om_staging", records=rows, columns=_STAGING_COLUMNS)
            await connection.execute(
                f"INSERT INTO {memories} AS m (id, project, memory_type, source_system, agent_id, workflow_id, "
                "repo_id, session_id, content, content_hash, metadata, embedding, embedding_model, created_at, "
                "updated_at, expires_at) "
                "SELECT id, project, memory_type, source_system, agent_id, workflow_id, repo_id, session_id, content, "
                "content_hash, metadata::jsonb, embedding, embedding_model, coalesce(created_at, now()), now(), "
                f"expires_at FROM om_staging ORDER BY ord ON CONFLICT (project, memory_type, content_hash) {conflict}")
            result = await connection.fetch(
                f"SELECT s.ord, m.id, m.project, (m.id = s.id) AS inserted FROM om_staging s JOIN {memories} m "
                "ON m.project = s.project AND m.memory_type = s.memory_type AND m.content_hash = s.content_hash")
            if insights is not None:
                await self._enqueue_insights(connection, result, records, insights)
        return list(result)

    async def _enqueue_insights(self, connection: asyncpg.Connection, result: Sequence[asyncpg.Record],
                                records: Sequence[MemoryRecord], insights: Sequence[Sequence[OutboxInsight]]) -> None:
        id_of = {row["ord"]: row["id"] for row in result}
        payload: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for index, items in enumerate(insights):
            if not items:
                continue
            record = records[index]
            memory_id = id_of.get(index)
            if memory_id is None:  # a duplicate inside the batch: attach to its first copy
                first = next(i for i, r in enumerate(records)
                             if (r.project, r.memory_type, content_hash(r.content))
                             == (record.project, record.memory_type, content_hash(record.content)))
                memory_id = id_of[first]
            for item in items:
                if (record.project, item.insight_id) in seen:
                    continue
                seen.add((record.project, item.insight_id))
                payload.append({"project": record.project, "insight_id": item.insight_id,
                                "memory_id": str(memory_id), "content": item.content,
                                "insight_type": item.insight_type, "topics": list(item.topics)})
        if payload:
            await connection.execute(
                f"INSERT INTO {self.table('insight_outbox')} (project, insight_id, memory_id, content, insight_type, "
                "topics) SELECT x.project, x.insight_id, x.memory_id, x.content, x.insight_type, "
                "ARRAY(SELECT jsonb_array_elements_text(x.topics)) "
                "FROM jsonb_to_recordset($1::text::jsonb) AS x(project text, insight_id text, memory_id uuid, "
                "content text, insight_type text, topics jsonb) ON CONFLICT (project, insight_id) DO NOTHING",
                json.dumps(payload))

    def _vector_sql_type(self) -> str:
        return f"{self.vector_type}({self.dimension})"

    @asynccontextmanager
    async def bulk_loading(self) -> AsyncIterator[None]:
        """Drop the vector index for a large load, then rebuild it once (COPY-speed loads).

        Searches during the load take the exact path. The rebuild raises ``maintenance_work_mem`` and
        disables the statement timeout for its own transaction only.
        """
        index = await self._vector_index_name()
        if index is not None:
            async with self.gate.acquire() as connection:
                await connection.execute(f'DROP INDEX IF EXISTS {self._t}."{index}"')
        try:
            yield
        finally:
            await self.build_vector_index()

    async def _vector_index_name(self) -> str | None:
        async with self.gate.acquire() as connection:
            name = await connection.fetchval(
                "SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
                "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_am am ON am.oid = ic.relam "
                "WHERE n.nspname = $1 AND c.relname = 'memories' AND am.amname IN ('hnsw', 'ivfflat') LIMIT 1",
                self.schema)
        return str(name) if name is not None else None

    async def build_vector_index(self, *, index_type: Literal["hnsw", "ivfflat"] | None = None) -> str | None:
        """(Re)build the vector index; IVFFlat ``lists`` come from the row count. Returns the index name."""
        pg = self.settings.postgres
        kind = index_type or pg.index_type
        memories = self.table("memories")
        ops = f"{self.vector_type}_cosine_ops"
        async with self.gate.acquire() as connection:
            rows = int(await connection.fetchval(f"SELECT count(*) FROM {memories} WHERE embedding IS NOT NULL"))
            if kind == "ivfflat" and rows == 0:
                return None  # an IVFFlat index built on no rows clusters nothing
            existing = await self._vector_index_name()
            async with connection.transaction():
                await connection.execute(
                    "SELECT set_config('maintenance_work_mem', $1, true), set_config('statement_timeout', '0', true)",
                    pg.bulk_maintenance_work_mem)
                if existing is not None:
                    await connection.execute(f'DROP INDEX IF EXISTS {self._t}."{existing}"')
                if kind == "hnsw":
                    name = "memories_embedding_hnsw"
                    await connection.execute(
                        f'CREATE INDEX "{name}" ON {memories} USING hnsw (embedding {ops}) '
                        f"WITH (m = {int(pg.hnsw_m)}, ef_construction = {int(pg.hnsw_ef_construction)})")
                else:
                    name = "memories_embedding_ivfflat"
                    lists = pg.ivfflat_lists or ivfflat_lists_for(rows)
                    await connection.execute(
                        f'CREATE INDEX "{name}" ON {memories} USING ivfflat (embedding {ops}) WITH (lists = {lists})')
                await connection.execute(
                    f"UPDATE {self.table('embedding_meta')} SET index_built_rows = $1, index_built_at = now()", rows)
            await connection.execute(f"ANALYZE {memories}")
        return name

    # --- pending embeddings (backfill) ---------------------------------------------------------------

    async def fetch_pending(self, limit: int, *, after: tuple[datetime, uuid.UUID] | None = None
                            ) -> list[PendingMemory]:
        """Memories whose embedding is pending, oldest first; ``after`` is a keyset cursor."""
        async with self.gate.acquire() as connection:
            if after is None:
                rows = await connection.fetch(
                    f"SELECT project, id, content, created_at FROM {self.table('memories')} WHERE embedding IS NULL "
                    "ORDER BY created_at, id LIMIT $1", limit)
            else:
                rows = await connection.fetch(
                    f"SELECT project, id, content, created_at FROM {self.table('memories')} WHERE embedding IS NULL "
                    "AND (created_at, id) > ($2, $3) ORDER BY created_at, id LIMIT $1", limit, after[0], after[1])
        return [PendingMemory(project=r["project"], id=r["id"], content=r["content"], created_at=r["created_at"])
                for r in rows]

    async def count_pending(self) -> int:
        async with self.gate.acquire() as connection:
            return int(await connection.fetchval(
                f"SELECT count(*) FROM {self.table('memories')} WHERE embedding IS NULL"))

    async def set_embeddings(self, items: Sequence[tuple[str, uuid.UUID, Sequence[float]]], model_id: str) -> int:
        """Fill pending embeddings (only where still pending). Returns rows updated."""
        if not items:
            return 0
        if self.embedding_model and model_id != self.embedding_model:
            raise InvalidInput(f"embeddings from {model_id!r} cannot fill a store bound to {self.embedding_model!r}")
        for _, _, vector in items:
            check_embedding(vector, dimension=self.dimension)

        async def run() -> int:
            async with self.gate.acquire() as connection, connection.transaction():
                await connection.execute(
                    f"CREATE TEMP TABLE om_fill (project text, id uuid, embedding {self._vector_sql_type()}) "
                    "ON COMMIT DROP")
                await connection.copy_records_to_table(
                    "om_fill", records=[(p, i, list(v)) for p, i, v in items], columns=("project", "id", "embedding"))
                status = await connection.execute(
                    f"UPDATE {self.table('memories')} m SET embedding = f.embedding, embedding_model = $1, "
                    "updated_at = now() FROM om_fill f WHERE m.project = f.project AND m.id = f.id "
                    "AND m.embedding IS NULL", model_id)
            return int(status.split()[-1])

        return await run_with_retries(self.settings.postgres, "filling embeddings", run)

    # --- reads ---------------------------------------------------------------------------------------

    async def get(self, ids: Sequence[uuid.UUID | str]) -> list[StoredMemory]:
        parsed = _parse_ids(ids)
        if not parsed:
            return []
        async with self.gate.acquire() as connection:
            rows = await connection.fetch(
                "SELECT id, project, memory_type, content, content_hash, metadata, source_system, agent_id, "
                "workflow_id, repo_id, session_id, embedding_model, embedding IS NULL AS pending, created_at, "
                f"updated_at, expires_at FROM {self.table('memories')} WHERE id = ANY($1::uuid[])", parsed)
        order = {value: position for position, value in enumerate(parsed)}
        result = [StoredMemory(
            id=r["id"], project=r["project"], memory_type=r["memory_type"], content=r["content"],
            content_hash=r["content_hash"], metadata=r["metadata"], source_system=r["source_system"],
            agent_id=r["agent_id"], workflow_id=r["workflow_id"], repo_id=r["repo_id"], session_id=r["session_id"],
            embedding_model=r["embedding_model"], embedding_pending=r["pending"], created_at=r["created_at"],
            updated_at=r["updated_at"], expires_at=r["expires_at"]) for r in rows]
        result.sort(key=lambda item: order.get(item.id, 0))
        return result

    async def get_embedding(self, memory_id: uuid.UUID | str) -> list[float] | None:
        async with self.gate.acquire() as connection:
            value = await connection.fetchval(
                f"SELECT embedding FROM {self.table('memories')} WHERE id = $1::uuid", _parse_ids([memory_id])[0])
        return None if value is None else [float(x) for x in value.to_list()]

    async def count(self, filters: SearchFilters | None = None) -> int:
        if filters is not None:
            filters.validate()
        params = Params()
        where = filter_clause(filters or SearchFilters(include_expired=True), params)
        async with self.gate.acquire() as connection:
            return int(await connection.fetchval(
                f"SELECT count(*) FROM {self.table('memories')} m WHERE {where}", *params.values))

    async def delete(self, ids: Sequence[uuid.UUID | str] | None = None, *,
                     filters: SearchFilters | None = None) -> int:
        """Delete by ids, or by a non-empty filter (an empty filter would delete everything: refused)."""
        if ids is None and filters is None:
            raise InvalidInput("delete needs ids or a filter")
        params = Params()
        if ids is not None:
            where = f"m.id = ANY({params.add(_parse_ids(ids), 'uuid[]')})"
        else:
            assert filters is not None
            filters.validate()
            if filters.is_empty():
                raise InvalidInput("refusing to delete with an empty filter: name a project, type or other field")
            where = filter_clause(SearchFilters(**{**_filters_dict(filters), "include_expired": True}), params)
        with span("store.delete"):
            async def run() -> int:
                async with self.gate.acquire() as connection:
                    status = await connection.execute(
                        f"DELETE FROM {self.table('memories')} m WHERE {where}", *params.values)
                return int(status.split()[-1])

            return await run_with_retries(self.settings.postgres, "deleting memories", run)

    async def touch(self, ids: Sequence[uuid.UUID | str]) -> int:
        """Count an access in the side table (never updates the vector row)."""
        parsed = _parse_ids(ids)
        if not parsed:
            return 0
        async with self.gate.acquire() as connection:
            status = await connection.execute(
                f"INSERT INTO {self.table('memory_access')} AS a (project, memory_id, access_count, last_accessed_at) "
                f"SELECT project, id, 1, now() FROM {self.table('memories')} WHERE id = ANY($1::uuid[]) "
                "ON CONFLICT (project, memory_id) DO UPDATE SET access_count = a.access_count + 1, "
                "last_accessed_at = now()", parsed)
        return int(status.split()[-1])

    async def access_stats(self, memory_id: uuid.UUID | str) -> tuple[int, datetime] | None:
        async with self.gate.acquire() as connection:
            row = await connection.fetchrow(
                f"SELECT access_count, last_accessed_at FROM {self.table('memory_access')} WHERE memory_id = $1::uuid",
                _parse_ids([memory_id])[0])
        return None if row is None else (int(row["access_count"]), row["last_accessed_at"])

    # --- search --------------------------------------------------------------------------------------

    async def search_vector(self, query_embedding: Sequence[float], *, filters: SearchFilters | None = None,
                            limit: int | None = None, ef_search: int | None = None,
                            min_score: float | None = None) -> list[SearchHit]:
        return await self.search(query_embedding=query_embedding, mode="vector", filters=filters, limit=limit,
                                 ef_search=ef_search, min_score=min_score)

    async def search_text(self, query_text: str, *, filters: SearchFilters | None = None,
                          limit: int | None = None, min_score: float | None = None) -> list[SearchHit]:
        return await self.search(query_text=query_text, mode="text", filters=filters, limit=limit,
                                 min_score=min_score)

    async def search_hybrid(self, query_text: str, query_embedding: Sequence[float], *,
                            filters: SearchFilters | None = None, limit: int | None = None,
                            ef_search: int | None = None, vector_weight: float | None = None,
                            text_weight: float | None = None, rrf_k: int | None = None,
                            min_score: float | None = None) -> list[SearchHit]:
        return await self.search(query_text=query_text, query_embedding=query_embedding, mode="hybrid",
                                 filters=filters, limit=limit, ef_search=ef_search, vector_weight=vector_weight,
                                 text_weight=text_weight, rrf_k=rrf_k, min_score=min_score)

    async def search(
        self,
        *,
        query_text: str | None = None,
        query_embedding: Sequence[float] | None = None,
        mode: SearchMode | None = None,
        filters: SearchFilters | None = None,
        limit: int | None = None,
        ef_search: int | None = None,
        vector_weight: float | None = None,
        text_weight: float | None = None,
        rrf_k: int | None = None,
        min_score: float | None = None,
    ) -> list[SearchHit]:
        """Vector, text or hybrid (weighted RRF) search. Scores are similarities: higher is better."""
        ss = self.settings.search
        mode = mode or ss.default_mode
        limit = ss.default_limit if limit is None else limit
        self._check_search_args(mode, query_text, query_embedding, limit, filters)
        watch = Stopwatch()
        with span("store.search", mode=mode, limit=limit, filtered=not (filters is None or filters.is_empty())) as sp:
            hits = await run_with_retries(self.settings.postgres, f"{mode} search", lambda: self._search(
                mode=mode, query_text=query_text, query_embedding=query_embedding, filters=filters, limit=limit,
                ef_search=ef_search, vector_weight=ss.vector_weight if vector_weight is None else vector_weight,
                text_weight=ss.text_weight if text_weight is None else text_weight,
                rrf_k=ss.rrf_k if rrf_k is None else rrf_k))
            if min_score is not None:
                hits = [hit for hit in hits if hit.score >= min_score]
            sp.set_attribute("hits", len(hits))
        INSTRUMENTS.search_latency.record(watch.ms, {"mode": mode})
        return hits

    def _check_search_args(self, mode: str, query_text: str | None, query_embedding: Sequence[float] | None,
                           limit: int, filters: SearchFilters | None) -> None:
        if mode not in ("vector", "text", "hybrid"):
            raise InvalidInput(f"mode {mode!r} is unknown; use vector, text or hybrid")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= self.settings.search.max_limit:
            raise InvalidInput(f"limit must be between 1 and {self.settings.search.max_limit}")
        if mode in ("vector", "hybrid"):
            if query_embedding is None:
                raise InvalidInput(f"{mode} search needs query_embedding")
            check_embedding(query_embedding, dimension=self.dimension)
        if mode in ("text", "hybrid"):
            if query_text is None or not isinstance(query_text, str):
                raise InvalidInput(f"{mode} search needs query_text")
            if "\x00" in query_text:
                raise InvalidInput("query_text contains a NUL byte; remove it")
            if len(query_text) > 10_000:
                raise InvalidInput("query_text is longer than 10,000 characters")
        if filters is not None:
            filters.validate()

    @asynccontextmanager
    async def _search_connection(self) -> AsyncIterator[asyncpg.Connection]:
        gate = self._read_gate or self.gate
        async with gate.acquire() as connection, connection.transaction(readonly=True):
            yield connection

    async def _apply_knobs(self, connection: asyncpg.Connection, ef_search: int) -> None:
        ss = self.settings.search
        knobs: list[tuple[str, str]] = [("plan_cache_mode", "force_custom_plan")]
        if self.settings.postgres.index_type == "hnsw":
            knobs += [("hnsw.ef_search", str(ef_search)), ("hnsw.iterative_scan", ss.iterative_scan),
                      ("hnsw.max_scan_tuples", str(ss.max_scan_tuples))]
        else:
            knobs += [("ivfflat.probes", str(ss.ivfflat_probes or 10)),
                      ("ivfflat.iterative_scan", "off" if ss.iterative_scan == "off" else "relaxed_order")]
        names = [name for name, _ in knobs]
        values = [value for _, value in knobs]
        await connection.execute(
            "SELECT set_config(k.name, k.value, true) FROM unnest($1::text[], $2::text[]) AS k(name, value)",
            names, values)

    def _ef_search(self, ef_search: int | None, limit: int, candidates: int) -> int:
        value = ef_search if ef_search is not None else self.settings.search.ef_search
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput("ef_search must be a positive integer")
        return min(max(value, limit, candidates), 1000)

    async def plan_vector_search(self, connection: asyncpg.Connection, filters: SearchFilters | None,
                                 ef_search: int) -> SearchPlan:
        """Pick the exact path when the filter matches few rows, otherwise the ANN path."""
        if filters is None or filters.is_empty():
            return SearchPlan(path="ann", matching_rows_capped=None, ef_search=ef_search)
        cap = self.settings.search.exact_search_max_rows
        params = Params()
        where = filter_clause(filters, params)
        count = await connection.fetchval(
            f"SELECT count(*) FROM (SELECT 1 FROM {self.table('memories')} m WHERE m.embedding IS NOT NULL "
            f"AND {where} LIMIT {int(cap) + 1}) AS capped", *params.values)
        path: Literal["exact", "ann"] = "exact" if int(count) <= cap else "ann"
        return SearchPlan(path=path, matching_rows_capped=int(count), ef_search=ef_search)

    def _vector_branch(self, params: Params, query_embedding: Sequence[float], filters: SearchFilters | None,
                       n: int, path: str) -> str:
        q = params.add(list(query_embedding), self._vector_sql_type())
        where = filter_clause(filters, params)
        memories = self.table("memories")
        if path == "exact":  # "+ 0" keeps the planner off the vector index: an exact, complete answer
            return (f"SELECT m.project, m.id, (m.embedding <=> {q}) AS distance FROM {memories} m "
                    f"WHERE m.embedding IS NOT NULL AND {where} ORDER BY (m.embedding <=> {q}) + 0, m.id "
                    f"LIMIT {params.add(n, 'int')}")
        return (f"SELECT c.project, c.id, c.distance FROM (SELECT m.project, m.id, (m.embedding <=> {q}) AS distance "
                f"FROM {memories} m WHERE m.embedding IS NOT NULL AND {where} ORDER BY m.embedding <=> {q} "
                f"LIMIT {params.add(n, 'int')}) AS c")

    def _text_branch(self, params: Params, query_text: str, filters: SearchFilters | None, n: int) -> str:
        config = params.add(self.settings.postgres.text_search_config, "regconfig")
        query = params.add(query_text, "text")
        where = filter_clause(filters, params)
        return (f"SELECT m.project, m.id, ts_rank_cd(m.tsv, q.query, 32) AS rank FROM {self.table('memories')} m, "
                f"websearch_to_tsquery({config}, {query}) AS q(query) WHERE m.tsv @@ q.query AND {where} "
                f"ORDER BY rank DESC, m.id LIMIT {params.add(n, 'int')}")

    async def _search(self, *, mode: str, query_text: str | None, query_embedding: Sequence[float] | None,
                      filters: SearchFilters | None, limit: int, ef_search: int | None, vector_weight: float,
                      text_weight: float, rrf_k: int) -> list[SearchHit]:
        candidates = max(self.settings.search.branch_candidates, limit)
        ef = self._ef_search(ef_search, limit, candidates if mode == "hybrid" else limit)
        async with self._search_connection() as connection:
            await self._apply_knobs(connection, ef)
            if mode == "text":
                assert query_text is not None
                params = Params()
                sql = (f"WITH t AS MATERIALIZED ({self._text_branch(params, query_text, filters, limit)}) "
                       f"SELECT {_HIT_COLUMNS}, t.rank, row_number() OVER (ORDER BY t.rank DESC, t.id) AS text_rank "
                       f"FROM t JOIN {self.table('memories')} m ON m.project = t.project AND m.id = t.id "
                       "ORDER BY t.rank DESC, t.id")
                rows = await connection.fetch(sql, *params.values)
                return [_hit(r, score=float(r["rank"]), text_rank=int(r["text_rank"]), text_score=float(r["rank"]))
                        for r in rows]
            assert query_embedding is not None
            plan = await self.plan_vector_search(connection, filters, ef)
            if mode == "vector":
                rows = await self._vector_rows(connection, query_embedding, filters, limit, plan.path)
                if len(rows) < limit and plan.path == "ann":  # never under-return: fall back to the exact path
                    rows = await self._vector_rows(connection, query_embedding, filters, limit, "exact")
                return [_hit(r, score=1.0 - float(r["distance"]), vector_rank=int(r["vector_rank"]),
                             vector_similarity=1.0 - float(r["distance"])) for r in rows]
            assert query_text is not None
            params = Params()
            vector_sql = self._vector_branch(params, query_embedding, filters, candidates, plan.path)
            text_sql = self._text_branch(params, query_text, filters, candidates)
            k = params.add(rrf_k, "float8")
            vw = params.add(vector_weight, "float8")
            tw = params.add(text_weight, "float8")
            sql = (
                f"WITH v AS MATERIALIZED ({vector_sql}), t AS MATERIALIZED ({text_sql}), "
                "vr AS (SELECT project, id, distance, row_number() OVER (ORDER BY distance, id) AS r FROM v), "
                "tr AS (SELECT project, id, rank, row_number() OVER (ORDER BY rank DESC, id) AS r FROM t), "
                "f AS (SELECT coalesce(vr.project, tr.project) AS project, coalesce(vr.id, tr.id) AS id, "
                "vr.r AS vector_rank, tr.r AS text_rank, vr.distance, tr.rank, "
                f"coalesce({vw} / ({k} + vr.r), 0) + coalesce({tw} / ({k} + tr.r), 0) AS fused "
                "FROM vr FULL OUTER JOIN tr ON vr.project = tr.project AND vr.id = tr.id) "
                f"SELECT {_HIT_COLUMNS}, f.vector_rank, f.text_rank, f.distance, f.rank, f.fused "
                f"FROM f JOIN {self.table('memories')} m ON m.project = f.project AND m.id = f.id "
                f"ORDER BY f.fused DESC, f.vector_rank NULLS LAST, f.text_rank NULLS LAST "
                f"LIMIT {params.add(limit, 'int')}")
            rows = await connection.fetch(sql, *params.values)
            return [_hit(r, score=float(r["fused"]),
                         vector_rank=r["vector_rank"], text_rank=r["text_rank"],
                         vector_similarity=None if r["distance"] is None else 1.0 - float(r["distance"]),
                         text_score=None if r["rank"] is None else float(r["rank"])) for r in rows]

    async def _vector_rows(self, connection: asyncpg.Connection, query_embedding: Sequence[float],
                           filters: SearchFilters | None, limit: int, path: str) -> list[asyncpg.Record]:
        params = Params()
        branch = self._vector_branch(params, query_embedding, filters, limit, path)
        # relaxed_order may return candidates slightly out of order: re-sort the materialized set.
        sql = (f"WITH v AS MATERIALIZED ({branch}) SELECT {_HIT_COLUMNS}, v.distance, "
               "row_number() OVER (ORDER BY v.distance + 0, v.id) AS vector_rank "
               f"FROM v JOIN {self.table('memories')} m ON m.project = v.project AND m.id = v.id "
               "ORDER BY v.distance + 0, v.id")
        return list(await connection.fetch(sql, *params.values))

    async def explain_vector_search(self, query_embedding: Sequence[float], *, filters: SearchFilters | None = None,
                                    limit: int = 10, min_score: float | None = None) -> tuple[SearchPlan, str]:
        """The chosen path and PostgreSQL's plan text for a vector search (for tests and `doctor`)."""
        self._check_search_args("vector", None, query_embedding, limit, filters)
        ef = self._ef_search(None, limit, limit)
        async with self._search_connection() as connection:
            await self._apply_knobs(connection, ef)
            plan = await self.plan_vector_search(connection, filters, ef)
            params = Params()
            branch = self._vector_branch(params, query_embedding, filters, limit, plan.path)
            threshold = ""
            if min_score is not None:
                threshold = f" WHERE 1 - v.distance >= {params.add(min_score, 'float8')}"
            rows = await connection.fetch(
                f"EXPLAIN (COSTS OFF) WITH v AS MATERIALIZED ({branch}) SELECT * FROM v{threshold}", *params.values)
        return plan, "\n".join(r[0] for r in rows)


def ivfflat_lists_for(rows: int) -> int:
    """pgvector's guidance: rows/1000 up to 1M rows, sqrt(rows) above; at least 1."""
    if rows <= 1_000_000:
        return max(1, rows // 1000)
    return max(1, int(math.sqrt(rows)))


def _hit(row: asyncpg.Record, *, score: float, vector_rank: int | None = None, text_rank: int | None = None,
         vector_similarity: float | None = None, text_score: float | None = None) -> SearchHit:
    return SearchHit(
        id=row["id"], content=row["content"], memory_type=row["memory_type"], project=row["project"],
        metadata=row["metadata"], score=score, vector_rank=vector_rank, text_rank=text_rank,
        vector_similarity=vector_similarity, text_score=text_score, agent_id=row["agent_id"],
        workflow_id=row["workflow_id"], repo_id=row["repo_id"], session_id=row["session_id"],
        source_system=row["source_system"], created_at=row["created_at"])


def _parse_ids(ids: Sequence[uuid.UUID | str]) -> list[uuid.UUID]:
    if isinstance(ids, (str, bytes)):
        raise InvalidInput("ids must be a list of UUIDs, not a single string")
    parsed: list[uuid.UUID] = []
    for value in ids:
        if isinstance(value, uuid.UUID):
            parsed.append(value)
            continue
        try:
            parsed.append(uuid.UUID(str(value)))
        except ValueError:
            raise InvalidInput(f"{str(value)[:64]!r} is not a memory id (UUID)") from None
    return parsed


def _filters_dict(filters: SearchFilters) -> dict[str, Any]:
    return {name: getattr(filters, name) for name in SearchFilters.__dataclass_fields__}


def _safe_db_name(name: str) -> str:
    return validate_identifier(name, what="postgres.database")


async def pgvector_store_factory() -> PgvectorMemoryStore:
    """Oneiric factory: load settings, build, ``await init()``; clean up if init fails."""
    store = PgvectorMemoryStore(load_settings())
    await store.init()
    return store

