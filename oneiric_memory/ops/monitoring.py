"""Monitoring: ``stats`` (pool, tables, indexes, slow queries, outbox), the recall canary and ``doctor``.

SQL runs on a short-lived direct connection, not the pool, so ``doctor`` still answers when the pool is
exhausted. Nothing here reads memory content: statistics come from the catalogs, ``pg_stat_*`` views and
counts; ``pg_stat_statements`` texts are normalized (constants replaced by ``$n``) and this package only
ever sends content as bind parameters.

The store's gauges (:mod:`oneiric_memory.adapters.pgvector.gauges`) read the values cached here by the last
``stats()``/``doctor()``/canary run, so a metric export never waits on PostgreSQL.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import asyncpg

from oneiric_memory.adapters.pgvector.connection import PoolStats
from oneiric_memory.adapters.pgvector.gauges import gauge_values
from oneiric_memory.errors import InvalidInput, OneiricMemoryError
from oneiric_memory.observability import get_logger, span
from oneiric_memory.ops.maintenance import PACKAGE_TABLES, _jsonable, count_embedded_rows, direct_connection

if TYPE_CHECKING:  # mcp_common is imported lazily: it pulls in fastmcp, which costs seconds per process
    from mcp_common.health import ComponentHealth

    from oneiric_memory.adapters.pgvector import PgvectorMemoryStore

__all__ = [
    "CanaryResult",
    "DoctorReport",
    "Finding",
    "IndexStats",
    "Monitor",
    "MonitorStats",
    "OutboxStats",
    "Severity",
    "SlowQuery",
    "StatementStats",
    "TableStats",
    "VectorIndexStats",
    "VectorStorage",
    "evaluate",
    "health_score",
]

Severity = Literal["info", "warning", "critical"]
_PENALTY: Mapping[str, int] = {"info": 0, "warning": 15, "critical": 40}
_ORDER: Mapping[str, int] = {"critical": 0, "warning": 1, "info": 2}
_MIN_DEAD_TUPLES = 50
_BLOAT_RATIO = 2.0
_BLOAT_MIN_EXCESS_BYTES = 256 * 1024
_UNUSED_INDEX_MIN_ROWS = 10_000
_TOAST_SAMPLE = 1000
_PAGE = 8192
_LEFTOVER = re.compile(r"(_cc(new|old)[0-9]*|_rebuild)$")
_ENABLE_STATEMENTS = ("add shared_preload_libraries = 'pg_stat_statements' to postgresql.conf (or ALTER SYSTEM SET "
                      "shared_preload_libraries = 'pg_stat_statements'), restart PostgreSQL, then run "
                      "CREATE EXTENSION pg_stat_statements in this database")


# --- data ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableStats:
    """One table of the schema: tuples, sizes (TOAST includes its index) and (auto)vacuum history."""

    name: str
    live_tuples: int
    dead_tuples: int
    heap_bytes: int
    toast_bytes: int
    index_bytes: int
    total_bytes: int
    last_vacuum: datetime | None
    last_autovacuum: datetime | None
    last_analyze: datetime | None
    last_autoanalyze: datetime | None
    vacuum_count: int
    autovacuum_count: int

    @property
    def dead_ratio(self) -> float:
        total = self.live_tuples + self.dead_tuples
        return self.dead_tuples / total if total else 0.0


@dataclass(frozen=True, slots=True)
class IndexStats:
    """One index: scans since the statistics were reset, size, validity; ``unused`` excludes constraints."""

    table: str
    name: str
    method: str
    scans: int
    size_bytes: int
    valid: bool
    backs_constraint: bool

    @property
    def unused(self) -> bool:
        return self.scans == 0 and not self.backs_constraint


@dataclass(frozen=True, slots=True)
class VectorIndexStats:
    """The vector index against the row count (B-tree bloat formulas do not apply to HNSW/IVFFlat)."""

    name: str
    method: str
    valid: bool
    size_bytes: int
    rows: int
    expected_bytes_per_row: int
    expected_overhead_bytes: int
    built_rows: int
    built_at: datetime | None
    lists: int | None

    @property
    def bytes_per_row(self) -> float | None:
        return self.size_bytes / self.rows if self.rows else None

    @property
    def expected_bytes(self) -> int:
        """Rows × expected bytes per row, plus fixed pages (meta page; one page per IVFFlat list)."""
        return self.rows * self.expected_bytes_per_row + self.expected_overhead_bytes

    @property
    def bloat_ratio(self) -> float | None:
        return self.size_bytes / self.expected_bytes if self.rows else None


@dataclass(frozen=True, slots=True)
class VectorStorage:
    """Where vectors live: ``attstorage`` of the column and, on PG 17+, a sample checked for out-of-line TOAST."""

    attstorage: str | None
    sampled: int
    out_of_line: int | None
    compressed: int | None


@dataclass(frozen=True, slots=True)
class SlowQuery:
    """A normalized statement from ``pg_stat_statements`` (constants are ``$n``)."""

    queryid: int
    calls: int
    mean_ms: float
    total_ms: float
    rows: int
    query: str


@dataclass(frozen=True, slots=True)
class StatementStats:
    """Slow statements on this package's tables in this database, or why they are unavailable.

    PostgreSQL 18 groups statements on same-named tables across schemas, so a statement's text may show
    another schema of this package; the numbers cover all of them.
    """

    available: bool
    reason: str | None = None
    slow: list[SlowQuery] = field(default_factory=list)
    top: list[SlowQuery] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Insight outbox backlog; ``oldest_pending_age_s`` is 0 when nothing is pending."""

    pending: int
    failed: int
    oldest_pending_at: datetime | None
    oldest_pending_age_s: float


