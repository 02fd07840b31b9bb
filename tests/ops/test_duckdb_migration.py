"""``migrate-duckdb``: Session-Buddy DuckDB files -> PostgreSQL, on real parts only.

The source files are written by the real session-buddy package (see ``duckdb_migration_fixtures``), the target
is the session's embedded PostgreSQL, embeddings come from the hashing embedder or a loopback Ollama-speaking
HTTP server. Nothing is mocked; a crash is simulated by a fault hook or by SIGKILL on a child process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import pytest_asyncio
from typer.testing import CliRunner

from oneiric_memory.adapters.embedders.hashing import HashingEmbedder
from oneiric_memory.adapters.embedders.ollama import OllamaEmbedder
from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.errors import InsightSinkError, SourceLocked
from oneiric_memory.ops.duckdb_migration import DuckDBMigration, ProgressEvent
from oneiric_memory.records import MemoryRecord
from oneiric_memory.settings import MemorySettings
from oneiric_memory.testing.fake_ollama import FakeOllama
from tests.duckdb_migration_fixtures import (
    CONVERSATIONS,
    HOSTILE,
    INSIGHTS,
    LEGACY_REFLECTIONS,
    build_legacy_file,
    build_session_buddy_files,
    has_insight_column,
)
from tests.support import make_settings

DIM = 64
MAX_CONTENT = 50_000
TOTAL_V2_ROWS = 13  # 3 conversations + 5 reflections_v2 rows + 3 entities + 2 relations
TOTAL_V2_MEMORIES = 12  # two reflections share their content: one memory, two items


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sb_files() -> dict[str, Path]:
    """Files written through Session-Buddy's own API (in a child process; cached, see the fixtures module)."""
    return build_session_buddy_files()


@pytest.fixture
def files(sb_files: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """Private copies per test: no test can disturb another's source."""
    out = {name: Path(shutil.copy(path, tmp_path / path.name)) for name, path in sb_files.items()}
    out["legacy"] = tmp_path / "legacy.duckdb"
    build_legacy_file(out["legacy"])
    return out


@pytest.fixture
def msettings(pg_server: Any, pg_data_dir: Path) -> MemorySettings:
    return make_settings(pg_data_dir, postgres={"vector_dimension": DIM, "max_content_bytes": MAX_CONTENT})


@pytest_asyncio.fixture
async def mstore(msettings: MemorySettings) -> AsyncIterator[PgvectorMemoryStore]:
    store = PgvectorMemoryStore(msettings)
    await store.init()
    try:
        yield store
    finally:
        async with store.gate.acquire() as connection:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
        await store.cleanup()


@pytest.fixture
def migration(mstore: PgvectorMemoryStore, msettings: MemorySettings) -> DuckDBMigration:
    return DuckDBMigration(mstore, HashingEmbedder(msettings), msettings)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def memories(store: PgvectorMemoryStore) -> list[dict[str, Any]]:
    async with store.gate.acquire() as connection:
        rows = await connection.fetch(
            f"SELECT id, project, memory_type, content, content_hash, metadata, created_at, embedding_model, "
            f"embedding IS NULL AS pending FROM {store.table('memories')} ORDER BY created_at, id")
    return [dict(r) for r in rows]


async def scalar(store: PgvectorMemoryStore, sql: str, *args: Any) -> Any:
    """Run ``sql`` with ``{items}``, ``{memories}`` and ``{checkpoints}`` naming the test schema's tables."""
    tables = {"items": "migration_items", "memories": "memories", "checkpoints": "migration_checkpoints"}
    async with store.gate.acquire() as connection:
        return await connection.fetchval(sql.format(**{k: store.table(v) for k, v in tables.items()}), *args)


def source_rows(path: Path, table: str) -> dict[str, dict[str, Any]]:
    connection = duckdb.connect(str(path), read_only=True)
    try:
        cursor = connection.execute(f"SELECT * EXCLUDE (embedding) FROM {table}")
        names = [d[0] for d in cursor.description or []]
        return {str(row[0]): dict(zip(names, row, strict=True)) for row in cursor.fetchall()}
    finally:
        connection.close()


def rid(report: Any) -> uuid.UUID:
    assert report.run_id is not None
    return report.run_id  # type: ignore[no-any-return]


def by_source(rows: list[dict[str, Any]], table: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["source"]["id"]: r for r in rows if r["metadata"]["source"]["table"] == table}


# --- inventory and mapping -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_inventory_and_dry_run_write_nothing(migration: DuckDBMigration, mstore: PgvectorMemoryStore,
                                                   files: dict[str, Path]) -> None:
    inventory = await migration.inventory(files["reflection"], files["knowledge_graph"])
    tables = {t.name: t for t in inventory.tables}
    assert inventory.size_bytes == files["reflection"].stat().st_size
    assert inventory.kg_size_bytes == files["knowledge_graph"].stat().st_size
    assert inventory.families == ["knowledge_graph", "v2"]
    assert (tables["conversations_v2"].rows, tables["conversations_v2"].migrate) == (3, True)
    assert tables["reflections_v2"].split == {"insight": 2, "agent": 3}
    columns = {c.name for c in tables["reflections_v2"].columns}
    if has_insight_column(files["reflection"]):  # Session-Buddy 0.23
        assert {"insight_type", "embedding", "tags"} <= columns
    else:  # 0.36: insights are tagged reflections; provenance columns instead
        assert {"source_session_id", "source_artifact_uri", "embedding", "tags"} <= columns
        assert not {"insight_type", "usage_count", "last_used_at", "confidence_score"} & columns
    assert (tables["kg_entities"].rows, tables["kg_relationships"].rows) == (3, 2)
    migrated = {"conversations_v2", "reflections_v2", "kg_entities", "kg_relationships"}
    assert {name for name, table in tables.items() if table.migrate} == migrated  # e.g. 0.23's query_cache_l2 not
    assert inventory.rows_to_migrate == TOTAL_V2_ROWS

    report = await migration.run(files["reflection"], files["knowledge_graph"], dry_run=True)
    assert report.status == "dry_run" and report.run_id is None and report.inventory is not None
    assert {t.table: t.to_migrate for t in report.tables} == {
        "conversations_v2": 3, "reflections_v2": 5, "kg_entities": 3, "kg_relationships": 2}
    assert await mstore.count() == 0
    assert await migration.list_runs() == []


