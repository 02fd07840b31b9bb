"""Forgetting means forgetting, end to end: embedded PostgreSQL and the real Session-Buddy package (temp DuckDB).

``forget`` removes the memory's access statistics and outbox rows, deletes its insights from Session-Buddy
(through the sink's ``delete_insights``), or leaves a content-free tombstone that the relay carries out once
Session-Buddy can be changed again. Afterwards no search, unified or not, returns the content.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.insights import insight_id
from tests.coordinator_fixtures import (
    conversation,
    drop_schema,
    hold_duckdb_lock,
    sb_overrides,
    session_buddy_own_search,
)
from tests.support import make_settings

pytestmark = pytest.mark.asyncio

SECRET = "The staging cluster password rotates every Tuesday at noon, so never cache it."
KEPT = "Connection pools should be sized per core of the server, not per client."
QUERY = "staging cluster password rotates Tuesday"


@asynccontextmanager
async def open_memory(pg_data_dir: Path, sb_file: Path) -> AsyncIterator[UnifiedMemory]:
    settings = make_settings(pg_data_dir, session_buddy=sb_overrides(sb_file), search={"unified_timeout_s": 60.0})
    async with UnifiedMemory.open(settings, background=False) as memory:
        try:
            yield memory
        finally:
            await drop_schema(memory.store)


async def _outbox(store: PgvectorMemoryStore) -> list[dict[str, Any]]:
    async with store.gate.acquire() as connection:
        rows = await connection.fetch(f"SELECT insight_id, kind, status, content FROM {store.table('insight_outbox')} "
                                      "ORDER BY insight_id")
    return [dict(row) for row in rows]


async def _nothing_finds_the_secret(memory: UnifiedMemory) -> None:
    for mode in ("text", "hybrid", "vector"):
        assert all("password" not in hit.content for hit in await memory.search(QUERY, mode=mode, limit=20))  # type: ignore[arg-type]
    unified = await memory.unified_search(QUERY, limit=20)
    assert all("password" not in hit.content for hit in unified.hits), unified


async def test_forget_deletes_the_memory_its_statistics_outbox_rows_and_session_buddy_copy(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path, sb_home: Path) -> None:
    sb_file = tmp_path / "sb" / "reflection.duckdb"
    secret_key, kept_key = insight_id("fg", SECRET), insight_id("fg", KEPT)
    async with open_memory(pg_data_dir, sb_file) as memory:
        forgotten = await memory.remember(conversation("Ops note.", SECRET), project="fg")
        kept = await memory.remember(conversation("Sizing note.", KEPT), project="fg")
        assert (await memory.relay.drain()).delivered == 2
        await memory.store.touch([forgotten, kept])
        before = await memory.unified_search(QUERY, limit=20)
        assert {hit.source for hit in before.hits if "password" in hit.content} == {"postgres", "session_buddy"}
        # an insight never delivered (queued only) is simply dropped with its memory
        queued = await memory.remember(conversation("Draft.", "Queued insights of forgotten memories vanish."),
                                       project="fg")

        assert await memory.forget([forgotten, queued]) == 2
        assert await memory.store.get([forgotten, queued]) == []
        assert await memory.store.access_stats(forgotten) is None  # access statistics went with it
        assert await memory.store.access_stats(kept) is not None
        assert await _outbox(memory.store) == [  # the tombstone was carried out at once: no row, no content
            {"insight_id": kept_key, "kind": "deliver", "status": "delivered", "content": KEPT}]
        await _nothing_finds_the_secret(memory)
    found = await session_buddy_own_search(sb_file, [f"om:{secret_key}", f"om:{kept_key}", "password rotates"])
    assert [len(found[f"om:{secret_key}"]), len(found[f"om:{kept_key}"])] == [0, 1]
    assert found["password rotates"] == []


async def test_a_forget_while_session_buddy_is_locked_leaves_a_tombstone_delivered_later(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path, sb_home: Path) -> None:
    sb_file = tmp_path / "sb" / "reflection.duckdb"
    secret_key = insight_id("fg", SECRET)
    async with open_memory(pg_data_dir, sb_file) as memory:
        forgotten = await memory.remember(conversation("Ops note.", SECRET), project="fg")
        assert (await memory.relay.drain()).delivered == 1
        with hold_duckdb_lock(sb_file):  # Session-Buddy's own server holds the file: nothing can be deleted now
            assert await memory.forget([forgotten]) == 1
            assert await _outbox(memory.store) == [  # the content is erased at once; the deletion waits
                {"insight_id": secret_key, "kind": "delete", "status": "pending", "content": ""}]
            await _nothing_finds_the_secret(memory)
            report = await memory.relay.drain()
            assert report.forgotten == 0 and report.failed_attempts == 1
        # the lock is gone but the relay has not run: Session-Buddy still holds the insight and answers it ...
        sink = memory.sink
        assert sink is not None
        assert any("password" in hit.content for hit in await sink.search_insights(QUERY, limit=20))
        await _nothing_finds_the_secret(memory)  # ... yet unified_search drops it: its tombstone is pending
        report = await memory.relay.drain()  # the relay carries the tombstone out
        assert report.forgotten == 1 and await _outbox(memory.store) == []
        await _nothing_finds_the_secret(memory)
        # remembering it again after a forget delivers it again (a later tombstone would not win)
        again = await memory.remember(conversation("Ops note, again.", SECRET), project="fg")
        assert (await memory.relay.drain()).delivered == 1 and again != forgotten
    found = await session_buddy_own_search(sb_file, [f"om:{secret_key}"])
    assert len(found[f"om:{secret_key}"]) == 1
