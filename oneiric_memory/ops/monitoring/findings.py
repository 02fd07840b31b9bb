"""``doctor``'s findings: one rule per finding, each a small function from the statistics to its advice.

A rule reads :class:`~oneiric_memory.ops.monitoring.stats.MonitorStats` (and the canary) against the
:class:`Thresholds` from settings and yields at most a few :class:`Finding`; :func:`evaluate` runs every rule
in :data:`RULES` and sorts the result, most severe first. Adding a check is adding a rule to the list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from oneiric_memory.ops.monitoring.stats import CanaryResult, MonitorStats

if TYPE_CHECKING:  # mcp_common is imported lazily: it pulls in fastmcp, which costs seconds per process
    from mcp_common.health import ComponentHealth

__all__ = ["RULES", "DoctorReport", "Finding", "Rule", "Severity", "Thresholds", "evaluate", "health_score"]

Severity = Literal["info", "warning", "critical"]
_PENALTY: Mapping[str, int] = {"info": 0, "warning": 15, "critical": 40}
_ORDER: Mapping[str, int] = {"critical": 0, "warning": 1, "info": 2}
_MIN_DEAD_TUPLES = 50
_BLOAT_RATIO = 2.0
_BLOAT_MIN_EXCESS_BYTES = 256 * 1024
_UNUSED_INDEX_MIN_ROWS = 10_000
_MIN_ROWS_CHANGE = 1000


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


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The settings the rules compare against (``maintenance.*``, ``postgres.index_type``, ``search.*``)."""

    dead_tuple_ratio: float
    recall_floor: float
    pool_busy_ratio: float
    outbox_backlog_age_s: float
    reindex_growth_ratio: float
    slow_query_ms: float
    index_type: str
    ef_search: int
    ivfflat_probes: int | None


Rule = Callable[[MonitorStats, CanaryResult | None, Thresholds], Iterator[Finding]]
"""One check: statistics (and the canary) against the thresholds, yielding its findings."""


def pool_busy(stats: MonitorStats, _canary: CanaryResult | None, t: Thresholds) -> Iterator[Finding]:
    pool = stats.pool
    if pool.max_size and pool.busy_ratio > t.pool_busy_ratio:
        yield Finding("critical" if pool.waiting else "warning", "pool_busy",
                      f"the connection pool is {pool.busy_ratio:.0%} busy ({pool.in_use}/{pool.max_size}, "
                      f"{pool.waiting} waiting): lower concurrency (coordinator.max_in_flight) or raise "
                      "postgres.max_connections within the server's max_connections budget "
                      "(docs/operations.md, pool sizing)")


def invalid_index(stats: MonitorStats, _canary: CanaryResult | None, _t: Thresholds) -> Iterator[Finding]:
    for name in stats.invalid_indexes:
        yield Finding("critical", "invalid_index",
                      f"index {stats.schema}.{name} is invalid (a failed CREATE/REINDEX CONCURRENTLY): run "
                      "`oneiric-memory maintain reindex`, which drops it and rebuilds the vector index")


def leftover_index(stats: MonitorStats, _canary: CanaryResult | None, _t: Thresholds) -> Iterator[Finding]:
    for name in stats.leftover_indexes:
        if name not in stats.invalid_indexes:
            yield Finding("warning", "leftover_index",
                          f"index {stats.schema}.{name} is left over from an interrupted rebuild: run "
                          "`oneiric-memory maintain reindex` to drop it")


def vector_index_missing(stats: MonitorStats, _canary: CanaryResult | None, t: Thresholds) -> Iterator[Finding]:
    if stats.vector_index is None and (t.index_type == "hnsw" or stats.rows_with_embeddings >= _MIN_ROWS_CHANGE):
        yield Finding("warning", "vector_index_missing",
                      f"no valid {t.index_type} index on {stats.schema}.memories: vector search scans the whole "
                      "table; run `oneiric-memory maintain reindex`")


def vector_index_pending(stats: MonitorStats, _canary: CanaryResult | None, t: Thresholds) -> Iterator[Finding]:
    if stats.vector_index is None and t.index_type != "hnsw" and 0 < stats.rows_with_embeddings < _MIN_ROWS_CHANGE:
        yield Finding("info", "vector_index_pending",
                      f"no IVFFlat index yet ({stats.rows_with_embeddings} rows): it is built once rows exist; "
                      "run `oneiric-memory maintain reindex` after loading")