@pytest.mark.asyncio
async def test_v2_and_knowledge_graph_map_correctly(migration: DuckDBMigration, mstore: PgvectorMemoryStore,
                                                    msettings: MemorySettings, files: dict[str, Path]) -> None:
    before = {name: sha256(path) for name, path in files.items()}
    events: list[ProgressEvent] = []
    report = await migration.run(files["reflection"], files["knowledge_graph"], batch_size=2,
                                 progress=events.append)
    assert report.status == "completed" and report.errors == 0
    assert report.added == TOTAL_V2_MEMORIES
    per_table = {t.table: t for t in report.tables}
    assert (per_table["reflections_v2"].added, per_table["reflections_v2"].deduplicated) == (4, 1)
    assert per_table["reflections_v2"].target_rows == 5
    assert events[-1].phase == "done" and any(e.phase == "batch" for e in events)

    rows = await memories(mstore)
    assert len(rows) == TOTAL_V2_MEMORIES
    assert all(not r["pending"] and r["embedding_model"] == f"hashing:v1:{DIM}" for r in rows)

    conversations = by_source(rows, "conversations_v2")
    sources = source_rows(files["reflection"], "conversations_v2")
    assert set(conversations) == set(sources)
    for sid, row in conversations.items():
        source = sources[sid]
        assert row["memory_type"] == "agent"
        assert row["content"] == source["content"]  # as Session-Buddy stored it (it redacts)
        assert row["project"] == (source["project"] or "default")
        assert row["metadata"]["source"]["project"] == source["project"]
        assert row["metadata"]["source"]["timestamp"].startswith(source["timestamp"].isoformat()[:19])
        assert row["created_at"].replace(tzinfo=None) == source["timestamp"]
    assert sorted(r["project"] for r in conversations.values()) == sorted(p or "default" for _, p in CONVERSATIONS)

    reflections = by_source(rows, "reflections_v2")
    insights = {r["content"]: r for r in reflections.values() if r["memory_type"] == "insight"}
    assert set(insights) == {content for content, _, _ in INSIGHTS}
    typed = has_insight_column(files["reflection"])
    for content, insight_type, topics in INSIGHTS:
        insight = insights[content]
        assert insight["metadata"]["insight_type"] == insight_type
        assert insight["metadata"]["tags"] == topics  # 0.36: the sink's marker tags are not topics
        if typed:  # 0.23's store_insight: quality score in its metadata, project dropped
            assert insight["metadata"]["source"]["metadata"]["quality_score"] == 0.5
            assert insight["project"] == "default"
        else:  # 0.36's store_reflection: project column and the new provenance columns, raw tags kept in source
            assert insight["project"] == "alpha"
            source = insight["metadata"]["source"]
            assert (source["source_session_id"], source["source_artifact_uri"]) == (
                "session-1", f"oneiric-memory://{insight_type}")
            assert source["tags"][:2] == ["insight", insight_type] and "project:alpha" in source["tags"]
    agents = [r for r in reflections.values() if r["memory_type"] == "agent"]
    assert sorted(r["content"] for r in agents) == ["Always pass use_cache=False to the reflection search.",
                                                    "Batch upserts are faster through COPY."]
    copy = next(r for r in agents if r["content"].startswith("Batch"))
    assert copy["project"] == "alpha" and copy["metadata"]["tags"] in (["perf", "postgres"], ["dup"])
    assert await scalar(mstore, "SELECT count(DISTINCT memory_id) FROM {items} "
                                "WHERE source_table = 'reflections_v2' AND project = 'alpha'") == (
        1 if typed else 1 + len(INSIGHTS))

    relations = by_source(rows, "kg_relationships")
    assert sorted(r["content"] for r in relations.values()) == [
        "oneiric-memory depends on session-buddy", "session-buddy uses duckdb"]
    edge = next(r for r in relations.values() if r["content"].startswith("oneiric"))
    assert edge["memory_type"] == "insight" and edge["metadata"]["relation"] == "depends_on"
    assert [e["name"] for e in edge["metadata"]["entities"]] == ["oneiric-memory", "session-buddy"]
    entities = {r["content"] for r in by_source(rows, "kg_entities").values()}
    assert "duckdb (library)\n- embedded analytics database\n- one writer process per file" in entities

    # Re-embedded with this package's embedder; Session-Buddy's vectors are never read.
    vector = await mstore.get_embedding(edge["id"])
    expected = (await HashingEmbedder(msettings).embed_documents([edge["content"]]))[0]
    assert vector is not None and len(vector) == DIM
    assert vector == pytest.approx(expected, abs=2e-3)

    assert {name: sha256(path) for name, path in files.items()} == before  # the source is never modified
    validation = await migration.validate(rid(report))
    assert validation.ok and [t.hash_checked for t in validation.tables] == [3, 5, 3, 2]


