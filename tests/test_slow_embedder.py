"""A slow embedder on a large write, through the loopback Ollama (``FakeOllama``, a real HTTP server).

The embed deadline (``coordinator.embed_timeout_s``) bounds each chunk of one round of requests, not the whole
batch; the caller learns from the return value how many rows were stored pending; and a search whose requested
mode cannot run says so (default mode) or raises (explicit mode) instead of answering in another mode.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import EmbedderUnavailable
from oneiric_memory.records import MemoryRecord
from oneiric_memory.testing.fake_ollama import FakeOllama
from tests.coordinator_fixtures import drop_schema
from tests.support import make_settings

pytestmark = pytest.mark.asyncio

ROWS = 600
BATCH, CONCURRENCY = 32, 2  # a chunk = one round of 2 requests of 32 texts = 64 rows; 600 rows = 10 rounds
LATENCY_S = 0.3  # per request: the whole write takes >= 10 x 0.3 s = 3 s, twice the deadline below
DEADLINE_S = 1.5


@pytest.fixture
def slow_ollama() -> Iterator[FakeOllama]:
    with FakeOllama(dimension=768, models=("nomic-embed-text",), latency_s=LATENCY_S) as fake:
        yield fake


def _settings(pg_data_dir: Path, fake: FakeOllama) -> object:
    return make_settings(
        pg_data_dir,
        embedder={"provider": "ollama", "base_url": fake.base_url, "batch_size": BATCH,
                  "max_concurrency": CONCURRENCY, "retry_attempts": 1, "request_timeout_s": 30.0,
                  "total_timeout_s": 60.0},
        coordinator={"embed_timeout_s": DEADLINE_S})


def _records(tag: str) -> list[MemoryRecord]:
    return [MemoryRecord(content=f"{tag} memory number {i} about pool sizing and topic {i % 13}", project=tag)
            for i in range(ROWS)]


async def test_a_large_write_through_a_slow_embedder_is_embedded_completely(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, slow_ollama: FakeOllama) -> None:
    async with UnifiedMemory.open(_settings(pg_data_dir, slow_ollama), background=False) as memory:  # type: ignore[arg-type]
        try:
            started = time.monotonic()
            result = await memory.remember_many(_records("slow"))
            elapsed = time.monotonic() - started
            # The batch as a whole could never fit one deadline (10 rounds of 0.3 s > 1.5 s) ...
            assert elapsed > DEADLINE_S
            # ... yet every row has its vector: each chunk met its own deadline.
            assert len(result) == ROWS and result.new == ROWS and result.duplicates == 0 and result.pending == 0
            assert await memory.store.count_pending() == 0
            assert len(slow_ollama.embed_requests) >= ROWS // BATCH
            hits = await memory.search("slow memory number 417 about pool sizing", mode="vector", limit=5)
            assert hits.mode == "vector" and not hits.fell_back and hits[0].id == result[417]
        finally:
            await drop_schema(memory.store)


async def test_pending_rows_are_counted_in_the_result_and_no_search_answers_in_another_mode(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, slow_ollama: FakeOllama) -> None:
    async with UnifiedMemory.open(_settings(pg_data_dir, slow_ollama), background=False) as memory:  # type: ignore[arg-type]
        try:
            slow_ollama.inject(times=2 * CONCURRENCY)  # the first two rounds answer normally ...
            slow_ollama.inject(delay_s=20.0, times=4 * CONCURRENCY)  # ... the third hangs past the deadline
            result = await memory.remember_many(_records("stalled"))
            chunk = BATCH * CONCURRENCY
            assert result.pending == ROWS - 2 * chunk and result.new == ROWS  # stored, and the caller knows
            assert await memory.store.count_pending() == ROWS - 2 * chunk

            # explicit modes that need the embedder raise instead of quietly answering in text mode
            for mode in ("vector", "hybrid"):
                with pytest.raises(EmbedderUnavailable, match=f"{mode} search needs a query embedding"):
                    await memory.search("stalled memory number 500", mode=mode, limit=5)  # type: ignore[arg-type]
            # the default mode answers in text and says so
            hits = await memory.search("stalled memory number 500", limit=5)
            assert hits.mode == "text" and hits.requested_mode == "hybrid" and hits.note and "embedder" in hits.note
            assert hits[0].id == result[500]
            # unified search reports the failing source (the embedder) instead of a quiet text answer
            unified = await memory.unified_search("stalled memory number 500", mode="vector", limit=5)
            assert unified.degraded and unified.sources["postgres"].status == "error"
            assert "needs a query embedding" in (unified.sources["postgres"].error or "")
        finally:
            slow_ollama.clear_faults()
            await drop_schema(memory.store)
