"""What the DuckDB migration reports: inventories, progress, per-table results, validation, rollback, runs."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

__all__ = ["ColumnInfo", "Inventory", "MigrationReport", "ProgressEvent", "RollbackReport", "RowIssue", "RunIdJson",
           "RunSummary", "TableCounts", "TableInventory", "TableReport", "TableValidation", "ValidationReport"]




@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    data_type: str


@dataclass(slots=True)
class TableInventory:
    """One table found in a source file, and what the migration does with it."""

    file: str
    path: str
    name: str
    rows: int
    columns: list[ColumnInfo]
    migrate: bool
    maps_to: str
    split: dict[str, int] = field(default_factory=dict)
    """Rows per target memory_type (``{"insight": 3, "agent": 10}``) for migrated tables."""


@dataclass(slots=True)
class Inventory:
    """What ``--dry-run`` prints: files, tables, rows, columns and the mapping plan."""

    path: str
    size_bytes: int
    kg_path: str | None
    kg_size_bytes: int | None
    families: list[str]
    tables: list[TableInventory]
    notes: list[str] = field(default_factory=list)

    @property
    def rows_to_migrate(self) -> int:
        return sum(table.rows for table in self.tables if table.migrate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """Sent after each committed batch (and at the start and end of each table)."""

    table: str
    phase: Literal["start", "batch", "done"]
    done: int
    total: int
    added: int
    errors: int


@dataclass(frozen=True, slots=True)
class RowIssue:
    """A source row that was not migrated, and why (it is counted and recorded, never fatal)."""

    table: str
    source_id: str | None
    reason: str


@dataclass(slots=True)
class TableCounts:
    """What both per-table reports start with: the source table, its file role and its row count."""

    table: str
    file: str
    source_rows: int = 0


class RunIdJson:
    """``to_dict`` for the reports of one run: their fields as JSON-ready data, the run id as text."""

    __slots__ = ()
    run_id: uuid.UUID | None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass
        data["run_id"] = None if self.run_id is None else str(self.run_id)
        return data


@dataclass(slots=True)
class TableReport(TableCounts):
    """One table's migration: how many rows were new, already there, deduplicated or refused."""

    maps_to: str = field(kw_only=True)
    to_migrate: int = 0
    already_migrated: int = 0
    added: int = 0
    deduplicated: int = 0
    errors: int = 0
    pending_embeddings: int = 0
    target_rows: int = 0
    resumed_from: str | None = None


@dataclass(slots=True)
class MigrationReport(RunIdJson):
    """The outcome of :meth:`DuckDBMigration.run` (also stored per table in ``migration_runs.counts``)."""

    run_id: uuid.UUID | None
    status: Literal["completed", "failed", "dry_run"]
    source_path: str
    kg_path: str | None
    project: str | None
    source_file_id: str
    kg_file_id: str | None
    dry_run: bool
    bulk_load: bool
    resumed: bool
    embedding_model: str
    tables: list[TableReport]
    issues: list[RowIssue] = field(default_factory=list)
    issues_omitted: int = 0
    elapsed_s: float = 0.0
    inventory: Inventory | None = None

    @property
    def added(self) -> int:
        return sum(t.added for t in self.tables)

    @property
    def skipped(self) -> int:
        """Rows not written by this run because they were migrated before."""
        return sum(t.already_migrated for t in self.tables)

    @property
    def errors(self) -> int:
        return sum(t.errors for t in self.tables)

    @property
    def pending_embeddings(self) -> int:
        return sum(t.pending_embeddings for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        data = RunIdJson.to_dict(self)
        data.update(added=self.added, skipped=self.skipped, errors=self.errors,
                    pending_embeddings=self.pending_embeddings)
        return data


@dataclass(slots=True)
class TableValidation(TableCounts):
    """One table's check, source against target: missing, extra, orphaned rows and content mismatches."""

    migrated: int = 0
    skipped: int = 0
    unkeyed: int = 0
    missing: int = 0
    extra: int = 0
    orphaned: int = 0
    hash_checked: int = 0
    hash_mismatches: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.orphaned or self.hash_mismatches)


@dataclass(slots=True)
class ValidationReport(RunIdJson):
    """Source vs target per table. ``ok`` is False on any count or content mismatch (the CLI exits 1)."""

    run_id: uuid.UUID
    ok: bool
    sample: int | None
    tables: list[TableValidation]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = RunIdJson.to_dict(self)
        for table, item in zip(data["tables"], self.tables, strict=True):
            table["ok"] = item.ok
        return data


@dataclass(frozen=True, slots=True)
class RollbackReport(RunIdJson):
    run_id: uuid.UUID
    previous_status: str
    status: str
    memories_deleted: int
    memories_kept_shared: int
    items_deleted: int


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: uuid.UUID
    status: str
    source_path: str
    kg_path: str | None
    project: str | None
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    counts: dict[str, Any]