@pytest.mark.asyncio
async def test_legacy_only_file(migration: DuckDBMigration, mstore: PgvectorMemoryStore,
                                files: dict[str, Path]) -> None:
    inventory = await migration.inventory(files["legacy"])
    assert inventory.families == ["legacy"]
    assert {t.name: t.migrate for t in inventory.tables} == {
        "conversations": True, "project_groups": False, "reflection_tags": False, "reflections": True}

    report = await migration.run(files["legacy"], project="imported")
    assert report.added == 4 and report.errors == 0
    rows = await memories(mstore)
    assert {r["project"] for r in rows} == {"imported"}
    assert {r["memory_type"] for r in rows} == {"agent"}
    conversations = by_source(rows, "conversations")
    first = conversations["a3f1c2d4e5b6a7980112233445566778"]
    assert first["created_at"].isoformat() == "2024-03-01T12:00:00+00:00"  # legacy "timestamp", read as UTC
    assert first["metadata"]["source"]["project"] == "legacy-proj"
    assert first["metadata"]["source"]["metadata"] == {"origin": "legacy"}
    reflections = by_source(rows, "reflections")
    for source_id, content, _, tags, extra, _ in LEGACY_REFLECTIONS:
        assert reflections[source_id]["content"] == content
        assert reflections[source_id]["metadata"]["tags"] == [*(tags or []), *(t for t in extra if t not in (tags or []))]
    assert (await migration.validate(rid(report))).ok


# --- idempotency, resume, rollback ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_second_run_adds_nothing(migration: DuckDBMigration, mstore: PgvectorMemoryStore,
                                       files: dict[str, Path]) -> None:
    first = await migration.run(files["reflection"], files["knowledge_graph"])
    items = await scalar(mstore, "SELECT count(*) FROM {items}")
    second = await migration.run(files["reflection"], files["knowledge_graph"])
    assert first.added == TOTAL_V2_MEMORIES and items == TOTAL_V2_ROWS
    assert second.run_id != first.run_id and second.added == 0 and second.skipped == TOTAL_V2_ROWS
    assert all(t.to_migrate == 0 and t.target_rows == t.source_rows for t in second.tables)
    assert await mstore.count() == TOTAL_V2_MEMORIES
    assert await scalar(mstore, "SELECT count(*) FROM {items}") == TOTAL_V2_ROWS


