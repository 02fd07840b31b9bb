"""What ``oneiric-memory stats`` and the recall canary measure: one frozen dataclass per view."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from oneiric_memory.adapters.pgvector.connection import PoolStats
from oneiric_memory.ops.reports import jsonable

__all__ = [
    "CanaryResult",
    "IndexStats",
    "MonitorStats",
    "OutboxStats",
    "SlowQuery",
    "StatementStats",
    "TableStats",
    "VectorIndexStats",
    "VectorStorage",
]


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
        data: dict[str, Any] = jsonable(asdict(self))
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