def vector_index_bloat(stats: MonitorStats, _canary: CanaryResult | None, _t: Thresholds) -> Iterator[Finding]:
    vi = stats.vector_index
    if vi is None:
        return
    ratio = vi.bloat_ratio
    if ratio is not None and ratio > _BLOAT_RATIO and vi.size_bytes - vi.expected_bytes > _BLOAT_MIN_EXCESS_BYTES:
        yield Finding("warning", "vector_index_bloat",
                      f"{vi.name} is {vi.size_bytes} bytes for {vi.rows} rows, {ratio:.1f}x the expected "
                      f"{vi.expected_bytes}: run `oneiric-memory maintain reindex` (then vacuum)")


def reindex_due(stats: MonitorStats, _canary: CanaryResult | None, t: Thresholds) -> Iterator[Finding]:
    vi = stats.vector_index
    if vi is None:
        return
    change = abs(vi.rows - vi.built_rows)
    if vi.built_rows and change >= _MIN_ROWS_CHANGE and change / vi.built_rows > t.reindex_growth_ratio:
        yield Finding("warning" if vi.method == "ivfflat" else "info", "reindex_due",
                      f"rows changed from {vi.built_rows} to {vi.rows} since {vi.name} was built: run "
                      "`oneiric-memory maintain reindex` (or `maintain auto`)")


def recall_below_floor(_stats: MonitorStats, canary: CanaryResult | None, t: Thresholds) -> Iterator[Finding]:
    if canary is None or not canary.below_floor:
        return
    if canary.method == "ivfflat":
        how = (f"run `oneiric-memory maintain reindex` (lists from the row count) and set "
               f"search.ivfflat_probes ≈ sqrt(lists) (now {t.ivfflat_probes or 10})")
    else:
        how = (f"raise search.ef_search (now {t.ef_search}), or run `oneiric-memory maintain reindex` if the "
               "index was built before most rows were loaded or after large deletes")
    yield Finding("critical", "recall_below_floor",
                  f"recall@{canary.k} canary is {canary.recall:.3f}, below the floor {t.recall_floor:.2f}: {how}")


def dead_tuples(stats: MonitorStats, _canary: CanaryResult | None, t: Thresholds) -> Iterator[Finding]:
    for table in stats.tables:
        if table.dead_tuples >= _MIN_DEAD_TUPLES and table.dead_ratio > t.dead_tuple_ratio:
            yield Finding("warning", "dead_tuples",
                          f"{stats.schema}.{table.name} has {table.dead_tuples} dead tuples ({table.dead_ratio:.0%} > "
                          f"{t.dead_tuple_ratio:.0%}): run `oneiric-memory maintain vacuum` (or `maintain auto`); "
                          "if it recurs, run `oneiric-memory maintain autovacuum`")


def toasted_vectors(stats: MonitorStats, _canary: CanaryResult | None, _t: Thresholds) -> Iterator[Finding]:
    storage = stats.vector_storage
    memories = stats.table("memories")
    if storage.out_of_line:
        yield Finding("warning", "toasted_vectors",
                      f"{storage.out_of_line} of {storage.sampled} sampled vectors are stored out of line (TOAST), "
                      "which makes exact scans ~4x slower: use postgres.vector_type=halfvec, or ALTER TABLE "
                      f"{stats.schema}.memories ALTER COLUMN embedding SET STORAGE PLAIN (with toast_tuple_target "
                      "= 8160 for wide float32 vectors) and rewrite the table (VACUUM FULL or pg_repack) in a "
                      "maintenance window")
    elif storage.out_of_line is None and memories is not None and storage.attstorage in ("x", "e") \
            and memories.toast_bytes > max(memories.heap_bytes, 1024 * 1024):
        yield Finding("warning", "toasted_vectors",
                      f"{stats.schema}.memories has more TOAST ({memories.toast_bytes} B) than heap "
                      f"({memories.heap_bytes} B) and its vectors may be TOASTed: ALTER TABLE ... ALTER COLUMN "
                      "embedding SET STORAGE PLAIN and rewrite the table, or use postgres.vector_type=halfvec")


def compressed_vectors(stats: MonitorStats, _canary: CanaryResult | None, _t: Thresholds) -> Iterator[Finding]:
    storage = stats.vector_storage
    if storage.compressed:
        yield Finding("warning", "compressed_vectors",
                      f"{storage.compressed} of {storage.sampled} sampled vectors are compressed, which costs a "
                      f"decompression per distance: ALTER TABLE {stats.schema}.memories ALTER COLUMN embedding "
                      "SET STORAGE PLAIN and rewrite the table")