@pytest.mark.asyncio
async def test_crash_between_upsert_and_items_then_resume(mstore: PgvectorMemoryStore, msettings: MemorySettings,
                                                          files: dict[str, Path]) -> None:
    class Crash(RuntimeError):
        pass

    # With batch_size=1 batch k is the k-th reflections_v2 row in id order. Crash on the first row (k >= 1) whose
    # content is new, so its memory is inserted and committed but its item is never written.
    ordered = [row["content"] for _, row in sorted(source_rows(files["reflection"], "reflections_v2").items())]
    crash_at = next(k for k in range(1, len(ordered)) if ordered[k] not in ordered[:k])

    def crash(table: str, seq: int) -> None:
        if table == "reflections_v2" and seq == crash_at:
            raise Crash("simulated crash after the memories were committed, before their items")

    crashing = DuckDBMigration(mstore, HashingEmbedder(msettings), msettings, fault_hook=crash)
    with pytest.raises(Crash):
        await crashing.run(files["reflection"], files["knowledge_graph"], batch_size=1, concurrency=1)
    [failed] = await crashing.list_runs()
    assert failed.status == "failed" and "simulated crash" in (failed.error or "")
    assert await mstore.count() == 3 + len(set(ordered[:crash_at + 1]))  # includes the crashed batch's memory
    assert await scalar(mstore, "SELECT count(*) FROM {items}") == 3 + crash_at  # but not its item
    assert await scalar(mstore, "SELECT last_source_id IS NOT NULL FROM {checkpoints} "
                                "WHERE source_table = 'reflections_v2'") is True

    resumed = await DuckDBMigration(mstore, HashingEmbedder(msettings), msettings).run(
        files["reflection"], files["knowledge_graph"], batch_size=2)
    assert resumed.resumed and resumed.run_id == failed.run_id
    assert resumed.added == TOTAL_V2_MEMORIES  # the whole run's work, including before the crash
    assert {t.table: (t.added, t.deduplicated) for t in resumed.tables}["reflections_v2"] == (4, 1)
    assert await mstore.count() == TOTAL_V2_MEMORIES
    assert await scalar(mstore, "SELECT count(DISTINCT (project, memory_type, content_hash)) FROM {memories}") \
        == TOTAL_V2_MEMORIES
    assert await scalar(mstore, "SELECT count(*) FROM {items} WHERE inserted") == TOTAL_V2_MEMORIES
    assert (await crashing.validate(rid(resumed))).ok
    rollback = await crashing.rollback(failed.run_id)
    assert rollback.memories_deleted == TOTAL_V2_MEMORIES and await mstore.count() == 0


