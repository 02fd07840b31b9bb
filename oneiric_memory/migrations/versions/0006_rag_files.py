"""Repository ingestion: ``rag_files`` (one row per ingested file) and a fuller ``rag_ingestions`` record.

``rag_files`` holds each file's content hash and the ids of its chunks (rows of ``memories``). It is written in
the same transaction as the chunks, so a rerun after a kill trusts it: unchanged files are skipped, a changed
file's chunks are replaced by id, a deleted file's chunks are removed, a renamed file's rows are moved.
``rag_ingestions`` gains the root, counts, per-phase timings and per-file errors of a run.

Revision ID: 0006_rag_files
Revises: 0004_outbox_tombstones
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import context, op

revision = "0006_rag_files"
down_revision = "0004_outbox_tombstones"
branch_labels = None
depends_on = None


def _schema() -> str:
    # Validated by the settings model (lower-case identifier), never user input.
    return str(context.config.attributes["schema"])


def upgrade() -> None:
    s = _schema()
    op.execute(f"""
        CREATE TABLE "{s}".rag_files (
            project text NOT NULL,
            repo_id text NOT NULL,
            path text NOT NULL,
            file_hash text NOT NULL CONSTRAINT rag_files_hash_check CHECK (file_hash ~ '^[0-9a-f]{{64}}$'),
            language text NOT NULL,
            bytes bigint NOT NULL,
            chunk_ids uuid[] NOT NULL DEFAULT '{{}}',
            ingestion_id uuid,
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT rag_files_pkey PRIMARY KEY (project, repo_id, path)
        )
    """)
    op.execute(f'ALTER TABLE "{s}".rag_ingestions ADD COLUMN root text, '
               "ADD COLUMN counts jsonb NOT NULL DEFAULT '{}'::jsonb, "
               "ADD COLUMN timings jsonb NOT NULL DEFAULT '{}'::jsonb, "
               "ADD COLUMN errors jsonb NOT NULL DEFAULT '[]'::jsonb")


def downgrade() -> None:
    s = _schema()
    op.execute(f'ALTER TABLE "{s}".rag_ingestions DROP COLUMN root, DROP COLUMN counts, DROP COLUMN timings, '
               "DROP COLUMN errors")
    op.execute(f'DROP TABLE IF EXISTS "{s}".rag_files')
