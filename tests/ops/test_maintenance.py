"""Maintenance against a real embedded PostgreSQL: bloat, rebuilds, expiry, autovacuum, the periodic task."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore, ivfflat_lists_for
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.errors import InvalidInput
from oneiric_memory.ops.maintenance import (
    AUTOVACUUM_SETTINGS,
    PACKAGE_TABLES,
    Maintenance,
    MaintenanceBusy,
    ivfflat_probes_for,
    run_periodically,
)
from oneiric_memory.ops.monitoring import Monitor
from oneiric_memory.records import MemoryRecord
from tests.ops_fixtures import clustered_vectors, dead_tuples, delete_rows, load, open_store, vector_index_options

pytestmark = pytest.mark.asyncio


async def _disable_autovacuum(store: PgvectorMemoryStore) -> None:
    """Keep the server's autovacuum from cleaning up before the test's own maintenance does."""
    async with store.gate.acquire() as connection:
        await connection.execute(f"ALTER TABLE {store.table('memories')} SET (autovacuum_enabled = false)")


async def _meta(store: PgvectorMemoryStore) -> asyncpg.Record:
    async with store.gate.acquire() as connection:
        row = await connection.fetchrow(
            f"SELECT index_built_rows, index_built_at FROM {store.table('embedding_meta')}")
    assert row is not None
    return row


async def test_bloat_scenario_auto_reindexes_then_vacuums(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    vectors = clustered_vectors(3000)
    async with open_store(pg_data_dir) as store:
        await load(store, vectors, bulk=True)
        await _disable_autovacuum(store)
        maintenance = Maintenance(store)
        await maintenance.vacuum()
        assert (await _meta(store))["index_built_rows"] == 3000

        quiet = await maintenance.auto()
        assert quiet.actions == [], quiet.to_dict()
        assert quiet.observations["recall_canary"] >= 0.9

        deleted = await delete_rows(store, "memory_type = 'agent' AND content NOT LIKE '%topic 0'")
        assert deleted > 2000
        before = await dead_tuples(store)
        assert before >= deleted

        doctor = await Monitor(store).doctor(canary=False)
        assert {"dead_tuples", "vector_index_bloat", "reindex_due"} <= set(doctor.codes())
        plan = await maintenance.auto(dry_run=True)
        assert plan.performed == ["reindex", "vacuum"]
        assert await dead_tuples(store) == before  # a dry run changes nothing

        report = await maintenance.auto()
        assert report.performed == ["reindex", "vacuum"]  # the index first, then VACUUM
        reindex, vacuum = report.actions
        assert "changed by" in reindex.reason and f"{3000 - deleted}" in str(reindex.result)
        assert reindex.result is not None and reindex.result["action"] == "reindexed"
        assert "dead tuples" in vacuum.reason
        after = await dead_tuples(store)
        assert after < before / 10
        assert vacuum.result is not None
        memories = next(t for t in vacuum.result["tables"] if t["table"] == "memories")
        assert memories["dead_before"] >= deleted and memories["dead_after"] == after

        assert (await _meta(store))["index_built_rows"] == 3000 - deleted
        assert [(name, method, valid) for name, method, valid, _ in await vector_index_options(store)] == [
            ("memories_embedding_hnsw", "hnsw", True)]
        survivor = vectors[0]  # "topic 0" rows survived
        hits = await store.search(query_embedding=survivor, mode="vector", limit=3)
        assert hits and hits[0].score == pytest.approx(1.0, abs=1e-2)

        again = await maintenance.auto()
        assert again.actions == []
        healthy = await Monitor(store).doctor(canary=False)
        assert not {"dead_tuples", "vector_index_bloat", "reindex_due"} & set(healthy.codes())
        assert healthy.stats.vector_index is not None and healthy.stats.vector_index.bloat_ratio is not None
        assert healthy.stats.vector_index.bloat_ratio < 2


async def test_ivfflat_rebuild_takes_lists_from_the_row_count(pg_server: EmbeddedConnectInfo,
                                                              pg_data_dir: Path) -> None:
    async with open_store(pg_data_dir, postgres={"index_type": "ivfflat"}) as store:
        maintenance = Maintenance(store)
        empty = await maintenance.reindex()
        assert empty.action == "skipped" and "no stored embeddings" in (empty.reason or "")

        await load(store, clustered_vectors(3000))
        assert await vector_index_options(store) == []  # IVFFlat is never built on an empty table
        plan = await maintenance.auto(dry_run=True)
        assert plan.performed == ["reindex"] and "no valid vector index" in plan.actions[0].reason

        report = await maintenance.reindex()
        assert report.action == "created" and report.method == "ivfflat"
        assert report.lists == ivfflat_lists_for(3000) == 3
        assert report.probes == ivfflat_probes_for(3) == 2
        assert report.probes_applied and store.settings.search.ivfflat_probes == 2
        assert "search.ivfflat_probes: 2" in (report.advice or "")
        assert await vector_index_options(store) == [("memories_embedding_ivfflat", "ivfflat", True, ["lists=3"])]
        assert (await _meta(store))["index_built_rows"] == 3000

        explicit = await maintenance.reindex(lists=25)
        assert explicit.action == "reindexed" and explicit.lists == 25 and explicit.probes == 5
        assert await vector_index_options(store) == [("memories_embedding_ivfflat", "ivfflat", True, ["lists=25"])]
        hits = await store.search(query_embedding=clustered_vectors(1)[0], mode="vector", limit=5)
        assert len(hits) == 5


async def test_reindex_drops_invalid_and_leftover_indexes(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    async with open_store(pg_data_dir) as store:
        await load(store, clustered_vectors(50))
        leftover = "memories_embedding_hnsw_ccnew"
        async with store.gate.acquire() as connection:
            # a failed concurrent build leaves an invalid index behind, like an interrupted REINDEX CONCURRENTLY
            with pytest.raises(asyncpg.UniqueViolationError):
                await connection.execute(
                    f"CREATE UNIQUE INDEX CONCURRENTLY {leftover} ON {store.table('memories')} (memory_type)")
        stats = await Monitor(store).stats()
        assert leftover in stats.invalid_indexes and leftover in stats.leftover_indexes
        doctor = await Monitor(store).doctor(canary=False)
        assert "invalid_index" in doctor.codes() and doctor.status == "degraded"

        plan = await Maintenance(store).auto(dry_run=True, run_canary=False)
        assert plan.performed == ["reindex"] and leftover in plan.actions[0].reason

        report = await Maintenance(store).reindex()
        assert report.dropped == [leftover] and report.action == "reindexed" and report.method == "hnsw"
        stats = await Monitor(store).stats()
        assert stats.invalid_indexes == [] and stats.leftover_indexes == []
        assert stats.vector_index is not None and stats.vector_index.valid


async def test_reindex_switches_the_index_type(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    async with open_store(pg_data_dir) as store:
        await load(store, clustered_vectors(1200), bulk=True)
        report = await Maintenance(store).reindex(index_type="ivfflat")
        assert report.method == "ivfflat" and report.lists == 1
        assert [row[:2] for row in await vector_index_options(store)] == [("memories_embedding_ivfflat", "ivfflat")]
        plan = await Maintenance(store).auto(dry_run=True, run_canary=False)  # settings still say hnsw
        assert plan.performed == ["reindex"] and "settings ask for hnsw" in plan.actions[0].reason
        back = await Maintenance(store).reindex()
        assert back.action == "created" and back.method == "hnsw"
        assert [row[:2] for row in await vector_index_options(store)] == [("memories_embedding_hnsw", "hnsw")]


async def test_expire_deletes_in_bounded_batches(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    async with open_store(pg_data_dir) as store:
        past = datetime.now(UTC) - timedelta(hours=1)
        future = datetime.now(UTC) + timedelta(days=1)
        await load(store, clustered_vectors(25, seed=2), prefix="old", expires_at=past)
        await load(store, clustered_vectors(5, seed=3), prefix="later", expires_at=future)
        await load(store, clustered_vectors(10, seed=4), prefix="forever")
        await store.touch((await store.upsert_many([MemoryRecord(content="old number 0 about topic 0")])).ids)
        maintenance = Maintenance(store)
        assert await maintenance.expire(batch_size=10, max_batches=1) == 10
        assert await maintenance.expire(batch_size=10) == 15
        assert await maintenance.expire(batch_size=10) == 0
        assert await store.count() == 15
        async with store.gate.acquire() as connection:  # the access side table followed (ON DELETE CASCADE)
            assert await connection.fetchval(f"SELECT count(*) FROM {store.table('memory_access')}") == 0
        with pytest.raises(InvalidInput):
            await maintenance.expire(batch_size=0)


async def test_auto_expires_before_deciding_the_rest(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    async with open_store(pg_data_dir) as store:
        await _disable_autovacuum(store)
        await load(store, clustered_vectors(300, seed=5), prefix="old",
                   expires_at=datetime.now(UTC) - timedelta(minutes=5))
        await load(store, clustered_vectors(20, seed=6), prefix="kept")
        report = await Maintenance(store).auto(run_canary=False)
        assert report.performed[0] == "expire" and report.actions[0].result == {"deleted": 300}
        assert "vacuum" in report.performed  # 300 of 320 rows are now dead tuples
        assert await store.count() == 20
        assert await dead_tuples(store) < 50


async def test_vacuum_reports_sizes_and_dead_tuples(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    async with open_store(pg_data_dir) as store:
        await _disable_autovacuum(store)
        await load(store, clustered_vectors(400, seed=7))
        deleted = await delete_rows(store, "content LIKE '%topic 1'")
        report = await Maintenance(store).vacuum()
        assert [t.table for t in report.tables] == list(PACKAGE_TABLES)
        memories = next(t for t in report.tables if t.table == "memories")
        assert memories.dead_before >= deleted > 0 and memories.dead_after == 0
        assert memories.live_after == 400 - deleted
        assert memories.total_bytes_before > 0 and memories.heap_bytes_after > 0
        assert report.duration_ms > 0 and report.to_dict()["total_bytes_after"] == report.total_bytes_after
        only = await Maintenance(store).vacuum(["insight_outbox"])
        assert [t.table for t in only.tables] == ["insight_outbox"]
        with pytest.raises(InvalidInput, match="unknown table"):
            await Maintenance(store).vacuum(["pg_class"])


async def test_autovacuum_settings_are_applied_idempotently(store: PgvectorMemoryStore) -> None:
    maintenance = Maintenance(store)
    first = await maintenance.apply_autovacuum()
    assert first.changed == list(AUTOVACUUM_SETTINGS)
    assert first.settings["memories"]["autovacuum_vacuum_scale_factor"] == "0.05"
    assert first.settings["memories"]["toast.autovacuum_vacuum_scale_factor"] == "0.05"
    assert first.settings["memory_access"]["fillfactor"] == "80"
    async with store.gate.acquire() as connection:
        options = await connection.fetchval(
            "SELECT reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = 'insight_outbox'", store.schema)
    assert "autovacuum_vacuum_scale_factor=0" in options and "autovacuum_vacuum_threshold=500" in options
    second = await maintenance.apply_autovacuum()
    assert second.changed == [] and second.settings == first.settings


async def test_one_maintenance_run_per_schema(store: PgvectorMemoryStore) -> None:
    key = f"oneiric_memory.maintain.{store.schema}"
    async with store.gate.acquire() as holder:
        assert await holder.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key)
        try:
            skipped = await Maintenance(store).auto()
            assert skipped.actions == [] and skipped.skipped is not None and "another maintenance run" in skipped.skipped
            with pytest.raises(MaintenanceBusy):
                await Maintenance(store).reindex()
        finally:
            await holder.execute("SELECT pg_advisory_unlock(hashtext($1))", key)
    assert (await Maintenance(store).auto(run_canary=False)).skipped is None


async def test_invalid_arguments_are_refused(store: PgvectorMemoryStore) -> None:
    maintenance = Maintenance(store)
    with pytest.raises(InvalidInput):
        await maintenance.reindex(lists=0)
    with pytest.raises(InvalidInput):
        await maintenance.reindex(index_type="flat")  # type: ignore[arg-type]


async def test_periodic_runner_is_off_by_default_and_runs_auto_when_enabled(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    async with open_store(pg_data_dir) as store:
        stop = asyncio.Event()
        assert store.settings.maintenance.auto_enabled is False
        await asyncio.wait_for(run_periodically(lambda: store, store.settings, stop), timeout=5)  # returns at once

        await load(store, clustered_vectors(5, seed=8), prefix="gone", expires_at=datetime.now(UTC) - timedelta(seconds=1))
        settings = store.settings.model_copy(deep=True)
        settings.maintenance.auto_enabled = True
        settings.maintenance.auto_interval_s = 0.05
        calls = 0

        async def provider() -> PgvectorMemoryStore:
            nonlocal calls
            calls += 1
            return store

        task = asyncio.create_task(run_periodically(provider, settings, stop))
        for _ in range(200):
            if await store.count() == 0:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        assert await store.count() == 0 and calls >= 1