@pytest.mark.asyncio
async def test_sigkill_mid_run_then_resume(mstore: PgvectorMemoryStore, msettings: MemorySettings,
                                           pg_data_dir: Path, files: dict[str, Path], tmp_path: Path) -> None:
    """A real kill: the child migrates with small concurrent batches and SIGKILLs itself at its 2nd checkpoint."""
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(f"""
        import asyncio, os, signal
        from pathlib import Path
        from oneiric_memory.adapters.embedders.hashing import HashingEmbedder
        from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
        from oneiric_memory.ops.duckdb_migration import DuckDBMigration
        from oneiric_memory.settings import load_settings

        async def main():
            settings = load_settings({{"postgres": {{"embedded_data_dir": {str(pg_data_dir)!r},
                                                    "db_schema": {mstore.schema!r}, "max_connections": 4,
                                                    "vector_dimension": {DIM}, "max_content_bytes": {MAX_CONTENT}}},
                                      "embedder": {{"provider": "hashing"}}, "session_buddy": {{"enabled": False}}}},
                                     root=Path({str(pg_data_dir.parent)!r}), environ={{}})
            store = PgvectorMemoryStore(settings)
            await store.init()
            seen = []
            def progress(event):
                if event.phase == "batch":
                    seen.append(event)
                    if len(seen) == 2:
                        print("checkpoint", flush=True)
                        os.kill(os.getpid(), signal.SIGKILL)
            await DuckDBMigration(store, HashingEmbedder(settings), settings).run(
                {str(files["reflection"])!r}, {str(files["knowledge_graph"])!r}, batch_size=1, concurrency=3,
                progress=progress)
        asyncio.run(main())
    """))
    result = subprocess.run([sys.executable, str(child)], capture_output=True, text=True, timeout=240,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == -9, result.stderr[-2000:]
    assert "checkpoint" in result.stdout
    [killed] = await DuckDBMigration(mstore, HashingEmbedder(msettings), msettings).list_runs()
    assert killed.status == "running"  # nobody could mark it: it was killed
    assert 0 < await mstore.count() < TOTAL_V2_MEMORIES

    migration = DuckDBMigration(mstore, HashingEmbedder(msettings), msettings)
    resumed = await migration.run(files["reflection"], files["knowledge_graph"])
    assert resumed.resumed and resumed.run_id == killed.run_id
    assert resumed.added == TOTAL_V2_MEMORIES and await mstore.count() == TOTAL_V2_MEMORIES
    assert await scalar(mstore, "SELECT count(*) FROM {items}") == TOTAL_V2_ROWS
    assert (await migration.validate(rid(resumed))).ok
    await migration.rollback(rid(resumed))
    assert await mstore.count() == 0


@pytest.mark.asyncio
async def test_rollback_removes_exactly_that_run(migration: DuckDBMigration, mstore: PgvectorMemoryStore,
                                                 files: dict[str, Path]) -> None:
    pre = await mstore.upsert_many([
        MemoryRecord(content=CONVERSATIONS[0][0], project="alpha", metadata={"mine": True}),  # a source row's twin
        MemoryRecord(content="unrelated memory written by someone else", project="alpha"),
    ])
    report = await migration.run(files["reflection"], files["knowledge_graph"])
    assert report.added == TOTAL_V2_MEMORIES - 1  # one row mapped to the pre-existing twin
    assert await mstore.count() == TOTAL_V2_MEMORIES + 1

    rollback = await migration.rollback(rid(report))
    assert (rollback.memories_deleted, rollback.items_deleted) == (TOTAL_V2_MEMORIES - 1, TOTAL_V2_ROWS)
    survivors = await memories(mstore)
    assert sorted(r["id"] for r in survivors) == sorted(pre.ids)
    assert next(r for r in survivors if r["id"] == pre.ids[0])["metadata"] == {"mine": True}
    [run] = await migration.list_runs()
    assert run.status == "rolled_back" and run.counts["rollback"]["memories_deleted"] == TOTAL_V2_MEMORIES - 1
    assert await scalar(mstore, "SELECT count(*) FROM {checkpoints}") == 0
    assert (await migration.rollback(rid(report))).memories_deleted == 0

    again = await migration.run(files["reflection"], files["knowledge_graph"])  # the source comes back whole
    assert again.added == TOTAL_V2_MEMORIES - 1 and (await migration.validate(rid(again))).ok


@pytest.mark.asyncio
async def test_rollback_hands_shared_memories_to_the_other_run(migration: DuckDBMigration,
                                                               mstore: PgvectorMemoryStore,
                                                               files: dict[str, Path], tmp_path: Path) -> None:
    copy = Path(shutil.copy(files["reflection"], tmp_path / "copy-of-reflection.duckdb"))
    first = await migration.run(files["reflection"], source_id="laptop")
    second = await migration.run(copy, source_id="desktop")  # same content: maps to the same memories
    assert first.added == 7 and second.added == 0
    rollback = await migration.rollback(rid(first))
    assert (rollback.memories_deleted, rollback.memories_kept_shared) == (0, 7)
    assert await mstore.count() == 7 and (await migration.validate(rid(second))).ok
    assert (await migration.rollback(rid(second))).memories_deleted == 7
    assert await mstore.count() == 0


# --- hostile and locked sources ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_locked_source_gives_a_clear_error(migration: DuckDBMigration, files: dict[str, Path]) -> None:
    path = files["reflection"]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); "
                               "sys.stdin.readline()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(SourceLocked) as caught:
            await migration.run(path)
        assert str(caught.value) == (f"Session-Buddy holds {path}: stop Session-Buddy or copy the file and "
                                     "migrate the copy")
        assert isinstance(caught.value, InsightSinkError)
        with pytest.raises(SourceLocked):
            await migration.inventory(path)
        assert await migration.list_runs() == []
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=30)


