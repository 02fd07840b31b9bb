"""The SQL of repository ingestion: which files are indexed (``rag_files``), their chunks' rows, and the run
records (``rag_ingestions``). The walk, the chunking and the embedding live in :mod:`oneiric_memory.rag`.

A chunk's dedup key (the ``content_hash`` column) is its place — repository, path and ordinal — not its text:
equal text in two files (licence headers, boilerplate) must stay two rows, or replacing one file would delete
the other's chunk. Every write of a file's chunks also writes its ``rag_files`` row in the same transaction, so
the table never points at missing rows after a kill, and a rerun can trust it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from oneiric_memory.adapters.pgvector.connection import run_with_retries
from oneiric_memory.adapters.pgvector.writes import staging_rows, upsert_batch
from oneiric_memory.records import MemoryRecord, content_hash

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector.store import PgvectorMemoryStore

__all__ = ["FileChunks", "IndexedFile", "RagIndex", "chunk_key"]


def chunk_key(repo_id: str, path: str, ordinal: int) -> str:
    """The dedup key of a repository chunk: sha256 of its place (64 hex digits, like a content hash)."""
    return hashlib.sha256(json.dumps(["rag-chunk", repo_id, path, ordinal]).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class IndexedFile:
    """A file as the last run left it. ``intact`` is false when one of its chunks was deleted since (forget)."""

    path: str
    file_hash: str
    chunks: int
    intact: bool


@dataclass(slots=True)
class FileChunks:
    """A file's new chunks (records already embedded or left pending), replacing whatever it had."""

    path: str
    file_hash: str
    language: str
    size: int
    records: list[MemoryRecord]


def _json(value: Any) -> Any:
    """jsonb as the pool decodes it (a codec may or may not be installed on the connection)."""
    return json.loads(value) if isinstance(value, str) else value


