"""Backup and restore with the real pg_dump/pg_restore against the embedded PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.adapters.pgvector.connection import ConnectParams
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.errors import ConfigurationError, InvalidInput, StoreError
from oneiric_memory.insights import Insight
from oneiric_memory.ops.backup import archive_schemas, backup, find_pg_binary, libpq_environment, restore
from oneiric_memory.records import MemoryRecord
from tests.ops_fixtures import clustered_vectors, load, open_store
from tests.support import make_settings

TABLES = ("memories", "memory_access", "insight_outbox", "embedding_meta", "rag_ingestions", "alembic_version")


async def snapshot(store: PgvectorMemoryStore) -> dict[str, tuple[int, str]]:
    """Row count and a hash over every column of every row, per table."""
    result: dict[str, tuple[int, str]] = {}
    async with store.gate.acquire() as connection:
        for table in TABLES:
            row = await connection.fetchrow(
                f"SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS h "
                f"FROM {store.table(table)} t")
            result[table] = (int(row["n"]), str(row["h"]))
    return result


async def populate(store: PgvectorMemoryStore) -> None:
    await load(store, clustered_vectors(60), prefix="backed up")
    result = await store.upsert_many(
        [MemoryRecord(content=f"pending {i}", metadata={"n": i, "tags": ["a", "b"]}) for i in range(3)]
        + [MemoryRecord(content="with an insight", embedding=clustered_vectors(1, seed=9)[0], memory_type="insight")],
        insights=[[], [], [], [Insight(insight_id="ins-1", content="an insight", topics=("ops",))]])
    await store.touch(result.ids[:2])
    async with store.gate.acquire() as connection:
        await connection.execute(
            f"INSERT INTO {store.table('rag_ingestions')} (project, repo_id, status, documents) VALUES ('default', 'repo', 'completed', 2)")


@pytest.mark.asyncio
async def test_backup_wipe_restore_round_trip(pg_server: EmbeddedConnectInfo, pg_data_dir: Path,
                                              tmp_path: Path) -> None:
    async with open_store(pg_data_dir) as store:
        await populate(store)
        before = await snapshot(store)
        assert before["memories"][0] == 64 and before["insight_outbox"][0] == 1 and before["memory_access"][0] == 2

        target = tmp_path / "nested" / "memory.dump"
        result = await backup(store, target)
        assert result.path == target and target.is_file() and result.bytes == target.stat().st_size > 0
        assert result.entries > 10 and result.schema == store.schema
        assert not list(target.parent.glob("*.partial"))

        async with store.gate.acquire() as connection:  # wipe
            await connection.execute(f'DROP SCHEMA "{store.schema}" CASCADE')

        restored = await restore(store, target)
        assert restored.schema == store.schema
        assert await snapshot(store) == before
        hits = await store.search(query_embedding=clustered_vectors(1)[0], mode="vector", limit=3)
        assert hits[0].score == pytest.approx(1.0, abs=1e-2)
        async with store.gate.acquire() as connection:
            valid = await connection.fetchval(
                "SELECT bool_and(i.indisvalid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1", store.schema)
        assert valid is True

        await store.upsert_many([MemoryRecord(content="written after the backup")])
        await restore(store, target)  # over live data: --clean replaces it in one transaction
        assert await snapshot(store) == before


@pytest.mark.asyncio
async def test_backup_from_settings_and_schema_guard(pg_server: EmbeddedConnectInfo, pg_data_dir: Path,
                                                    tmp_path: Path) -> None:
    async with open_store(pg_data_dir) as store:
        await populate(store)
        before = await snapshot(store)
        result = await backup(store.settings, tmp_path / "by-settings.dump")  # attaches to the embedded server
        listing = await asyncio.to_thread(
            lambda: __import__("subprocess").run([str(find_pg_binary("pg_restore")), "--list", str(result.path)],
                                                 capture_output=True, text=True, check=True).stdout)
        assert archive_schemas(listing) == [store.schema]

        other = make_settings(pg_data_dir, postgres={"vector_dimension": 32})
        with pytest.raises(InvalidInput, match="not the configured"):
            await restore(other, result.path)

        async with store.gate.acquire() as connection:
            await connection.execute(f'DROP SCHEMA "{store.schema}" CASCADE')
        await restore(store.settings, result.path)
        await store.pool.expire_connections()
        assert await snapshot(store) == before


@pytest.mark.asyncio
async def test_password_goes_to_the_environment_never_the_command_line(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = "pw-never-on-argv-4711"
    calls: list[tuple[tuple[Any, ...], dict[str, str]]] = []
    real: Callable[..., Any] = asyncio.create_subprocess_exec

    async def recording(*args: Any, **kwargs: Any) -> Any:  # a spy: the real subprocess still runs
        calls.append((args, dict(kwargs["env"])))
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recording)  # backup looks it up at call time
    async with open_store(pg_data_dir) as store:
        await populate(store)
        # the same server reached as an "external" one, with a password (trust auth ignores it)
        external = make_settings(pg_data_dir, schema=store.schema, postgres={
            "host": pg_server.host, "port": pg_server.port, "user": pg_server.user, "password": password,
            "vector_dimension": 32})
        await backup(external, tmp_path / "external.dump")
        await restore(external, tmp_path / "external.dump")
    assert len(calls) == 4  # pg_dump, --list; --list, pg_restore
    for args, env in calls:
        assert all(password not in str(arg) for arg in args)
        assert env["PGPASSWORD"] == password and env["PGHOST"] == pg_server.host


def test_libpq_environment_moves_dsn_passwords_out_of_the_arguments() -> None:
    env, args = libpq_environment(
        ConnectParams(dsn="postgresql://app:s3cr%40t@db.example:5433/mem?sslmode=require&password=ignored"),
        base={"PGHOST": "elsewhere", "PATH": "/bin"})
    assert env["PGPASSWORD"] == "ignored" and "PGHOST" not in env and env["PATH"] == "/bin"
    assert args == ["--dbname=postgresql://app@db.example:5433/mem?sslmode=require"]
    env, args = libpq_environment(ConnectParams(dsn="postgresql://app:s3cr%40t@db.example/mem"), base={})
    assert env["PGPASSWORD"] == "s3cr@t" and args == ["--dbname=postgresql://app@db.example/mem"]
    env, args = libpq_environment(ConnectParams(dsn="host=db user=app password='p w' dbname=mem"), base={})
    assert env["PGPASSWORD"] == "p w" and args == ["--dbname=host=db user=app dbname=mem"]
    env, args = libpq_environment(ConnectParams(host="/run/pg", port=5433, user="u", database="d", password="x",
                                                ssl="require"), base={})
    assert args == [] and env == {"PGHOST": "/run/pg", "PGPORT": "5433", "PGUSER": "u", "PGDATABASE": "d",
                                  "PGPASSWORD": "x", "PGSSLMODE": "require", "PGAPPNAME": "oneiric-memory-backup"}


@pytest.mark.asyncio
async def test_missing_binaries_and_failures_are_explained(pg_server: EmbeddedConnectInfo, pg_data_dir: Path,
                                                           tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="apt install postgresql-client"):
        find_pg_binary("pg_dump", bin_dir=tmp_path)
    with pytest.raises(InvalidInput):
        find_pg_binary("rm")
    assert find_pg_binary("pg_restore").name == "pg_restore"
    with pytest.raises(InvalidInput, match="does not exist"):
        await restore(make_settings(pg_data_dir), tmp_path / "missing.dump")

    broken = make_settings(pg_data_dir, postgres={"database": "no_such_database"})
    with pytest.raises(StoreError, match=r"pg_dump .* failed") as raised:
        await backup(broken, tmp_path / "never.dump")
    assert "no_such_database" in raised.value.message
    assert not list(tmp_path.glob("never.dump*"))
