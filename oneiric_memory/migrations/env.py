"""Alembic environment: runs on a connection handed over by :mod:`oneiric_memory.adapters.pgvector.migrator`.

The schema name, vector dimension and index options come from validated settings through
``config.attributes``; they are identifiers and numbers checked by pydantic, never user input.
"""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only through oneiric_memory.adapters.pgvector.migrator
    raise RuntimeError("run migrations with `oneiric-memory db upgrade`, which provides the connection")

schema = config.attributes["schema"]
context.configure(
    connection=connection,
    target_metadata=None,
    version_table="alembic_version",
    version_table_schema=schema,
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