def outbox_backlog(stats: MonitorStats, _canary: CanaryResult | None, t: Thresholds) -> Iterator[Finding]:
    ob = stats.outbox
    if ob is not None and ob.pending and ob.oldest_pending_age_s > t.outbox_backlog_age_s:
        yield Finding("warning", "outbox_backlog",
                      f"{ob.pending} insights wait for Session-Buddy, the oldest for {ob.oldest_pending_age_s:.0f}s "
                      f"(> {t.outbox_backlog_age_s:.0f}s): check that Session-Buddy is reachable "
                      "(session_buddy settings) and the relay is running; nothing is lost, delivery resumes")


def outbox_failed(stats: MonitorStats, _canary: CanaryResult | None, _t: Thresholds) -> Iterator[Finding]:
    ob = stats.outbox
    if ob is not None and ob.failed:
        s = stats.schema
        yield Finding("warning", "outbox_failed",
                      f"{ob.failed} insights failed after the maximum attempts: read last_error in "
                      f"{s}.insight_outbox, fix the cause, then requeue with UPDATE {s}.insight_outbox SET "
                      "status = 'pending', attempts = 0, next_attempt_at = now() WHERE status = 'failed'")


def pending_embeddings(stats: MonitorStats, _canary: CanaryResult | None, _t: Thresholds) -> Iterator[Finding]:
    if stats.pending_embeddings:
        yield Finding("info", "pending_embeddings",
                      f"{stats.pending_embeddings} memories wait for an embedding (text search finds them "
                      "meanwhile): the backfill embeds them once the embedder answers (coordinator.backfill_enabled)")


def statements_unavailable(stats: MonitorStats, _canary: CanaryResult | None, _t: Thresholds) -> Iterator[Finding]:
    if not stats.statements.available:
        yield Finding("info", "statements_unavailable", f"slow-query statistics are off: {stats.statements.reason}")


def slow_queries(stats: MonitorStats, _canary: CanaryResult | None, t: Thresholds) -> Iterator[Finding]:
    st = stats.statements
    if st.available and st.slow:
        worst = st.slow[0]
        yield Finding("info", "slow_queries",
                      f"{len(st.slow)} statement(s) average over {t.slow_query_ms:.0f} ms (worst "
                      f"{worst.mean_ms:.0f} ms over {worst.calls} calls): see `oneiric-memory stats`; check the "
                      "vector index and filters")


def unused_indexes(stats: MonitorStats, _canary: CanaryResult | None, _t: Thresholds) -> Iterator[Finding]:
    memories = stats.table("memories")
    if memories is None or memories.live_tuples < _UNUSED_INDEX_MIN_ROWS:
        return
    unused = [i.name for i in stats.indexes if i.unused and i.method not in ("hnsw", "ivfflat")]
    if unused:
        yield Finding("info", "unused_indexes",
                      f"indexes never scanned since the statistics reset: {', '.join(unused)}; keep them if "
                      "your filters need them, they cost write time")


RULES: tuple[Rule, ...] = (
    pool_busy, invalid_index, leftover_index, vector_index_missing, vector_index_pending, vector_index_bloat,
    reindex_due, recall_below_floor, dead_tuples, toasted_vectors, compressed_vectors, outbox_backlog,
    outbox_failed, pending_embeddings, statements_unavailable, slow_queries, unused_indexes,
)
"""Every rule, in report order within a severity."""


def evaluate(stats: MonitorStats, canary: CanaryResult | None, *, dead_tuple_ratio: float, recall_floor: float,
             pool_busy_ratio: float, outbox_backlog_age_s: float, reindex_growth_ratio: float,
             slow_query_ms: float, index_type: str, ef_search: int, ivfflat_probes: int | None) -> list[Finding]:
    """Turn statistics into findings, most severe first; each message says what to do."""
    thresholds = Thresholds(dead_tuple_ratio=dead_tuple_ratio, recall_floor=recall_floor,
                            pool_busy_ratio=pool_busy_ratio, outbox_backlog_age_s=outbox_backlog_age_s,
                            reindex_growth_ratio=reindex_growth_ratio, slow_query_ms=slow_query_ms,
                            index_type=index_type, ef_search=ef_search, ivfflat_probes=ivfflat_probes)
    findings = [finding for rule in RULES for finding in rule(stats, canary, thresholds)]
    findings.sort(key=lambda f: _ORDER[f.severity])
    return findings


def health_score(findings: Sequence[Finding]) -> int:
    return max(0, 100 - sum(_PENALTY[f.severity] for f in findings))
