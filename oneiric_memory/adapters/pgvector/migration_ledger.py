"""The DuckDB migration's ledger: runs, per-row items and checkpoints (revision 0002), as named statements.

The migration (:mod:`oneiric_memory.ops.duckdb_migration`) decides what to migrate and how; this module is
the only place that reads or writes ``migration_runs``, ``migration_items`` and ``migration_checkpoints``,
and the rollback that deletes exactly what a run added.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import asyncpg

from oneiric_memory.adapters.pgvector.connection import connect_once
from oneiric_memory.errors import StoreError

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector.store import PgvectorMemoryStore

__all__ = ["MigrationLedger", "RollbackCounts"]

_ASYNC_COMMIT = "SELECT set_config('synchronous_commit', 'off', true)"
"""For items and checkpoints only: losing the last few on a crash just makes the resume redo them (the memories
themselves are committed synchronously by the store and carry their source key)."""

RollbackCounts = tuple[int, int, int]
"""(memories deleted, memories kept because another run shares them, items deleted)."""


class MigrationLedger:
    """Named statements on the migration tables of one store."""

    def __init__(self, store: PgvectorMemoryStore) -> None:
        self._store = store
        self._runs = store.table("migration_runs")
        self._items = store.table("migration_items")
        self._checkpoints = store.table("migration_checkpoints")
        self._memories = store.table("memories")

    async def target_empty(self) -> bool:
        async with self._store.gate.acquire() as connection:
            return not bool(await connection.fetchval(f"SELECT EXISTS (SELECT 1 FROM {self._memories})"))

    @asynccontextmanager
    async def source_lock(self, file_ids: Sequence[str], target: str) -> AsyncIterator[None]:
        """One migration (or rollback) per source and target at a time, across processes."""
        store = self._store
        connection = await connect_once(store.connect_params, store.settings.postgres)
        try:
            keys = [f"oneiric_memory.migrate-duckdb:{store.schema}:{target}:{file_id}" for file_id in file_ids]
            for key in keys:
                if not await connection.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key):
                    raise StoreError(
                        f"another migrate-duckdb run or rollback of {file_ids[0]} into schema {store.schema!r} "
                        "is in progress: wait for it to finish", source_file_id=file_ids[0])
            yield
        finally:
            await connection.close()  # session-level advisory locks end with the session

    # --- runs -------------------------------------------------------------------------------------------

    async def start_run(self, *, source: Sequence[Any], kg: Sequence[Any] | None, project: str | None,
                        options: Mapping[str, Any]) -> tuple[uuid.UUID, bool]:
        """Resume the latest running/failed run of the same files and project, or start one.

        ``source`` and ``kg`` are (path, file id, sha256, size). Returns the run id and whether it resumed.
        """
        kg_values = tuple(kg) if kg is not None else (None, None, None, None)
        values = (*source, *kg_values, project, json.dumps(dict(options)))
        async with self._store.gate.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                f"SELECT run_id, counts FROM {self._runs} WHERE source_file_id = $1 "
                "AND kg_file_id IS NOT DISTINCT FROM $2 AND project IS NOT DISTINCT FROM $3 "
                "AND status IN ('running', 'failed') ORDER BY started_at DESC LIMIT 1 FOR UPDATE",
                source[1], kg_values[1], project)
            if row is not None:
                await connection.execute(
                    f"UPDATE {self._runs} SET source_path = $2, source_file_id = $3, source_sha256 = $4, "
                    "source_size = $5, kg_path = $6, kg_file_id = $7, kg_sha256 = $8, kg_size = $9, project = $10, "
                    "options = $11::text::jsonb, status = 'running', error = NULL, finished_at = NULL, "
                    "updated_at = now() WHERE run_id = $1", row["run_id"], *values)
                return row["run_id"], True
            run_id = uuid.uuid4()
            await connection.execute(
                f"INSERT INTO {self._runs} (run_id, source_path, source_file_id, source_sha256, source_size, "
                "kg_path, kg_file_id, kg_sha256, kg_size, project, options) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::text::jsonb)", run_id, *values)
        return run_id, False

    async def finish_run(self, run_id: uuid.UUID, status: str, error: str | None, counts: Mapping[str, Any]) -> None:
        async with self._store.gate.acquire() as connection:
            await connection.execute(
                f"UPDATE {self._runs} SET status = $2, error = $3, counts = $4::text::jsonb, "
                "updated_at = now(), finished_at = now() WHERE run_id = $1", run_id, status, error,
                json.dumps(dict(counts)))

    async def run(self, run_id: uuid.UUID) -> asyncpg.Record | None:
        async with self._store.gate.acquire() as connection:
            row: asyncpg.Record | None = await connection.fetchrow(
                f"SELECT * FROM {self._runs} WHERE run_id = $1", run_id)
        return row

    async def list_runs(self, limit: int) -> list[asyncpg.Record]:
        """The most recent runs, newest first."""
        async with self._store.gate.acquire() as connection:
            return list(await connection.fetch(
                f"SELECT run_id, status, source_path, kg_path, project, started_at, finished_at, error, counts "
                f"FROM {self._runs} ORDER BY started_at DESC LIMIT $1", limit))

    # --- items and checkpoints ----------------------------------------------------------------------------

    async def done_keys(self, file_id: str, table: str) -> set[tuple[str, str]]:
        """(project, source id) of rows already migrated whose memory still exists."""
        async with self._store.gate.acquire() as connection:
            rows = await connection.fetch(
                f"SELECT i.project, i.source_id FROM {self._items} i JOIN {self._memories} m "
                "ON m.project = i.project AND m.id = i.memory_id WHERE i.source_file_id = $1 AND i.source_table = $2 "
                "AND i.status = 'migrated'", file_id, table)
        return {(r["project"], r["source_id"]) for r in rows}

    async def checkpoint(self, target: str, file_id: str, table: str) -> tuple[str | None, int]:
        """The last source id done and the rows done so far for one table (``(None, 0)`` when none)."""
        async with self._store.gate.acquire() as connection:
            row = await connection.fetchrow(
                f"SELECT last_source_id, rows_done FROM {self._checkpoints} WHERE target_project = $1 "
                "AND source_file_id = $2 AND source_table = $3", target, file_id, table)
        return (None, 0) if row is None else (row["last_source_id"], int(row["rows_done"]))

    async def write_items(self, run_id: uuid.UUID, file_id: str, table: str,
                          payload: Sequence[Mapping[str, Any]]) -> None:
        """Record each source row's outcome (migrated with its memory, or skipped with the reason).

        A row counts as inserted by this run also when an earlier, crashed attempt of the same run inserted its
        memory but died before writing the item: the memory then carries exactly this source key.
        """
        memories = self._memories
        sql = (
            f"INSERT INTO {self._items} AS i (project, source_file_id, source_table, source_id, run_id, memory_id, "
            "memory_type, content_hash, inserted, status, reason) "
            "SELECT x.project, $2, $3, x.source_id, $4::uuid, x.memory_id, x.memory_type, x.content_hash, "
            f"x.inserted OR (x.memory_id IS NOT NULL AND EXISTS (SELECT 1 FROM {memories} m WHERE "
            "m.project = x.project AND m.id = x.memory_id AND m.metadata @> jsonb_build_object('source', "
            "jsonb_build_object('run_id', $4::text, 'file_id', $2::text, 'table', $3::text, 'id', x.source_id)))), "
            "x.status, x.reason FROM jsonb_to_recordset($1::text::jsonb) AS x(project text, source_id text, "
            "memory_id uuid, memory_type text, content_hash text, inserted boolean, status text, reason text) "
            "ON CONFLICT (project, source_file_id, source_table, source_id) DO UPDATE SET run_id = EXCLUDED.run_id, "
            "memory_id = EXCLUDED.memory_id, memory_type = EXCLUDED.memory_type, "
            "content_hash = EXCLUDED.content_hash, inserted = EXCLUDED.inserted, status = EXCLUDED.status, "
            "reason = EXCLUDED.reason, created_at = now() "
            f"WHERE i.status = 'skipped' OR i.run_id = EXCLUDED.run_id OR NOT EXISTS (SELECT 1 FROM {memories} m "
            "WHERE m.project = i.project AND m.id = i.memory_id)")
        async with self._store.gate.acquire() as connection, connection.transaction():
            await connection.execute(_ASYNC_COMMIT)
            await connection.execute(sql, json.dumps(list(payload)), file_id, table, str(run_id))

    async def write_checkpoint(self, run_id: uuid.UUID, target: str, file_id: str, table: str, last_id: str,
                               rows_done: int, counts: Mapping[str, Any]) -> None:
        async with self._store.gate.acquire() as connection, connection.transaction():
            await connection.execute(_ASYNC_COMMIT)
            await connection.execute(
                f"INSERT INTO {self._checkpoints} AS c (target_project, source_file_id, source_table, "
                "last_source_id, rows_done, run_id) VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (target_project, source_file_id, source_table) DO UPDATE SET "
                "last_source_id = EXCLUDED.last_source_id, rows_done = EXCLUDED.rows_done, run_id = EXCLUDED.run_id, "
                "updated_at = now()", target, file_id, table, last_id, rows_done, run_id)
            await connection.execute(
                f"UPDATE {self._runs} SET counts = counts || $2::text::jsonb, updated_at = now() "
                "WHERE run_id = $1", run_id, json.dumps(dict(counts)))

    async def table_counts(self, run_id: uuid.UUID, file_id: str, table: str,
                           project: str | None) -> asyncpg.Record | None:
        """Exact per-table numbers from the items (which survive crashes): added, dedup, errors, pending,
        target_rows."""
        async with self._store.gate.acquire() as connection:
            row: asyncpg.Record | None = await connection.fetchrow(
                "SELECT count(*) FILTER (WHERE i.run_id = $3 AND i.inserted) AS added, "
                "count(*) FILTER (WHERE i.run_id = $3 AND i.status = 'migrated' AND NOT i.inserted) AS dedup, "
                "count(*) FILTER (WHERE i.run_id = $3 AND i.status = 'skipped') AS errors, "
                "count(*) FILTER (WHERE i.run_id = $3 AND i.inserted AND m.id IS NOT NULL "
                "AND m.embedding IS NULL) AS pending, "
                "count(*) FILTER (WHERE i.status = 'migrated' AND m.id IS NOT NULL AND r.project IS NOT DISTINCT "
                "FROM $4) AS target_rows "
                f"FROM {self._items} i JOIN {self._runs} r ON r.run_id = i.run_id "
                f"LEFT JOIN {self._memories} m ON m.project = i.project AND m.id = i.memory_id "
                "WHERE i.source_file_id = $1 AND i.source_table = $2", file_id, table, run_id, project)
        return row

    async def table_items(self, file_id: str, table: str) -> list[asyncpg.Record]:
        """Every item of one source table, with whether its memory is still present and its run's project."""
        async with self._store.gate.acquire() as connection:
            return list(await connection.fetch(
                f"SELECT i.project, i.source_id, i.status, i.reason, i.memory_id, i.memory_type, i.content_hash, "
                f"(m.id IS NOT NULL) AS present, r.project AS run_project FROM {self._items} i "
                f"JOIN {self._runs} r ON r.run_id = i.run_id LEFT JOIN {self._memories} m "
                "ON m.project = i.project AND m.id = i.memory_id WHERE i.source_file_id = $1 AND i.source_table = $2",
                file_id, table))

    async def stored_contents(self, keys: Sequence[tuple[str, uuid.UUID]]) -> list[asyncpg.Record]:
        """project, id, memory_type and content of the memories with these (project, id) keys."""
        async with self._store.gate.acquire() as connection:
            return list(await connection.fetch(
                f"SELECT project, id, memory_type, content FROM {self._memories} WHERE (project, id) IN "
                "(SELECT * FROM unnest($1::text[], $2::uuid[]))", [k[0] for k in keys], [k[1] for k in keys]))

    # --- rollback ----------------------------------------------------------------------------------------

    async def rollback(self, run_id: uuid.UUID, *, target: str, file_ids: Sequence[str],
                       previous_status: str) -> RollbackCounts:
        """In one transaction: delete the memories the run owns (unless another run shares them, which then
        owns them), the run's items and checkpoints, and mark the run ``rolled_back``."""
        items, memories = self._items, self._memories
        marker = json.dumps({"source": {"run_id": str(run_id)}})
        async with self._store.gate.acquire() as connection, connection.transaction():
            await connection.execute(
                "CREATE TEMP TABLE om_rb_owned ON COMMIT DROP AS "
                f"SELECT project, memory_id AS id FROM {items} WHERE run_id = $1 AND inserted "
                f"AND memory_id IS NOT NULL UNION SELECT project, id FROM {memories} "
                "WHERE metadata @> $2::text::jsonb", run_id, marker)
            await connection.execute(
                "CREATE TEMP TABLE om_rb_shared ON COMMIT DROP AS SELECT DISTINCT ON (i.project, i.memory_id) "
                "i.project, i.memory_id, i.source_file_id, i.source_table, i.source_id "
                f"FROM {items} i JOIN om_rb_owned o ON o.project = i.project AND o.id = i.memory_id "
                "WHERE i.run_id <> $1 ORDER BY i.project, i.memory_id, i.created_at, i.source_id", run_id)
            kept = int(await connection.fetchval("SELECT count(*) FROM om_rb_shared"))
            await connection.execute(
                f"UPDATE {items} i SET inserted = true FROM om_rb_shared s WHERE i.project = s.project "
                "AND i.source_file_id = s.source_file_id AND i.source_table = s.source_table "
                "AND i.source_id = s.source_id")
            status = await connection.execute(
                f"DELETE FROM {memories} m USING om_rb_owned o WHERE m.project = o.project AND m.id = o.id "
                "AND NOT EXISTS (SELECT 1 FROM om_rb_shared s WHERE s.project = o.project "
                "AND s.memory_id = o.id)")
            deleted = int(status.split()[-1])
            status = await connection.execute(f"DELETE FROM {items} WHERE run_id = $1", run_id)
            items_deleted = int(status.split()[-1])
            await connection.execute(
                f"DELETE FROM {self._checkpoints} WHERE target_project = $1 AND source_file_id = ANY($2::text[])",
                target, list(file_ids))
            await connection.execute(
                f"UPDATE {self._runs} SET status = 'rolled_back', updated_at = now(), "
                "finished_at = now(), counts = counts || jsonb_build_object('rollback', "
                "jsonb_build_object('memories_deleted', $2::bigint, 'memories_kept_shared', $3::bigint, "
                "'items_deleted', $4::bigint, 'previous_status', $5::text)) WHERE run_id = $1",
                run_id, deleted, kept, items_deleted, previous_status)
        return deleted, kept, items_deleted
