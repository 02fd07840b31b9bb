"""Writes: a batch becomes staging rows (pure), then one transaction merges it into ``memories``.

The transaction COPYs the staging rows into a temporary table, ``INSERT ... ON CONFLICT (project,
memory_type, content_hash)`` merges them in key order (concurrent batches lock rows in the same order, so they
cannot deadlock), and the insights found in the batch enter the outbox in the same transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from oneiric_memory.adapters.pgvector.connection import copy_records
from oneiric_memory.adapters.pgvector.schema import SchemaNames
from oneiric_memory.insights import Insight
from oneiric_memory.records import MemoryRecord, content_hash

__all__ = ["STAGING_COLUMNS", "conflict_clause", "enqueue_insights", "staging_rows", "upsert_batch"]

STAGING_COLUMNS = ("ord", "id", "project", "memory_type", "source_system", "agent_id", "workflow_id", "repo_id",
                   "session_id", "content", "content_hash", "metadata", "embedding", "embedding_model",
                   "created_at", "expires_at", "copies")


def staging_rows(records: Sequence[MemoryRecord], *, mode: str = "keep_first", store_model: str | None = None,
                 keys: Sequence[str] | None = None) -> tuple[list[tuple[Any, ...]], list[int]]:
    """One staging row per dedup key; ``first_of[i]`` is the input index whose row stands for record ``i``.

    A later copy inside the batch acts like a copy from a later batch: under ``keep_first`` it only fills a
    pending embedding; under ``refresh`` it merges its metadata and replaces embedding and expiry. An
    embedding without a model takes ``store_model`` (the model the store is bound to). ``keys[i]`` replaces
    the content hash as record ``i``'s dedup key (ingested repository chunks are keyed by their place, see
    ``rag_index``), so equal text in two files stays two rows.
    """
    staged: dict[int, dict[str, Any]] = {}
    seen: dict[tuple[str, str, str], int] = {}
    first_of: list[int] = []
    for index, record in enumerate(records):
        digest = keys[index] if keys is not None else content_hash(record.content)
        key = (record.project, record.memory_type, digest)
        embedding = [float(x) for x in record.embedding] if record.embedding is not None else None
        model = (record.embedding_model or store_model) if embedding is not None else None
        first = seen.get(key)
        if first is not None:
            first_of.append(first)
            row = staged[first]
            row["copies"] += 1
            if embedding is not None and (mode == "refresh" or row["embedding"] is None):
                row["embedding"], row["embedding_model"] = embedding, model
            if mode == "refresh":
                row["metadata"] = {**row["metadata"], **record.metadata}
                row["expires_at"] = record.expires_at
            continue
        seen[key] = index
        first_of.append(index)
        staged[index] = {
            "ord": index, "id": record.id or uuid.uuid4(), "project": record.project,
            "memory_type": record.memory_type, "source_system": record.source_system, "agent_id": record.agent_id,
            "workflow_id": record.workflow_id, "repo_id": record.repo_id, "session_id": record.session_id,
            "content": record.content, "content_hash": digest, "metadata": dict(record.metadata),
            "embedding": embedding, "embedding_model": model, "created_at": record.created_at,
            "expires_at": record.expires_at, "copies": 1,
        }
    rows = [tuple(json.dumps(row[c]) if c == "metadata" else row[c] for c in STAGING_COLUMNS)
            for row in staged.values()]
    return rows, first_of


def conflict_clause(mode: str) -> str:
    """``ON CONFLICT`` action: ``refresh`` merges metadata and replaces embedding and expiry; ``keep_first``
    keeps the stored copy but completes it when it is still pending. Every duplicate is recorded
    (``seen_count``, ``last_seen_at``)."""
    seen = "seen_count = m.seen_count + EXCLUDED.seen_count, last_seen_at = now()"
    if mode == "refresh":
        return (f"DO UPDATE SET {seen}, embedding = coalesce(EXCLUDED.embedding, m.embedding), "
                "embedding_model = CASE WHEN EXCLUDED.embedding IS NULL THEN m.embedding_model "
                "ELSE EXCLUDED.embedding_model END, metadata = m.metadata || EXCLUDED.metadata, "
                "expires_at = EXCLUDED.expires_at, updated_at = now()")
    fills = "m.embedding IS NULL AND EXCLUDED.embedding IS NOT NULL"
    return (f"DO UPDATE SET {seen}, "
            f"embedding = CASE WHEN {fills} THEN EXCLUDED.embedding ELSE m.embedding END, "
            f"embedding_model = CASE WHEN {fills} THEN EXCLUDED.embedding_model ELSE m.embedding_model END, "
            f"updated_at = CASE WHEN {fills} THEN now() ELSE m.updated_at END")


async def upsert_batch(connection: asyncpg.Connection, names: SchemaNames, vector_sql_type: str,
                       rows: list[tuple[Any, ...]], mode: str, records: Sequence[MemoryRecord],
                       insights: Sequence[Sequence[Insight]] | None) -> list[asyncpg.Record]:
    """Merge staging ``rows`` (and enqueue ``insights``) inside the caller's transaction.

    Returns ``(ord, id, project, inserted)`` per staging row.
    """
    memories = names.table("memories")
    await connection.execute(
        f"CREATE TEMP TABLE om_staging (ord integer, id uuid, project text, memory_type text, "
        f"source_system text, agent_id text, workflow_id text, repo_id text, session_id text, content text, "
        f"content_hash text, metadata text, embedding {vector_sql_type}, embedding_model text, "
        f"created_at timestamptz, expires_at timestamptz, copies integer) ON COMMIT DROP")
    await copy_records(connection, "om_staging", records=rows, columns=STAGING_COLUMNS)
    await connection.execute(
        f"INSERT INTO {memories} AS m (id, project, memory_type, source_system, agent_id, workflow_id, "
        "repo_id, session_id, content, content_hash, metadata, embedding, embedding_model, created_at, "
        "updated_at, expires_at, seen_count) "
        "SELECT id, project, memory_type, source_system, agent_id, workflow_id, repo_id, session_id, content, "
        "content_hash, metadata::jsonb, embedding, embedding_model, coalesce(created_at, now()), now(), "
        # key order: concurrent batches lock their rows in the same order, so they cannot deadlock
        f"expires_at, copies FROM om_staging ORDER BY project, memory_type, content_hash "
        f"ON CONFLICT (project, memory_type, content_hash) {conflict_clause(mode)}")
    result = await connection.fetch(
        f"SELECT s.ord, m.id, m.project, (m.id = s.id) AS inserted FROM om_staging s JOIN {memories} m "
        "ON m.project = s.project AND m.memory_type = s.memory_type AND m.content_hash = s.content_hash")
    if insights is not None:
        await enqueue_insights(connection, names, result, records, insights)
    return list(result)


async def enqueue_insights(connection: asyncpg.Connection, names: SchemaNames, result: Sequence[asyncpg.Record],
                           records: Sequence[MemoryRecord], insights: Sequence[Sequence[Insight]]) -> None:
    """Queue each record's insights in the outbox, attached to its memory (a duplicate never enqueues twice)."""
    id_of = {row["ord"]: row["id"] for row in result}
    payload: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for index, items in enumerate(insights):
        if not items:
            continue
        record = records[index]
        memory_id = id_of.get(index)
        if memory_id is None:  # a duplicate inside the batch: attach to its first copy
            first = next(i for i, r in enumerate(records)
                         if (r.project, r.memory_type, content_hash(r.content))
                         == (record.project, record.memory_type, content_hash(record.content)))
            memory_id = id_of[first]
        for item in items:
            if (record.project, item.insight_id) in seen:
                continue
            seen.add((record.project, item.insight_id))
            payload.append({"project": record.project, "insight_id": item.insight_id,
                            "memory_id": str(memory_id), "content": item.content,
                            "insight_type": item.insight_type, "topics": list(item.topics)})
    if payload:
        outbox = names.table("insight_outbox")
        await connection.execute(
            f"INSERT INTO {names.table('insight_outbox')} (project, insight_id, memory_id, content, insight_type, "
            "topics) SELECT x.project, x.insight_id, x.memory_id, x.content, x.insight_type, "
            "ARRAY(SELECT jsonb_array_elements_text(x.topics)) "
            "FROM jsonb_to_recordset($1::text::jsonb) AS x(project text, insight_id text, memory_id uuid, "
            "content text, insight_type text, topics jsonb) ON CONFLICT (project, insight_id) DO UPDATE SET "
            # remembered again while its tombstone waits: deliver it again instead of deleting it; or the project
            # remembers an insight it so far held as a shared copy: the row becomes its own (an un-share of the
            # original no longer withdraws it), delivered as it was
            f"kind = 'deliver', memory_id = EXCLUDED.memory_id, source_project = NULL, content = EXCLUDED.content, "
            f"insight_type = EXCLUDED.insight_type, topics = EXCLUDED.topics, "
            f"status = CASE WHEN {outbox}.kind = 'delete' THEN 'pending' ELSE {outbox}.status END, "
            f"attempts = CASE WHEN {outbox}.kind = 'delete' THEN 0 ELSE {outbox}.attempts END, "
            f"last_error = CASE WHEN {outbox}.kind = 'delete' THEN NULL ELSE {outbox}.last_error END, "
            f"next_attempt_at = CASE WHEN {outbox}.kind = 'delete' THEN now() ELSE {outbox}.next_attempt_at END "
            f"WHERE {outbox}.kind = 'delete' OR {outbox}.source_project IS NOT NULL",
            json.dumps(payload))
