"""Alembic migrations on the real embedded PostgreSQL, and how vectors are stored (never TOASTed)."""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path

import asyncpg
import pytest

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.adapters.pgvector.migrator import Migrator
from oneiric_memory.errors import SchemaMismatch
from oneiric_memory.records import MemoryRecord
from tests.foundation_fixtures import admin_connection, opened_store, unit_vector
from tests.support import make_settings

pytestmark = pytest.mark.asyncio

TABLES = ("memories", "embedding_meta", "memory_access", "insight_outbox", "rag_ingestions")
INDEXES = ("memories_embedding_hnsw", "memories_tsv_idx", "memories_agent_id_idx", "memories_session_id_idx",
           "memories_project_created_idx", "memories_type_created_idx", "memories_dedup_key",
           "memories_metadata_idx", "insight_outbox_due_idx", "rag_ingestions_repo_idx")


async def _existing(connection: asyncpg.Connection, schema: str, names: tuple[str, ...]) -> set[str]:
    rows = await connection.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = ANY($2::text[])", schema, list(names))
    return {row["relname"] for row in rows}


async def _leftovers(connection: asyncpg.Connection, schema: str) -> set[str]:
    """Relations (tables, indexes, sequences) in ``schema`` other than Alembic's own version table."""
    rows = await connection.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
        "AND c.relname NOT IN ('alembic_version', 'alembic_version_pkc')", schema)
    return {row["relname"] for row in rows}


async def test_upgrade_downgrade_upgrade(store: PgvectorMemoryStore, pg_data_dir: Path) -> None:
    schema = f"m_{uuid.uuid4().hex[:12]}"
    settings = make_settings(pg_data_dir, schema=schema)
    migrator = Migrator(store.connect_params, settings.postgres)
    revisions = migrator.revisions()
    head = migrator.head_revision()
    assert revisions[0] == "0001_initial" and revisions[-1] == head
    admin = await admin_connection(store)
    try:
        assert await migrator.current() is None
        assert await admin.fetchval("SELECT to_regnamespace($1)", schema) is None  # `current` creates nothing

        assert await migrator.upgrade("0001_initial") == "0001_initial"
        assert await _existing(admin, schema, TABLES) == set(TABLES)
        assert await _existing(admin, schema, INDEXES) == set(INDEXES)
        meta = await admin.fetchrow(f'SELECT model, dimension, vector_type FROM "{schema}".embedding_meta')
        assert dict(meta) == {"model": None, "dimension": 768, "vector_type": "halfvec"}
        assert await migrator.upgrade() == head
        assert await migrator.current() == head
        await migrator.require_head()
        assert await migrator.upgrade() == head  # idempotent
        at_head = await _leftovers(admin, schema)

        # every revision's downgrade, one step at a time, ends with nothing left
        for previous in [*reversed(revisions[:-1]), None]:
            assert await migrator.downgrade(previous or "base") == previous
            assert await migrator.current() == previous
        assert await _leftovers(admin, schema) == set()
        with pytest.raises(SchemaMismatch, match="oneiric-memory db upgrade"):
            await migrator.require_head()

        assert await migrator.upgrade() == head
        assert await migrator.current() == head
        assert await _leftovers(admin, schema) == at_head
        assert await _existing(admin, schema, TABLES) == set(TABLES)
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


async def test_a_store_without_auto_migrate_refuses_an_unmigrated_schema(
        store: PgvectorMemoryStore, pg_data_dir: Path) -> None:
    schema = f"m_{uuid.uuid4().hex[:12]}"
    unmigrated = PgvectorMemoryStore(make_settings(pg_data_dir, schema=schema, postgres={"auto_migrate": False}))
    try:
        with pytest.raises(SchemaMismatch, match="oneiric-memory db upgrade"):
            await unmigrated.init()
    finally:
        await unmigrated.cleanup()
        async with store.gate.acquire() as connection:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def _storage(connection: asyncpg.Connection, table: str) -> str:
    return str(await connection.fetchval(
        "SELECT attstorage::text FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'embedding'", table))


async def test_halfvec_column_is_plain_and_stays_inline_next_to_large_content(store: PgvectorMemoryStore) -> None:
    """PLAIN storage keeps the vector in the heap tuple; the TOAST relation holds only content (and its
    tsvector). A control table with the type's default storage shows the same row *would* TOAST the vector."""
    memories = store.table("memories")
    medium = secrets.token_urlsafe(750)  # ~1 KB, incompressible: smaller than the 1,544-byte vector
    large = secrets.token_urlsafe(6000)  # ~8 KB
    result = await store.upsert_many([
        MemoryRecord(content="short content", embedding=unit_vector(1)),
        MemoryRecord(content=medium, embedding=unit_vector(2)),
        MemoryRecord(content=large, embedding=unit_vector(3)),
    ])
    async with store.gate.acquire() as connection:
        assert await _storage(connection, memories) == "p"
        rows = await connection.fetch(
            f"SELECT id, pg_column_size(embedding) AS vector_bytes, "
            f"pg_column_toast_chunk_id(embedding) AS vector_chunk, pg_column_toast_chunk_id(content) AS content_chunk, "
            f"pg_column_toast_chunk_id(tsv) AS tsv_chunk FROM {memories}")
        by_id = {row["id"]: row for row in rows}
        for memory_id in result.ids:
            assert by_id[memory_id]["vector_bytes"] == 768 * 2 + 8  # inline, uncompressed halfvec
            assert by_id[memory_id]["vector_chunk"] is None
        assert by_id[result.ids[0]]["content_chunk"] is None
        assert by_id[result.ids[1]]["content_chunk"] is not None
        assert by_id[result.ids[2]]["content_chunk"] is not None
        toast = await connection.fetchval(f"SELECT reltoastrelid::regclass::text FROM pg_class "
                                          f"WHERE oid = '{memories}'::regclass")
        chunks = {row[0] for row in await connection.fetch(f"SELECT DISTINCT chunk_id FROM {toast}")}
        expected = {row[k] for row in rows for k in ("content_chunk", "tsv_chunk") if row[k] is not None}
        assert chunks == expected  # every TOAST chunk belongs to content or tsv, none to a vector
        toast_bytes = await connection.fetchval("SELECT pg_relation_size($1::regclass)", toast)
        assert toast_bytes > 0

        control = store.table("toast_control")
        await connection.execute(f"CREATE TABLE {control} (content text, embedding halfvec(768))")
        await connection.execute(f"INSERT INTO {control} SELECT content, embedding FROM {memories}")
        assert await _storage(connection, control) != "p"
        control_rows = await connection.fetch(
            f"SELECT content, pg_column_toast_chunk_id(embedding) AS vector_chunk FROM {control}")
        toasted = {row["content"] for row in control_rows if row["vector_chunk"] is not None}
        assert medium in toasted  # default storage moves the vector out when the content is the smaller value


async def test_float32_vector_column_is_plain_too(pg_data_dir: Path, store: PgvectorMemoryStore) -> None:
    settings = make_settings(pg_data_dir, postgres={"vector_type": "vector"})
    async with opened_store(settings) as float_store:
        result = await float_store.upsert_many([MemoryRecord(content="float32 row", embedding=unit_vector(5))])
        async with float_store.gate.acquire() as connection:
            memories = float_store.table("memories")
            assert await _storage(connection, memories) == "p"
            row = await connection.fetchrow(
                f"SELECT pg_column_size(embedding) AS size, pg_column_toast_chunk_id(embedding) AS chunk "
                f"FROM {memories} WHERE id = $1", result.ids[0])
        assert row["size"] == 768 * 4 + 8
        assert row["chunk"] is None
