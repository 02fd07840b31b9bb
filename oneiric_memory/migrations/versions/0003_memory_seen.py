"""Duplicates are recorded: how often a memory was written, and when it was last written again.

- ``memories.seen_count``: 1 on insert; every later write of the same (project, memory_type, content) adds the
  number of copies it carried (a batch holding the same text twice counts twice).
- ``memories.last_seen_at``: when a duplicate last arrived (``NULL`` until then: ``created_at`` is the first sight).

``ADD COLUMN ... DEFAULT 1`` with a constant default is a catalogue-only change (no table rewrite), so the
upgrade is instant on a large table; neither column is indexed, so duplicate updates stay HOT-eligible.

Revision ID: 0003_memory_seen
Revises: 0002_duckdb_migration
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import context, op

revision = "0003_memory_seen"
down_revision = "0002_duckdb_migration"
branch_labels = None
depends_on = None


def _schema() -> str:
    # Validated by the settings model (lower-case identifier), never user input.
    return str(context.config.attributes["schema"])


def upgrade() -> None:
    s = _schema()
    op.execute(f'ALTER TABLE "{s}".memories ADD COLUMN seen_count integer NOT NULL DEFAULT 1 '
               "CONSTRAINT memories_seen_count_check CHECK (seen_count >= 1), "
               "ADD COLUMN last_seen_at timestamptz")


def downgrade() -> None:
    s = _schema()
    op.execute(f'ALTER TABLE "{s}".memories DROP COLUMN IF EXISTS last_seen_at, DROP COLUMN IF EXISTS seen_count')
