"""Cross-project memory: project groups, shares, and shared copies of insights in the outbox.

- ``project_groups`` / ``project_group_members``: a named set of projects (membership cascades with the group).
- ``memories.shared_with``: who else may read the memory, as ``p:<project>`` and ``g:<group>`` entries. It lives on
  the row so the read rule ("own memories, plus what is shared with me or my groups") is one predicate on the
  row itself (``project = ANY(...) OR shared_with && ...``), served by the B-tree on ``project`` and a GIN index
  here; a forgotten memory takes its shares with it. ``ADD COLUMN ... DEFAULT '{}'`` is catalogue-only.
- ``insight_outbox.source_project``: a row delivering a shared insight to a *target* project (``project`` is the
  target, ``memory_id`` the shared memory, ``source_project`` its owner), so un-sharing and forgetting find and
  tombstone the target copies.

Downgrade drops the shares and groups, and the outbox rows of target copies (pending tombstones included): copies
already delivered stay in Session-Buddy, as with 0004's downgrade.

Numbered 0007 (not the 0005 first planned): repository RAG's 0006 landed first on top of 0004, and a database
already at 0006 must still reach this revision, so it comes after 0006.

Revision ID: 0007_project_groups
Revises: 0006_rag_files
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import context, op

revision = "0007_project_groups"
down_revision = "0006_rag_files"
branch_labels = None
depends_on = None


def _schema() -> str:
    # Validated by the settings model (lower-case identifier), never user input.
    return str(context.config.attributes["schema"])


def upgrade() -> None:
    s = _schema()
    op.execute(f"""
        CREATE TABLE "{s}".project_groups (
            name text NOT NULL CONSTRAINT project_groups_pkey PRIMARY KEY,
            description text NOT NULL DEFAULT '',
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute(f"""
        CREATE TABLE "{s}".project_group_members (
            group_name text NOT NULL,
            project text NOT NULL,
            added_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT project_group_members_pkey PRIMARY KEY (group_name, project),
            CONSTRAINT project_group_members_group_fk FOREIGN KEY (group_name)
                REFERENCES "{s}".project_groups (name) ON DELETE CASCADE
        )
    """)
    op.execute(f'CREATE INDEX project_group_members_project_idx ON "{s}".project_group_members (project)')
    op.execute(f"ALTER TABLE \"{s}\".memories ADD COLUMN shared_with text[] NOT NULL DEFAULT '{{}}'")
    op.execute(f'CREATE INDEX memories_shared_with_idx ON "{s}".memories USING gin (shared_with)')
    op.execute(f'ALTER TABLE "{s}".insight_outbox ADD COLUMN source_project text')
    op.execute(f'CREATE INDEX insight_outbox_source_idx ON "{s}".insight_outbox (source_project, memory_id) '
               "WHERE source_project IS NOT NULL")


def downgrade() -> None:
    s = _schema()
    op.execute(f'DROP INDEX IF EXISTS "{s}".insight_outbox_source_idx')
    op.execute(f'DELETE FROM "{s}".insight_outbox WHERE source_project IS NOT NULL')
    op.execute(f'ALTER TABLE "{s}".insight_outbox DROP COLUMN IF EXISTS source_project')
    op.execute(f'DROP INDEX IF EXISTS "{s}".memories_shared_with_idx')
    op.execute(f'ALTER TABLE "{s}".memories DROP COLUMN IF EXISTS shared_with')
    op.execute(f'DROP TABLE IF EXISTS "{s}".project_group_members')
    op.execute(f'DROP TABLE IF EXISTS "{s}".project_groups')