@dataclass(frozen=True, slots=True)
class MonitorStats:
    """Everything ``oneiric-memory stats`` shows."""

    schema: str
    collected_at: datetime
    server_version: str
    pool: PoolStats
    tables: list[TableStats]
    indexes: list[IndexStats]
    vector_index: VectorIndexStats | None
    invalid_indexes: list[str]
    leftover_indexes: list[str]
    vector_storage: VectorStorage
    statements: StatementStats
    outbox: OutboxStats | None
    pending_embeddings: int
    rows_with_embeddings: int

    def table(self, name: str) -> TableStats | None:
        return next((t for t in self.tables if t.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = _jsonable(asdict(self))
        data["pool"]["busy_ratio"] = round(self.pool.busy_ratio, 4)
        for entry, table in zip(data["tables"], self.tables, strict=True):
            entry["dead_ratio"] = round(table.dead_ratio, 4)
        for entry, index in zip(data["indexes"], self.indexes, strict=True):
            entry["unused"] = index.unused
        if self.vector_index is not None:
            data["vector_index"]["bytes_per_row"] = self.vector_index.bytes_per_row
            data["vector_index"]["bloat_ratio"] = self.vector_index.bloat_ratio
            data["vector_index"]["expected_bytes"] = self.vector_index.expected_bytes
        return data


@dataclass(frozen=True, slots=True)
class CanaryResult:
    """recall@k of the index path against the exact answer, over ``queries`` sampled stored vectors."""

    k: int
    queries: int
    recall: float | None
    min_recall: float | None
    floor: float
    method: str | None
    skipped: str | None = None

    @property
    def below_floor(self) -> bool:
        return self.recall is not None and self.recall < self.floor

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["below_floor"] = self.below_floor
        return data


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem (or note) with the fix in its message."""

    severity: Severity
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class DoctorReport:
    """Findings, a 0–100 health score (critical −40, warning −15) and the stats behind them."""

    score: int
    findings: list[Finding]
    stats: MonitorStats
    canary: CanaryResult | None

    @property
    def status(self) -> Literal["healthy", "degraded"]:
        """``degraded`` on any warning or critical finding: operations problems degrade, they do not stop."""
        if any(f.severity in ("warning", "critical") for f in self.findings):
            return "degraded"
        return "healthy"

    @property
    def summary(self) -> str:
        serious = [f for f in self.findings if f.severity != "info"]
        if not serious:
            return f"ok (health score {self.score})"
        return f"{serious[0].message} (health score {self.score}, {len(serious)} finding(s))"

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def component_health(self, name: str = "memory_store") -> ComponentHealth:
        """The findings as a ComponentHealth, so dashboards show DEGRADED with the reason."""
        from mcp_common.health import ComponentHealth, HealthStatus

        return ComponentHealth(
            name=name, status=HealthStatus(self.status), message=self.summary,
            metadata={"health_score": self.score,
                      "findings": [{"severity": f.severity, "code": f.code} for f in self.findings],
                      "recall": None if self.canary is None else self.canary.recall})

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "status": self.status, "summary": self.summary,
                "findings": [asdict(f) for f in self.findings],
                "canary": None if self.canary is None else self.canary.to_dict(), "stats": self.stats.to_dict()}


# --- findings ---------------------------------------------------------------------------------------------


def evaluate(stats: MonitorStats, canary: CanaryResult | None, *, dead_tuple_ratio: float, recall_floor: float,
             pool_busy_ratio: float, outbox_backlog_age_s: float, reindex_growth_ratio: float,
             slow_query_ms: float, index_type: str, ef_search: int, ivfflat_probes: int | None) -> list[Finding]:
    """Turn statistics into findings, most severe first; each message says what to do."""
    findings: list[Finding] = []
    add = findings.append
    s = stats.schema
    pool = stats.pool
    if pool.max_size and pool.busy_ratio > pool_busy_ratio:
        severity: Severity = "critical" if pool.waiting else "warning"
        add(Finding(severity, "pool_busy",
                    f"the connection pool is {pool.busy_ratio:.0%} busy ({pool.in_use}/{pool.max_size}, "
                    f"{pool.waiting} waiting): lower concurrency (coordinator.max_in_flight) or raise "
                    "postgres.max_connections within the server's max_connections budget "
                    "(docs/operations.md, pool sizing)"))
    for name in stats.invalid_indexes:
        add(Finding("critical", "invalid_index",
                    f"index {s}.{name} is invalid (a failed CREATE/REINDEX CONCURRENTLY): run "
                    "`oneiric-memory maintain reindex`, which drops it and rebuilds the vector index"))
    for name in stats.leftover_indexes:
        if name not in stats.invalid_indexes:
            add(Finding("warning", "leftover_index",
                        f"index {s}.{name} is left over from an interrupted rebuild: run "
                        "`oneiric-memory maintain reindex` to drop it"))
    vi = stats.vector_index
    if vi is None:
        if index_type == "hnsw" or stats.rows_with_embeddings >= 1000:
            add(Finding("warning", "vector_index_missing",
                        f"no valid {index_type} index on {s}.memories: vector search scans the whole table; run "
                        "`oneiric-memory maintain reindex`"))
        elif stats.rows_with_embeddings:
            add(Finding("info", "vector_index_pending",
                        f"no IVFFlat index yet ({stats.rows_with_embeddings} rows): it is built once rows exist; "
                        "run `oneiric-memory maintain reindex` after loading"))
    else:
        ratio = vi.bloat_ratio
        if ratio is not None and ratio > _BLOAT_RATIO and vi.size_bytes - vi.expected_bytes > _BLOAT_MIN_EXCESS_BYTES:
            add(Finding("warning", "vector_index_bloat",
                        f"{vi.name} is {vi.size_bytes} bytes for {vi.rows} rows, {ratio:.1f}x the expected "
                        f"{vi.expected_bytes}: run `oneiric-memory maintain reindex` (then vacuum)"))
        change = abs(vi.rows - vi.built_rows)
        if vi.built_rows and change >= 1000 and change / vi.built_rows > reindex_growth_ratio:
            add(Finding("warning" if vi.method == "ivfflat" else "info", "reindex_due",
                        f"rows changed from {vi.built_rows} to {vi.rows} since {vi.name} was built: run "
                        "`oneiric-memory maintain reindex` (or `maintain auto`)"))
    if canary is not None and canary.below_floor:
        if canary.method == "ivfflat":
            how = (f"run `oneiric-memory maintain reindex` (lists from the row count) and set "
                   f"search.ivfflat_probes ≈ sqrt(lists) (now {ivfflat_probes or 10})")
        else:
            how = (f"raise search.ef_search (now {ef_search}), or run `oneiric-memory maintain reindex` if the "
                   "index was built before most rows were loaded or after large deletes")
        add(Finding("critical", "recall_below_floor",
                    f"recall@{canary.k} canary is {canary.recall:.3f}, below the floor {recall_floor:.2f}: {how}"))
    for table in stats.tables:
        if table.dead_tuples >= _MIN_DEAD_TUPLES and table.dead_ratio > dead_tuple_ratio:
            add(Finding("warning", "dead_tuples",
                        f"{s}.{table.name} has {table.dead_tuples} dead tuples ({table.dead_ratio:.0%} > "
                        f"{dead_tuple_ratio:.0%}): run `oneiric-memory maintain vacuum` (or `maintain auto`); if "
                        "it recurs, run `oneiric-memory maintain autovacuum`"))
    storage = stats.vector_storage
    memories = stats.table("memories")
    if storage.out_of_line:
        add(Finding("warning", "toasted_vectors",
                    f"{storage.out_of_line} of {storage.sampled} sampled vectors are stored out of line (TOAST), "
                    "which makes exact scans ~4x slower: use postgres.vector_type=halfvec, or ALTER TABLE "
                    f"{s}.memories ALTER COLUMN embedding SET STORAGE PLAIN (with toast_tuple_target = 8160 for "
                    "wide float32 vectors) and rewrite the table (VACUUM FULL or pg_repack) in a maintenance "
                    "window"))
    elif storage.out_of_line is None and memories is not None and storage.attstorage in ("x", "e") \
            and memories.toast_bytes > max(memories.heap_bytes, 1024 * 1024):
        add(Finding("warning", "toasted_vectors",
                    f"{s}.memories has more TOAST ({memories.toast_bytes} B) than heap ({memories.heap_bytes} B) "
                    "and its vectors may be TOASTed: ALTER TABLE ... ALTER COLUMN embedding SET STORAGE PLAIN "
                    "and rewrite the table, or use postgres.vector_type=halfvec"))
    if storage.compressed:
        add(Finding("warning", "compressed_vectors",
                    f"{storage.compressed} of {storage.sampled} sampled vectors are compressed, which costs a "
                    f"decompression per distance: ALTER TABLE {s}.memories ALTER COLUMN embedding SET STORAGE "
                    "PLAIN and rewrite the table"))
    if stats.outbox is not None:
        ob = stats.outbox
        if ob.pending and ob.oldest_pending_age_s > outbox_backlog_age_s:
            add(Finding("warning", "outbox_backlog",
                        f"{ob.pending} insights wait for Session-Buddy, the oldest for {ob.oldest_pending_age_s:.0f}s "
                        f"(> {outbox_backlog_age_s:.0f}s): check that Session-Buddy is reachable "
                        "(session_buddy settings) and the relay is running; nothing is lost, delivery resumes"))
        if ob.failed:
            add(Finding("warning", "outbox_failed",
                        f"{ob.failed} insights failed after the maximum attempts: read last_error in "
                        f"{s}.insight_outbox, fix the cause, then requeue with UPDATE {s}.insight_outbox SET "
                        "status = 'pending', attempts = 0, next_attempt_at = now() WHERE status = 'failed'"))
    if stats.pending_embeddings:
        add(Finding("info", "pending_embeddings",
                    f"{stats.pending_embeddings} memories wait for an embedding (text search finds them meanwhile): "
                    "the backfill embeds them once the embedder answers (coordinator.backfill_enabled)"))
    st = stats.statements
    if not st.available:
        add(Finding("info", "statements_unavailable", f"slow-query statistics are off: {st.reason}"))
    elif st.slow:
        worst = st.slow[0]
        add(Finding("info", "slow_queries",
                    f"{len(st.slow)} statement(s) average over {slow_query_ms:.0f} ms (worst {worst.mean_ms:.0f} ms "
                    f"over {worst.calls} calls): see `oneiric-memory stats`; check the vector index and filters"))
    if memories is not None and memories.live_tuples >= _UNUSED_INDEX_MIN_ROWS:
        unused = [i.name for i in stats.indexes if i.unused and i.method not in ("hnsw", "ivfflat")]
        if unused:
            add(Finding("info", "unused_indexes",
                        f"indexes never scanned since the statistics reset: {', '.join(unused)}; keep them if "
                        "your filters need them, they cost write time"))
    findings.sort(key=lambda f: _ORDER[f.severity])
    return findings


def health_score(findings: Sequence[Finding]) -> int:
    return max(0, 100 - sum(_PENALTY[f.severity] for f in findings))


# --- the monitor ----------------------------------------------------------------------------------------


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
            async with direct_connection(self.store, purpose="monitor", statement_timeout_ms=timeout) as conn:
                result = await self._collect(conn, pool)
        cached = gauge_values(self.store)
        cached.pending_embeddings = result.pending_embeddings
        if result.outbox is not None:
            cached.outbox_pending = result.outbox.pending
            cached.outbox_failed = result.outbox.failed
            oldest = result.outbox.oldest_pending_at
            cached.oldest_pending_epoch = oldest.timestamp() if oldest is not None else None
        return result

    async def _collect(self, conn: asyncpg.Connection, pool: PoolStats) -> MonitorStats:
        s = self.schema
        t = self.store.table
        version = conn.get_server_version()
        tables = [TableStats(
            name=r["name"], live_tuples=int(r["live"]), dead_tuples=int(r["dead"]), heap_bytes=int(r["heap"]),
            toast_bytes=int(r["toast"]), index_bytes=int(r["indexes"]), total_bytes=int(r["total"]),
            last_vacuum=r["last_vacuum"], last_autovacuum=r["last_autovacuum"], last_analyze=r["last_analyze"],
            last_autoanalyze=r["last_autoanalyze"], vacuum_count=int(r["vacuum_count"]),
            autovacuum_count=int(r["autovacuum_count"]))
            for r in await conn.fetch(
                """
                SELECT c.relname AS name, coalesce(st.n_live_tup, 0) AS live, coalesce(st.n_dead_tup, 0) AS dead,
                       pg_relation_size(c.oid) AS heap,
                       coalesce(pg_total_relation_size(NULLIF(c.reltoastrelid, 0::oid)), 0) AS toast,
                       pg_indexes_size(c.oid) AS indexes, pg_total_relation_size(c.oid) AS total,
                       st.last_vacuum, st.last_autovacuum, st.last_analyze, st.last_autoanalyze,
                       coalesce(st.vacuum_count, 0) AS vacuum_count, coalesce(st.autovacuum_count, 0) AS autovacuum_count
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                LEFT JOIN pg_stat_user_tables st ON st.relid = c.oid
                WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname
                """, s)]
        index_rows = await conn.fetch(
            """
            SELECT c.relname AS table_name, ic.relname AS name, am.amname AS method,
                   coalesce(si.idx_scan, 0) AS scans, pg_relation_size(ic.oid) AS size_bytes, i.indisvalid AS valid,
                   EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) AS backs_constraint,
                   ic.reloptions
            FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am am ON am.oid = ic.relam
            LEFT JOIN pg_stat_user_indexes si ON si.indexrelid = i.indexrelid
            WHERE n.nspname = $1 ORDER BY c.relname, ic.relname
            """, s)
        indexes = [IndexStats(table=r["table_name"], name=r["name"], method=r["method"], scans=int(r["scans"]),
                              size_bytes=int(r["size_bytes"]), valid=bool(r["valid"]),
                              backs_constraint=bool(r["backs_constraint"])) for r in index_rows]
        invalid = [i.name for i in indexes if not i.valid and not i.backs_constraint]
        leftover = [i.name for i in indexes if not i.backs_constraint and _LEFTOVER.search(i.name)]
        rows = await count_embedded_rows(conn, self.store)
        pending = int(await conn.fetchval(f"SELECT count(*) FROM {t('memories')} WHERE embedding IS NULL"))
        meta = await conn.fetchrow(f"SELECT index_built_rows, index_built_at FROM {t('embedding_meta')}")
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
            schema=s, collected_at=await conn.fetchval("SELECT now()"),
            server_version=f"{version.major}.{version.minor}", pool=pool, tables=tables, indexes=indexes,
            vector_index=vector_index, invalid_indexes=invalid, leftover_indexes=leftover,
            vector_storage=await self._vector_storage(conn, version.major), statements=await self._statements(conn),
            outbox=await self._outbox(conn) if self.outbox_table else None, pending_embeddings=pending,
            rows_with_embeddings=rows)

    async def _vector_storage(self, conn: asyncpg.Connection, major: int) -> VectorStorage:
        memories = self.store.table("memories")
        attstorage = await conn.fetchval(
            "SELECT a.attstorage::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'memories' "
            "AND a.attname = 'embedding'", self.schema)
        if major >= 17:
            row = await conn.fetchrow(
                "SELECT count(*) AS sampled, count(pg_column_toast_chunk_id(embedding)) AS external, "
                f"count(pg_column_compression(embedding)) AS compressed FROM (SELECT embedding FROM {memories} "
                f"WHERE embedding IS NOT NULL LIMIT {_TOAST_SAMPLE}) AS s")
            return VectorStorage(attstorage=attstorage, sampled=int(row["sampled"]), out_of_line=int(row["external"]),
                                 compressed=int(row["compressed"]))
        row = await conn.fetchrow(
            f"SELECT count(*) AS sampled, count(pg_column_compression(embedding)) AS compressed FROM (SELECT embedding "
            f"FROM {memories} WHERE embedding IS NOT NULL LIMIT {_TOAST_SAMPLE}) AS s")
        return VectorStorage(attstorage=attstorage, sampled=int(row["sampled"]), out_of_line=None,
                             compressed=int(row["compressed"]))

    async def _statements(self, conn: asyncpg.Connection) -> StatementStats:
        ext_schema = await conn.fetchval(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_stat_statements'")
        try:
            preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
        except asyncpg.InsufficientPrivilegeError:  # superuser-only setting: unknown, try the view instead
            preload = None
        loaded = None if preload is None else "pg_stat_statements" in str(preload)
        if ext_schema is None:
            if loaded is False:
                return StatementStats(available=False, reason=f"pg_stat_statements is not loaded: {_ENABLE_STATEMENTS}")
            if not self.create_statements_extension:
                return StatementStats(available=False,
                                      reason="pg_stat_statements is loaded but not created in this database: run "
                                             "CREATE EXTENSION pg_stat_statements")
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            except asyncpg.InsufficientPrivilegeError:
                return StatementStats(available=False,
                                      reason="pg_stat_statements is loaded but this role may not create it: ask a "
                                             "superuser to run CREATE EXTENSION pg_stat_statements in this database")
            except asyncpg.UniqueViolationError:
                pass  # created concurrently
            ext_schema = await conn.fetchval(
                "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_stat_statements'")
        threshold = self.settings.maintenance.slow_query_ms
        sql = (f"SELECT queryid, calls, mean_exec_time, total_exec_time, rows, "
               f"left(regexp_replace(query, '\\s+', ' ', 'g'), 400) AS query FROM {ext_schema}.pg_stat_statements "
               "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
               "AND query ~ $1 AND query ~* '^\\s*(with|select|insert|update|delete|copy)\\s' ")
        tables = "(" + "|".join(PACKAGE_TABLES) + ")"
        try:
            slow = await conn.fetch(sql + "AND mean_exec_time >= $2 ORDER BY mean_exec_time DESC LIMIT 10",
                                    tables, float(threshold))
            top = await conn.fetch(sql + "ORDER BY total_exec_time DESC LIMIT 5", tables)
        except asyncpg.ObjectNotInPrerequisiteStateError:
            return StatementStats(available=False,
                                  reason=f"the pg_stat_statements extension exists but is not loaded: {_ENABLE_STATEMENTS}")
        return StatementStats(available=True, slow=[_slow(r) for r in slow], top=[_slow(r) for r in top])

    async def _outbox(self, conn: asyncpg.Connection) -> OutboxStats:
        outbox = self.store.table("insight_outbox")
        row = await conn.fetchrow(
            f"SELECT (SELECT count(*) FROM {outbox} WHERE status = 'pending') AS pending, "
            f"(SELECT count(*) FROM {outbox} WHERE status = 'failed') AS failed, "
            f"(SELECT min(created_at) FROM {outbox} WHERE status = 'pending') AS oldest, now() AS now")
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
        memories = self.store.table("memories")
        live = "m.embedding IS NOT NULL AND (m.expires_at IS NULL OR m.expires_at > now())"
        async with self.store.gate.acquire() as conn:
            method = await conn.fetchval(
                "SELECT am.amname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
                "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_am am ON am.oid = ic.relam WHERE n.nspname = $1 AND c.relname = 'memories' "
                "AND am.amname IN ('hnsw', 'ivfflat') AND i.indisvalid LIMIT 1", self.schema)
            estimate = await conn.fetchval(
                "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relname = 'memories'", self.schema)
            if seed is not None:
                await conn.execute("SELECT setseed($1)", random.Random(seed).random() * 2 - 1)
            if estimate is not None and float(estimate) > 100_000:  # avoid sorting a large table by random()
                percent = min(100.0, 100.0 * max(queries * 20, 1000) / float(estimate))
                rows: list[asyncpg.Record] = []
                while True:  # widen the page sample until it yields enough rows
                    rows = await conn.fetch(
                        f"SELECT m.embedding::text AS v FROM {memories} m TABLESAMPLE SYSTEM ({percent:.6f}) "
                        f"WHERE {live} LIMIT {int(queries)}")
                    if len(rows) >= queries or percent >= 100.0:
                        break
                    percent = min(100.0, percent * 10)
            else:
                rows = await conn.fetch(
                    f"SELECT m.embedding::text AS v FROM {memories} m WHERE {live} ORDER BY random() "
                    f"LIMIT {int(queries)}")
            sampled = [_parse_vector(r["v"]) for r in rows]
        if method is None:
            return CanaryResult(k=k, queries=0, recall=None, min_recall=None, floor=floor, method=None,
                                skipped="no valid vector index: every vector search is exact")
        if len(sampled) == 0:
            return CanaryResult(k=k, queries=0, recall=None, min_recall=None, floor=floor, method=str(method),
                                skipped="no stored embeddings to sample")
        vtype = f"{self.store.vector_type}({self.store.dimension})"
        recalls: list[float] = []
        for vector in sampled:
            hits = await self.store.search(query_embedding=vector, mode="vector", limit=k)
            async with self.store.gate.acquire() as conn, conn.transaction(readonly=True):
                exact = await conn.fetch(
                    f"SELECT m.id FROM {memories} m WHERE {live} ORDER BY (m.embedding <=> $1::{vtype}) + 0, m.id "
                    "LIMIT $2", vector, k)
            truth = {r["id"] for r in exact}
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


def _parse_vector(text: str) -> list[float]:
    return [float(x) for x in text.strip("[]").split(",") if x]
