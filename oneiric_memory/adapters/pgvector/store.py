"""``PgvectorMemoryStore``: the PostgreSQL + pgvector memory store (Oneiric category ``memory_store``).

Writes are validated first, then one transaction COPYs the batch into a staging table and merges it
with ``INSERT ... ON CONFLICT (project, memory_type, content_hash)``. Searches run one statement per call,
with every knob in ``set_config(..., true)`` (transaction-local, PgBouncer-safe) and a per-call choice
between the exact path (selective filters, via B-tree) and an HNSW scan with iterative scanning.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from oneiric_memory.adapters.pgvector.listing import MEMORY_COLUMNS, stored_memory
from oneiric_memory.adapters.pgvector.migration_ledger import MigrationLedger
from oneiric_memory.adapters.pgvector.outbox import OutboxQueue
from oneiric_memory.adapters.pgvector.planner import SearchPlan
from oneiric_memory.adapters.pgvector.rag_index import RagIndex
from oneiric_memory.adapters.pgvector.schema import SchemaNames, check_meta
from oneiric_memory.adapters.pgvector.search import SearchExecutor
from oneiric_memory.adapters.pgvector.search_sql import Params, filter_clause
from oneiric_memory.adapters.pgvector.sharing import SharingRepository, restore_copies
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

__all__ = ["PendingMemory", "PgvectorMemoryStore", "SearchPlan", "parse_ids", "pgvector_store_factory"]


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
        self.searcher = SearchExecutor(self, self._log)

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
    def read_gate(self) -> PoolGate:
        """The gate searches use: the read replica's when ``postgres.read_dsn`` is set, else the primary's."""
        return self._read_gate or self.gate

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
    def rag(self) -> RagIndex:
        """Repository ingestion's files, chunk rows and run records."""
        return RagIndex(self)

    @property
    def sharing(self) -> SharingRepository:
        """Project groups and shares (and the resolution of a caller's ``acting_for`` scope)."""
        return SharingRepository(self)

    async def scoped(self, connection: asyncpg.Connection, filters: SearchFilters | None) -> SearchFilters | None:
        """``filters`` with ``acting_for`` resolved (``shared_targets`` recomputed, whatever the caller put
        there); every read that takes filters passes through here before its SQL is built."""
        if filters is None or filters.acting_for is None:
            return filters
        return replace(filters, shared_targets=await self.sharing.resolve(connection, list(filters.acting_for)))

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
            return await upsert_batch(connection, self.names, self.vector_sql_type, rows, mode, records, insights)

    @property
    def vector_sql_type(self) -> str:
        """The embedding column's SQL type, e.g. ``vector(384)``."""
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
                    f"CREATE TEMP TABLE om_fill (project text, id uuid, embedding {self.vector_sql_type}) "
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

    async def get(self, ids: Sequence[uuid.UUID | str], *,
                  acting_for: Sequence[str] | None = None) -> list[StoredMemory]:
        """The memories with these ids (expired ones included); ``acting_for`` keeps only those the projects
        may read (their own, or shared with them or their groups)."""
        parsed = parse_ids(ids)
        if not parsed:
            return []
        scope = SearchFilters(acting_for=acting_for, include_expired=True) if acting_for is not None else None
        if scope is not None:
            scope.validate()

        async def run() -> list[asyncpg.Record]:
            async with self.gate.acquire() as connection:
                params = Params()
                where = f"m.id = ANY({params.add(parsed, 'uuid[]')})"
                resolved = await self.scoped(connection, scope)
                if resolved is not None:
                    where += f" AND {filter_clause(resolved, params)}"
                return list(await connection.fetch(
                    f"SELECT {MEMORY_COLUMNS} FROM {self.table('memories')} m WHERE {where}", *params.values))

        rows = await run_with_retries(self.settings.postgres, "reading memories", run)
        order = {value: position for position, value in enumerate(parsed)}
        result = [stored_memory(r) for r in rows]
        result.sort(key=lambda item: order.get(item.id, 0))
        return result

    async def get_embedding(self, memory_id: uuid.UUID | str) -> list[float] | None:
        parsed = parse_ids([memory_id])[0]

        async def run() -> Any:
            async with self.gate.acquire() as connection:
                return await connection.fetchval(
                    f"SELECT embedding FROM {self.table('memories')} WHERE id = $1::uuid", parsed)

        value = await run_with_retries(self.settings.postgres, "reading an embedding", run)
        return None if value is None else [float(x) for x in value.to_list()]

    async def count(self, filters: SearchFilters | None = None) -> int:
        if filters is not None:
            filters.validate()

        async def run() -> int:
            async with self.gate.acquire() as connection:
                params = Params()
                where = filter_clause(await self.scoped(connection, filters or SearchFilters(include_expired=True)),
                                      params)
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
            where = f"m.id = ANY({params.add(parse_ids(ids), 'uuid[]')})"
        else:
            assert filters is not None
            filters.validate()
            if filters.is_empty():
                raise InvalidInput("refusing to delete with an empty filter: name a project, type or other field")
            if filters.acting_for is not None:
                raise InvalidInput("forget deletes a project's own memories: name them with projects, not "
                                   "acting_for (a memory shared with you is its owner's to forget)",
                                   field="acting_for")
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
                        # the memory's own rows, and the copies delivered to the projects it was shared with
                        mine = ("((o.project, o.memory_id) IN (SELECT * FROM unnest($1::text[], $2::uuid[])) OR "
                                "(o.source_project, o.memory_id) IN (SELECT * FROM unnest($1::text[], $2::uuid[])))")
                        # each statement below takes a fresh snapshot after these locks are ours
                        locked = await connection.fetch(
                            f"SELECT o.project, o.content, o.source_project FROM {outbox} o WHERE {mine} FOR UPDATE",
                            *keys)
                        await connection.execute(
                            f"DELETE FROM {outbox} o WHERE {mine} AND o.kind = 'deliver' AND o.status = 'pending' "
                            "AND o.attempts = 0", *keys)
                        await connection.execute(
                            f"UPDATE {outbox} o SET kind = 'delete', content = '', topics = '{{}}', "
                            "status = 'pending', attempts = 0, last_error = NULL, next_attempt_at = now(), "
                            f"delivered_at = NULL WHERE {mine}", *keys)
                        # a forgotten own insight that another project still shares into this one stays, as a copy
                        await restore_copies(connection, self.sharing, [
                            (row["project"], row["content"]) for row in locked if row["source_project"] is None])
                return len(gone)

            return await run_with_retries(self.settings.postgres, "deleting memories", run)

    async def touch(self, ids: Sequence[uuid.UUID | str]) -> int:
        """Count an access in the side table (never updates the vector row)."""
        # Rows are upserted in key order, so concurrent touches of overlapping ids cannot deadlock.
        parsed = sorted(set(parse_ids(ids)))
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
        parsed = parse_ids([memory_id])[0]

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
                f"ORDER BY (m.embedding <=> $1::{self.vector_sql_type}) + 0, m.id LIMIT $2", list(vector), k)
        return {r["id"] for r in rows}

    # --- search (executed by :class:`.search.SearchExecutor`) -------------------------------------------

    search_probe: Callable[[asyncpg.Connection, SearchPlan], Awaitable[None]] | None = None
    """Diagnostic hook, awaited inside the search transaction once the knobs are set and the path is
    chosen, right before the search statement (tests read ``current_setting('hnsw.ef_search')`` here),
    and again with ``fallback=True`` before an exact redo of a short ANN answer."""

    async def search_vector(self, query_embedding: Sequence[float], *, filters: SearchFilters | None = None,
                            limit: int | None = None, ef_search: int | None = None,
                            min_score: float | None = None) -> list[SearchHit]:
        return await self.searcher.search_vector(query_embedding, filters=filters, limit=limit,
                                                 ef_search=ef_search, min_score=min_score)

    async def search_text(self, query_text: str, *, filters: SearchFilters | None = None,
                          limit: int | None = None, min_score: float | None = None) -> list[SearchHit]:
        return await self.searcher.search_text(query_text, filters=filters, limit=limit, min_score=min_score)

    async def search_hybrid(self, query_text: str, query_embedding: Sequence[float], *,
                            filters: SearchFilters | None = None, limit: int | None = None,
                            ef_search: int | None = None, vector_weight: float | None = None,
                            text_weight: float | None = None, rrf_k: int | None = None,
                            min_score: float | None = None) -> list[SearchHit]:
        return await self.searcher.search_hybrid(query_text, query_embedding, filters=filters, limit=limit,
                                                 ef_search=ef_search, vector_weight=vector_weight,
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
        """Vector, text or hybrid search (see :meth:`.search.SearchExecutor.search`)."""
        return await self.searcher.search(query_text=query_text, query_embedding=query_embedding, mode=mode,
                                          filters=filters, limit=limit, ef_search=ef_search,
                                          vector_weight=vector_weight, text_weight=text_weight, rrf_k=rrf_k,
                                          min_score=min_score)

    async def plan_vector_search(self, connection: asyncpg.Connection, filters: SearchFilters | None,
                                 ef_search: int, *, limit: int | None = None) -> SearchPlan:
        """The exact-or-ANN choice for a filtered search (see :meth:`.search.SearchExecutor.plan_vector_search`)."""
        return await self.searcher.plan_vector_search(connection, filters, ef_search, limit=limit)

    def exact_cap(self, limit: int, table_rows: float | None) -> int:
        """Most matching rows the exact path takes for this store's settings (see :func:`.planner.exact_cap`)."""
        return self.searcher.exact_cap(limit, table_rows)

    async def explain_vector_search(self, query_embedding: Sequence[float], *, filters: SearchFilters | None = None,
                                    limit: int = 10, min_score: float | None = None,
                                    ef_search: int | None = None) -> tuple[SearchPlan, str]:
        """The path ``search(mode="vector")`` would take and PostgreSQL's plan for its statement."""
        return await self.searcher.explain_vector_search(query_embedding, filters=filters, limit=limit,
                                                         min_score=min_score, ef_search=ef_search)


_LIVE_EMBEDDED = "m.embedding IS NOT NULL AND (m.expires_at IS NULL OR m.expires_at > now())"


def _parse_vector(text: str) -> list[float]:
    return [float(x) for x in text.strip("[]").split(",") if x]


def parse_ids(ids: Sequence[uuid.UUID | str]) -> list[uuid.UUID]:
    """Memory ids as UUIDs; :class:`InvalidInput` naming the first one that is not."""
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
