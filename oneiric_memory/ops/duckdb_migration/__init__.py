"""Migration of Session-Buddy's DuckDB memories into PostgreSQL: inventory, resumable runs, validation, rollback.

Named parts: :mod:`.source` (the read-only DuckDB files), :mod:`.mapping` (a source row -> a MemoryRecord),
:mod:`.reports` (what a run, a validation and a rollback report), :mod:`.validation` (source vs store) and
:mod:`.runner` (:class:`DuckDBMigration`). The ledger's SQL is the store's
(:mod:`oneiric_memory.adapters.pgvector.migration_ledger`).
"""

from oneiric_memory.ops.duckdb_migration.reports import (
    ColumnInfo,
    Inventory,
    MigrationReport,
    ProgressEvent,
    RollbackReport,
    RowIssue,
    RunSummary,
    TableInventory,
    TableReport,
    TableValidation,
    ValidationReport,
)
from oneiric_memory.ops.duckdb_migration.runner import BULK_LOAD_ROWS, DuckDBMigration

__all__ = [
    "BULK_LOAD_ROWS",
    "ColumnInfo",
    "DuckDBMigration",
    "Inventory",
    "MigrationReport",
    "ProgressEvent",
    "RollbackReport",
    "RowIssue",
    "RunSummary",
    "TableInventory",
    "TableReport",
    "TableValidation",
    "ValidationReport",
]
