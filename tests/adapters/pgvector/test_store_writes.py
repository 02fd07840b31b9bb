"""Writes of ``PgvectorMemoryStore`` on the real embedded PostgreSQL: dedup, conflicts, atomicity, dimensions,
the embedding-model binding, the other write/read helpers, and transient-fault retries.

Every test runs on its own schema (the ``store`` fixture or :func:`opened_store`).
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.adapters.pgvector.writes import STAGING_COLUMNS, upsert_batch
from oneiric_memory.errors import InvalidInput, SchemaMismatch, StoreError, StoreUnavailable
from oneiric_memory.insights import Insight
from oneiric_memory.records import MemoryRecord, SearchFilters
from tests.foundation_fixtures import admin_connection, eventually, opened_store, unit_vector
from tests.support import make_settings

pytestmark = pytest.mark.asyncio


def rec(content: str, seed: int | None = None, **fields: Any) -> MemoryRecord:
    return MemoryRecord(content=content, embedding=None if seed is None else unit_vector(seed), **fields)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (math.sqrt(sum(x * x for x in a))
                                                            * math.sqrt(sum(y * y for y in b)))


# --- dedup ---------------------------------------------------------------------------------------------


async def test_same_content_twice_is_one_row(store: PgvectorMemoryStore) -> None:
    first = await store.upsert_many([rec("the cache lives in redis", 1)])
    second = await store.upsert_many([rec("the cache lives in redis", 1)])
    assert first.inserted == [True]
    assert second.inserted == [False]
    assert second.ids == first.ids
    assert (first.new_count, second.duplicate_count) == (1, 1)
    assert await store.count() == 1


async def test_duplicates_within_one_batch_and_across_batches(store: PgvectorMemoryStore) -> None:
    one = await store.upsert_many([rec("alpha", 1), rec("alpha", 1), rec("beta", 2)])
    assert one.inserted == [True, False, True]
    assert one.ids[0] == one.ids[1] != one.ids[2]
    two = await store.upsert_many([rec("beta", 2), rec("gamma", 3), rec("alpha"), rec("gamma", 3)])
    assert two.inserted == [False, True, False, False]
    assert two.ids[0] == one.ids[2]
    assert two.ids[2] == one.ids[0]
    assert two.ids[1] == two.ids[3]
    assert await store.count() == 3


async def test_a_duplicate_is_recorded_on_the_stored_row(store: PgvectorMemoryStore) -> None:
    first = await store.upsert_many([rec("seen again and again", 1, metadata={"v": 1})])
    created = (await store.get(first.ids))[0]
    assert (created.seen_count, created.last_seen_at) == (1, created.created_at)  # first sight only
    # two copies in one batch, then one more batch: 1 + 2 + 1 sightings, one row, one id
    again = await store.upsert_many([rec("seen again and again", metadata={"v": 2}),
                                     rec("seen again and again", 1, metadata={"v": 3})])
    third = await store.upsert_many([rec("seen again and again", metadata={"v": 4})])
    assert again.ids == first.ids * 2 and third.ids == first.ids and not any(again.inserted + third.inserted)
    stored = (await store.get(first.ids))[0]
    assert stored.seen_count == 4 and stored.last_seen_at is not None and stored.last_seen_at > created.created_at
    # keep_first: the stored metadata, labels and timestamps are kept; the duplicate's metadata is not merged
    assert stored.metadata == {"v": 1} and stored.updated_at == created.updated_at
    # refresh: the duplicate's metadata is merged over the stored one, and it is still counted
    await store.upsert_many([rec("seen again and again", metadata={"w": 5})], on_conflict="refresh")
    refreshed = (await store.get(first.ids))[0]
    assert refreshed.seen_count == 5 and refreshed.metadata == {"v": 1, "w": 5}
    # a brand-new row written twice in its first batch starts at 2
    twice = await store.upsert_many([rec("born twice"), rec("born twice")])
    assert (await store.get(twice.ids[:1]))[0].seen_count == 2


async def test_other_project_or_memory_type_is_another_row(store: PgvectorMemoryStore) -> None:
    result = await store.upsert_many([
        rec("shared words", 1),
        rec("shared words", 1, project="other"),
        rec("shared words", 1, memory_type="rag"),
    ])
    assert result.inserted == [True, True, True]
    assert len(set(result.ids)) == 3
    assert await store.count() == 3
    assert await store.count(SearchFilters(projects=["other"])) == 1
    assert await store.count(SearchFilters(memory_types=["rag"])) == 1


async def test_crlf_trailing_space_and_unicode_forms_normalize_to_one_row(store: PgvectorMemoryStore) -> None:
    variants = ["line one\nline two", "line one\r\nline two  ", "  line one\rline two\n\n", "line one\nline two\t"]
    result = await store.upsert_many([rec(text) for text in variants])
    assert result.inserted == [True, False, False, False]
    assert len(set(result.ids)) == 1
    composed, decomposed = "caf\u00e9 au lait", "cafe\u0301 au lait"
    assert (await store.upsert_many([rec(composed), rec(decomposed)])).inserted == [True, False]
    assert await store.count() == 2
    stored = (await store.get([result.ids[0]]))[0]
    assert stored.content == variants[0]  # the first copy is stored verbatim, not its normalized form


async def test_keep_first_keeps_first_copy_but_fills_pending_embedding(store: PgvectorMemoryStore) -> None:
    first = await store.upsert_many([rec("deploys happen on fridays", metadata={"v": 1})])
    assert (await store.get(first.ids))[0].embedding_pending
    filled = await store.upsert_many([rec("deploys happen on fridays", 7, metadata={"v": 2})],
                                     on_conflict="keep_first")
    assert filled.inserted == [False] and filled.ids == first.ids
    stored = (await store.get(first.ids))[0]
    assert stored.metadata == {"v": 1}
    assert not stored.embedding_pending
    embedding = await store.get_embedding(first.ids[0])
    assert embedding is not None and cosine(embedding, unit_vector(7)) > 0.999
    # a later copy with another embedding changes nothing once the first copy is complete
    await store.upsert_many([rec("deploys happen on fridays", 8, metadata={"v": 3})], on_conflict="keep_first")
    again = await store.get_embedding(first.ids[0])
    assert again is not None and cosine(again, unit_vector(7)) > 0.999
    assert (await store.get(first.ids))[0].metadata == {"v": 1}


async def test_keep_first_inside_one_batch_fills_pending_from_a_later_copy(store: PgvectorMemoryStore) -> None:
    result = await store.upsert_many([rec("same text", metadata={"n": 1}), rec("same text", 5, metadata={"n": 2})])
    assert result.inserted == [True, False]
    stored = (await store.get(result.ids[:1]))[0]
    assert not stored.embedding_pending
    assert stored.metadata == {"n": 1}


async def test_refresh_updates_metadata_embedding_and_expiry(store: PgvectorMemoryStore) -> None:
    expires = datetime.now(UTC) + timedelta(days=3)
    first = await store.upsert_many([rec("ownership of the billing service", 1, metadata={"owner": "ana", "a": 1})])
    refreshed = await store.upsert_many(
        [rec("ownership of the billing service", 2, metadata={"owner": "bo"}, expires_at=expires)],
        on_conflict="refresh")
    assert refreshed.inserted == [False] and refreshed.ids == first.ids
    stored = (await store.get(first.ids))[0]
    assert stored.metadata == {"owner": "bo", "a": 1}
    assert stored.expires_at == expires
    assert stored.updated_at >= stored.created_at
    embedding = await store.get_embedding(first.ids[0])
    assert embedding is not None and cosine(embedding, unit_vector(2)) > 0.999
    # refresh without an embedding keeps the stored one
    await store.upsert_many([rec("ownership of the billing service", metadata={"x": True})], on_conflict="refresh")
    kept = await store.get_embedding(first.ids[0])
    assert kept is not None and cosine(kept, unit_vector(2)) > 0.999
    assert (await store.get(first.ids))[0].metadata == {"owner": "bo", "a": 1, "x": True}


async def test_refresh_inside_one_batch_applies_later_copies(store: PgvectorMemoryStore) -> None:
    result = await store.upsert_many([rec("t", 1, metadata={"a": 1}), rec("t", 2, metadata={"b": 2})],
                                     on_conflict="refresh")
    assert result.inserted == [True, False]
    assert (await store.get(result.ids[:1]))[0].metadata == {"a": 1, "b": 2}
    embedding = await store.get_embedding(result.ids[0])
    assert embedding is not None and cosine(embedding, unit_vector(2)) > 0.999


async def test_unknown_on_conflict_mode_is_invalid_input(store: PgvectorMemoryStore) -> None:
    with pytest.raises(InvalidInput, match="on_conflict"):
        await store.upsert_many([rec("x")], on_conflict="overwrite")  # type: ignore[arg-type]


# --- atomic batches -------------------------------------------------------------------------------------


class _Unhashable:
    pass


BAD_RECORDS: dict[str, tuple[MemoryRecord, str]] = {
    "wrong dimension": (MemoryRecord(content="bad", embedding=[0.1] * 767), "767 dimensions"),
    "nan in embedding": (MemoryRecord(content="bad", embedding=[float("nan")] * 768), "non-finite"),
    "nul byte": (MemoryRecord(content="bad\x00content"), "NUL"),
    "unknown memory_type": (MemoryRecord(content="bad", memory_type="note"), "memory_type 'note' is unknown"),
    "empty content": (MemoryRecord(content=" \r\n\t "), "content is empty"),
    "metadata set": (MemoryRecord(content="bad", metadata={"tags": {"a", "b"}}), "set"),
    "metadata datetime": (MemoryRecord(content="bad", metadata={"at": datetime.now(UTC)}), "datetime"),
    "metadata nan": (MemoryRecord(content="bad", metadata={"score": float("nan")}), "not valid JSON"),
    "metadata infinity": (MemoryRecord(content="bad", metadata={"x": [float("-inf")]}), "not valid JSON"),
    "metadata int key": (MemoryRecord(content="bad", metadata={1: "one"}), "non-string key"),  # type: ignore[dict-item]
    "metadata tuple key": (MemoryRecord(content="bad", metadata={("a", "b"): 1}), "non-string key"),  # type: ignore[dict-item]
    "metadata object": (MemoryRecord(content="bad", metadata={"o": _Unhashable()}), "_Unhashable"),
    "metadata lone surrogate": (MemoryRecord(content="bad", metadata={"k": "\ud800"}), "surrogate"),
    "metadata nul in key": (MemoryRecord(content="bad", metadata={"a\x00b": 1}), "NUL"),
    "metadata not a dict": (MemoryRecord(content="bad", metadata=["a"]), "JSON object"),  # type: ignore[arg-type]
    "naive expires_at": (MemoryRecord(content="bad", expires_at=datetime(2030, 1, 1)), "timezone-aware"),
    "project not a string": (MemoryRecord(content="bad", project=7), "project"),  # type: ignore[arg-type]
}


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"d": value}
    return value


def _cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


BAD_RECORDS["metadata nested 10k deep"] = (MemoryRecord(content="bad", metadata=_deep(10_000)), "nests deeper")
BAD_RECORDS["metadata refers to itself"] = (MemoryRecord(content="bad", metadata=_cyclic()), "nests deeper")


async def test_batch_with_one_bad_record_writes_nothing(store: PgvectorMemoryStore) -> None:
    """Each case on one store (a schema per case would cost a migration each): the error names record 2 and
    what is wrong with it, and neither the good records nor anything else is written."""
    kept = await store.upsert_many([rec("already stored", 9, metadata={"k": 1})])
    for case, (bad, expected) in sorted(BAD_RECORDS.items()):
        batch = [rec("good zero", 1), rec("good one"), bad, rec("good three", 3)]
        with pytest.raises(InvalidInput) as info:
            await store.upsert_many(batch)
        assert info.value.details["index"] == 2, case
        assert str(info.value).startswith("record 2: "), case
        assert expected in str(info.value), (case, str(info.value))
        assert await store.count() == 1, case
    assert (await store.get(kept.ids))[0].metadata == {"k": 1}


async def test_a_record_failing_inside_the_transaction_rolls_back_the_whole_batch(
        store: PgvectorMemoryStore) -> None:
    """Injected failure: a subclass corrupts one staged row *after* validation, so PostgreSQL's CHECK constraint
    on memory_type rejects it during the INSERT that follows the COPY. Nothing may be written, and a
    constraint violation is not transient, so it is not retried."""

    class CorruptingStore(PgvectorMemoryStore):
        attempts = 0

        async def _upsert(self, rows: list[tuple[Any, ...]], mode: str, records: Sequence[MemoryRecord],
                          insights: Sequence[Sequence[Insight]] | None) -> list[asyncpg.Record]:
            type(self).attempts += 1
            last = list(rows[-1])
            last[STAGING_COLUMNS.index("memory_type")] = "bogus"
            return await super()._upsert([*rows[:-1], tuple(last)], mode, records, insights)

    corrupting = CorruptingStore(store.settings)
    await corrupting.init()
    try:
        with pytest.raises(StoreError) as info:
            await corrupting.upsert_many([rec(f"row {i}", i) for i in range(5)],
                                         insights=[[Insight(insight_id=f"i{i}", content="x")]
                                                   for i in range(5)])
        assert not isinstance(info.value, StoreUnavailable)
        assert info.value.details["sqlstate"] == "23514"
        assert CorruptingStore.attempts == 1
        assert await store.count() == 0
        async with store.gate.acquire() as connection:
            assert await connection.fetchval(f"SELECT count(*) FROM {store.table('insight_outbox')}") == 0
    finally:
        await corrupting.cleanup()


async def test_a_failure_after_copy_and_insert_rolls_back(store: PgvectorMemoryStore) -> None:
    """Injected failure: a subclass raises after the COPY and the INSERT ... ON CONFLICT ran (while enqueueing
    insights, still inside the transaction). The rows already inserted must disappear with the rollback."""

    class FailingStore(PgvectorMemoryStore):
        async def _upsert(self, rows: list[tuple[Any, ...]], mode: str, records: Sequence[MemoryRecord],
                          insights: Sequence[Sequence[Insight]] | None) -> list[asyncpg.Record]:
            async with self.gate.acquire() as connection, connection.transaction():  # as the store does
                merged = await upsert_batch(connection, self.names, self.vector_sql_type, rows, mode, records,
                                            insights)
                assert merged, "the COPY and the INSERT ran"
                raise RuntimeError("injected failure after COPY")

    failing = FailingStore(store.settings)
    await failing.init()
    try:
        with pytest.raises(RuntimeError, match="injected"):
            await failing.upsert_many([rec("one", 1), rec("two", 2)], insights=[[], []])
    finally:
        await failing.cleanup()
    assert await store.count() == 0


# --- dimensions and the embedding model -----------------------------------------------------------------


async def test_wrong_embedding_dimension_names_both_dimensions(store: PgvectorMemoryStore) -> None:
    with pytest.raises(InvalidInput) as info:
        await store.upsert_many([rec("fine", 1), MemoryRecord(content="short", embedding=[0.5] * 384)])
    message = str(info.value)
    assert "384" in message and "768" in message
    assert info.value.details == {"field": "embedding", "index": 1, "got": 384, "expected": 768}
    with pytest.raises(InvalidInput, match="384 dimensions, the store expects 768"):
        await store.search_vector([0.5] * 384)
    assert await store.count() == 0


async def test_existing_schema_with_another_dimension_refuses_to_start(
        store: PgvectorMemoryStore, pg_data_dir: Path) -> None:
    await store.upsert_many([rec("kept", 1)])
    other = PgvectorMemoryStore(make_settings(pg_data_dir, schema=store.schema, postgres={"vector_dimension": 384}))
    with pytest.raises(SchemaMismatch) as info:
        await other.init()
    message = str(info.value)
    assert "halfvec(768)" in message and "halfvec(384)" in message
    assert "postgres.db_schema" in message and "migration" in message
    assert info.value.details == {"stored_dimension": 768, "configured_dimension": 384}
    with pytest.raises(StoreError, match="not initialized"):
        _ = other.gate  # nothing left open after the refusal
    assert await store.count() == 1


async def test_bind_embedding_model_refuses_a_second_model(store: PgvectorMemoryStore, pg_data_dir: Path) -> None:
    await store.bind_embedding_model("nomic-embed-text")
    await store.bind_embedding_model("nomic-embed-text")  # idempotent
    with pytest.raises(SchemaMismatch) as info:
        await store.bind_embedding_model("mxbai-embed-large")
    assert "nomic-embed-text" in str(info.value) and "mxbai-embed-large" in str(info.value)
    assert store.embedding_model == "nomic-embed-text"
    with pytest.raises(InvalidInput, match="embedding_model 'mxbai-embed-large' differs"):
        await store.upsert_many([rec("x", 1, embedding_model="mxbai-embed-large")])
    stored = await store.upsert_many([rec("y", 1)])
    assert (await store.get(stored.ids))[0].embedding_model == "nomic-embed-text"
    with pytest.raises(InvalidInput):
        await store.bind_embedding_model("")
    # a second process on the same schema sees the binding
    async with opened_store(make_settings(pg_data_dir, schema=store.schema)) as again:
        assert again.embedding_model == "nomic-embed-text"
        with pytest.raises(SchemaMismatch):
            await again.bind_embedding_model("other-model")


async def test_numpy_float32_embeddings_are_accepted(store: PgvectorMemoryStore) -> None:
    import numpy as np

    vector = np.asarray(unit_vector(4), dtype=np.float32)
    result = await store.upsert_many([MemoryRecord(content="numpy vector", embedding=vector)])  # type: ignore[arg-type]
    stored = await store.get_embedding(result.ids[0])
    assert stored is not None and cosine(stored, unit_vector(4)) > 0.999


# --- the other write/read helpers ---------------------------------------------------------------------------


async def test_get_count_touch_and_delete(store: PgvectorMemoryStore) -> None:
    result = await store.upsert_many([rec("a", 1, project="p1"), rec("b", 2, project="p1"),
                                      rec("c", 3, project="p2", memory_type="workflow")])
    missing = uuid.uuid4()
    got = await store.get([result.ids[2], missing, str(result.ids[0])])
    assert [m.id for m in got] == [result.ids[2], result.ids[0]]
    assert await store.count(SearchFilters(projects=["p1"])) == 2
    assert await store.touch([result.ids[0], result.ids[0], missing]) == 1
    assert await store.touch([result.ids[0]]) == 1
    stats = await store.access_stats(result.ids[0])
    assert stats is not None and stats[0] == 2
    assert await store.access_stats(result.ids[1]) is None
    with pytest.raises(InvalidInput, match="empty filter"):
        await store.delete(filters=SearchFilters())
    with pytest.raises(InvalidInput):
        await store.delete()
    with pytest.raises(InvalidInput, match="not a memory id"):
        await store.get(["not-a-uuid"])
    assert await store.delete([result.ids[0]]) == 1
    assert await store.access_stats(result.ids[0]) is None  # the side-table row went with it
    assert await store.delete(filters=SearchFilters(memory_types=["workflow"])) == 1
    assert await store.count() == 1


async def test_expired_memories_are_counted_only_on_request(store: PgvectorMemoryStore) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    await store.upsert_many([rec("expired", 1, expires_at=past), rec("live", 2)])
    assert await store.count() == 2
    assert await store.count(SearchFilters()) == 1
    assert await store.count(SearchFilters(include_expired=True)) == 2


async def test_pending_embeddings_are_fetched_and_filled(store: PgvectorMemoryStore) -> None:
    result = await store.upsert_many([rec(f"pending {i}") for i in range(5)] + [rec("done", 1)])
    assert await store.count_pending() == 5
    page = await store.fetch_pending(3)
    assert len(page) == 3
    rest = await store.fetch_pending(10, after=(page[-1].created_at, page[-1].id))
    assert {p.id for p in page}.isdisjoint({p.id for p in rest})
    assert len(page) + len(rest) == 5
    assert await store.set_embeddings([(p.project, p.id, unit_vector(i)) for i, p in enumerate(page)], "m1") == 3
    assert await store.set_embeddings([(page[0].project, page[0].id, unit_vector(99))], "m1") == 0  # not pending
    assert await store.count_pending() == 2
    with pytest.raises(InvalidInput, match="767 dimensions"):
        await store.set_embeddings([(rest[0].project, rest[0].id, [0.1] * 767)], "m1")
    assert result.new_count == 6


async def test_bulk_loading_rebuilds_the_vector_index_with_a_pool_of_one(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    """Regression: build_vector_index used to acquire a second connection while holding one."""
    settings = make_settings(pg_data_dir, postgres={"max_connections": 1, "acquire_timeout_s": 3.0})
    async with opened_store(settings) as store:
        assert await store.vector_index_name() == "memories_embedding_hnsw"
        async with store.bulk_loading():
            assert await store.vector_index_name() is None
            await store.upsert_many([rec(f"bulk {i}", i) for i in range(50)])
        assert await store.vector_index_name() == "memories_embedding_hnsw"
        assert await store.build_vector_index(index_type="ivfflat") == "memories_embedding_ivfflat"
        assert await store.vector_index_name() == "memories_embedding_ivfflat"
        async with store.gate.acquire() as connection:
            built = await connection.fetchval(f"SELECT index_built_rows FROM {store.table('embedding_meta')}")
        assert built == 50
        health = await store.component_health()
        assert health.metadata["vector_index_valid"] is True


async def test_ivfflat_is_not_built_on_an_empty_table(store: PgvectorMemoryStore) -> None:
    assert await store.build_vector_index(index_type="ivfflat") is None
    assert await store.vector_index_name() == "memories_embedding_hnsw"


async def test_health_component_health_and_idempotent_init(store: PgvectorMemoryStore) -> None:
    assert await store.health() is True
    pool = store.pool
    await store.init()  # a second init keeps the same pool instead of leaking one
    assert store.pool is pool
    health = await store.component_health()
    assert health.status.value == "healthy"
    assert health.metadata["dimension"] == 768
    assert health.metadata["pool_max"] == 4
    assert health.metadata["vector_index_valid"] is True
    assert tuple(int(part) for part in health.metadata["pgvector"].split(".")[:3]) >= (0, 8, 4)
    fresh = PgvectorMemoryStore(store.settings)
    assert await fresh.health() is False
    assert (await fresh.component_health()).status.value == "unhealthy"


# --- transient retries --------------------------------------------------------------------------------------


class CountingStore(PgvectorMemoryStore):
    """Counts upsert transaction attempts (a real subclass; nothing is mocked)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attempts = 0

    async def _upsert(self, *args: Any, **kwargs: Any) -> list[asyncpg.Record]:
        self.attempts += 1
        return await super()._upsert(*args, **kwargs)


