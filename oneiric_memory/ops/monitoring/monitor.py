"""The monitor: ``stats`` (pool, tables, indexes, slow queries, outbox), the recall canary and ``doctor``.

SQL runs through the store's direct session (:mod:`oneiric_memory.adapters.pgvector.direct`), not the pool,
so ``doctor`` still answers when the pool is exhausted. Nothing here reads memory content: statistics come
from the catalogs, ``pg_stat_*`` views and counts; ``pg_stat_statements`` texts are normalized (constants
replaced by ``$n``) and this package only ever sends content as bind parameters.

The store's gauges (:mod:`oneiric_memory.adapters.pgvector.gauges`) read the values cached here by the last
``stats()``/``doctor()``/canary run, so a metric export never waits on PostgreSQL.
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING

import asyncpg

from oneiric_memory.adapters.pgvector.connection import PoolStats
from oneiric_memory.adapters.pgvector.direct import DirectSession
from oneiric_memory.adapters.pgvector.gauges import gauge_values
from oneiric_memory.errors import InvalidInput, OneiricMemoryError
from oneiric_memory.observability import get_logger, span
from oneiric_memory.ops.monitoring.findings import DoctorReport, evaluate, health_score
from oneiric_memory.ops.monitoring.stats import (
    CanaryResult,
    IndexStats,
    MonitorStats,
    OutboxStats,
    SlowQuery,
    StatementStats,
    TableStats,
    VectorIndexStats,
    VectorStorage,
)

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector import PgvectorMemoryStore

__all__ = ["Monitor"]

_TOAST_SAMPLE = 1000
_PAGE = 8192
_LEFTOVER = re.compile(r"(_cc(new|old)[0-9]*|_rebuild)$")
_ENABLE_STATEMENTS = ("add shared_preload_libraries = 'pg_stat_statements' to postgresql.conf (or ALTER SYSTEM SET "
                      "shared_preload_libraries = 'pg_stat_statements'), restart PostgreSQL, then run "
                      "CREATE EXTENSION pg_stat_statements in this database")



def _expected_bytes_per_row(method: str, vector_bytes: int, m: int) -> int:
    if method == "hnsw":  # element tuple (vector + heap TIDs/header) + layer-0 neighbour list (2m TIDs)
        return vector_bytes + 80 + 12 * m + 24
    return vector_bytes + 24  # IVFFlat: the vector and a heap TID per row


class Monitor:
    """Statistics, the recall canary and ``doctor`` for one initialized store."""

    def __init__(self, store: PgvectorMemoryStore, *, outbox_table: bool = True,
                 create_statements_extension: bool = True) -> None:
        self.store = store
        self.settings = store.settings
        self.schema = store.schema
        self.outbox_table = outbox_table
        self.create_statements_extension = create_statements_extension
        self._log = get_logger("oneiric_memory.monitoring", schema=self.schema)

    def pool_snapshot(self) -> PoolStats:
        return self.store.gate.stats()

    async def stats(self) -> MonitorStats:
        """Collect everything ``oneiric-memory stats`` shows (and refresh the gauges' cached values)."""
        with span("monitor.stats", schema=self.schema):
            pool = self.pool_snapshot()
            timeout = self.settings.postgres.statement_timeout_ms
            async with self.store.direct_session(purpose="monitor", statement_timeout_ms=timeout) as conn:
                result = await self._collect(conn, pool)
        cached = gauge_values(self.store)
        cached.pending_embeddings = result.pending_embeddings
        if result.outbox is not None:
            cached.outbox_pending = result.outbox.pending
            cached.outbox_failed = result.outbox.failed
            oldest = result.outbox.oldest_pending_at
            cached.oldest_pending_epoch = oldest.timestamp() if oldest is not None else None
        return result

    async def _collect(self, conn: DirectSession, pool: PoolStats) -> MonitorStats:
        tables = [TableStats(
            name=r["name"], live_tuples=int(r["live"]), dead_tuples=int(r["dead"]), heap_bytes=int(r["heap"]),
            toast_bytes=int(r["toast"]), index_bytes=int(r["indexes"]), total_bytes=int(r["total"]),
            last_vacuum=r["last_vacuum"], last_autovacuum=r["last_autovacuum"], last_analyze=r["last_analyze"],
            last_autoanalyze=r["last_autoanalyze"], vacuum_count=int(r["vacuum_count"]),
            autovacuum_count=int(r["autovacuum_count"]))
            for r in await conn.table_stats()]
        index_rows = await conn.index_stats()
        indexes = [IndexStats(table=r["table_name"], name=r["name"], method=r["method"], scans=int(r["scans"]),
                              size_bytes=int(r["size_bytes"]), valid=bool(r["valid"]),
                              backs_constraint=bool(r["backs_constraint"])) for r in index_rows]
        invalid = [i.name for i in indexes if not i.valid and not i.backs_constraint]
        leftover = [i.name for i in indexes if not i.backs_constraint and _LEFTOVER.search(i.name)]
        rows = await conn.count_embedded_rows()
        pending = await conn.count_pending()
        meta = await conn.index_build()
        vector_index = None
        for r in index_rows:
            if r["table_name"] == "memories" and r["method"] in ("hnsw", "ivfflat") and r["valid"]:
                vector_bytes = self.store.dimension * (2 if self.store.vector_type == "halfvec" else 4) + 8
                lists = None
                for option in r["reloptions"] or []:
                    key, _, value = str(option).partition("=")
                    if key == "lists":
                        lists = int(value)
                if r["method"] == "ivfflat" and lists is None:
                    lists = 100  # pgvector's default
                vector_index = VectorIndexStats(
                    name=r["name"], method=r["method"], valid=True, size_bytes=int(r["size_bytes"]), rows=rows,
                    expected_bytes_per_row=_expected_bytes_per_row(r["method"], vector_bytes,
                                                                   self.settings.postgres.hnsw_m),
                    expected_overhead_bytes=_PAGE * (2 + (lists or 0)),
                    built_rows=int(meta["index_built_rows"]) if meta else 0,
                    built_at=meta["index_built_at"] if meta else None, lists=lists)
                break
        return MonitorStats(
            schema=self.schema, collected_at=await conn.now(),
            server_version=conn.server_version, pool=pool, tables=tables, indexes=indexes,
            vector_index=vector_index, invalid_indexes=invalid, leftover_indexes=leftover,
            vector_storage=await self._vector_storage(conn), statements=await self._statements(conn),
            outbox=await self._outbox(conn) if self.outbox_table else None, pending_embeddings=pending,
            rows_with_embeddings=rows)

    @staticmethod
    async def _vector_storage(conn: DirectSession) -> VectorStorage:
        attstorage = await conn.vector_attstorage()
        row = await conn.vector_storage_sample(_TOAST_SAMPLE)
        return VectorStorage(attstorage=attstorage, sampled=int(row["sampled"]),
                             out_of_line=None if row["external"] is None else int(row["external"]),
                             compressed=int(row["compressed"]))

    async def _statements(self, conn: DirectSession) -> StatementStats:
        ext_schema = await conn.statements_extension_schema()
        loaded = await conn.statements_preloaded()
        if ext_schema is None:
            if loaded is False:
                return StatementStats(available=False, reason=f"pg_stat_statements is not loaded: {_ENABLE_STATEMENTS}")
            if not self.create_statements_extension:
                return StatementStats(available=False,
                                      reason="pg_stat_statements is loaded but not created in this database: run "
                                             "CREATE EXTENSION pg_stat_statements")
            try:
                await conn.create_statements_extension()
            except asyncpg.InsufficientPrivilegeError:
                return StatementStats(available=False,
                                      reason="pg_stat_statements is loaded but this role may not create it: ask a "
                                             "superuser to run CREATE EXTENSION pg_stat_statements in this database")
            ext_schema = await conn.statements_extension_schema()
            if ext_schema is None:
                return StatementStats(available=False, reason="pg_stat_statements could not be created")
        threshold = self.settings.maintenance.slow_query_ms
        try:
            slow = await conn.package_statements(ext_schema, min_mean_ms=float(threshold), order_by="mean", limit=10)
            top = await conn.package_statements(ext_schema, min_mean_ms=None, order_by="total", limit=5)
        except asyncpg.ObjectNotInPrerequisiteStateError:
            return StatementStats(available=False,
                                  reason=f"the pg_stat_statements extension exists but is not loaded: {_ENABLE_STATEMENTS}")
        return StatementStats(available=True, slow=[_slow(r) for r in slow], top=[_slow(r) for r in top])

    @staticmethod
    async def _outbox(conn: DirectSession) -> OutboxStats:
        row = await conn.outbox_backlog()
        oldest = row["oldest"]
        age = (row["now"] - oldest).total_seconds() if oldest is not None else 0.0
        return OutboxStats(pending=int(row["pending"]), failed=int(row["failed"]),
                           oldest_pending_at=oldest, oldest_pending_age_s=max(age, 0.0))

    # --- recall canary ---------------------------------------------------------------------------------

    async def recall_canary(self, k: int | None = None, queries: int | None = None, *,
                            seed: int | None = None) -> CanaryResult:
        """Sample stored vectors as queries; compare the index path with the exact answer; report recall@k.

        The index path is ``store.search(mode="vector")`` with no filters (the production path, knobs
        included); the exact answer orders by ``distance + 0``, which no index can serve.
        """
        ms = self.settings.maintenance
        k = ms.canary_k if k is None else k
        queries = ms.canary_queries if queries is None else queries
        for name, value in (("k", k), ("queries", queries)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{name} must be a positive integer")
        if k > self.settings.search.max_limit:
            raise InvalidInput(f"k must be at most search.max_limit ({self.settings.search.max_limit})")
        with span("monitor.recall_canary", schema=self.schema, k=k, queries=queries) as sp:
            result = await self._canary(k, queries, seed)
            if result.recall is not None:
                sp.set_attribute("recall", result.recall)
            if result.skipped is not None:
                sp.set_attribute("skipped", True)
        if result.recall is not None:
            gauge_values(self.store).recall = result.recall
            if result.below_floor:
                self._log.warning("recall-canary-below-floor", recall=round(result.recall, 4), k=k,
                                  floor=result.floor, method=result.method)
        return result

    async def _canary(self, k: int, queries: int, seed: int | None) -> CanaryResult:
        floor = self.settings.maintenance.recall_floor
        method, sampled = await self.store.canary_sample(
            queries, seed=None if seed is None else random.Random(seed).random() * 2 - 1)
        if method is None:
            return CanaryResult(k=k, queries=0, recall=None, min_recall=None, floor=floor, method=None,
                                skipped="no valid vector index: every vector search is exact")
        if len(sampled) == 0:
            return CanaryResult(k=k, queries=0, recall=None, min_recall=None, floor=floor, method=str(method),
                                skipped="no stored embeddings to sample")
        recalls: list[float] = []
        for vector in sampled:
            hits = await self.store.search(query_embedding=vector, mode="vector", limit=k)
            truth = await self.store.exact_neighbours(vector, k)
            if not truth:
                continue
            found = {hit.id for hit in hits}
            recalls.append(len(truth & found) / len(truth))
        if not recalls:
            return CanaryResult(k=k, queries=0, recall=None, min_recall=None, floor=floor, method=str(method),
                                skipped="no exact neighbours found")
        return CanaryResult(k=k, queries=len(recalls), recall=round(sum(recalls) / len(recalls), 4),
                            min_recall=round(min(recalls), 4), floor=floor, method=str(method))

    # --- doctor -------------------------------------------------------------------------------------------

    async def doctor(self, *, canary: bool = True) -> DoctorReport:
        """Stats + (unless the pool is saturated) the recall canary → findings and a health score."""
        with span("monitor.doctor", schema=self.schema) as sp:
            stats = await self.stats()
            canary_result: CanaryResult | None = None
            if canary:
                pool = stats.pool
                if pool.waiting or (pool.max_size and pool.in_use >= pool.max_size):
                    canary_result = CanaryResult(
                        k=self.settings.maintenance.canary_k, queries=0, recall=None, min_recall=None,
                        floor=self.settings.maintenance.recall_floor, method=None,
                        skipped="the pool is saturated: the canary would add load")
                else:
                    try:
                        canary_result = await self.recall_canary()
                    except OneiricMemoryError as exc:
                        canary_result = CanaryResult(
                            k=self.settings.maintenance.canary_k, queries=0, recall=None, min_recall=None,
                            floor=self.settings.maintenance.recall_floor, method=None, skipped=exc.message)
            ms = self.settings.maintenance
            findings = evaluate(
                stats, canary_result, dead_tuple_ratio=ms.dead_tuple_ratio, recall_floor=ms.recall_floor,
                pool_busy_ratio=ms.pool_busy_ratio, outbox_backlog_age_s=ms.outbox_backlog_age_s,
                reindex_growth_ratio=ms.reindex_growth_ratio, slow_query_ms=ms.slow_query_ms,
                index_type=self.settings.postgres.index_type, ef_search=self.settings.search.ef_search,
                ivfflat_probes=self.settings.search.ivfflat_probes)
            report = DoctorReport(score=health_score(findings), findings=findings, stats=stats, canary=canary_result)
            sp.set_attribute("score", report.score)
            sp.set_attribute("findings", ",".join(report.codes()))
        if report.status != "healthy":
            self._log.warning("doctor-findings", score=report.score, codes=report.codes())
        return report


def _slow(row: asyncpg.Record) -> SlowQuery:
    return SlowQuery(queryid=int(row["queryid"]), calls=int(row["calls"]), mean_ms=round(float(row["mean_exec_time"]), 3),
                     total_ms=round(float(row["total_exec_time"]), 3), rows=int(row["rows"]), query=str(row["query"]))
