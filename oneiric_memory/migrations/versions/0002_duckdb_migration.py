"""Bookkeeping for ``oneiric-memory migrate-duckdb``: runs, per-row items and per-table checkpoints.

- ``migration_runs``: one row per run (source files, their sha256/size, target project, status, counts).
- ``migration_items``: one row per migrated (or skipped) source row, keyed by the memory's tenant and the
  source key ``(source_file_id, source_table, source_id)``; it makes reruns idempotent and rollback exact.
- ``migration_checkpoints``: run-independent resume point per source file and table.

Revision ID: 0002_duckdb_migration
Revises: 0001_initial
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import context, op

revision = "0002_duckdb_migration"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def _schema() -> str:
    # Validated by the settings model (lower-case identifier), never user input.
    return str(context.config.attributes["schema"])


def upgrade() -> None:
    s = _schema()
    op.execute(f"""
        CREATE TABLE "{s}".migration_runs (
            run_id uuid NOT NULL,
            source_path text NOT NULL,
            source_file_id text NOT NULL,
            source_sha256 text CONSTRAINT migration_runs_source_sha256_check
                CHECK (source_sha256 IS NULL OR source_sha256 ~ '^[0-9a-f]{{64}}$'),
            source_size bigint,
            kg_path text,
            kg_file_id text,
            kg_sha256 text CONSTRAINT migration_runs_kg_sha256_check
                CHECK (kg_sha256 IS NULL OR kg_sha256 ~ '^[0-9a-f]{{64}}$'),
            kg_size bigint,
            project text,
            status text NOT NULL DEFAULT 'running'
                CONSTRAINT migration_runs_status_check
                CHECK (status IN ('running', 'completed', 'failed', 'rolled_back')),
            counts jsonb NOT NULL DEFAULT '{{}}'::jsonb
                CONSTRAINT migration_runs_counts_object CHECK (jsonb_typeof(counts) = 'object'),
            options jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            error text,
            started_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            CONSTRAINT migration_runs_pkey PRIMARY KEY (run_id)
        )
    """)
    op.execute(f'CREATE INDEX migration_runs_source_idx ON "{s}".migration_runs (source_file_id, started_at)')

    # The memory's tenant (project) leads every key that references memories (Citus-friendly).
    op.execute(f"""
        CREATE TABLE "{s}".migration_items (
            project text NOT NULL,
            source_file_id text NOT NULL,
            source_table text NOT NULL,
            source_id text NOT NULL,
            run_id uuid NOT NULL,
            memory_id uuid,
            memory_type text,
            content_hash text CONSTRAINT migration_items_content_hash_check
                CHECK (content_hash IS NULL OR content_hash ~ '^[0-9a-f]{{64}}$'),
            inserted boolean NOT NULL DEFAULT false,
            status text NOT NULL DEFAULT 'migrated'
                CONSTRAINT migration_items_status_check CHECK (status IN ('migrated', 'skipped')),
            reason text,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT migration_items_pkey PRIMARY KEY (project, source_file_id, source_table, source_id),
            CONSTRAINT migration_items_memory_check CHECK (status = 'skipped' OR memory_id IS NOT NULL),
            CONSTRAINT migration_items_run_fk FOREIGN KEY (run_id)
                REFERENCES "{s}".migration_runs (run_id) ON DELETE CASCADE
        )
    """)
    op.execute(f'CREATE INDEX migration_items_run_idx ON "{s}".migration_items (run_id, inserted)')
    op.execute(f'CREATE INDEX migration_items_memory_idx ON "{s}".migration_items (project, memory_id) '
               "WHERE memory_id IS NOT NULL")
    op.execute(f'CREATE INDEX migration_items_source_idx ON "{s}".migration_items '
               "(source_file_id, source_table, source_id)")

    # target_project is the run's --project ('' = every row keeps its own project).
    op.execute(f"""
        CREATE TABLE "{s}".migration_checkpoints (
            target_project text NOT NULL,
            source_file_id text NOT NULL,
            source_table text NOT NULL,
            last_source_id text,
            rows_done bigint NOT NULL DEFAULT 0,
            run_id uuid,
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT migration_checkpoints_pkey PRIMARY KEY (target_project, source_file_id, source_table)
        )
    """)


def downgrade() -> None:
    s = _schema()
    for table in ("migration_checkpoints", "migration_items", "migration_runs"):
        op.execute(f'DROP TABLE IF EXISTS "{s}".{table}')