@pytest.mark.asyncio
async def test_hostile_content_is_migrated_or_reported(migration: DuckDBMigration, mstore: PgvectorMemoryStore,
                                                       pg_data_dir: Path, files: dict[str, Path]) -> None:
    report = await migration.run(files["hostile"], batch_size=2)
    assert report.status == "completed"
    reasons = {issue.source_id: issue.reason for issue in report.issues}
    assert report.errors == 2 and len(reasons) == 2
    assert reasons["blank-row"] == "content is empty"
    assert any("over postgres.max_content_bytes=50000" in reason for reason in reasons.values())

    rows = {r["content"]: r for r in await memories(mstore)}
    nul = rows[HOSTILE["nul"].replace("\x00", "")]
    assert "nul_bytes" in nul["metadata"]["source"]["sanitized"] and nul["metadata"]["tags"] == ["nultag"]
    assert rows[HOSTILE["quotes"]]["memory_type"] == "agent"
    bad = rows[HOSTILE["bad_json"]]["metadata"]["source"]
    assert bad["metadata"] is None and bad["metadata_raw"] == '{"project": "x", oops'
    assert "invalid_json:metadata" in bad["sanitized"]
    odd = rows[HOSTILE["nan_json"]]["metadata"]["source"]
    assert odd["metadata"] == {"v": None, "nul": "ab", "deep": [[[1]]]}
    assert {"non_finite_number", "nul_bytes"} <= set(odd["sanitized"])

    validation = await migration.validate(rid(report))
    assert validation.ok and sum(t.skipped for t in validation.tables) == 2 and len(validation.warnings) == 2

    # Raise the limit and run again: the skipped huge row is retried and migrated, nothing else changes.
    roomy = make_settings(pg_data_dir, schema=mstore.schema, postgres={"vector_dimension": DIM,
                                                                      "max_content_bytes": 200_000})
    store = PgvectorMemoryStore(roomy)
    await store.init()
    try:
        retry = await DuckDBMigration(store, HashingEmbedder(roomy), roomy).run(files["hostile"])
        assert (retry.added, retry.errors) == (1, 1)
        assert HOSTILE["huge"] in {r["content"] for r in await memories(store)}
    finally:
        await store.cleanup()


@pytest.mark.asyncio
async def test_validation_catches_a_corrupted_target(migration: DuckDBMigration, mstore: PgvectorMemoryStore,
                                                     files: dict[str, Path]) -> None:
    report = await migration.run(files["reflection"], files["knowledge_graph"])
    assert (await migration.validate(rid(report), sample=2, seed=1)).ok
    rows = await memories(mstore)
    deleted = next(r for r in rows if r["metadata"]["source"]["table"] == "conversations_v2")
    altered = next(r for r in rows if r["metadata"]["source"]["table"] == "kg_relationships")
    assert await mstore.delete(ids=[deleted["id"]]) == 1
    await scalar(mstore, "UPDATE {memories} SET content = content || ' (edited)' WHERE id = $1", altered["id"])

    validation = await migration.validate(rid(report))
    assert not validation.ok
    tables = {t.table: t for t in validation.tables}
    assert (tables["conversations_v2"].orphaned, tables["conversations_v2"].ok) == (1, False)
    assert (tables["kg_relationships"].hash_mismatches, tables["kg_relationships"].ok) == (1, False)
    assert tables["reflections_v2"].ok and tables["kg_entities"].ok
    assert any("differs from the source" in p for p in validation.problems)

    repaired = await migration.run(files["reflection"], files["knowledge_graph"])  # a rerun restores the deleted row
    assert repaired.added == 1
    assert {t.table: t.ok for t in (await migration.validate(rid(report))).tables}["conversations_v2"]


# --- embedders ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_loopback_ollama_embeds_and_ollama_down_leaves_rows_pending(
        pg_server: Any, pg_data_dir: Path, files: dict[str, Path]) -> None:
    with FakeOllama(dimension=DIM, models=("nomic-embed-text",)) as fake:
        settings = make_settings(pg_data_dir, postgres={"vector_dimension": DIM},
                                 embedder={"provider": "ollama", "base_url": fake.base_url, "retry_attempts": 1,
                                           "total_timeout_s": 5, "connect_timeout_s": 1})
        store = PgvectorMemoryStore(settings)
        await store.init()
        embedder = OllamaEmbedder(settings)
        try:
            await embedder.init()
            report = await DuckDBMigration(store, embedder, settings).run(files["reflection"])
            assert report.added == 7 and report.pending_embeddings == 0 and await store.count_pending() == 0
            assert store.embedding_model == "ollama:nomic-embed-text"
            assert fake.embed_requests

            fake.stop()  # Ollama goes down: rows are still stored, embedding pending, the run completes
            down = await DuckDBMigration(store, embedder, settings).run(files["knowledge_graph"])
            assert down.status == "completed" and down.added == 5 and down.pending_embeddings == 5
            assert await store.count_pending() == 5
        finally:
            await embedder.cleanup()
            async with store.gate.acquire() as connection:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
            await store.cleanup()


