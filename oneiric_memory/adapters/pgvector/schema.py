"""The schema's names: this package's tables, quoting, and the embedding-meta check at start-up.

Identifiers are never taken from input: table names are the fixed names below and the schema name is a
validated setting. Adding a table means a migration and an entry in :data:`PACKAGE_TABLES`, nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oneiric_memory.errors import SchemaMismatch

__all__ = [
    "MIGRATION_TABLES",
    "PACKAGE_TABLES",
    "SchemaNames",
    "check_meta",
    "quote_ident",
    "quote_literal",
]

PACKAGE_TABLES: tuple[str, ...] = ("memories", "memory_access", "insight_outbox", "rag_ingestions", "rag_files",
                                   "embedding_meta", "project_groups", "project_group_members")
"""The tables maintenance vacuums and monitoring reports on (and slow statements are matched against)."""

MIGRATION_TABLES: tuple[str, ...] = ("migration_runs", "migration_items", "migration_checkpoints")
"""The DuckDB migration's ledger (revision 0002)."""


def quote_ident(identifier: str) -> str:
    """A double-quoted SQL identifier (PostgreSQL and DuckDB alike)."""
    return '"' + identifier.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A SQL string literal; only ever used for setting names and values from settings, never for input."""
    return "'" + value.replace("'", "''") + "'"


class SchemaNames:
    """Quoted, schema-qualified names of one schema's tables and indexes."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.quoted_schema = quote_ident(schema)

    def table(self, name: str) -> str:
        """Schema-qualified name of one of this package's tables (fixed names, validated schema)."""
        return f"{self.quoted_schema}.{quote_ident(name)}"

    def index(self, name: str) -> str:
        """Schema-qualified name of an index found in the catalog."""
        return f"{self.quoted_schema}.{quote_ident(name)}"


def check_meta(row: Mapping[str, Any] | None, *, names: SchemaNames, dimension: int, vector_type: str) -> str | None:
    """Refuse a meta row that disagrees with the settings; return the bound embedding model (or None)."""
    if row is None:
        raise SchemaMismatch(f"{names.table('embedding_meta')} is empty: run `oneiric-memory db upgrade`")
    if row["dimension"] != dimension or row["vector_type"] != vector_type:
        raise SchemaMismatch(
            f"schema {names.schema!r} stores {row['vector_type']}({row['dimension']}) vectors but the settings ask "
            f"for {vector_type}({dimension}): changing the dimension is a migration — use another "
            "postgres.db_schema, or re-create this one with `oneiric-memory db downgrade base` then "
            "`db upgrade` (this deletes its memories)",
            stored_dimension=row["dimension"], configured_dimension=dimension)
    model = row["model"]
    return None if model is None else str(model)
