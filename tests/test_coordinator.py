"""``UnifiedMemory`` end to end: embedded PostgreSQL, a loopback Ollama (``FakeOllama``, a real HTTP server) and
the real Session-Buddy package in-process on a temp DuckDB (HOME points at a folder that does not exist).

Covered: remember/search/unified_search/health with insights fused from both stores; Ollama stopping mid-run
(pending writes, text fallback, backfill); Session-Buddy locked by another process or broken (degraded answers,
the outbox keeps the insights and drains later); backpressure; 1,000 concurrent calls with bounded
connections; hot swaps through the Oneiric lifecycle and the store's refusal of a different model.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp_common.health import HealthCheckResponse, HealthStatus

from oneiric_memory.adapters.embedders.hashing import HashingEmbedder
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import EmbedderUnavailable, InvalidInput, SchemaMismatch, StoreUnavailable
from oneiric_memory.insights import insight_id
from oneiric_memory.records import MemoryRecord, SearchFilters
from oneiric_memory.testing.fake_ollama import FakeOllama
from tests.coordinator_fixtures import (
    conversation,
    drop_schema,
    hold_duckdb_lock,
    outbox_rows,
    sb_overrides,
    session_buddy_own_search,
)
from tests.foundation_fixtures import admin_connection, eventually
from tests.support import make_settings

pytestmark = pytest.mark.asyncio

INSIGHT_POOL = ("Always release the DuckDB file after a batch so that Session-Buddy can take its lock again.")
INSIGHT_HNSW = ("Filtered vector search needs iterative HNSW scans, otherwise pgvector under-returns rows.")


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama(dimension=768, models=("nomic-embed-text",)) as fake:
        yield fake


def ollama_overrides(fake: FakeOllama, **extra: Any) -> dict[str, Any]:
    """Ollama through the loopback fake, with short retries so a stopped server is noticed quickly."""
    return {"provider": "ollama", "base_url": fake.base_url, "retry_attempts": 2, "retry_base_delay_s": 0.01,
            "retry_max_delay_s": 0.05, "connect_timeout_s": 1.0, "total_timeout_s": 10.0, **extra}


@asynccontextmanager
async def open_memory(pg_data_dir: Path, *, background: bool = False,
                      **overrides: Any) -> AsyncIterator[UnifiedMemory]:
    """A UnifiedMemory on a fresh schema of the session's server; the schema is dropped afterwards."""
    settings = make_settings(pg_data_dir, **overrides)
    async with UnifiedMemory.open(settings, background=background) as memory:
        try:
            yield memory
        finally:
            await drop_schema(memory.store)


# --- end to end -------------------------------------------------------------------------------------------


