"""Programmatic Alembic: upgrade, downgrade and current revision on the configured database.

Migrations run on one connection under a transaction-scoped advisory lock, so two processes
starting at once never migrate the same schema concurrently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from oneiric_memory.adapters.pgvector.connection import ConnectParams
from oneiric_memory.errors import SchemaMismatch, StoreError
from oneiric_memory.settings import PostgresSettings

__all__ = ["HEAD", "Migrator"]

HEAD = "head"
_SCRIPT_LOCATION = Path(__file__).parents[2] / "migrations"


class Migrator:
    """Runs this package's Alembic revisions against one database schema."""

    def __init__(self, params: ConnectParams, settings: PostgresSettings) -> None:
        self._params = params
        self._settings = settings

    def _config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", str(_SCRIPT_LOCATION))
        s = self._settings
        config.attributes.update(
            schema=s.db_schema, dimension=s.vector_dimension, vector_type=s.vector_type,
            text_search_config=s.text_search_config, index_type=s.index_type, hnsw_m=s.hnsw_m,
            hnsw_ef_construction=s.hnsw_ef_construction,
        )
        return config

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(self._config()).get_current_head()

    def revisions(self) -> list[str]:
        """Every revision id, oldest first (the order ``upgrade`` applies them)."""
        return [script.revision for script in reversed(list(ScriptDirectory.from_config(self._config())
                                                            .walk_revisions()))]

    async def _run(self, action: str, revision: str) -> str | None:
        params = self._params
        engine = create_async_engine(
            "postgresql+asyncpg://",
            async_creator=lambda: asyncpg.connect(**params.as_kwargs(), statement_cache_size=0),
            poolclass=NullPool,
        )
        config = self._config()
        schema = self._settings.db_schema

        def work(connection: Connection) -> str | None:
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                               {"key": f"oneiric_memory.migrate.{schema}"})
            if action == "upgrade":  # `current` and `downgrade` must not create anything
                connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            config.attributes["connection"] = connection
            if action == "upgrade":
                command.upgrade(config, revision)
            elif action == "downgrade":
                command.downgrade(config, revision)
            context = MigrationContext.configure(connection, opts={"version_table_schema": schema})
            return context.get_current_revision()

        try:
            async with engine.begin() as connection:
                return await connection.run_sync(work)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"migration {action} to {revision} failed: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        finally:
            await engine.dispose()

    async def upgrade(self, revision: str = HEAD) -> str | None:
        return await self._run("upgrade", revision)

    async def downgrade(self, revision: str) -> str | None:
        return await self._run("downgrade", revision)

    async def current(self) -> str | None:
        return await self._run("current", "current")

    async def require_head(self) -> None:
        current, head = await self.current(), self.head_revision()
        if current != head:
            raise SchemaMismatch(
                f"schema {self._settings.db_schema!r} is at revision {current or 'none'}, this package needs {head}: "
                "run `oneiric-memory db upgrade` (or enable postgres.auto_migrate)",
                current=current, head=head)


def describe(settings: PostgresSettings) -> dict[str, Any]:
    return {"schema": settings.db_schema, "dimension": settings.vector_dimension, "vector_type": settings.vector_type}
