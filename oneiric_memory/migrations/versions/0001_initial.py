"""Initial schema: memories, embedding meta, access stats, insight outbox, RAG ingestions.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import context, op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

FILTER_COLUMNS = ("agent_id", "workflow_id", "repo_id", "session_id", "source_system")


def _attrs() -> dict[str, object]:
    return dict(context.config.attributes)


def upgrade() -> None:
    a = _attrs()
    s = a["schema"]
    dim = int(a["dimension"])  # type: ignore[call-overload]
    vtype = a["vector_type"]
    tsconfig = a["text_search_config"]
    # A vector stored PLAIN never leaves the heap (no TOAST detour on every exact scan); content is
    # TOASTed instead. Too-wide vectors fall back to MAIN so a row still fits an 8 KB page.
    width = dim * (2 if vtype == "halfvec" else 4)
    storage = "PLAIN" if width <= 4000 else "MAIN"
    op.execute(f'CREATE SCHEMA IF NOT EXISTS "{s}"')
    op.execute(f"""
        CREATE TABLE "{s}".memories (
            id uuid NOT NULL DEFAULT gen_random_uuid(),
            project text NOT NULL DEFAULT 'default',
            memory_type text NOT NULL
                CONSTRAINT memories_memory_type_check CHECK (memory_type IN ('agent','rag','workflow','insight')),
            source_system text,
            agent_id text,
            workflow_id text,
            repo_id text,
            session_id text,
            content text NOT NULL,
            content_hash text NOT NULL CONSTRAINT memories_content_hash_check CHECK (content_hash ~ '^[0-9a-f]{{64}}$'),
            metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb
                CONSTRAINT memories_metadata_object CHECK (jsonb_typeof(metadata) = 'object'),
            embedding {vtype}({dim}),
            embedding_model text,
            tsv tsvector GENERATED ALWAYS AS (to_tsvector('{tsconfig}'::regconfig, left(content, 100000))) STORED,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz,
            CONSTRAINT memories_pkey PRIMARY KEY (project, id),
            CONSTRAINT memories_dedup_key UNIQUE (project, memory_type, content_hash)
        )
    """)
    op.execute(f'ALTER TABLE "{s}".memories ALTER COLUMN embedding SET STORAGE {storage}')
    op.execute(f'CREATE INDEX memories_id_idx ON "{s}".memories (id)')
    op.execute(f'CREATE INDEX memories_type_created_idx ON "{s}".memories (memory_type, created_at)')
    op.execute(f'CREATE INDEX memories_project_created_idx ON "{s}".memories (project, created_at)')
    op.execute(f'CREATE INDEX memories_created_idx ON "{s}".memories (created_at)')
    for column in FILTER_COLUMNS:
        op.execute(f'CREATE INDEX memories_{column}_idx ON "{s}".memories ({column}) WHERE {column} IS NOT NULL')
    op.execute(f'CREATE INDEX memories_expires_idx ON "{s}".memories (expires_at) WHERE expires_at IS NOT NULL')
    op.execute(f'CREATE INDEX memories_pending_idx ON "{s}".memories (created_at) WHERE embedding IS NULL')
    op.execute(f'CREATE INDEX memories_tsv_idx ON "{s}".memories USING gin (tsv)')
    op.execute(f'CREATE INDEX memories_metadata_idx ON "{s}".memories USING gin (metadata jsonb_path_ops)')
    if a["index_type"] == "hnsw":
        op.execute(
            f'CREATE INDEX memories_embedding_hnsw ON "{s}".memories USING hnsw (embedding {vtype}_cosine_ops) '
            f'WITH (m = {int(a["hnsw_m"])}, ef_construction = {int(a["hnsw_ef_construction"])})'  # type: ignore[call-overload]
        )
    # IVFFlat is built by `oneiric-memory maintain reindex` once rows exist: on an empty table it clusters nothing.

    op.execute(f"""
        CREATE TABLE "{s}".embedding_meta (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            model text,
            dimension integer NOT NULL,
            vector_type text NOT NULL,
            index_built_rows bigint NOT NULL DEFAULT 0,
            index_built_at timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute(f"INSERT INTO \"{s}\".embedding_meta (dimension, vector_type) VALUES ({dim}, '{vtype}')")

    op.execute(f"""
        CREATE TABLE "{s}".memory_access (
            project text NOT NULL,
            memory_id uuid NOT NULL,
            access_count bigint NOT NULL DEFAULT 0,
            last_accessed_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT memory_access_pkey PRIMARY KEY (project, memory_id),
            CONSTRAINT memory_access_memory_fk FOREIGN KEY (project, memory_id)
                REFERENCES "{s}".memories (project, id) ON DELETE CASCADE
        )
    """)

    op.execute(f"""
        CREATE TABLE "{s}".insight_outbox (
            project text NOT NULL,
            insight_id text NOT NULL,
            memory_id uuid,
            content text NOT NULL,
            insight_type text NOT NULL DEFAULT 'general',
            topics text[] NOT NULL DEFAULT '{{}}',
            status text NOT NULL DEFAULT 'pending'
                CONSTRAINT insight_outbox_status_check CHECK (status IN ('pending','delivered','failed')),
            attempts integer NOT NULL DEFAULT 0,
            last_error text,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            created_at timestamptz NOT NULL DEFAULT now(),
            delivered_at timestamptz,
            delivered_ref text,
            CONSTRAINT insight_outbox_pkey PRIMARY KEY (project, insight_id)
        )
    """)
    op.execute(f'CREATE INDEX insight_outbox_due_idx ON "{s}".insight_outbox (next_attempt_at) '
               "WHERE status = 'pending'")
    op.execute(f'CREATE INDEX insight_outbox_status_idx ON "{s}".insight_outbox (status, created_at)')

    op.execute(f"""
        CREATE TABLE "{s}".rag_ingestions (
            project text NOT NULL,
            id uuid NOT NULL DEFAULT gen_random_uuid(),
            repo_id text NOT NULL,
            status text NOT NULL DEFAULT 'running'
                CONSTRAINT rag_ingestions_status_check CHECK (status IN ('running','completed','failed')),
            documents integer NOT NULL DEFAULT 0,
            chunks integer NOT NULL DEFAULT 0,
            chunks_new integer NOT NULL DEFAULT 0,
            chunks_duplicate integer NOT NULL DEFAULT 0,
            error text,
            started_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            CONSTRAINT rag_ingestions_pkey PRIMARY KEY (project, id)
        )
    """)
    op.execute(f'CREATE INDEX rag_ingestions_repo_idx ON "{s}".rag_ingestions (repo_id, started_at)')


def downgrade() -> None:
    s = _attrs()["schema"]
    for table in ("rag_ingestions", "insight_outbox", "memory_access", "embedding_meta", "memories"):
        op.execute(f'DROP TABLE IF EXISTS "{s}".{table}')