# --- the CLI --------------------------------------------------------------------------------------------


@pytest.fixture
def cli_app() -> Iterator[Any]:
    from oneiric_memory import cli

    yield cli.app


def test_cli_migrates_validates_and_rolls_back(cli_app: Any, pg_server: Any, pg_data_dir: Path,
                                               files: dict[str, Path], tmp_path: Path) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    env = {"MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__EMBEDDED_DATA_DIR": str(pg_data_dir),
           "MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__DB_SCHEMA": schema,
           "MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__VECTOR_DIMENSION": str(DIM),
           "MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__PROVIDER": "hashing"}
    runner = CliRunner()
    root = ["--settings-root", str(tmp_path)]
    try:
        dry = runner.invoke(cli_app, [*root, "migrate-duckdb", str(files["reflection"]), "--dry-run"], env=env)
        assert dry.exit_code == 0, dry.output
        assert "conversations_v2" in dry.output and "dry run" in dry.output

        done = runner.invoke(cli_app, [*root, "migrate-duckdb", str(files["reflection"]), "--knowledge-graph",
                                       str(files["knowledge_graph"]), "--batch-size", "4", "--json",
                                       "--no-validate"], env=env)
        assert done.exit_code == 0, done.output
        report = json.loads(done.stdout)
        assert report["added"] == TOTAL_V2_MEMORIES and report["status"] == "completed"
        run_id = report["run_id"]

        ok = runner.invoke(cli_app, [*root, "migrate-duckdb", "--validate", run_id], env=env)
        assert ok.exit_code == 0, ok.output

        empty = runner.invoke(cli_app, [*root, "migrate-duckdb", "--validate", str(uuid.uuid4())], env=env)
        assert empty.exit_code == 5  # unknown run id: invalid input

        back = runner.invoke(cli_app, [*root, "migrate-duckdb", "--rollback", run_id, "--json"], env=env)
        assert back.exit_code == 0, back.output
        assert json.loads(back.stdout)["memories_deleted"] == TOTAL_V2_MEMORIES

        legacy = runner.invoke(cli_app, [*root, "migrate-duckdb", str(files["legacy"]), "--json", "--no-validate"],
                               env=env)
        assert legacy.exit_code == 0, legacy.output
        legacy_run = json.loads(legacy.stdout)["run_id"]
        con = duckdb.connect(str(files["legacy"]))  # the source grows after the migration
        con.execute("INSERT INTO conversations VALUES ('e3f1', 'a row added later', NULL, NULL, NULL, NULL)")
        con.close()
        failed = runner.invoke(cli_app, [*root, "migrate-duckdb", "--validate", legacy_run], env=env)
        assert failed.exit_code == 7, failed.output  # check_failed
        assert "has not been migrated" in failed.output
    finally:
        import asyncio

        async def drop() -> None:
            settings = make_settings(pg_data_dir, schema=schema, postgres={"vector_dimension": DIM})
            store = PgvectorMemoryStore(settings)
            await store.init()
            async with store.gate.acquire() as connection:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await store.cleanup()

        asyncio.run(drop())



@pytest.mark.asyncio
async def test_alembic_revision_downgrades_and_upgrades(mstore: PgvectorMemoryStore) -> None:
    from oneiric_memory.adapters.pgvector.migrator import Migrator

    async def tables() -> set[str]:
        async with mstore.gate.acquire() as connection:
            rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", mstore.schema)
        return {r["tablename"] for r in rows}

    ours = {"migration_runs", "migration_items", "migration_checkpoints"}
    migrator = Migrator(mstore.connect_params, mstore.settings.postgres)
    assert ours <= await tables()
    assert await migrator.downgrade("0001_initial") == "0001_initial"
    assert not ours & await tables() and "memories" in await tables()
    assert await migrator.upgrade() == migrator.head_revision()
    assert ours <= await tables()