async def test_end_to_end_remember_search_unified_search_and_health(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path, sb_home: Path,
        fake_ollama: FakeOllama) -> None:
    sb_file = tmp_path / "sb" / "reflection.duckdb"
    async with open_memory(pg_data_dir, embedder=ollama_overrides(fake_ollama),
                           session_buddy=sb_overrides(sb_file), search={"unified_timeout_s": 60.0}) as memory:
        assert memory.embedder is not None and memory.embedder.model_id == "ollama:nomic-embed-text"
        first = await memory.store_agent_conversation(
            "planner", "assistant", conversation("I looked at the connection pool.", INSIGHT_POOL),
            {"turn": 1}, project="alpha", session_id="s-1")
        second = await memory.remember(conversation("Benchmarking filtered search.", INSIGHT_HNSW),
                                       "workflow", project="alpha", workflow_id="wf-7")
        rag = await memory.store_rag_chunks("repo-a", ["PgBouncer transaction mode needs statement_cache_size 0.",
                                                       {"content": "Embedded PostgreSQL lives in the cache folder.",
                                                        "metadata": {"path": "docs/ops.md"}}], project="alpha")
        flow = await memory.store_workflow_execution("wf-8", "Nightly reindex finished in 42 seconds", "completed",
                                                     project="alpha")
        many = await memory.remember_many([{"content": "A plain note without insights", "project": "alpha"},
                                           MemoryRecord(content="Another plain note", project="beta")])
        ids = [first, second, *rag, flow, *many]
        stored = await memory.store.get(ids)
        assert len(stored) == len(ids) == 7
        assert not any(item.embedding_pending for item in stored)  # Ollama embedded every write
        by_id = {item.id: item for item in stored}
        assert by_id[first].metadata == {"turn": 1, "role": "assistant"}
        assert by_id[flow].metadata["status"] == "completed" and by_id[rag[1]].metadata["path"] == "docs/ops.md"

        rows = await outbox_rows(memory.store)
        assert {row["insight_id"] for row in rows} == {insight_id("alpha", INSIGHT_POOL),
                                                       insight_id("alpha", INSIGHT_HNSW)}
        assert {row["memory_id"] for row in rows} == {first, second}
        report = await memory.relay.drain()
        assert report.delivered == 2 and report.failed_attempts == 0
        status = await memory.relay.status()
        assert (status.pending, status.delivered, status.failed) == (0, 2, 0)

        for mode in ("vector", "text", "hybrid"):
            hits = await memory.search("DuckDB file lock Session-Buddy batch", mode=mode, limit=5)
            assert hits and hits[0].id == first, mode
            assert all(hit.source == "postgres" for hit in hits)
        typed = await memory.search("search", mode="text", memory_types=["workflow"], projects=["alpha"])
        assert typed and {hit.memory_type for hit in typed} == {"workflow"}
        assert await memory.search("plain note", mode="text", projects=["beta"], limit=5) != []

        result = await memory.unified_search("DuckDB lock batch Session-Buddy", limit=10)
        requests = len(fake_ollama.embed_requests)
        again = await memory.unified_search("DuckDB lock batch Session-Buddy", limit=10)
        assert len(fake_ollama.embed_requests) == requests  # the query embedding came from the cache
        assert [hit.id for hit in again.hits] == [hit.id for hit in result.hits]
        assert {hit.source for hit in result.hits} == {"postgres", "session_buddy"}
        assert result.sources["postgres"].status == "ok" and result.sources["session_buddy"].status == "ok"
        assert result.sources["session_buddy"].hits >= 1 and not result.degraded
        insight_hits = [hit for hit in result.hits if hit.source == "session_buddy"]
        assert any(INSIGHT_POOL in hit.content and hit.project == "alpha" for hit in insight_hits)
        scores = [hit.score for hit in result.hits]
        assert scores == sorted(scores, reverse=True)  # fused by rank, best first
        # Project filters reach both sources.
        elsewhere = await memory.unified_search("DuckDB lock batch", limit=10, projects=["beta"])
        assert not [hit for hit in elsewhere.hits if hit.source == "session_buddy"]

        health = await memory.health()
        assert isinstance(health, HealthCheckResponse)
        names = {component.name: component for component in health.components}
        assert {"memory_store", "embedding", "insight_sink", "pipeline"} <= set(names)  # (+ operations)
        assert names["insight_sink"].metadata["mode"] == "in_process"
        assert names["pipeline"].metadata["pending_embeddings"] == 0
        assert names["pipeline"].metadata["delivered"] == 2
        assert health.status == max(component.status for component in health.components)
        assert health.to_dict()["status"] in ("healthy", "degraded")

        assert await memory.forget([rag[0]]) == 1
        assert await memory.forget(filters=SearchFilters(projects=["beta"])) == 1
        assert len(await memory.store.get(ids)) == 5

    found = await session_buddy_own_search(sb_file, ["pgvector", f"om:{insight_id('alpha', INSIGHT_POOL)}"])
    assert any(INSIGHT_HNSW in row["content"] for row in found["pgvector"])
    assert len(found[f"om:{insight_id('alpha', INSIGHT_POOL)}"]) == 1


async def test_background_relay_delivers_and_close_stops_it(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path, sb_home: Path) -> None:
    sb_file = tmp_path / "sb" / "reflection.duckdb"
    async with open_memory(pg_data_dir, background=True, session_buddy=sb_overrides(sb_file),
                           coordinator={"backfill_interval_s": 0.2}) as memory:
        tasks = list(memory._tasks)
        assert {task.get_name() for task in tasks} == {"oneiric-memory-outbox", "oneiric-memory-backfill"}
        await memory.remember(conversation("Relay me.", "Background relays must stop cleanly on close."),
                              project="gamma")

        async def delivered() -> bool:
            return (await memory.relay.status()).delivered == 1

        assert await eventually(delivered, timeout_s=60.0)
        assert memory.sink is not None
        sink_health = await memory.sink.component_health()
        assert sink_health.metadata["backlog"]["pending"] == 0  # the sink reports the outbox backlog
    assert all(task.done() for task in tasks) and memory._tasks == []


