"""The sink through Session-Buddy's **own** MCP server (``session_buddy.server_optimized.run_server``), started in
a subprocess on a loopback port, offline, with its own temporary HOME. On 0.23 and 0.36 alike; what the server's
tools accept is read from their schemas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp_common.health import HealthStatus

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import InsightSinkError
from oneiric_memory.insights import format_insight_block, insight_id
from tests.adapters.session_buddy.sb_helpers import (
    SESSION_BUDDY_ID,
    SessionBuddyServer,
    delivery,
    make_settings,
    open_sink,
)
from tests.coordinator_fixtures import drop_schema, outbox_rows
from tests.support import make_settings as make_settings_with_store

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module", autouse=True)
def booting_session_buddy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionBuddyServer]:
    """One server for this module, started when the module starts (it takes seconds of imports to boot)."""
    server = SessionBuddyServer(tmp_path_factory.mktemp("session-buddy-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def session_buddy_server(booting_session_buddy_server: SessionBuddyServer) -> SessionBuddyServer:
    await booting_session_buddy_server.wait_until_answering()
    return booting_session_buddy_server


async def test_mcp_mode_delivers_through_session_buddys_own_server(
        tmp_path: Path, session_buddy_server: SessionBuddyServer) -> None:
    settings = make_settings(tmp_path, mode="mcp", mcp_url=session_buddy_server.url)
    item = delivery("repo-a", "Watch out: while Session-Buddy's server runs it owns reflection.duckdb.", "mem-9")
    other = delivery("repo-b", "Watch out: Session-Buddy's server answers store_reflection over MCP.")
    async with open_sink(settings) as sink:
        async with sink.batch() as mode:
            assert mode == "mcp"
            entry_id = await sink.deliver(item)
            assert await sink.deliver(item) == entry_id  # found again, not written twice
        async with open_sink(settings) as restarted:
            assert await restarted.deliver(item) == entry_id
            await restarted.deliver(other)
        hits = await sink.search_insights("Session-Buddy's server", projects=["repo-a"])
        assert [(h.id, h.project, h.insight_id) for h in hits] == [(entry_id, "repo-a", item.insight_id)]
        assert {h.project for h in await sink.search_insights("Session-Buddy's server")} == {"repo-a", "repo-b"}
        health = await sink.component_health()
    assert health.status is HealthStatus.HEALTHY and health.metadata["mode"] == "mcp"

    # Session-Buddy's own tools find exactly one entry for the insight id
    found = await session_buddy_server.call("quick_search", {"query": f"om:{item.insight_id}"})
    assert "reflection.duckdb" in found.content[0].text
    rows = (await session_buddy_server.call(
        "fingerprint_search", {"query": "reflection.duckdb", "content_type": "reflection", "threshold": 1.01})).data
    tagged = [r for r in rows["results"] if f"om:{item.insight_id}" in r["tags"]]
    assert len(tagged) == 1
    assert tagged[0]["id"] == entry_id
    assert {"insight", "gotcha", "project:repo-a", "om-memory:mem-9"} <= set(tagged[0]["tags"])
    assert SESSION_BUDDY_ID.fullmatch(entry_id)  # its real id (ULID on 0.23, uuid7 hex on 0.36)

    # store_reflection got what this version's schema accepts: 0.36 takes project and source_artifact_uri
    schema = await session_buddy_server.tool_arguments("store_reflection")
    stored = session_buddy_server.snapshot_row(tmp_path, entry_id, ["project", "source_artifact_uri"])
    if "project" in schema:  # (not checked through quick_search(project=): its cache ignores the project)
        assert stored["project"] == "repo-a"
    if "source_artifact_uri" in schema:
        assert stored["source_artifact_uri"] == "oneiric-memory://mem-9"

    # no Session-Buddy version has an MCP tool that deletes: refused, so the caller keeps its tombstone
    async with open_sink(settings) as sink:
        with pytest.raises(InsightSinkError) as caught:
            await sink.delete_insights([item.insight_id])
        assert caught.value.details["reason"] == "unsupported"
        assert await sink.delete_insights([]) == 0
        with pytest.raises(InsightSinkError, match="lists every reflection"):
            await sink.search_insights("*")


async def test_auto_mode_picks_mcp_while_the_server_holds_the_file(
        tmp_path: Path, session_buddy_server: SessionBuddyServer) -> None:
    path = session_buddy_server.database_path
    auto = make_settings(tmp_path, mode="auto", mcp_url=session_buddy_server.url, database_path=str(path))
    async with open_sink(auto) as sink:
        async with sink.batch() as mode:
            assert mode == "mcp"
            await sink.deliver(delivery("repo-a", "Auto mode found the server answering."))
        health = await sink.component_health()
        assert health.status is HealthStatus.HEALTHY
        assert health.metadata["mode"] == "mcp" and health.metadata["last_mode_used"] == "mcp"
        assert health.metadata["lock"] == "held_by_other"  # the server owns the file
    in_process = make_settings(tmp_path, mode="in_process", database_path=str(path))
    async with open_sink(in_process) as sink:
        with pytest.raises(InsightSinkError, match="Session-Buddy holds"):
            await sink.deliver(delivery("repo-a", "In-process cannot take the server's file."))
    async with open_sink(auto) as sink:  # a deletion goes in-process even in auto mode: it waits for the file
        with pytest.raises(InsightSinkError) as caught:
            await sink.delete_insights([delivery("repo-a", "Auto mode found the server answering.").insight_id])
        assert caught.value.details["reason"] == "locked"


async def test_auto_mode_delivers_a_remembered_insight_through_the_running_server(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path,
        session_buddy_server: SessionBuddyServer) -> None:
    """Issue 13's 'done when': with Session-Buddy's server running, ``auto`` mode delivers the outbox's insights
    and Session-Buddy's own search finds them (0.23 and 0.36: liveness is list_tools, not ping)."""
    text = "Watch out: the outbox relay reaches a running Session-Buddy only over MCP; its file stays locked."
    settings = make_settings_with_store(pg_data_dir, session_buddy={
        "enabled": True, "mode": "auto", "mcp_url": session_buddy_server.url,
        "database_path": str(session_buddy_server.database_path), "timeout_s": 30.0,
        # The test drains the outbox itself: a background relay round could deliver first (seen under two
        # test workers), and the drain would then report 0 deliveries.
        "relay_enabled": False,
        "retry_base_delay_s": 0.0, "retry_max_delay_s": 0.0}, search={"unified_timeout_s": 60.0})
    async with UnifiedMemory.open(settings) as memory:
        try:
            memory_id = await memory.remember(f"I fixed the relay.\n{format_insight_block(text)}\n", "agent",
                                              project="alpha")
            report = await memory.relay.drain()
            assert (report.delivered, report.failed_attempts) == (1, 0), report.errors
            (row,) = await outbox_rows(memory.store)
            assert row["status"] == "delivered" and row["memory_id"] == memory_id
            assert SESSION_BUDDY_ID.fullmatch(row["delivered_ref"])  # the server's own id, not a handle
            result = await memory.unified_search("outbox relay running Session-Buddy", limit=5)
            assert result.sources["session_buddy"].status == "ok"
            (found_hit,) = [hit for hit in result.hits if hit.source == "session_buddy" and text in hit.content]
            assert found_hit.metadata["insight_id"] == insight_id("alpha", text)  # our key travels with the hit
            assert found_hit.metadata["session_buddy_id"] == row["delivered_ref"]
        finally:
            await drop_schema(memory.store)
    found = await session_buddy_server.call("quick_search", {"query": f"om:{insight_id('alpha', text)}",
                                                             "min_score": 0.0})
    assert "outbox relay reaches a running Session-Buddy" in found.content[0].text
