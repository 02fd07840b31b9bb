"""Direct sessions: one short-lived connection outside the pool, for maintenance and monitoring.

Why outside the pool: VACUUM and ``... CONCURRENTLY`` cannot run inside a transaction, pooled connections
carry the application's ``statement_timeout`` (an index build on 150K rows takes a minute), and ``doctor``
must still answer when the pool is exhausted. Each query maintenance and monitoring need is a named method
of :class:`DirectSession`, so the SQL against this package's tables stays inside the store package.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import asyncpg

from oneiric_memory.adapters.pgvector.connection import translate_error
from oneiric_memory.adapters.pgvector.schema import PACKAGE_TABLES, quote_ident, quote_literal

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector.store import PgvectorMemoryStore

__all__ = ["EXACT_COUNT_LIMIT", "LEFTOVER_PATTERN", "REBUILD_SUFFIX", "DirectSession", "direct_session"]

EXACT_COUNT_LIMIT = 1_000_000
"""Above this many live rows, row counts come from the statistics (a full count would scan)."""
LEFTOVER_PATTERN = r"_cc(new|old)[0-9]*$"
"""Names PostgreSQL gives the leftovers of an interrupted ``REINDEX CONCURRENTLY``."""
REBUILD_SUFFIX = "_rebuild"
"""Suffix of the temporary index an IVFFlat rebuild swaps in."""


@asynccontextmanager
async def direct_session(store: PgvectorMemoryStore, *, purpose: str, statement_timeout_ms: int = 0,
                         maintenance_work_mem: str | None = None) -> AsyncIterator[DirectSession]:
    """A :class:`DirectSession` on a new connection with its own session settings; closed on exit."""
    pg = store.settings.postgres
    try:
        connection = await asyncpg.connect(**store.connect_params.as_kwargs(), timeout=pg.connect_timeout_s,
                                           statement_cache_size=0,
                                           server_settings={"application_name": f"oneiric-memory-{purpose}"})
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise translate_error(exc, f"opening a {purpose} connection") from exc
    try:
        await connection.execute("SELECT set_config('statement_timeout', $1, false)", str(int(statement_timeout_ms)))
        if maintenance_work_mem is not None:
            await connection.execute("SELECT set_config('maintenance_work_mem', $1, false)", maintenance_work_mem)
        yield DirectSession(store, connection)
    finally:
        await connection.close()


class DirectSession:
    """Named statements on one direct connection: locks, statistics, VACUUM, autovacuum options, index DDL."""

    def __init__(self, store: PgvectorMemoryStore, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.schema = store.schema
        self.names = store.names
        self._vector_type = store.vector_type

    @property
    def server_major(self) -> int:
        return int(self.connection.get_server_version().major)

    @property
    def server_version(self) -> str:
        version = self.connection.get_server_version()
        return f"{version.major}.{version.minor}"

    # --- locks ---------------------------------------------------------------------------------------

    async def try_lock(self, key: str) -> bool:
        """A session-level advisory lock (released by :meth:`unlock` or by closing the connection)."""
        return bool(await self.connection.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key))

    async def unlock(self, key: str) -> None:
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await self.connection.execute("SELECT pg_advisory_unlock(hashtext($1))", key)

    # --- counts --------------------------------------------------------------------------------------

    async def now(self) -> Any:
        return await self.connection.fetchval("SELECT now()")

    async def count_embedded_rows(self) -> int:
        """Rows with an embedding: exact below 1M live rows, else live tuples minus pending."""
        memories = self.names.table("memories")
        live = await self.connection.fetchval(
            "SELECT n_live_tup FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'memories'", self.schema)
        if live is None or int(live) < EXACT_COUNT_LIMIT:
            return int(await self.connection.fetchval(f"SELECT count(*) FROM {memories} WHERE embedding IS NOT NULL"))
        return max(int(live) - await self.count_pending(), 0)

    async def count_pending(self) -> int:
        return int(await self.connection.fetchval(
            f"SELECT count(*) FROM {self.names.table('memories')} WHERE embedding IS NULL"))

    async def count_expired(self) -> int:
        return int(await self.connection.fetchval(
            f"SELECT count(*) FROM {self.names.table('memories')} WHERE expires_at <= now()"))

    async def index_build(self) -> asyncpg.Record | None:
        """``index_built_rows`` and ``index_built_at`` from the meta table."""
        row: asyncpg.Record | None = await self.connection.fetchrow(
            f"SELECT index_built_rows, index_built_at FROM {self.names.table('embedding_meta')}")
        return row

    async def record_index_build(self, rows: int) -> None:
        await self.connection.execute(
            f"UPDATE {self.names.table('embedding_meta')} SET index_built_rows = $1, index_built_at = now(), "
            "updated_at = now()", rows)

    async def outbox_backlog(self) -> asyncpg.Record:
        """Pending and failed outbox rows, the oldest pending ``created_at`` and the server's ``now``."""
        outbox = self.names.table("insight_outbox")
        row: asyncpg.Record = await self.connection.fetchrow(
            f"SELECT (SELECT count(*) FROM {outbox} WHERE status = 'pending') AS pending, "
            f"(SELECT count(*) FROM {outbox} WHERE status = 'failed') AS failed, "
            f"(SELECT min(created_at) FROM {outbox} WHERE status = 'pending') AS oldest, now() AS now")
        return row

    # --- tables --------------------------------------------------------------------------------------

    async def table_numbers(self, names: Sequence[str]) -> dict[str, asyncpg.Record]:
        """Heap and total bytes, live and dead tuples of the named tables."""
        rows = await self.connection.fetch(
            """
            SELECT c.relname AS name, pg_relation_size(c.oid) AS heap, pg_total_relation_size(c.oid) AS total,
                   coalesce(s.n_live_tup, 0) AS live, coalesce(s.n_dead_tup, 0) AS dead
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
            WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND c.relkind IN ('r', 'p')
            """, self.schema, list(names))
        return {r["name"]: r for r in rows}

    async def table_stats(self) -> list[asyncpg.Record]:
        """Every table of the schema: tuples, sizes and (auto)vacuum history."""
        return list(await self.connection.fetch(
            """
            SELECT c.relname AS name, coalesce(st.n_live_tup, 0) AS live, coalesce(st.n_dead_tup, 0) AS dead,
                   pg_relation_size(c.oid) AS heap,
                   coalesce(pg_total_relation_size(NULLIF(c.reltoastrelid, 0::oid)), 0) AS toast,
                   pg_indexes_size(c.oid) AS indexes, pg_total_relation_size(c.oid) AS total,
                   st.last_vacuum, st.last_autovacuum, st.last_analyze, st.last_autoanalyze,
                   coalesce(st.vacuum_count, 0) AS vacuum_count, coalesce(st.autovacuum_count, 0) AS autovacuum_count
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_stat_user_tables st ON st.relid = c.oid
            WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname
            """, self.schema))

    async def vacuum_analyze(self, table: str) -> None:
        """``VACUUM (ANALYZE)`` one of this package's tables (``table`` is one of :data:`PACKAGE_TABLES`)."""
        if table not in PACKAGE_TABLES:
            raise ValueError(f"{table!r} is not one of this package's tables")
        await self.connection.execute(f"VACUUM (ANALYZE) {self.names.table(table)}")

    async def flush_statistics(self) -> None:
        """Publish this backend's pending table statistics now (PG 15+), so dead tuples show at once."""
        await flush_statistics(self.connection)

    async def reloptions(self) -> dict[str, dict[str, str]]:
        """Each table's storage options, TOAST options prefixed ``toast.``."""
        rows = await self.connection.fetch(
            "SELECT c.relname AS name, c.reloptions AS own, t.reloptions AS toast FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_class t ON t.oid = c.reltoastrelid "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')", self.schema)
        result: dict[str, dict[str, str]] = {}
        for row in rows:
            options: dict[str, str] = {}
            for prefix, values in (("", row["own"]), ("toast.", row["toast"])):
                for item in values or []:
                    key, _, value = str(item).partition("=")
                    options[prefix + key] = value
            result[str(row["name"])] = options
        return result

    async def set_reloptions(self, table: str, options: Mapping[str, str]) -> None:
        """``ALTER TABLE ... SET (...)`` with a short lock timeout (options and values come from code)."""
        if table not in PACKAGE_TABLES:
            raise ValueError(f"{table!r} is not one of this package's tables")
        assignments = ", ".join(f"{key} = {_option_literal(value)}" for key, value in options.items())
        async with self.connection.transaction():
            await self.connection.execute("SELECT set_config('lock_timeout', '10s', true)")
            await self.connection.execute(f"ALTER TABLE {self.names.table(table)} SET ({assignments})")

    # --- indexes -------------------------------------------------------------------------------------

    async def index_stats(self) -> list[asyncpg.Record]:
        """Every index of the schema: table, method, scans, size, validity, constraint, reloptions."""
        return list(await self.connection.fetch(
            """
            SELECT c.relname AS table_name, ic.relname AS name, am.amname AS method,
                   coalesce(si.idx_scan, 0) AS scans, pg_relation_size(ic.oid) AS size_bytes, i.indisvalid AS valid,
                   EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) AS backs_constraint,
                   ic.reloptions
            FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am am ON am.oid = ic.relam
            LEFT JOIN pg_stat_user_indexes si ON si.indexrelid = i.indexrelid
            WHERE n.nspname = $1 ORDER BY c.relname, ic.relname
            """, self.schema))

    async def broken_indexes(self) -> list[str]:
        """Invalid indexes and leftovers of interrupted rebuilds (never a constraint's index)."""
        rows = await self.connection.fetch(
            """
            SELECT ic.relname AS name FROM pg_index i
            JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = $1
              AND (NOT i.indisvalid OR ic.relname ~ $2 OR ic.relname LIKE '%' || $3)
              AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
            ORDER BY ic.relname
            """, self.schema, LEFTOVER_PATTERN, REBUILD_SUFFIX)
        return [str(r["name"]) for r in rows]

    async def builds_in_progress(self) -> int:
        return int(await self.connection.fetchval(
            "SELECT count(*) FROM pg_stat_progress_create_index p JOIN pg_class c ON c.oid = p.relid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1", self.schema))

    async def vector_index(self) -> tuple[str, str] | None:
        """(name, method) of the valid vector index on ``memories``, if any."""
        row = await self.connection.fetchrow(
            "SELECT ic.relname AS name, am.amname AS method FROM pg_index i "
            "JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am am ON am.oid = ic.relam "
            "WHERE n.nspname = $1 AND c.relname = 'memories' AND am.amname IN ('hnsw', 'ivfflat') "
            "AND i.indisvalid ORDER BY ic.relname LIMIT 1", self.schema)
        return None if row is None else (str(row["name"]), str(row["method"]))

    async def drop_index_concurrently(self, name: str) -> None:
        await self.connection.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {self.names.index(name)}")

    async def reindex_concurrently(self, name: str) -> None:
        await self.connection.execute(f"REINDEX INDEX CONCURRENTLY {self.names.index(name)}")

    async def create_hnsw_concurrently(self, name: str, *, m: int, ef_construction: int) -> None:
        await self.connection.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {quote_ident(name)} ON {self.names.table('memories')} "
            f"USING hnsw (embedding {self._vector_type}_cosine_ops) "
            f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})")

    async def create_ivfflat_concurrently(self, name: str, *, lists: int) -> None:
        await self.connection.execute(
            f"CREATE INDEX CONCURRENTLY {quote_ident(name)} ON {self.names.table('memories')} "
            f"USING ivfflat (embedding {self._vector_type}_cosine_ops) WITH (lists = {int(lists)})")

    async def rename_index(self, name: str, new_name: str) -> None:
        await self.connection.execute(f"ALTER INDEX {self.names.index(name)} RENAME TO {quote_ident(new_name)}")

    # --- storage and statements ----------------------------------------------------------------------

    async def vector_attstorage(self) -> str | None:
        value = await self.connection.fetchval(
            "SELECT a.attstorage::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'memories' "
            "AND a.attname = 'embedding'", self.schema)
        return None if value is None else str(value)

    async def vector_storage_sample(self, sample: int) -> asyncpg.Record:
        """``sampled``, ``compressed`` and (PG 17+) ``external`` counts over ``sample`` stored vectors."""
        memories = self.names.table("memories")
        if self.server_major >= 17:
            row: asyncpg.Record = await self.connection.fetchrow(
                "SELECT count(*) AS sampled, count(pg_column_toast_chunk_id(embedding)) AS external, "
                f"count(pg_column_compression(embedding)) AS compressed FROM (SELECT embedding FROM {memories} "
                f"WHERE embedding IS NOT NULL LIMIT {int(sample)}) AS s")
            return row
        row = await self.connection.fetchrow(
            "SELECT count(*) AS sampled, NULL::bigint AS external, count(pg_column_compression(embedding)) "
            f"AS compressed FROM (SELECT embedding FROM {memories} WHERE embedding IS NOT NULL "
            f"LIMIT {int(sample)}) AS s")
        return row

    async def statements_extension_schema(self) -> str | None:
        value = await self.connection.fetchval(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_stat_statements'")
        return None if value is None else str(value)

    async def statements_preloaded(self) -> bool | None:
        """Whether ``shared_preload_libraries`` holds pg_stat_statements; None when this role may not read it."""
        try:
            preload = await self.connection.fetchval("SELECT current_setting('shared_preload_libraries')")
        except asyncpg.InsufficientPrivilegeError:  # superuser-only setting: unknown, try the view instead
            return None
        return "pg_stat_statements" in str(preload)

    async def create_statements_extension(self) -> None:
        with contextlib.suppress(asyncpg.UniqueViolationError):  # created concurrently
            await self.connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    async def package_statements(self, extension_schema: str, *, min_mean_ms: float | None, order_by: str,
                                 limit: int) -> list[asyncpg.Record]:
        """Normalized statements on this package's tables in this database (``order_by``: ``mean`` or ``total``)."""
        sql = (f"SELECT queryid, calls, mean_exec_time, total_exec_time, rows, "
               f"left(regexp_replace(query, '\\s+', ' ', 'g'), 400) AS query "
               f"FROM {quote_ident(extension_schema.strip(chr(34)))}.pg_stat_statements "
               "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
               "AND query ~ $1 AND query ~* '^\\s*(with|select|insert|update|delete|copy)\\s' ")
        tables = "(" + "|".join(PACKAGE_TABLES) + ")"
        column = "mean_exec_time" if order_by == "mean" else "total_exec_time"
        if min_mean_ms is not None:
            return list(await self.connection.fetch(
                sql + f"AND mean_exec_time >= $2 ORDER BY {column} DESC LIMIT {int(limit)}", tables,
                float(min_mean_ms)))
        return list(await self.connection.fetch(sql + f"ORDER BY {column} DESC LIMIT {int(limit)}", tables))


async def flush_statistics(connection: asyncpg.Connection) -> None:
    """Publish this backend's pending table statistics now (PG 15+), so dead tuples show at once."""
    if connection.get_server_version().major < 15:
        return
    with contextlib.suppress(asyncpg.PostgresError):  # not permitted for this role: stats arrive within seconds
        await connection.execute("SELECT pg_stat_force_next_flush()")


def _option_literal(value: str) -> str:
    """A storage option's value: numbers bare, anything else as a string literal."""
    try:
        float(value)
    except ValueError:
        return quote_literal(value)
    return value
