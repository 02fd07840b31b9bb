"""``PgvectorMemoryStore``: the PostgreSQL + pgvector memory store (Oneiric category ``memory_store``).

Writes are validated first, then one transaction COPYs the batch into a staging table and merges it
with ``INSERT ... ON CONFLICT (project, memory_type, content_hash)``. Searches run one statement per call,
with every knob in ``set_config(..., true)`` (transaction-local, PgBouncer-safe) and a per-call choice
between the exact path (selective filters, via B-tree) and an HNSW scan with iterative scanning.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    copy_records,
    create_pool,
    is_transient,
    run_with_retries,
    translate_error,
    wait_closed,
)
from oneiric_memory.adapters.pgvector.direct import DirectSession, direct_session, flush_statistics
from oneiric_memory.adapters.pgvector.gauges import register_metrics
from oneiric_memory.adapters.pgvector.indexes import (
    build_vector_index,
    drop_vector_index,
    vector_index_name,
)
from oneiric_memory.adapters.pgvector.migration_ledger import MigrationLedger
from oneiric_memory.adapters.pgvector.outbox import OutboxQueue
from oneiric_memory.adapters.pgvector.planner import (
    SearchPlan,
    check_search_knobs,
    decide_by_count,
    decide_by_estimate,
    ef_search_for,
    exact_cap,
    filtered_ef,
    plan_rows,
    search_knobs,
)
from oneiric_memory.adapters.pgvector.schema import SchemaNames, check_meta, quote_literal
from oneiric_memory.adapters.pgvector.search_sql import (
    LEXICAL_SAMPLE_ROWS,
    LEXICAL_STATS_SQL,
    LexicalStats,
    Params,
    avg_lexemes_sql,
    bm25_branch,
    capped_count_sql,
    estimate_sql,
    filter_clause,
    filters_well_estimated,
    hybrid_sql,
    parse_websearch,
    text_branch,
    text_search_sql,
    vector_branch,
    vector_search_sql,
)
from oneiric_memory.adapters.pgvector.writes import staging_rows, upsert_batch
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
)
from oneiric_memory.settings import MemorySettings, load_settings

if TYPE_CHECKING:  # mcp_common is imported lazily: loading it pulls in fastmcp and costs seconds per process
    from mcp_common.health import ComponentHealth

__all__ = ["PendingMemory", "PgvectorMemoryStore", "SearchPlan", "pgvector_store_factory"]

_HIT_COLUMNS = ("m.id, m.project, m.memory_type, m.content, m.metadata, m.agent_id, m.workflow_id, m.repo_id, "
                "m.session_id, m.source_system, m.created_at")

@dataclass(frozen=True, slots=True)
class PendingMemory:
    """A stored memory whose embedding is still pending (for backfill)."""

    project: str
    id: uuid.UUID
    content: str
    created_at: datetime


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
        rows, first_of = staging_rows(records, mode=mode, store_model=self.embedding_model)
        with span("store.upsert_many", rows=len(records), on_conflict=mode):
            INSTRUMENTS.batch_size.record(len(records), {"operation": "upsert"})
            result_rows = await run_with_retries(
                self.settings.postgres, "storing memories",
                lambda: self._upsert(rows, mode, records, insights))
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

    async def _upsert(self, rows: list[tuple[Any, ...]], mode: str, records: Sequence[MemoryRecord],
                      insights: Sequence[Sequence[Insight]] | None) -> list[asyncpg.Record]:
        async with self.gate.acquire() as connection, connection.transaction():
            return await upsert_batch(connection, self.names, self._vector_sql_type(), rows, mode, records, insights)

    def _vector_sql_type(self) -> str:
        return f"{self.vector_type}({self.dimension})"

    @asynccontextmanager
    async def bulk_loading(self) -> AsyncIterator[None]:
        """Drop the vector index for a large load, then rebuild it once (COPY-speed loads).

        Searches during the load take the exact path. The rebuild raises ``maintenance_work_mem`` and
        disables the statement timeout for its own transaction only.
        """
        async with self.gate.acquire() as connection:
            await drop_vector_index(connection, self.names)
        try:
            yield
        finally:
            await self.build_vector_index()

    async def vector_index_name(self) -> str | None:
        """Name of the vector index on ``memories`` (valid or not), if any."""
        async with self.gate.acquire() as connection:
            return await vector_index_name(connection, self.schema)

    async def build_vector_index(self, *, index_type: Literal["hnsw", "ivfflat"] | None = None) -> str | None:
        """(Re)build the vector index; IVFFlat ``lists`` come from the row count. Returns the index name."""
        async with self.gate.acquire() as connection:
            return await build_vector_index(connection, self.names, self.settings.postgres,
                                            vector_type=self.vector_type, index_type=index_type)

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
                await copy_records(connection, "om_fill", records=[(p, i, list(v)) for p, i, v in items],
                                   columns=("project", "id", "embedding"))
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
        """Forget by ids, or by a non-empty filter (an empty filter would delete everything: refused).

        Everything derived from the memories goes in the same transaction: access statistics (by the foreign
        key's cascade) and their outbox rows. A row that may have reached Session-Buddy (delivered, or a delivery
        was attempted) becomes a tombstone: its content is erased now and the relay deletes the insight from
        Session-Buddy later (``kind = 'delete'``); a row never attempted is simply deleted. The outbox rows are
        locked first, so a relay delivering one of them right now finishes before the row is judged.
        """
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
                outbox = self.table("insight_outbox")
                async with self.gate.acquire() as connection, connection.transaction():
                    gone = await connection.fetch(
                        f"DELETE FROM {self.table('memories')} m WHERE {where} RETURNING m.project, m.id",
                        *params.values)
                    if gone:
                        keys = ([row["project"] for row in gone], [row["id"] for row in gone])
                        mine = "(o.project, o.memory_id) IN (SELECT * FROM unnest($1::text[], $2::uuid[]))"
                        # each statement below takes a fresh snapshot after these locks are ours
                        await connection.execute(f"SELECT 1 FROM {outbox} o WHERE {mine} FOR UPDATE", *keys)
                        await connection.execute(
                            f"DELETE FROM {outbox} o WHERE {mine} AND o.kind = 'deliver' AND o.status = 'pending' "
                            "AND o.attempts = 0", *keys)
                        await connection.execute(
                            f"UPDATE {outbox} o SET kind = 'delete', content = '', topics = '{{}}', "
                            "status = 'pending', attempts = 0, last_error = NULL, next_attempt_at = now(), "
                            f"delivered_at = NULL WHERE {mine}", *keys)
                return len(gone)

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
        """Vector, text or hybrid search; every hit's ``score`` is non-increasing down the list.

        Scores per mode: vector = cosine similarity, text = BM25 over the query's lexemes with OR semantics
        (plain PostgreSQL, or a BM25 extension when one serves the lexical branch), hybrid = the fused score
        (``search.fusion``: convex in [0, w_v + w_t], or weighted RRF); hybrid hits also carry both branch
        ranks. ``min_score`` drops hits below the threshold *after* ranking, so it never
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
        check_search_knobs(ef_search=ef_search, vector_weight=vw, text_weight=tw, rrf_k=k, min_score=min_score)
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
                              for name, value in search_knobs(self.settings, ef_search))
            try:
                await connection.execute(f"BEGIN READ ONLY; SELECT {knobs}")
                yield connection
            except BaseException:
                if not connection.is_closed() and connection.is_in_transaction():
                    with contextlib.suppress(Exception):
                        await connection.execute("ROLLBACK")
                raise
            await connection.execute("COMMIT")

    def _ef_search(self, ef_search: int | None, limit: int, candidates: int) -> int:
        return ef_search_for(ef_search if ef_search is not None else self.settings.search.ef_search, limit,
                             candidates)

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
        estimate = plan_rows(await connection.fetchval(estimate_sql(memories, where), *params.values))
        table_rows = await self._table_rows(connection)
        cap = self.exact_cap(limit, table_rows)
        boosted = filtered_ef(ef_search, limit, estimate, table_rows)
        decided = decide_by_estimate(estimate=estimate, cap=cap, precise=filters_well_estimated(filters),
                                     ef_search=ef_search, boosted_ef=boosted)
        if decided is not None:
            return decided
        # the count ignores expiry: an upper bound, but one a covering B-tree answers by an index-only scan
        count_params = Params()
        count_where = filter_clause(replace(filters, include_expired=True), count_params)
        count = int(await connection.fetchval(capped_count_sql(memories, count_where, cap), *count_params.values))
        return decide_by_count(count=count, cap=cap, ef_search=ef_search, boosted_ef=boosted, estimate=estimate)

    def exact_cap(self, limit: int, table_rows: float | None) -> int:
        """Most matching rows the exact path takes for this store's settings (see :func:`.planner.exact_cap`)."""
        return exact_cap(self.settings.search.exact_search_max_rows, limit, table_rows)

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
                           query=parse_websearch(query_text), stats=self._lexical_stats or LexicalStats(),
                           filters=filters, n=n, candidates=self.settings.search.lexical_candidates)

    _lexical_stats: LexicalStats | None = None
    _lexical_stats_at: float = 0.0

    async def _refresh_lexical_stats(self, connection: asyncpg.Connection) -> None:
        """Re-read the ``tsv`` column's ANALYZE statistics (IDF, average length) at most once a minute.

        Autovacuum's ANALYZE keeps them current as the table grows; reading ``pg_stats`` costs about a
        millisecond, so it is cached rather than joined into every statement.
        """
        now = time.monotonic()
        if self._lexical_stats is not None and now - self._lexical_stats_at < _LEXICAL_STATS_TTL_S:
            return
        row = await connection.fetchrow(LEXICAL_STATS_SQL, self.settings.postgres.db_schema)
        if row is None:
            self._lexical_stats = LexicalStats()
        else:
            rows = max(float(row["reltuples"] or 0), 0.0)
            percent = 100.0 if rows <= LEXICAL_SAMPLE_ROWS else 100.0 * LEXICAL_SAMPLE_ROWS / rows
            avg = await connection.fetchval(avg_lexemes_sql(self.table("memories")), percent)
            self._lexical_stats = LexicalStats.from_row(rows, avg, row["elems"], row["freqs"])
        self._lexical_stats_at = now

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
                if self._bm25_index is None:
                    await self._refresh_lexical_stats(connection)
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
                              fusion=self.settings.search.fusion,
                              text_weight=text_weight, limit=limit)

        return await self._lexical_rows(connection, build)

    async def _lexical_rows(self, connection: asyncpg.Connection,
                            build: Callable[[Params], str]) -> list[asyncpg.Record]:
        """Run a statement with a lexical branch; if a BM25 branch fails, fall back to tsvector for good.

        The BM25 extensions' SQL differs between versions and cannot be tested here, so a failure of that
        branch (inside a savepoint) is logged once and the store continues with its plain-PostgreSQL BM25.
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
        check_search_knobs(ef_search=ef_search, min_score=min_score)
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


_LEXICAL_STATS_TTL_S = 60.0  # how long the tsv column's ANALYZE statistics are reused
_ROWS_ESTIMATE_TTL_S = 60.0


async def _set_local(connection: asyncpg.Connection, knobs: Sequence[tuple[str, str]]) -> None:
    """Transaction-local settings in one round trip (``SET`` takes no bind parameters; set_config does)."""
    await connection.execute(
        "SELECT set_config(k.name, k.value, true) FROM unnest($1::text[], $2::text[]) AS k(name, value)",
        [name for name, _ in knobs], [value for _, value in knobs])


_LIVE_EMBEDDED = "m.embedding IS NOT NULL AND (m.expires_at IS NULL OR m.expires_at > now())"


def _parse_vector(text: str) -> list[float]:
    return [float(x) for x in text.strip("[]").split(",") if x]


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