# --- the embedder goes away -----------------------------------------------------------------------------


async def test_ollama_stops_mid_run_then_backfill_completes(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, fake_ollama: FakeOllama) -> None:
    bound = 2.0
    async with open_memory(pg_data_dir, embedder=ollama_overrides(fake_ollama),
                           coordinator={"embed_timeout_s": bound}) as memory:
        online = await memory.remember("Ollama was up when this was written", project="delta")
        fake_ollama.stop()
        written: list[uuid.UUID] = []
        for text in ("The embedder went away during the deploy", "Writes keep working while Ollama is down",
                     "Pending rows are found by text search"):
            started = time.monotonic()
            written.append(await memory.remember(text, project="delta"))
            assert time.monotonic() - started < bound + 5.0  # bounded by coordinator.embed_timeout_s (+ slack)
        assert await memory.store.count_pending() == 3
        stored = await memory.store.get([online, *written])
        assert [item.embedding_pending for item in stored] == [False, True, True, True]  # never lost

        hits = await memory.search("Ollama down writes", limit=10)  # the default mode falls back to text ...
        assert written[1] in {hit.id for hit in hits}
        assert hits.mode == "text" and hits.requested_mode == "hybrid" and hits.fell_back and hits.note
        with pytest.raises(EmbedderUnavailable, match="hybrid search needs a query embedding"):
            await memory.search("Ollama down writes", mode="hybrid", limit=10)  # ... an explicit mode never
        response = await memory.health()
        health = {c.name: c for c in response.components}
        assert health["pipeline"].status == HealthStatus.DEGRADED
        assert health["pipeline"].metadata["pending_embeddings"] == 3
        assert health["embedding"].status == HealthStatus.DEGRADED  # memory keeps working: degraded, not down
        assert response.status == HealthStatus.DEGRADED and response.is_ready()

        stopped = await memory.backfill()  # still down: stops early and says why, nothing lost
        assert stopped.embedded == 0 and stopped.stopped_reason and await memory.store.count_pending() == 3

        fake_ollama.start()
        progress: list[tuple[int, int]] = []
        report = await memory.backfill(progress=lambda done, total: progress.append((done, total)))
        assert report.embedded == 3 and report.remaining == 0 and report.stopped_reason is None
        assert progress[-1] == (3, 3)
        assert await memory.store.count_pending() == 0
        vector_hits = await memory.search("Pending rows are found by text search", mode="vector", limit=3)
        assert vector_hits[0].id == written[2] and vector_hits[0].vector_rank == 1


async def test_hanging_embedder_never_blocks_a_write_beyond_the_bound(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, fake_ollama: FakeOllama) -> None:
    bound = 1.0
    async with open_memory(pg_data_dir, embedder=ollama_overrides(fake_ollama, request_timeout_s=60.0),
                           coordinator={"embed_timeout_s": bound}) as memory:
        fake_ollama.inject(delay_s=30.0, times=4)  # Ollama accepts the request and never answers in time
        started = time.monotonic()
        memory_id = await memory.remember("Written while Ollama hangs", project="eps")
        assert time.monotonic() - started < bound + 5.0
        assert (await memory.store.get([memory_id]))[0].embedding_pending
        hits = await memory.search("hangs", limit=5)  # the query embedding is skipped too: text answers
        assert [hit.id for hit in hits] == [memory_id]
        fake_ollama.clear_faults()


# --- Session-Buddy goes away -----------------------------------------------------------------------------


