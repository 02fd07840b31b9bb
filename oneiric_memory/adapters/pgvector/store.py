"""``PgvectorMemoryStore``: the PostgreSQL + pgvector memory store (Oneiric category ``memory_store``).

Writes are validated first, then one transaction COPYs the batch into a staging table and merges it
with ``INSERT ... ON CONFLICT (project, memory_type, content_hash)``. Searches run one statement per call,
with every knob in ``set_config(..., true)`` (transaction-local, PgBouncer-safe) and a per-call choice
between the exact path (selective filters, via B-tree) and an HNSW scan with iterative scanning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import asyncpg

from oneiric_memory.adapters.pgvector.bootstrap import check_extensions, migrate, server_params
from oneiric_memory.adapters.pgvector.connection import (
    ConnectParams,
    PoolGate,
    create_pool,
    is_transient,
    run_with_retries,
    translate_error,
    wait_closed,
)
from oneiric_memory.adapters.pgvector.direct import DirectSession, direct_session, flush_statistics
from oneiric_memory.adapters.pgvector.gauges import register_metrics
from oneiric_memory.adapters.pgvector.migration_ledger import MigrationLedger
from oneiric_memory.adapters.pgvector.outbox import OutboxQueue
from oneiric_memory.adapters.pgvector.schema import SchemaNames, check_meta, quote_literal
from oneiric_memory.adapters.pgvector.search_sql import (
    Params,
    bm25_branch,
    capped_count_sql,
    estimate_sql,
    filter_clause,
    filters_well_estimated,
    hybrid_sql,
    text_branch,
    text_search_sql,
    vector_branch,
    vector_search_sql,
)
from oneiric_memory.errors import InvalidInput, SchemaMismatch, StoreError, without_driver_chain
from oneiric_memory.insights import Insight
from oneiric_memory.observability import INSTRUMENTS, Stopwatch, get_logger, span
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
from oneiric_memory.settings import MemorySettings, load_settings

if TYPE_CHECKING:  # mcp_common is imported lazily: loading it pulls in fastmcp and costs seconds per process
    from mcp_common.health import ComponentHealth

__all__ = ["PendingMemory", "PgvectorMemoryStore", "SearchPlan", "pgvector_store_factory"]

_HIT_COLUMNS = ("m.id, m.project, m.memory_type, m.content, m.metadata, m.agent_id, m.workflow_id, m.repo_id, "
                "m.session_id, m.source_system, m.created_at")
_INDEX_BUILD_TIMEOUT_S = 24 * 3600.0  # an index build on millions of rows takes far longer than a query
_STAGING_COLUMNS = ("ord", "id", "project", "memory_type", "source_system", "agent_id", "workflow_id", "repo_id",
                    "session_id", "content", "content_hash", "metadata", "embedding", "embedding_model",
                    "created_at", "expires_at", "copies")


@dataclass(frozen=True, slots=True)
class PendingMemory:
    """A stored memory whose embedding is still pending (for backfill)."""

    project: str
    id: uuid.UUID
    content: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SearchPlan:
    """How a vector search was executed: ``exact`` (B-tree + sort) or ``ann`` (vector index scan).

    ``probe`` says what decided the path: ``none`` (no filter), ``estimate`` (the planner's row estimate,
    ``estimated_rows``) or ``count`` (a count capped at ``exact_search_max_rows + 1``,
    ``matching_rows_capped``). ``fallback`` is true when an ANN answer came back short and was redone exactly.
    """

    path: Literal["exact", "ann", "none"]
    matching_rows_capped: int | None
    ef_search: int
    probe: Literal["none", "estimate", "count"] = "none"
    estimated_rows: int | None = None
    fallback: bool = False


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
        self.names = SchemaNames(self.schema)
        self._server = contextlib.AsyncExitStack()
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

    @property
    def outbox(self) -> OutboxQueue:
        """The insight outbox as a queue (claim, record outcomes, status, requeue)."""
        return OutboxQueue(self)

    @property
    def migration_ledger(self) -> MigrationLedger:
        """The DuckDB migration's runs, items and checkpoints (and its rollback)."""
        return MigrationLedger(self)

    def table(self, name: str) -> str:
        """Schema-qualified name of one of this package's tables (fixed names, validated schema)."""
        return self.names.table(name)

    async def init(self) -> None:
        """Start/attach the database, check pgvector, migrate (if allowed), check the meta table, open pools."""
        pg = self.settings.postgres
        if self._pool is not None and not self._closed:
            return  # already initialized: a second init must not open (and leak) a second pool
        with span("store.init", embedded=pg.embedded):
            try:
                self._params = await self._server.enter_async_context(server_params(self.settings))
                extensions = await check_extensions(self._params, pg)
                self.extension_version, self.bm25_extension = extensions.vector_version, extensions.bm25
                await migrate(self._params, pg)
                self._pool = await create_pool(self._params, pg, vector_schema=extensions.vector_schema)
                self._gate = PoolGate(self._pool, pg.acquire_timeout_s)
                if pg.read_dsn is not None:
                    self._read_pool = await create_pool(ConnectParams.from_settings(pg, read=True), pg,
                                                        vector_schema=extensions.vector_schema)
                    self._read_gate = PoolGate(self._read_pool, pg.acquire_timeout_s)
                await self._check_meta()
            except BaseException:
                await self.cleanup()
                raise
        register_metrics(self)
        self._closed = False
        self._log.info("store-ready", schema=self.schema, embedded=pg.embedded, pgvector=self.extension_version)

    async def _check_meta(self) -> None:
        async def read() -> asyncpg.Record | None:
            async with self.gate.acquire() as connection:
                return await connection.fetchrow(
                    f"SELECT model, dimension, vector_type FROM {self.table('embedding_meta')}")

        row = await run_with_retries(self.settings.postgres, "reading the embedding meta table", read)
        self.embedding_model = check_meta(row, names=self.names, dimension=self.dimension,
                                          vector_type=self.vector_type)

    async def bind_embedding_model(self, model_id: str) -> None:
        """Record the embedding model on first use; refuse a different one (mixing vector spaces)."""
        if not isinstance(model_id, str) or not model_id or "\x00" in model_id:
            raise InvalidInput("model_id must be a non-empty string without NUL bytes", field="model_id")

        async def bind() -> str | None:
            async with self.gate.acquire() as connection:
                value = await connection.fetchval(
                    f"UPDATE {self.table('embedding_meta')} SET model = coalesce(model, $1), updated_at = now() "
                    "RETURNING model", model_id)
            return None if value is None else str(value)

        model = await run_with_retries(self.settings.postgres, "binding the embedding model", bind)
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

    async def cleanup(self) -> None:
        """Close pools gracefully (waiting for checked-out connections) and release the embedded server."""
        self._closed = True
        timeout = self.settings.postgres.command_timeout_s
        for pool in (self._read_pool, self._pool):
            if pool is not None:
                await wait_closed(pool, timeout)
        self._pool = self._read_pool = None
        self._gate = self._read_gate = None
        await self._server.aclose()  # stops the embedded server this store started (if any)

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
        from mcp_common.health import ComponentHealth, HealthStatus

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
            record.validate(dimension=self.dimension, max_content_bytes=pg.max_content_bytes, index=index,
                            vector_type=self.vector_type)
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
        insights: Sequence[Sequence[Insight]] | None = None,
    ) -> UpsertResult:
        """Store a batch atomically; returns ids in input order and which records were new.

        ``insights[i]`` are enqueued in the outbox for ``records[i]``, in the same transaction.
        Records without an embedding are stored as pending.

        *Duplicates* (same project, memory_type and normalized content) answer with the stored row's id and are
        recorded on it: ``seen_count`` grows by the copies written and ``last_seen_at`` is set. Their other
        fields follow ``on_conflict``: ``keep_first`` (the default) keeps the stored metadata, expiry and
        labels unchanged and only fills a pending embedding; ``refresh`` merges the duplicate's metadata over
        the stored one (its keys win), replaces the expiry and, when it carries one, the embedding.
        """
        self.validate(records)
        if insights is not None and len(insights) != len(records):
            raise InvalidInput("insights must have one entry (possibly empty) per record")
        if not records:
            return UpsertResult(ids=[], inserted=[])
        mode = on_conflict or self.settings.postgres.on_conflict
        if mode not in ("keep_first", "refresh"):
            raise InvalidInput(f"on_conflict {mode!r} is unknown; use keep_first or refresh", field="on_conflict")
        rows, first_of = self._staging_rows(records, mode)
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

    def _staging_rows(self, records: Sequence[MemoryRecord],
                      mode: str = "keep_first") -> tuple[list[tuple[Any, ...]], list[int]]:
        """One staging row per dedup key; ``first_of[i]`` is the input index whose row stands for record ``i``.

        A later copy inside the batch acts like a copy from a later batch: under ``keep_first`` it only fills a
        pending embedding; under ``refresh`` it merges its metadata and replaces embedding and expiry.
        """
        staged: dict[int, dict[str, Any]] = {}
        seen: dict[tuple[str, str, str], int] = {}
        first_of: list[int] = []
        for index, record in enumerate(records):
            digest = content_hash(record.content)
            key = (record.project, record.memory_type, digest)
            embedding = [float(x) for x in record.embedding] if record.embedding is not None else None
            model = (record.embedding_model or self.embedding_model) if embedding is not None else None
            first = seen.get(key)
            if first is not None:
                first_of.append(first)
                row = staged[first]
                row["copies"] += 1
                if embedding is not None and (mode == "refresh" or row["embedding"] is None):
                    row["embedding"], row["embedding_model"] = embedding, model
                if mode == "refresh":
                    row["metadata"] = {**row["metadata"], **record.metadata}
                    row["expires_at"] = record.expires_at
                continue
            seen[key] = index
            first_of.append(index)
            staged[index] = {
                "ord": index, "id": record.id or uuid.uuid4(), "project": record.project, "memory_type": record.memory_type,
                "source_system": record.source_system, "agent_id": record.agent_id,
                "workflow_id": record.workflow_id, "repo_id": record.repo_id, "session_id": record.session_id,
                "content": record.content, "content_hash": digest, "metadata": dict(record.metadata),
                "embedding": embedding, "embedding_model": model, "created_at": record.created_at,
                "expires_at": record.expires_at, "copies": 1,
            }
        rows = [tuple(json.dumps(row[c]) if c == "metadata" else row[c] for c in _STAGING_COLUMNS)
                for row in staged.values()]
        return rows, first_of

    async def _upsert_transaction(
        self, rows: list[tuple[Any, ...]], mode: str, records: Sequence[MemoryRecord],
        insights: Sequence[Sequence[Insight]] | None,
    ) -> list[asyncpg.Record]:
        memories = self.table("memories")
        # Every duplicate is recorded (seen_count, last_seen_at); see upsert_many for the metadata policy.
        seen = "seen_count = m.seen_count + EXCLUDED.seen_count, last_seen_at = now()"
        if mode == "refresh":
            conflict = (f"DO UPDATE SET {seen}, embedding = coalesce(EXCLUDED.embedding, m.embedding), "
                        "embedding_model = CASE WHEN EXCLUDED.embedding IS NULL THEN m.embedding_model "
                        "ELSE EXCLUDED.embedding_model END, metadata = m.metadata || EXCLUDED.metadata, "
                        "expires_at = EXCLUDED.expires_at, updated_at = now()")
        else:  # keep the first copy, but complete it if it is still pending
            fills = "m.embedding IS NULL AND EXCLUDED.embedding IS NOT NULL"
            conflict = (f"DO UPDATE SET {seen}, "
                        f"embedding = CASE WHEN {fills} THEN EXCLUDED.embedding ELSE m.embedding END, "
                        f"embedding_model = CASE WHEN {fills} THEN EXCLUDED.embedding_model ELSE m.embedding_model END, "
                        f"updated_at = CASE WHEN {fills} THEN now() ELSE m.updated_at END")
        async with self.gate.acquire() as connection, connection.transaction():
            await connection.execute(
                f"CREATE TEMP TABLE om_staging (ord integer, id uuid, project text, memory_type text, "
                f"source_system text, agent_id text, workflow_id text, repo_id text, session_id text, content text, "
                f"content_hash text, metadata text, embedding {self._vector_sql_type()}, embedding_model text, "
                f"created_at timestamptz, expires_at timestamptz, copies integer) ON COMMIT DROP")
            await connection.copy_records_to_table("om_staging", records=rows, columns=_STAGING_COLUMNS)
            await connection.execute(
                f"INSERT INTO {memories} AS m (id, project, memory_type, source_system, agent_id, workflow_id, "
                "repo_id, session_id, content, content_hash, metadata, embedding, embedding_model, created_at, "
                "updated_at, expires_at, seen_count) "
                "SELECT id, project, memory_type, source_system, agent_id, workflow_id, repo_id, session_id, content, "
                "content_hash, metadata::jsonb, embedding, embedding_model, coalesce(created_at, now()), now(), "
                # key order: concurrent batches lock their rows in the same order, so they cannot deadlock
                f"expires_at, copies FROM om_staging ORDER BY project, memory_type, content_hash "
                f"ON CONFLICT (project, memory_type, content_hash) {conflict}")
            result = await connection.fetch(
                f"SELECT s.ord, m.id, m.project, (m.id = s.id) AS inserted FROM om_staging s JOIN {memories} m "
                "ON m.project = s.project AND m.memory_type = s.memory_type AND m.content_hash = s.content_hash")
            if insights is not None:
                await self._enqueue_insights(connection, result, records, insights)
        return list(result)

    async def _enqueue_insights(self, connection: asyncpg.Connection, result: Sequence[asyncpg.Record],
                                records: Sequence[MemoryRecord], insights: Sequence[Sequence[Insight]]) -> None:
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
                await connection.execute(f"DROP INDEX IF EXISTS {self.names.index(index)}")
        try:
            yield
        finally:
            await self.build_vector_index()

    async def _vector_index_name(self, connection: asyncpg.Connection | None = None) -> str | None:
        """Name of the vector index on ``memories``; pass ``connection`` when already holding one."""
        if connection is None:
            async with self.gate.acquire() as acquired:
                return await self._vector_index_name(acquired)
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
            # Same connection: a second acquire while holding this one deadlocks a pool of size 1.
            existing = await self._vector_index_name(connection)
            async with connection.transaction():
                await connection.execute(
                    "SELECT set_config('maintenance_work_mem', $1, true), set_config('statement_timeout', '0', true)",
                    pg.bulk_maintenance_work_mem)
                if existing is not None:
                    await connection.execute(f"DROP INDEX IF EXISTS {self.names.index(existing)}")
                if kind == "hnsw":
                    name = "memories_embedding_hnsw"
                    ddl = (f'CREATE INDEX "{name}" ON {memories} USING hnsw (embedding {ops}) '
                           f"WITH (m = {int(pg.hnsw_m)}, ef_construction = {int(pg.hnsw_ef_construction)})")
                else:
                    name = "memories_embedding_ivfflat"
                    lists = pg.ivfflat_lists or ivfflat_lists_for(rows)
                    ddl = f'CREATE INDEX "{name}" ON {memories} USING ivfflat (embedding {ops}) WITH (lists = {lists})'
                # statement_timeout is off for this transaction; the client-side command timeout must be too
                await connection.execute(ddl, timeout=_INDEX_BUILD_TIMEOUT_S)
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
        async def run() -> int:
            async with self.gate.acquire() as connection:
                return int(await connection.fetchval(
                    f"SELECT count(*) FROM {self.table('memories')} WHERE embedding IS NULL"))

        return await run_with_retries(self.settings.postgres, "counting pending memories", run)

    async def set_embeddings(self, items: Sequence[tuple[str, uuid.UUID, Sequence[float]]], model_id: str) -> int:
        """Fill pending embeddings (only where still pending). Returns rows updated."""
        if not items:
            return 0
        if self.embedding_model and model_id != self.embedding_model:
            raise InvalidInput(f"embeddings from {model_id!r} cannot fill a store bound to {self.embedding_model!r}")
        for _, _, vector in items:
            check_embedding(vector, dimension=self.dimension, vector_type=self.vector_type)

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

        async def run() -> list[asyncpg.Record]:
            async with self.gate.acquire() as connection:
                return list(await connection.fetch(
                    "SELECT id, project, memory_type, content, content_hash, metadata, source_system, agent_id, "
                    "workflow_id, repo_id, session_id, embedding_model, embedding IS NULL AS pending, created_at, "
                    "updated_at, expires_at, seen_count, coalesce(last_seen_at, created_at) AS last_seen_at "
                    f"FROM {self.table('memories')} WHERE id = ANY($1::uuid[])", parsed))

        rows = await run_with_retries(self.settings.postgres, "reading memories", run)
        order = {value: position for position, value in enumerate(parsed)}
        result = [StoredMemory(
            id=r["id"], project=r["project"], memory_type=r["memory_type"], content=r["content"],
            content_hash=r["content_hash"], metadata=r["metadata"], source_system=r["source_system"],
            agent_id=r["agent_id"], workflow_id=r["workflow_id"], repo_id=r["repo_id"], session_id=r["session_id"],
            embedding_model=r["embedding_model"], embedding_pending=r["pending"], created_at=r["created_at"],
            updated_at=r["updated_at"], expires_at=r["expires_at"], seen_count=r["seen_count"],
            last_seen_at=r["last_seen_at"]) for r in rows]
        result.sort(key=lambda item: order.get(item.id, 0))
        return result

    async def get_embedding(self, memory_id: uuid.UUID | str) -> list[float] | None:
        parsed = _parse_ids([memory_id])[0]

        async def run() -> Any:
            async with self.gate.acquire() as connection:
                return await connection.fetchval(
                    f"SELECT embedding FROM {self.table('memories')} WHERE id = $1::uuid", parsed)

        value = await run_with_retries(self.settings.postgres, "reading an embedding", run)
        return None if value is None else [float(x) for x in value.to_list()]

    async def count(self, filters: SearchFilters | None = None) -> int:
        if filters is not None:
            filters.validate()
        params = Params()
        where = filter_clause(filters or SearchFilters(include_expired=True), params)

        async def run() -> int:
            async with self.gate.acquire() as connection:
                return int(await connection.fetchval(
                    f"SELECT count(*) FROM {self.table('memories')} m WHERE {where}", *params.values))

        return await run_with_retries(self.settings.postgres, "counting memories", run)

    async def count_by_project(self, projects: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
        """Live (unexpired) memories per project and memory type: ``{project: {memory_type: n}}``.

        ``projects`` limits the answer to those projects (a scoped caller never learns other tenants' names).
        """
        filters = SearchFilters(projects=list(projects) if projects is not None else None)
        filters.validate()
        if projects is not None and not filters.projects:
            return {}
        params = Params()
        where = filter_clause(filters, params)

        async def run() -> list[asyncpg.Record]:
            async with self.gate.acquire() as connection:
                return list(await connection.fetch(
                    f"SELECT m.project, m.memory_type, count(*) AS n FROM {self.table('memories')} m "
                    f"WHERE {where} GROUP BY m.project, m.memory_type ORDER BY m.project, m.memory_type",
                    *params.values))

        counts: dict[str, dict[str, int]] = {}
        for row in await run_with_retries(self.settings.postgres, "counting memories per project", run):
            counts.setdefault(row["project"], {})[row["memory_type"]] = int(row["n"])
        return counts

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
        # Rows are upserted in key order, so concurrent touches of overlapping ids cannot deadlock.
        parsed = sorted(set(_parse_ids(ids)))
        if not parsed:
            return 0

        async def run() -> int:
            async with self.gate.acquire() as connection:
                status = await connection.execute(
                    f"INSERT INTO {self.table('memory_access')} AS a (project, memory_id, access_count, "
                    f"last_accessed_at) SELECT project, id, 1, now() FROM {self.table('memories')} "
                    "WHERE id = ANY($1::uuid[]) ORDER BY project, id "
                    "ON CONFLICT (project, memory_id) DO UPDATE SET access_count = a.access_count + 1, "
                    "last_accessed_at = now()", parsed)
            return int(status.split()[-1])

        return await run_with_retries(self.settings.postgres, "recording memory access", run)

    async def access_stats(self, memory_id: uuid.UUID | str) -> tuple[int, datetime] | None:
        parsed = _parse_ids([memory_id])[0]

        async def run() -> asyncpg.Record | None:
            async with self.gate.acquire() as connection:
                return await connection.fetchrow(
                    f"SELECT access_count, last_accessed_at FROM {self.table('memory_access')} "
                    "WHERE memory_id = $1::uuid", parsed)

        row = await run_with_retries(self.settings.postgres, "reading access statistics", run)
        return None if row is None else (int(row["access_count"]), row["last_accessed_at"])

    # --- operations (maintenance, monitoring) ------------------------------------------------------

    def direct_session(self, *, purpose: str, statement_timeout_ms: int = 0,
                       maintenance_work_mem: str | None = None) -> AbstractAsyncContextManager[DirectSession]:
        """A connection outside the pool with named maintenance/monitoring statements (see :mod:`.direct`)."""
        return direct_session(self, purpose=purpose, statement_timeout_ms=statement_timeout_ms,
                              maintenance_work_mem=maintenance_work_mem)

    async def expire_batch(self, size: int) -> int:
        """Delete up to ``size`` memories past ``expires_at`` in one short transaction; returns rows deleted."""
        memories = self.table("memories")
        async with self.gate.acquire() as connection:
            try:
                status = await connection.execute(
                    f"DELETE FROM {memories} t USING (SELECT project, id FROM {memories} WHERE expires_at <= now() "
                    "ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) x WHERE t.project = x.project "
                    "AND t.id = x.id", size)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise translate_error(exc, "expiring memories") from exc
            count = int(status.split()[-1])
            if count:
                await flush_statistics(connection)
        return count

    async def canary_sample(self, queries: int, *, seed: float | None = None) -> tuple[str | None, list[list[float]]]:
        """The valid vector index's method (None without one) and up to ``queries`` stored live vectors.

        Large tables are sampled by page (``TABLESAMPLE SYSTEM``, widened until enough rows come back) rather
        than sorted by ``random()``. ``seed`` in [-1, 1] makes the small-table sample repeatable.
        """
        memories = self.table("memories")
        async with self.gate.acquire() as conn:
            method = await conn.fetchval(
                "SELECT am.amname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
                "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_am am ON am.oid = ic.relam WHERE n.nspname = $1 AND c.relname = 'memories' "
                "AND am.amname IN ('hnsw', 'ivfflat') AND i.indisvalid LIMIT 1", self.schema)
            estimate = await conn.fetchval(
                "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relname = 'memories'", self.schema)
            if seed is not None:
                await conn.execute("SELECT setseed($1)", seed)
            if estimate is not None and float(estimate) > 100_000:  # avoid sorting a large table by random()
                percent = min(100.0, 100.0 * max(queries * 20, 1000) / float(estimate))
                rows: list[asyncpg.Record] = []
                while True:  # widen the page sample until it yields enough rows
                    rows = await conn.fetch(
                        f"SELECT m.embedding::text AS v FROM {memories} m TABLESAMPLE SYSTEM ({percent:.6f}) "
                        f"WHERE {_LIVE_EMBEDDED} LIMIT {int(queries)}")
                    if len(rows) >= queries or percent >= 100.0:
                        break
                    percent = min(100.0, percent * 10)
            else:
                rows = await conn.fetch(
                    f"SELECT m.embedding::text AS v FROM {memories} m WHERE {_LIVE_EMBEDDED} ORDER BY random() "
                    f"LIMIT {int(queries)}")
        return (None if method is None else str(method)), [_parse_vector(r["v"]) for r in rows]

    async def exact_neighbours(self, vector: Sequence[float], k: int) -> set[uuid.UUID]:
        """Ids of the ``k`` nearest live memories by an exact scan (``distance + 0`` defeats every index)."""
        async with self.gate.acquire() as conn, conn.transaction(readonly=True):
            rows = await conn.fetch(
                f"SELECT m.id FROM {self.table('memories')} m WHERE {_LIVE_EMBEDDED} "
                f"ORDER BY (m.embedding <=> $1::{self._vector_sql_type()}) + 0, m.id LIMIT $2", list(vector), k)
        return {r["id"] for r in rows}

    # --- search --------------------------------------------------------------------------------------
    #
    # One search = one read-only transaction on one pooled connection:
    #   1. ``BEGIN READ ONLY`` + ``set_config(..., true)`` for every knob in one round trip
    #      (transaction-local, PgBouncer-safe), including ``plan_cache_mode = force_custom_plan`` so asyncpg's
    #      cached prepared statements are re-planned with each call's values: a cached generic plan would
    #      freeze the HNSW-vs-B-tree choice;
    #   2. for a filtered vector/hybrid search, the path is chosen here (``plan_vector_search``): the
    #      planner's row estimate first (planning only), a capped count only in the grey zone around the
    #      exact-path line;
    #   3. one statement; an ANN answer with fewer than ``limit`` rows is redone on the exact path.

    search_probe: Callable[[asyncpg.Connection, SearchPlan], Awaitable[None]] | None = None
    """Diagnostic hook, awaited inside the search transaction once the knobs are set and the path is
    chosen, right before the search statement (tests read ``current_setting('hnsw.ef_search')`` here),
    and again with ``fallback=True`` before an exact redo of a short ANN answer."""

    _bm25_index: str | None = None
    _bm25_checked: bool = False
    _rows_estimate: float | None = None
    _rows_estimate_at: float | None = None

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
        """Vector, text or hybrid (weighted RRF) search; every hit's ``score`` is non-increasing down the list.

        Scores per mode: vector = cosine similarity, text = ``ts_rank_cd`` normalized to [0, 1) (or BM25
        when an extension serves the lexical branch), hybrid = the fused RRF score; hybrid hits also carry
        both branch ranks. ``min_score`` drops hits below the threshold *after* ranking, so it never
        changes the plan (a ``WHERE similarity >= x`` would disable the vector index).
        ``ef_search`` overrides ``search.ef_search`` for this call; it is raised to at least ``limit`` (and
        to the branch size in hybrid mode), and a filtered HNSW search raises it up to 2x towards
        ``limit / selectivity``. A filtered search never returns fewer than ``limit`` rows when at least
        ``limit`` rows match (see :meth:`plan_vector_search`).
        """
        ss = self.settings.search
        mode = mode or ss.default_mode
        limit = ss.default_limit if limit is None else limit
        vw = ss.vector_weight if vector_weight is None else vector_weight
        tw = ss.text_weight if text_weight is None else text_weight
        k = ss.rrf_k if rrf_k is None else rrf_k
        self._check_search_args(mode, query_text, query_embedding, limit, filters)
        _check_search_knobs(ef_search=ef_search, vector_weight=vw, text_weight=tw, rrf_k=k, min_score=min_score)
        watch = Stopwatch()
        with span("store.search", mode=mode, limit=limit, filtered=not (filters is None or filters.is_empty())) as sp:
            hits, plan = await run_with_retries(self.settings.postgres, f"{mode} search", lambda: self._search(
                mode=mode, query_text=query_text, query_embedding=query_embedding, filters=filters, limit=limit,
                ef_search=ef_search, vector_weight=float(vw), text_weight=float(tw), rrf_k=int(k)))
            if min_score is not None:
                hits = [hit for hit in hits if hit.score >= min_score]
            sp.set_attribute("hits", len(hits))
            if plan is not None:
                sp.set_attribute("path", plan.path)
                sp.set_attribute("ef_search", plan.ef_search)
                sp.set_attribute("probe", plan.probe)
                if plan.matching_rows_capped is not None:
                    sp.set_attribute("matching_rows_capped", plan.matching_rows_capped)
        INSTRUMENTS.search_latency.record(watch.ms, {"mode": mode, "path": plan.path if plan else "text"})
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
            check_embedding(query_embedding, dimension=self.dimension, vector_type=self.vector_type)
        if mode in ("text", "hybrid"):
            if query_text is None or not isinstance(query_text, str):
                raise InvalidInput(f"{mode} search needs query_text")
            if "\x00" in query_text:
                raise InvalidInput("query_text contains a NUL byte; remove it")
            if len(query_text) > 10_000:
                raise InvalidInput("query_text is longer than 10,000 characters")
            try:
                query_text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput("query_text holds a lone surrogate and is not valid UTF-8") from None
        if filters is not None:
            if not isinstance(filters, SearchFilters):
                raise InvalidInput(f"filters must be a SearchFilters, not {type(filters).__name__}")
            filters.validate()

    @asynccontextmanager
    async def _search_transaction(self, ef_search: int) -> AsyncIterator[asyncpg.Connection]:
        """A read-only transaction with every knob set, opened in ONE round trip, committed on exit.

        ``BEGIN READ ONLY`` and all ``set_config(name, value, is_local => true)`` calls travel as a single
        simple-query message (the values are integers and enum settings, rendered as quoted literals): one
        round trip less per search than BEGIN followed by a SET statement.
        """
        gate = self._read_gate or self.gate
        async with gate.acquire() as connection:
            knobs = ", ".join(f"set_config({quote_literal(name)}, {quote_literal(value)}, true)"
                              for name, value in self._knobs(ef_search))
            try:
                await connection.execute(f"BEGIN READ ONLY; SELECT {knobs}")
                yield connection
            except BaseException:
                if not connection.is_closed() and connection.is_in_transaction():
                    with contextlib.suppress(Exception):
                        await connection.execute("ROLLBACK")
                raise
            await connection.execute("COMMIT")

    def _knobs(self, ef_search: int) -> list[tuple[str, str]]:
        """Every search knob. ``jit = off``: a search never profits from JIT, and its compile time (tens of ms)
        is paid whenever a misestimated plan crosses ``jit_above_cost``; ``force_custom_plan`` keeps the
        HNSW-vs-B-tree choice per call under asyncpg's prepared-statement cache."""
        ss = self.settings.search
        knobs: list[tuple[str, str]] = [("plan_cache_mode", "force_custom_plan"), ("jit", "off")]
        if self.settings.postgres.index_type == "hnsw":
            knobs += [("hnsw.ef_search", str(int(ef_search))), ("hnsw.iterative_scan", ss.iterative_scan),
                      ("hnsw.max_scan_tuples", str(int(ss.max_scan_tuples)))]
        else:
            knobs += [("ivfflat.probes", str(int(ss.ivfflat_probes or 10))),
                      ("ivfflat.iterative_scan", "off" if ss.iterative_scan == "off" else "relaxed_order")]
        return knobs

    def _ef_search(self, ef_search: int | None, limit: int, candidates: int) -> int:
        """``ef_search`` for this call: the override or the setting, never below the rows asked for, <= 1000."""
        value = ef_search if ef_search is not None else self.settings.search.ef_search
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_EF_SEARCH:
            raise InvalidInput(f"ef_search must be an integer between 1 and {_MAX_EF_SEARCH} (pgvector's maximum)")
        return min(max(value, limit, candidates), _MAX_EF_SEARCH)

    async def plan_vector_search(self, connection: asyncpg.Connection, filters: SearchFilters | None,
                                 ef_search: int, *, limit: int | None = None) -> SearchPlan:
        """Pick the exact path when the filter matches few rows, otherwise the ANN path (per call).

        *Where the line is.* The exact path costs ~2 µs of CPU per matching row; an HNSW iterative scan
        costs roughly ``limit / selectivity`` candidates at ~15 µs each and loses recall as the selectivity
        drops (measured at 150k rows, docs/benchmarks.md). They cross at ``sqrt(15 * limit * table_rows)``
        matching rows (6.7k at 150k rows and limit 20, 17k at 1M), bounded by
        ``search.exact_search_max_rows``.

        *What it costs to know.* The planner's estimate (planning only, ~0.3 ms) decides outright when it is
        more than 2x away from the line and the filter is one well-estimated column; in the grey zone, or
        for filters the planner estimates poorly (several columns, metadata), a count capped at the line
        + 1 (an index-only scan, ~1-2 ms) decides. A wrong call is slower, never wrong: the exact path is
        complete, and an ANN answer that comes back short is redone exactly.

        *Filtered ANN recall.* ``ef_search`` is raised towards ``limit / selectivity`` (at most 2x), so the
        first HNSW pass already holds about ``limit`` matching rows.
        """
        if filters is None or filters.is_empty():
            return SearchPlan(path="ann", matching_rows_capped=None, ef_search=ef_search, probe="none")
        limit = limit or self.settings.search.default_limit
        memories = self.table("memories")
        params = Params()
        where = filter_clause(filters, params)
        estimate = _plan_rows(await connection.fetchval(estimate_sql(memories, where), *params.values))
        table_rows = await self._table_rows(connection)
        cap = self._exact_cap(limit, table_rows)
        boosted = self._filtered_ef(ef_search, limit, estimate, table_rows)
        precise = filters_well_estimated(filters)
        if cap <= 0:
            return SearchPlan(path="ann", matching_rows_capped=None, ef_search=boosted, probe="estimate",
                              estimated_rows=estimate)
        if estimate is not None:
            if precise and estimate * _GREY_ZONE <= cap:
                return SearchPlan(path="exact", matching_rows_capped=None, ef_search=ef_search, probe="estimate",
                                  estimated_rows=estimate)
            if estimate >= cap * (_GREY_ZONE if precise else _GREY_ZONE_IMPRECISE):
                return SearchPlan(path="ann", matching_rows_capped=None, ef_search=boosted, probe="estimate",
                                  estimated_rows=estimate)
        # the count ignores expiry: an upper bound, but one a covering B-tree answers by an index-only scan
        count_params = Params()
        count_where = filter_clause(replace(filters, include_expired=True), count_params)
        count = int(await connection.fetchval(capped_count_sql(memories, count_where, cap), *count_params.values))
        exact = count <= cap
        return SearchPlan(path="exact" if exact else "ann", matching_rows_capped=count,
                          ef_search=ef_search if exact else boosted, probe="count", estimated_rows=estimate)

    def _exact_cap(self, limit: int, table_rows: float | None) -> int:
        """Most matching rows the exact path takes (see :meth:`plan_vector_search`)."""
        cap = self.settings.search.exact_search_max_rows
        if cap <= 0 or table_rows is None:
            return cap
        return min(cap, max(_EXACT_FLOOR, int(math.sqrt(_EXACT_COST_RATIO * limit * table_rows))))

    def _filtered_ef(self, ef_search: int, limit: int, estimate: int | None, table_rows: float | None) -> int:
        if estimate is None or table_rows is None or estimate <= 0:
            return ef_search
        wanted = math.ceil(limit * table_rows / estimate)
        return min(_MAX_EF_SEARCH, max(ef_search, min(2 * ef_search, wanted)))

    async def _table_rows(self, connection: asyncpg.Connection) -> float | None:
        """``reltuples`` of ``memories`` (ANALYZE's estimate), cached for a minute; None before any ANALYZE."""
        now = time.monotonic()
        if self._rows_estimate_at is not None and now - self._rows_estimate_at < _ROWS_ESTIMATE_TTL_S:
            return self._rows_estimate
        value = await connection.fetchval("SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)",
                                          self.table("memories"))
        self._rows_estimate = float(value) if value is not None and float(value) > 0 else None
        self._rows_estimate_at = now
        return self._rows_estimate

    def _vector_branch(self, params: Params, query_embedding: Sequence[float], filters: SearchFilters | None,
                       n: int, path: str) -> str:
        return vector_branch(params, table=self.table("memories"), vector_cast=self._vector_sql_type(),
                             query_embedding=list(query_embedding), filters=filters, n=n,
                             path="exact" if path == "exact" else "ann")

    def _text_branch(self, params: Params, query_text: str, filters: SearchFilters | None, n: int) -> str:
        if self._bm25_index is not None and self.bm25_extension is not None:
            return bm25_branch(params, table=self.table("memories"), extension=self.bm25_extension,
                               index=self._bm25_index, query_text=query_text, filters=filters, n=n)
        return text_branch(params, table=self.table("memories"), text_config=self.settings.postgres.text_search_config,
                           query_text=query_text, filters=filters, n=n)

    async def _detect_bm25_index(self, connection: asyncpg.Connection) -> None:
        """Once per store: use a BM25 index on ``memories`` when pg_textsearch/pg_search is installed."""
        if self._bm25_checked:
            return
        self._bm25_checked = True
        if self.bm25_extension is None:
            return
        self._bm25_index = await connection.fetchval(
            "SELECT format('%I.%I', n.nspname, ic.relname) FROM pg_index i "
            "JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam "
            "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = 'memories' AND am.amname = 'bm25' AND i.indisvalid LIMIT 1",
            self.schema)
        self._log.info("bm25-lexical-branch", extension=self.bm25_extension, index=self._bm25_index,
                       used=self._bm25_index is not None)

    async def _search(self, *, mode: str, query_text: str | None, query_embedding: Sequence[float] | None,
                      filters: SearchFilters | None, limit: int, ef_search: int | None, vector_weight: float,
                      text_weight: float, rrf_k: int) -> tuple[list[SearchHit], SearchPlan | None]:
        candidates = max(self.settings.search.branch_candidates, limit)
        ef = self._ef_search(ef_search, limit, candidates if mode == "hybrid" else limit)
        async with self._search_transaction(ef) as connection:
            if mode in ("text", "hybrid"):
                await self._detect_bm25_index(connection)
            if mode == "text":
                assert query_text is not None
                if self.search_probe is not None:
                    await self.search_probe(connection, SearchPlan(path="none", matching_rows_capped=None,
                                                                   ef_search=ef))
                rows = await self._lexical_rows(connection, lambda params: text_search_sql(
                    table=self.table("memories"), hit_columns=_HIT_COLUMNS,
                    branch=self._text_branch(params, query_text, filters, limit)))
                return [_hit(r, score=float(r["rank"]), text_rank=int(r["text_rank"]), text_score=float(r["rank"]))
                        for r in rows], None
            assert query_embedding is not None
            plan = await self.plan_vector_search(connection, filters, ef,
                                                 limit=candidates if mode == "hybrid" else limit)
            if plan.ef_search != ef and self.settings.postgres.index_type == "hnsw":
                await _set_local(connection, [("hnsw.ef_search", str(plan.ef_search))])
            if self.search_probe is not None:
                await self.search_probe(connection, plan)
            if mode == "vector":
                rows = await self._vector_rows(connection, query_embedding, filters, limit, plan.path)
                if len(rows) < limit and plan.path == "ann" and not (filters is None or filters.is_empty()):
                    # never under-return: iterative scanning stopped (max_scan_tuples) before enough rows
                    # matched the filter, so redo it exactly (complete by construction)
                    plan = replace(plan, path="exact", fallback=True)
                    if self.search_probe is not None:
                        await self.search_probe(connection, plan)
                    rows = await self._vector_rows(connection, query_embedding, filters, limit, "exact")
                return [_hit(r, score=1.0 - float(r["distance"]), vector_rank=int(r["vector_rank"]),
                             vector_similarity=1.0 - float(r["distance"])) for r in rows], plan
            assert query_text is not None
            rows = await self._hybrid_rows(connection, query_text, query_embedding, filters, limit, candidates,
                                           plan.path, vector_weight, text_weight, rrf_k)
            if len(rows) < limit and plan.path == "ann" and not (filters is None or filters.is_empty()):
                vector_found = sum(1 for r in rows if r["vector_rank"] is not None)
                if vector_found < min(limit, candidates):
                    plan = replace(plan, path="exact", fallback=True)
                    if self.search_probe is not None:
                        await self.search_probe(connection, plan)
                    rows = await self._hybrid_rows(connection, query_text, query_embedding, filters, limit,
                                                   candidates, "exact", vector_weight, text_weight, rrf_k)
            return [_hit(r, score=float(r["fused"]), vector_rank=r["vector_rank"], text_rank=r["text_rank"],
                         vector_similarity=None if r["distance"] is None else 1.0 - float(r["distance"]),
                         text_score=None if r["rank"] is None else float(r["rank"])) for r in rows], plan

    async def _hybrid_rows(self, connection: asyncpg.Connection, query_text: str, query_embedding: Sequence[float],
                           filters: SearchFilters | None, limit: int, candidates: int, path: str,
                           vector_weight: float, text_weight: float, rrf_k: int) -> list[asyncpg.Record]:
        def build(params: Params) -> str:
            vector_sql = self._vector_branch(params, query_embedding, filters, candidates, path)
            text_sql = self._text_branch(params, query_text, filters, candidates)
            return hybrid_sql(params, table=self.table("memories"), hit_columns=_HIT_COLUMNS, vector_sql=vector_sql,
                              text_sql=text_sql, rrf_k=rrf_k, vector_weight=vector_weight,
                              text_weight=text_weight, limit=limit)

        return await self._lexical_rows(connection, build)

    async def _lexical_rows(self, connection: asyncpg.Connection,
                            build: Callable[[Params], str]) -> list[asyncpg.Record]:
        """Run a statement with a lexical branch; if a BM25 branch fails, fall back to tsvector for good.

        The BM25 extensions' SQL differs between versions and cannot be tested here, so a failure of that
        branch (inside a savepoint) is logged once and the store continues with ``ts_rank_cd``.
        """
        params = Params()
        sql = build(params)
        if self._bm25_index is None:
            return list(await connection.fetch(sql, *params.values))
        await connection.execute("SAVEPOINT om_bm25")  # the outer read-only transaction survives a failure
        try:
            return list(await connection.fetch(sql, *params.values))
        except asyncpg.PostgresError as exc:
            if is_transient(exc):
                raise
            await connection.execute("ROLLBACK TO SAVEPOINT om_bm25")
            self._log.warning("bm25-branch-failed-using-tsvector", extension=self.bm25_extension,
                              index=self._bm25_index, error=type(exc).__name__, sqlstate=exc.sqlstate)
            self._bm25_index = None
            params = Params()
            sql = build(params)
            return list(await connection.fetch(sql, *params.values))

    async def _vector_rows(self, connection: asyncpg.Connection, query_embedding: Sequence[float],
                           filters: SearchFilters | None, limit: int, path: str) -> list[asyncpg.Record]:
        params = Params()
        sql = vector_search_sql(table=self.table("memories"), hit_columns=_HIT_COLUMNS,
                                branch=self._vector_branch(params, query_embedding, filters, limit, path))
        return list(await connection.fetch(sql, *params.values))

    async def explain_vector_search(self, query_embedding: Sequence[float], *, filters: SearchFilters | None = None,
                                    limit: int = 10, min_score: float | None = None,
                                    ef_search: int | None = None) -> tuple[SearchPlan, str]:
        """The path ``search(mode="vector")`` would take and PostgreSQL's plan for its statement.

        Same transaction set-up, knobs and statement as the search itself. ``min_score`` is accepted to show
        that a threshold leaves the plan alone: it is applied to the ranked rows, outside the statement.
        """
        self._check_search_args("vector", None, query_embedding, limit, filters)
        _check_search_knobs(ef_search=ef_search, min_score=min_score)
        ef = self._ef_search(ef_search, limit, limit)
        async with self._search_transaction(ef) as connection:
            plan = await self.plan_vector_search(connection, filters, ef, limit=limit)
            if plan.ef_search != ef and self.settings.postgres.index_type == "hnsw":
                await _set_local(connection, [("hnsw.ef_search", str(plan.ef_search))])
            params = Params()
            sql = vector_search_sql(table=self.table("memories"), hit_columns=_HIT_COLUMNS,
                                    branch=self._vector_branch(params, query_embedding, filters, limit, plan.path))
            rows = await connection.fetch(f"EXPLAIN (COSTS OFF) {sql}", *params.values)
        return plan, "\n".join(r[0] for r in rows)


_MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
_GREY_ZONE = 2  # trust a one-column estimate when it is at least 2x away from the exact-path line
_GREY_ZONE_IMPRECISE = 8  # multi-column/metadata estimates: only a very large one skips the count
_EXACT_COST_RATIO = 15.0  # HNSW candidate cost / exact row cost, x2 in favour of exact (see plan_vector_search)
_EXACT_FLOOR = 1000  # below this many matching rows the exact path always wins
_ROWS_ESTIMATE_TTL_S = 60.0


async def _set_local(connection: asyncpg.Connection, knobs: Sequence[tuple[str, str]]) -> None:
    """Transaction-local settings in one round trip (``SET`` takes no bind parameters; set_config does)."""
    await connection.execute(
        "SELECT set_config(k.name, k.value, true) FROM unnest($1::text[], $2::text[]) AS k(name, value)",
        [name for name, _ in knobs], [value for _, value in knobs])


def _plan_rows(explained: Any) -> int | None:
    """``Plan Rows`` of the top node of an ``EXPLAIN (FORMAT JSON)`` result (decoded or not)."""
    try:
        document = json.loads(explained) if isinstance(explained, (str, bytes)) else explained
        return int(document[0]["Plan"]["Plan Rows"])
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def _check_search_knobs(*, ef_search: int | None = None, vector_weight: float | None = None,
                        text_weight: float | None = None, rrf_k: int | None = None,
                        min_score: float | None = None) -> None:
    """Per-call overrides are input: reject what would fail in SQL or silently mean nothing."""
    if ef_search is not None and (isinstance(ef_search, bool) or not isinstance(ef_search, int)
                                  or not 1 <= ef_search <= _MAX_EF_SEARCH):
        raise InvalidInput(f"ef_search must be an integer between 1 and {_MAX_EF_SEARCH} (pgvector's maximum)")
    for name, weight in (("vector_weight", vector_weight), ("text_weight", text_weight)):
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                                   or not math.isfinite(weight) or weight < 0):
            raise InvalidInput(f"{name} must be a finite number >= 0")
    if rrf_k is not None and (isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 1):
        raise InvalidInput("rrf_k must be an integer >= 1")
    if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                  or not math.isfinite(min_score)):
        raise InvalidInput("min_score must be a finite number")


_LIVE_EMBEDDED = "m.embedding IS NOT NULL AND (m.expires_at IS NULL OR m.expires_at > now())"


def _parse_vector(text: str) -> list[float]:
    return [float(x) for x in text.strip("[]").split(",") if x]


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


async def pgvector_store_factory(settings: MemorySettings | None = None) -> PgvectorMemoryStore:
    """The one way to build the store: from ``settings`` (loaded from the layers when None, as Oneiric's
    zero-argument factories do), initialized. A failed init cleans up and raises our error without the
    driver's traceback chain (whose frames hold the password in Oneiric's log)."""
    store = PgvectorMemoryStore(settings if settings is not None else load_settings())
    return await without_driver_chain(_initialized(store))


async def _initialized(store: PgvectorMemoryStore) -> PgvectorMemoryStore:
    await store.init()
    return store
