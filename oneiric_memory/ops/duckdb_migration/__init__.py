"""Migration of Session-Buddy's DuckDB memories into PostgreSQL: inventory, resumable runs, validation, rollback."""

from oneiric_memory.ops.duckdb_migration.runner import (
    BULK_LOAD_ROWS,
    ColumnInfo,
    DuckDBMigration,
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