async def _blocked_backend(admin: asyncpg.Connection, schema: str, exclude: set[int]) -> int | None:
    # inside the admin's open transaction pg_stat_activity is a cached snapshot: clear it on every probe
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    pid = await admin.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'oneiric-memory' AND wait_event_type = 'Lock' "
        "AND datname = current_database() AND position($1 in query) > 0 AND NOT (pid = ANY($2::int[])) LIMIT 1",
        schema, list(exclude))
    return None if pid is None else int(pid)


async def test_terminated_backend_is_retried_and_the_write_succeeds(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    """The store's backend is killed (pg_terminate_backend, SQLSTATE 57P01) while its INSERT waits on a lock;
    the retry runs the whole transaction again on a fresh connection."""
    async with opened_store(make_settings(pg_data_dir)) as base:
        store = CountingStore(base.settings)
        await store.init()
        admin = await admin_connection(base)
        try:
            lock = admin.transaction()
            await lock.start()
            await admin.execute(f"LOCK TABLE {base.table('memories')} IN ACCESS EXCLUSIVE MODE")
            task = asyncio.create_task(store.upsert_many([rec("survives a killed backend", 1)]))
            victim = await eventually(lambda: _blocked_backend(admin, base.schema, set()))
            assert victim is not None
            assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", victim)
            retried = await eventually(lambda: _blocked_backend(admin, base.schema, {victim}))
            assert retried is not None and retried != victim
            await lock.rollback()
            result = await asyncio.wait_for(task, 30)
            assert result.inserted == [True]
            assert store.attempts == 2
            assert await store.count() == 1
        finally:
            await admin.close()
            await store.cleanup()


async def test_reads_retry_a_terminated_backend_and_fail_without_retries(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    async with opened_store(make_settings(pg_data_dir)) as store:
        await store.upsert_many([rec("one", 1)])
        no_retry = PgvectorMemoryStore(make_settings(pg_data_dir, schema=store.schema,
                                                     postgres={"retry_attempts": 1}))
        await no_retry.init()
        admin = await admin_connection(store)
        try:
            for subject, expect_retry in ((store, True), (no_retry, False)):
                lock = admin.transaction()
                await lock.start()
                await admin.execute(f"LOCK TABLE {store.table('memories')} IN ACCESS EXCLUSIVE MODE")
                task = asyncio.create_task(subject.count())
                victim = await eventually(lambda: _blocked_backend(admin, store.schema, set()))
                assert victim is not None
                assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", victim)
                if expect_retry:
                    assert await eventually(
                        lambda killed={victim}: _blocked_backend(admin, store.schema, killed))  # type: ignore[misc]
                    await lock.rollback()
                    assert await asyncio.wait_for(task, 30) == 1
                else:
                    with pytest.raises(StoreUnavailable, match="retry later"):
                        await asyncio.wait_for(task, 30)
                    await lock.rollback()
        finally:
            await admin.close()
            await no_retry.cleanup()


async def test_idle_pool_connections_killed_between_operations(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    async with opened_store(make_settings(pg_data_dir, postgres={"min_connections": 4})) as store:
        first = await store.upsert_many([rec("zebra", 1)])
        admin = await admin_connection(store)
        try:
            killed = await admin.fetch(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = "
                "'oneiric-memory' AND datname = current_database() AND pid <> pg_backend_pid()")
            assert len(killed) >= 1
        finally:
            await admin.close()
        assert [m.content for m in await store.get(first.ids)] == ["zebra"]
        assert (await store.upsert_many([rec("giraffe", 2)])).inserted == [True]
        assert await store.count() == 2
        assert await store.touch(first.ids) == 1
        assert [h.content for h in await store.search_text("giraffe")] == ["giraffe"]


async def test_statement_timeout_is_not_retried(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    """A statement timeout (SQLSTATE 57014) is not transient: one attempt, then a StoreError."""
    async with opened_store(make_settings(pg_data_dir)) as base:
        store = CountingStore(make_settings(pg_data_dir, schema=base.schema,
                                            postgres={"statement_timeout_ms": 300}))
        await store.init()
        admin = await admin_connection(base)
        try:
            async with admin.transaction():
                await admin.execute(f"LOCK TABLE {base.table('memories')} IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(StoreError) as info:
                    await store.upsert_many([rec("blocked", 1)])
            assert not isinstance(info.value, StoreUnavailable)
            assert info.value.details["sqlstate"] == "57014"
            assert store.attempts == 1
            assert await store.count() == 0
        finally:
            await admin.close()
            await store.cleanup()
