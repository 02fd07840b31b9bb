"""Forgetting reaches Session-Buddy: an outbox row can be a tombstone (``kind = 'delete'``).

When a memory is forgotten, each of its outbox rows that may have reached Session-Buddy (delivered, or with a
delivery attempt) becomes a tombstone: its content is erased at once, and the relay deletes the insight from
Session-Buddy (then drops the row), retrying while Session-Buddy is down. Rows never attempted are deleted.
``insight_outbox_memory_idx`` finds a memory's rows without scanning the outbox.

Downgrade drops pending tombstones with the column: the insights they name stay in Session-Buddy.

Revision ID: 0004_outbox_tombstones
Revises: 0003_memory_seen
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import context, op

revision = "0004_outbox_tombstones"
down_revision = "0003_memory_seen"
branch_labels = None
depends_on = None


def _schema() -> str:
    # Validated by the settings model (lower-case identifier), never user input.
    return str(context.config.attributes["schema"])


def upgrade() -> None:
    s = _schema()
    op.execute(f'ALTER TABLE "{s}".insight_outbox ADD COLUMN kind text NOT NULL DEFAULT \'deliver\' '
               "CONSTRAINT insight_outbox_kind_check CHECK (kind IN ('deliver', 'delete'))")
    op.execute(f'CREATE INDEX insight_outbox_memory_idx ON "{s}".insight_outbox (project, memory_id)')


def downgrade() -> None:
    s = _schema()
    op.execute(f'DROP INDEX IF EXISTS "{s}".insight_outbox_memory_idx')
    op.execute(f'DELETE FROM "{s}".insight_outbox WHERE kind = \'delete\'')
    op.execute(f'ALTER TABLE "{s}".insight_outbox DROP COLUMN IF EXISTS kind')