async def test_session_buddy_locked_degrades_then_outbox_drains(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path, sb_home: Path) -> None:
    sb_file = tmp_path / "sb" / "reflection.duckdb"
    async with open_memory(pg_data_dir, session_buddy=sb_overrides(sb_file),
                           search={"unified_timeout_s": 60.0}) as memory:
        await memory.remember(conversation("Setup.", "Session-Buddy files are created on first delivery."),
                              project="zeta")
        assert (await memory.relay.drain()).delivered == 1  # the file now exists with Session-Buddy's tables
        locked_insights = ["Lock holders block in-process writers until they exit.",
                           "The outbox keeps insights while Session-Buddy is locked."]
        with hold_duckdb_lock(sb_file):
            ids = [await memory.remember(conversation(f"Note {n}.", text), project="zeta")
                   for n, text in enumerate(locked_insights)]
            result = await memory.unified_search("Session-Buddy locked outbox", limit=10)
            assert result.degraded
            assert result.sources["postgres"].status == "ok"
            assert result.sources["session_buddy"].status in ("error", "timeout")
            assert "lock" in (result.sources["session_buddy"].error or "").lower()
            assert {hit.source for hit in result.hits} == {"postgres"} and ids[1] in {h.id for h in result.hits}

            report = await memory.relay.drain()
            assert report.delivered == 0 and report.failed_attempts == 2
            pending = [row for row in await outbox_rows(memory.store) if row["status"] == "pending"]
            assert len(pending) == 2 and all(row["attempts"] == 1 and row["last_error"] for row in pending)
            health = await memory.health()
            parts = {c.name: c for c in health.components}
            assert parts["insight_sink"].status == HealthStatus.DEGRADED  # optional part: never UNHEALTHY
            assert parts["insight_sink"].metadata["lock"] == "held_by_other"
            assert health.status == HealthStatus.DEGRADED

        report = await memory.relay.drain()
        assert report.delivered == 2
        assert (await memory.relay.status()).pending == 0
    wanted = [f"om:{insight_id('zeta', text)}" for text in locked_insights]
    found = await session_buddy_own_search(sb_file, ["outbox keeps insights", *wanted])
    assert any(locked_insights[1] in row["content"] for row in found["outbox keeps insights"])
    assert [len(found[tag]) for tag in wanted] == [1, 1]


