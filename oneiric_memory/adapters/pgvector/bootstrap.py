"""Bootstrap: find or start the server, create the database, check pgvector, migrate.

Everything here runs once per store (or per CLI/backup call) on single connections outside the pool.
The embedded server and the database are created on demand, so "no DSN" just works.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from oneiric_memory.adapters.pgvector.connection import ConnectParams, connect_once, ensure_vector_extension
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedPostgres
from oneiric_memory.adapters.pgvector.migrator import Migrator
from oneiric_memory.adapters.pgvector.schema import quote_ident
from oneiric_memory.errors import ConfigurationError
from oneiric_memory.settings import MemorySettings, PostgresSettings, validate_identifier

__all__ = ["Extensions", "analyze_schema", "check_extensions", "count_tables", "ensure_database", "migrate",
           "schema_migrator",
           "server_params"]


@dataclass(frozen=True, slots=True)
class Extensions:
    """What the database offers: pgvector's version and schema, and a BM25 extension if installed."""

    vector_version: str
    vector_schema: str
    bm25: str | None


async def ensure_database(admin: ConnectParams, pg: PostgresSettings) -> None:
    """Create ``postgres.database`` when it does not exist (the embedded server starts with ``postgres`` only)."""
    connection = await connect_once(admin, pg)
    try:
        if await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", pg.database):
            return
        try:
            name = validate_identifier(pg.database, what="postgres.database")
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):  # created meanwhile
            await connection.execute(f"CREATE DATABASE {quote_ident(name)}")
    finally:
        await connection.close()


@asynccontextmanager
async def server_params(settings: MemorySettings, *, create_database: bool = True) -> AsyncIterator[ConnectParams]:
    """Connection parameters for the configured server; the embedded one is started, and stopped on exit."""
    pg = settings.postgres
    if not pg.embedded:
        yield ConnectParams.from_settings(pg)
        return
    server = EmbeddedPostgres(settings.embedded_data_dir)
    info = await server.start()
    try:
        if create_database:
            await ensure_database(ConnectParams(host=info.host, port=info.port, user=info.user, database="postgres"),
                                  pg)
        yield ConnectParams(host=info.host, port=info.port, user=info.user, database=pg.database)
    finally:
        await server.stop()


async def check_extensions(params: ConnectParams, pg: PostgresSettings) -> Extensions:
    """Make sure pgvector is there (creating it when allowed) and see whether a BM25 extension is."""
    connection = await connect_once(params, pg)
    try:
        version = await ensure_vector_extension(connection, create=pg.create_extension, schema=pg.db_schema)
        vector_schema = await connection.fetchval(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'")
        bm25 = await connection.fetchval(
            "SELECT extname FROM pg_extension WHERE extname IN ('pg_textsearch', 'pg_search') "
            "ORDER BY extname LIMIT 1")
    finally:
        await connection.close()
    return Extensions(vector_version=version, vector_schema=str(vector_schema).strip('"'), bm25=bm25)


async def migrate(params: ConnectParams, pg: PostgresSettings) -> None:
    """Upgrade to head when ``postgres.auto_migrate``; otherwise refuse a schema that is not at head."""
    migrator = Migrator(params, pg)
    if pg.auto_migrate:
        await migrator.upgrade()
    else:
        await migrator.require_head()


async def count_tables(params: ConnectParams, pg: PostgresSettings, schema: str) -> int:
    """How many tables ``schema`` holds (what ``pg_dump --schema`` dumps)."""
    connection = await connect_once(params, pg)
    try:
        return int(await connection.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')", schema))
    finally:
        await connection.close()


async def analyze_schema(params: ConnectParams, pg: PostgresSettings, schema: str) -> None:
    """ANALYZE every table of ``schema`` (restored tables have no planner statistics yet)."""
    connection = await connect_once(params, pg)
    try:
        for table in await connection.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relkind = 'r'", schema):
            await connection.execute(f"ANALYZE {quote_ident(schema)}.{quote_ident(table['relname'])}")
    finally:
        await connection.close()


@asynccontextmanager
async def schema_migrator(settings: MemorySettings) -> AsyncIterator[Migrator]:
    """A :class:`Migrator` for the configured schema: server started, database and pgvector present, nothing
    migrated yet (``oneiric-memory db upgrade|downgrade|current``)."""
    async with server_params(settings) as params:
        await check_extensions(params, settings.postgres)
        yield Migrator(params, settings.postgres)