class RagIndex:
    """Ingestion bookkeeping for one store; every method is one transaction, retried when transient."""

    def __init__(self, store: PgvectorMemoryStore) -> None:
        self._store = store
        self._files = store.table("rag_files")
        self._runs = store.table("rag_ingestions")
        self._memories = store.table("memories")

    async def begin(self, project: str, repo_id: str, root: str) -> uuid.UUID:
        """Record a running ingestion; a run of this repository still marked running was killed: say so."""
        async def run() -> uuid.UUID:
            async with self._store.gate.acquire() as connection, connection.transaction():
                await connection.execute(
                    f"UPDATE {self._runs} SET status = 'failed', finished_at = now(), "
                    "error = 'interrupted: the process ended before the run finished (a rerun resumes it)' "
                    "WHERE project = $1 AND repo_id = $2 AND status = 'running'", project, repo_id)
                return await connection.fetchval(  # type: ignore[no-any-return]
                    f"INSERT INTO {self._runs} (project, repo_id, root) VALUES ($1, $2, $3) RETURNING id",
                    project, repo_id, root)

        return await run_with_retries(self._store.settings.postgres, "recording an ingestion", run)

    async def finish(self, project: str, ingestion_id: uuid.UUID, *, status: str, counts: Mapping[str, int],
                     timings: Mapping[str, float], errors: Sequence[Mapping[str, str]], error: str | None) -> None:
        async def run() -> None:
            async with self._store.gate.acquire() as connection:
                await connection.execute(
                    f"UPDATE {self._runs} SET status = $3, finished_at = now(), documents = $4, chunks = $5, "
                    "chunks_new = $6, chunks_duplicate = $7, counts = $8::text::jsonb, timings = $9::text::jsonb, "
                    "errors = $10::text::jsonb, error = $11 WHERE project = $1 AND id = $2",
                    project, ingestion_id, status, int(counts.get("files_seen", 0)),
                    int(counts.get("chunks_total", 0)), int(counts.get("chunks_added", 0)),
                    int(counts.get("chunks_unchanged", 0)), json.dumps(dict(counts)), json.dumps(dict(timings)),
                    json.dumps(list(errors)), error)

        await run_with_retries(self._store.settings.postgres, "recording an ingestion", run)

    async def ingestions(self, project: str, repo_id: str, limit: int = 10) -> list[dict[str, Any]]:
        """The latest runs of a repository, newest first."""
        async def run() -> list[dict[str, Any]]:
            async with self._store.gate.acquire() as connection:
                rows = await connection.fetch(
                    f"SELECT id, repo_id, root, status, documents, chunks, counts, timings, errors, error, "
                    f"started_at, finished_at FROM {self._runs} WHERE project = $1 AND repo_id = $2 "
                    "ORDER BY started_at DESC LIMIT $3", project, repo_id, limit)
            return [{key: _json(value) if key in ("counts", "timings", "errors") else value
                     for key, value in dict(row).items()} for row in rows]

        return await run_with_retries(self._store.settings.postgres, "reading ingestions", run)

    async def files(self, project: str, repo_id: str) -> dict[str, IndexedFile]:
        async def run() -> dict[str, IndexedFile]:
            async with self._store.gate.acquire() as connection:
                rows = await connection.fetch(
                    f"SELECT f.path, f.file_hash, cardinality(f.chunk_ids) AS chunks, NOT EXISTS ("
                    f"SELECT 1 FROM unnest(f.chunk_ids) AS c(id) WHERE NOT EXISTS (SELECT 1 FROM {self._memories} m "
                    "WHERE m.project = f.project AND m.id = c.id)) AS intact "
                    f"FROM {self._files} f WHERE f.project = $1 AND f.repo_id = $2", project, repo_id)
            return {r["path"]: IndexedFile(r["path"], r["file_hash"], int(r["chunks"]), bool(r["intact"]))
                    for r in rows}

        return await run_with_retries(self._store.settings.postgres, "reading indexed files", run)

    async def reusable_vectors(self, project: str, repo_id: str, paths: Sequence[str],
                               model: str) -> dict[str, list[float]]:
        """The stored vectors (of ``model``) of these files' current chunks, by content hash: a changed file's
        chunks whose text did not change are not embedded again."""
        if not paths:
            return {}

        async def run() -> list[Any]:
            async with self._store.gate.acquire() as connection:
                return list(await connection.fetch(
                    f"SELECT m.content, m.embedding FROM {self._files} f, unnest(f.chunk_ids) AS c(id) "
                    f"JOIN {self._memories} m ON m.id = c.id WHERE f.project = $1 AND f.repo_id = $2 "
                    "AND f.path = ANY($3::text[]) AND m.project = $1 AND m.embedding IS NOT NULL "
                    "AND m.embedding_model = $4", project, repo_id, list(paths), model))

        rows = await run_with_retries(self._store.settings.postgres, "reading reusable vectors", run)
        return {content_hash(row["content"]): [float(x) for x in row["embedding"].to_list()] for row in rows}

    async def write_files(self, project: str, repo_id: str, ingestion_id: uuid.UUID,
                          files: Sequence[FileChunks]) -> int:
        """Replace these files' chunks atomically (old rows deleted, new rows merged, ``rag_files`` updated).

        Returns how many old chunk rows were deleted. Records must be validated by the caller (``store.validate``).
        """
        if not files:
            return 0
        records = [record for f in files for record in f.records]
        keys = [chunk_key(repo_id, f.path, int(r.metadata["chunk"])) for f in files for r in f.records]
        rows, _ = staging_rows(records, mode="keep_first", store_model=self._store.embedding_model, keys=keys)
        vector_type = f"{self._store.vector_type}({self._store.dimension})"
        paths = [f.path for f in files]

        async def run() -> int:
            async with self._store.gate.acquire() as connection, connection.transaction():
                old = await connection.fetchval(
                    f"SELECT coalesce(array_agg(c.id), '{{}}') FROM {self._files} f, unnest(f.chunk_ids) AS c(id) "
                    "WHERE f.project = $1 AND f.repo_id = $2 AND f.path = ANY($3::text[])", project, repo_id, paths)
                removed = await connection.execute(
                    f"DELETE FROM {self._memories} WHERE project = $1 AND id = ANY($2::uuid[])", project, old)
                result = await upsert_batch(connection, self._store.names, vector_type, rows, "keep_first",
                                            records, None) if rows else []
                id_of = {row["ord"]: str(row["id"]) for row in result}
                payload, position = [], 0
                for f in files:
                    ids = [id_of[position + i] for i in range(len(f.records)) if position + i in id_of]
                    position += len(f.records)
                    payload.append({"path": f.path, "file_hash": f.file_hash, "language": f.language,
                                    "bytes": f.size, "chunk_ids": ids})
                await connection.execute(
                    f"INSERT INTO {self._files} AS f (project, repo_id, path, file_hash, language, bytes, chunk_ids, "
                    "ingestion_id, updated_at) SELECT $1, $2, x.path, x.file_hash, x.language, x.bytes, "
                    "ARRAY(SELECT jsonb_array_elements_text(x.chunk_ids))::uuid[], $3, now() "
                    "FROM jsonb_to_recordset($4::text::jsonb) AS x(path text, file_hash text, language text, "
                    "bytes bigint, chunk_ids jsonb) ON CONFLICT (project, repo_id, path) DO UPDATE SET "
                    "file_hash = EXCLUDED.file_hash, language = EXCLUDED.language, bytes = EXCLUDED.bytes, "
                    "chunk_ids = EXCLUDED.chunk_ids, ingestion_id = EXCLUDED.ingestion_id, updated_at = now()",
                    project, repo_id, ingestion_id, json.dumps(payload))
                return int(removed.split()[-1])

        return await run_with_retries(self._store.settings.postgres, "writing repository chunks", run)

    async def remove_files(self, project: str, repo_id: str, paths: Sequence[str]) -> int:
        """Delete these files' chunks and rows; returns the chunk rows deleted."""
        if not paths:
            return 0

        async def run() -> int:
            async with self._store.gate.acquire() as connection, connection.transaction():
                gone = await connection.fetchval(
                    f"WITH f AS (DELETE FROM {self._files} WHERE project = $1 AND repo_id = $2 "
                    "AND path = ANY($3::text[]) RETURNING chunk_ids), "
                    f"m AS (DELETE FROM {self._memories} WHERE project = $1 AND id IN "
                    "(SELECT unnest(chunk_ids) FROM f) RETURNING 1) SELECT count(*) FROM m",
                    project, repo_id, list(paths))
                return int(gone)

        return await run_with_retries(self._store.settings.postgres, "removing repository files", run)

    async def move_files(self, project: str, repo_id: str, moves: Sequence[tuple[str, str]]) -> int:
        """Renames: the rows keep their content and embedding; only path (metadata, key) changes."""
        if not moves:
            return 0

        async def run() -> int:
            moved = 0
            async with self._store.gate.acquire() as connection, connection.transaction():
                for old, new in moves:
                    ids = await connection.fetchval(
                        f"UPDATE {self._files} SET path = $4, updated_at = now() WHERE project = $1 AND repo_id = $2 "
                        "AND path = $3 RETURNING chunk_ids", project, repo_id, old, new)
                    if not ids:
                        continue
                    rows = await connection.fetch(
                        f"SELECT id, (metadata->>'chunk')::int AS chunk FROM {self._memories} "
                        "WHERE project = $1 AND id = ANY($2::uuid[])", project, ids)
                    await connection.execute(
                        f"UPDATE {self._memories} m SET content_hash = x.key, updated_at = now(), "
                        "metadata = m.metadata || jsonb_build_object('path', $4::text) "
                        "FROM unnest($2::uuid[], $3::text[]) AS x(id, key) WHERE m.project = $1 AND m.id = x.id",
                        project, [r["id"] for r in rows], [chunk_key(repo_id, new, r["chunk"]) for r in rows], new)
                    moved += len(rows)
            return moved

        return await run_with_retries(self._store.settings.postgres, "moving repository files", run)