async def test_broken_or_disabled_sink_still_answers_from_postgres(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path, sb_home: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where Session-Buddy's folder should be")
    async with open_memory(pg_data_dir, session_buddy=sb_overrides(blocker / "reflection.duckdb", timeout_s=10.0,
                                                                   degraded_backlog_age_s=0.0),
                           search={"unified_timeout_s": 30.0}) as memory:
        memory_id = await memory.remember(conversation("Broken sink.", "A broken sink only degrades."),
                                          project="eta")
        result = await memory.unified_search("broken sink", limit=5)
        assert result.degraded and result.sources["session_buddy"].status == "error"
        assert [hit.id for hit in result.hits] == [memory_id]
        assert (await memory.relay.drain()).failed_attempts == 1
        assert (await outbox_rows(memory.store))[0]["status"] == "pending"
        health = await memory.health()
        parts = {c.name: c for c in health.components}
        assert parts["pipeline"].status == HealthStatus.DEGRADED  # an old backlog degrades ...
        assert parts["pipeline"].metadata["pending"] == 1
        assert health.status == HealthStatus.DEGRADED  # ... and never makes the memory unhealthy

    async with open_memory(pg_data_dir) as memory:  # session_buddy.enabled = false
        memory_id = await memory.remember(conversation("No sink.", "Disabled sinks are not degraded."))
        result = await memory.unified_search("sinks", limit=5)
        assert not result.degraded and result.sources["session_buddy"].status == "disabled"
        assert [hit.id for hit in result.hits] == [memory_id]
        by_name = {c.name: c for c in (await memory.health()).components}
        assert by_name["insight_sink"].status == HealthStatus.HEALTHY
        assert by_name["insight_sink"].message == "disabled"


class SlowSink:
    """An insight sink that never answers a search in time (a hung Session-Buddy server)."""

    async def search_insights(self, query: str, limit: int = 10, projects: Any = None) -> list[Any]:
        await asyncio.sleep(60)
        return []

    async def health(self) -> bool:
        return True

    async def cleanup(self) -> None:
        return None


async def test_slow_session_buddy_times_out_without_failing_the_answer(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    from oneiric.core.resolution import Candidate, CandidateSource

    async def slow() -> SlowSink:
        return SlowSink()

    async with open_memory(pg_data_dir, search={"unified_timeout_s": 0.5}) as memory:
        lifecycle = memory._components.lifecycle
        lifecycle.resolver.register(Candidate(domain="adapter", key="insight_sink", provider="slow", factory=slow,
                                              source=CandidateSource.MANUAL))
        await lifecycle.activate("adapter", "insight_sink", "slow")
        memory_id = await memory.remember("the answer comes from PostgreSQL alone", project="slow")
        started = time.monotonic()
        result = await memory.unified_search("answer PostgreSQL", limit=5)
        assert time.monotonic() - started < 30  # the hung source was abandoned, not awaited
        assert result.sources["session_buddy"].status == "timeout" and result.degraded
        assert result.sources["postgres"].status == "ok" and [hit.id for hit in result.hits] == [memory_id]


async def test_background_backfill_embeds_rows_written_while_ollama_was_down(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, fake_ollama: FakeOllama) -> None:
    async with open_memory(pg_data_dir, background=True, embedder=ollama_overrides(fake_ollama),
                           coordinator={"embed_timeout_s": 2.0, "backfill_interval_s": 0.2}) as memory:
        fake_ollama.stop()
        memory_id = await memory.remember("stored while the embedder was away", project="bf")
        assert await memory.store.count_pending() == 1
        fake_ollama.start()

        async def embedded() -> bool:
            return await memory.store.count_pending() == 0

        assert await eventually(embedded, timeout_s=60.0)  # the background task, not this test, embedded it
        assert not (await memory.store.get([memory_id]))[0].embedding_pending


# --- backpressure and load ---------------------------------------------------------------------------------


async def test_backpressure_rejects_past_the_admission_timeout(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, fake_ollama: FakeOllama) -> None:
    async with open_memory(pg_data_dir, embedder=ollama_overrides(fake_ollama, request_timeout_s=60.0),
                           coordinator={"max_in_flight": 2, "admission_timeout_s": 0.3,
                                        "embed_timeout_s": 30.0}) as memory:
        fake_ollama.inject(delay_s=2.0, times=2)
        slow = [asyncio.create_task(memory.remember(f"slow write {n}", project="theta")) for n in range(2)]

        async def saturated() -> bool:
            return memory._in_flight == 2

        assert await eventually(saturated)
        with pytest.raises(StoreUnavailable) as caught:
            await memory.search("anything", mode="text")
        assert "coordinator.max_in_flight" in str(caught.value)
        written = await asyncio.gather(*slow)  # the admitted calls finish normally
        assert len(await memory.store.get(written)) == 2 and memory._in_flight == 0
        assert await memory.search("slow write", mode="text")  # capacity is back


async def test_thousand_concurrent_calls_with_bounded_connections(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    max_connections = 4
    async with open_memory(pg_data_dir, postgres={"max_connections": max_connections, "acquire_timeout_s": 60.0},
                           coordinator={"max_in_flight": 64, "admission_timeout_s": 120.0}) as memory:
        store = memory.store
        admin = await admin_connection(store)
        samples: list[int] = []
        pool_sizes: list[int] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                samples.append(int(await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'oneiric-memory' "
                    "AND datname = current_database()")))
                pool_sizes.append(store.pool.get_size())
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        try:
            calls = [memory.remember(f"concurrent memory number {n} about topic {n % 17}", project=f"p{n % 3}")
                     if n % 2 == 0 else memory.search(f"topic {n % 17}", limit=5)
                     for n in range(1000)]
            results = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            stop.set()
            await sampler
            await admin.close()
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == []
        written = [r for n, r in enumerate(results) if n % 2 == 0 and isinstance(r, uuid.UUID)]
        assert len(set(written)) == 500
        assert len(await store.get(written)) == 500  # every write is readable afterwards
        assert samples and 1 <= max(samples) <= max_connections  # the sampler saw the pool, never above
        assert max(pool_sizes) <= max_connections
        assert memory._in_flight == 0


# --- hot swap ----------------------------------------------------------------------------------------------


class CountingEmbedder(HashingEmbedder):
    """The real hashing embedder, counting the calls it serves (to see which instance a call used)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.closed = False

    async def embed_documents(self, texts: Any) -> list[list[float]]:
        self.calls += 1
        return await super().embed_documents(texts)

    async def embed_query(self, text: str) -> list[float]:
        self.calls += 1
        return await super().embed_query(text)

    async def cleanup(self) -> None:
        self.closed = True
        await super().cleanup()


async def test_hot_swap_uses_the_new_instance_and_refuses_another_model(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, fake_ollama: FakeOllama) -> None:
    from oneiric.core.resolution import Candidate, CandidateSource

    # Hashing is active; Ollama (the loopback fake) is registered too and can be swapped in.
    async with open_memory(pg_data_dir, embedder={"provider": "hashing", "base_url": fake_ollama.base_url}) as memory:
        lifecycle = memory._components.lifecycle
        made: list[CountingEmbedder] = []

        async def counting() -> CountingEmbedder:
            instance = CountingEmbedder(memory.settings)
            await instance.init()
            made.append(instance)
            return instance

        lifecycle.resolver.register(Candidate(domain="adapter", key="embedding", provider="counting",
                                              factory=counting, priority=1, source=CandidateSource.MANUAL))
        before = await memory.remember("written before any swap", project="iota")
        await lifecycle.swap("adapter", "embedding", "counting")
        first = made[0]
        assert memory.embedder is first
        await memory.remember("written after the first swap", project="iota")
        assert first.calls == 1
        await lifecycle.swap("adapter", "embedding", "counting")
        second = made[1]
        assert first.closed and memory.embedder is second  # the old instance was cleaned up at once
        hits = await memory.search("written before", mode="vector", limit=2)
        assert second.calls == 1 and first.calls == 1 and hits[0].id == before

        await lifecycle.swap("adapter", "embedding", "ollama")  # a different model: ollama:nomic-embed-text
        assert memory.embedder is not None and memory.embedder.model_id.startswith("ollama:")
        count = await memory.store.count()
        with pytest.raises(SchemaMismatch) as caught:
            await memory.remember("must not be embedded with a second model", project="iota")
        assert "hashing:" in str(caught.value) and "ollama:" in str(caught.value)
        with pytest.raises(SchemaMismatch):
            await memory.search("written before", mode="vector")
        assert await memory.store.count() == count  # refused: nothing written
        assert before in {hit.id for hit in await memory.search("written", mode="text")}  # text needs no model

        await lifecycle.swap("adapter", "embedding", "hashing")  # back to the store's model
        await memory.remember("written after swapping back", project="iota")
        assert await memory.store.count() == count + 1 and await memory.store.count_pending() == 0


class MisbehavingEmbedder(HashingEmbedder):
    """The store's model id, but answers that cannot be stored (a buggy or misconfigured embedder)."""

    mode = "short"

    async def embed_documents(self, texts: Any) -> list[list[float]]:
        if self.mode == "short":
            return [[0.5, 0.5, 0.5] for _ in texts]  # wrong dimension
        if self.mode == "missing":
            return []  # wrong count
        raise RuntimeError("an embedder bug")


async def test_a_misbehaving_embedder_never_costs_a_write(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    from oneiric.core.resolution import Candidate, CandidateSource

    async with open_memory(pg_data_dir) as memory:
        lifecycle = memory._components.lifecycle
        made: list[MisbehavingEmbedder] = []

        async def misbehaving() -> MisbehavingEmbedder:
            instance = MisbehavingEmbedder(memory.settings)
            await instance.init()
            made.append(instance)
            return instance

        lifecycle.resolver.register(Candidate(domain="adapter", key="embedding", provider="misbehaving",
                                              factory=misbehaving, source=CandidateSource.MANUAL))
        await memory.remember("bound the store to the hashing model first")
        await lifecycle.swap("adapter", "embedding", "misbehaving")
        ids = []
        for mode in ("short", "missing", "raise"):
            made[-1].mode = mode
            ids.append(await memory.remember(f"kept although the embedder answered {mode}", project="mis"))
        assert [item.embedding_pending for item in await memory.store.get(ids)] == [True, True, True]
        await lifecycle.swap("adapter", "embedding", "hashing")
        assert (await memory.backfill()).embedded == 3 and await memory.store.count_pending() == 0


# --- input handling ------------------------------------------------------------------------------------


async def test_bad_input_changes_nothing(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    async with open_memory(pg_data_dir) as memory:
        with pytest.raises(InvalidInput):
            await memory.remember_many([{"content": "fine"}, {"content": "bad", "colour": "red"}])
        with pytest.raises(InvalidInput):
            await memory.remember_many([{"content": "fine"}, {"content": "typo", "memory_type": "agnet"}])
        with pytest.raises(InvalidInput):
            await memory.remember(conversation("x", "an insight"), project="")
        with pytest.raises(InvalidInput):
            await memory.search("   ")
        with pytest.raises(InvalidInput):
            await memory.search("x", memory_types=["nope"])
        with pytest.raises(InvalidInput):
            await memory.forget(filters=SearchFilters())
        assert await memory.store.count() == 0 and await outbox_rows(memory.store) == []
        assert memory._in_flight == 0  # rejected calls released their admission slot
