"""The sink in-process: Session-Buddy's own adapter on a temporary DuckDB (HOME at a folder that does not exist).

The same tests run on Session-Buddy 0.23 (Python 3.13) and 0.36 (Python 3.14, ``.ci/py314``); what differs is
detected from the installed package, never skipped. The ``api`` fixture also runs them with the insight methods
removed from the installed class, which is 0.36's shape on 0.23.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from mcp_common.health import HealthStatus

from oneiric_memory.errors import InsightSinkError, InvalidInput
from oneiric_memory.insights import InsightHit, extract_insights
from tests.adapters.session_buddy.sb_helpers import (
    AGENT_OUTPUT,
    SESSION_BUDDY_ID,
    assert_another_process_can_open,
    delivery,
    make_settings,
    open_sink,
    rows_tagged,
    session_buddy_db,
)
from tests.coordinator_fixtures import hold_duckdb_lock, own_search_rows

pytestmark = pytest.mark.asyncio


async def test_extracted_insights_land_in_session_buddy_and_its_own_search_finds_them(tmp_path: Path,
                                                                                      api: str) -> None:
    settings = make_settings(tmp_path)
    found = extract_insights(AGENT_OUTPUT)
    assert [f.insight_type for f in found] == ["gotcha", "pattern"]
    deliveries = [f.keyed("oneiric-memory", memory_id=f"mem-{n}") for n, f in enumerate(found)]
    async with open_sink(settings) as sink, sink.batch() as mode:
        assert mode == "in_process"
        ids = [await sink.deliver(d) for d in deliveries]
    # Session-Buddy's own ids: ULIDs from store_insight, uuid7 hex from 0.36's store_reflection
    assert all(SESSION_BUDDY_ID.fullmatch(i) for i in ids), ids
    if api == "insights":
        assert all(len(i) == 26 for i in ids)

    async with session_buddy_db(settings.session_buddy.database_path) as db:  # type: ignore[arg-type]
        # Session-Buddy's own listing: '*' of search_insights, or its tag match on "insight"
        everything = await own_search_rows(db, "*" if api == "insights" else "insight")
        assert {row["id"] for row in everything} == set(ids)
        by_text = await own_search_rows(db, "DuckDB")
        assert [row["id"] for row in by_text] == [ids[0]]
        row = by_text[0]
        if api == "insights":
            assert row["insight_type"] == "gotcha"
        assert row["tags"][:2] == ["insight", "gotcha"]
        assert f"om:{deliveries[0].insight_id}" in row["tags"]
        assert "project:oneiric-memory" in row["tags"] and "om-memory:mem-0" in row["tags"]
        by_tag = await own_search_rows(db, "pattern")
        assert [r["id"] for r in by_tag] == [ids[1]]
        for entry_id, item in zip(ids, deliveries, strict=True):  # exactly one copy of each
            assert [r["id"] for r in await own_search_rows(db, f"om:{item.insight_id}")] == [entry_id]


async def test_reflections_carry_session_buddys_own_project_and_our_artifact_uri(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without store_insight the sink writes reflections, with the project and provenance the version accepts."""
    from session_buddy.adapters.reflection_adapter_oneiric import ReflectionDatabaseAdapterOneiric

    monkeypatch.delattr(ReflectionDatabaseAdapterOneiric, "store_insight", raising=False)
    monkeypatch.delattr(ReflectionDatabaseAdapterOneiric, "search_insights", raising=False)
    settings = make_settings(tmp_path)
    item = delivery("repo-a", "Always pass use_cache=False: the reflection cache ignores the project.", "m-1")
    odd = delivery("my repo/with spaces", "Session-Buddy refuses this project name; our tag keeps it.", "m-2")
    async with open_sink(settings) as sink:
        entry_id = await sink.deliver(item)
        assert await sink.deliver(item) == entry_id
        odd_id = await sink.deliver(odd)
        hits = await sink.search_insights("reflection cache", projects=["repo-a"])
        assert [h.id for h in hits] == [entry_id]
        assert [h.id for h in await sink.search_insights("refuses", projects=["my repo/with spaces"])] == [odd_id]
    async with session_buddy_db(settings.session_buddy.database_path) as db:  # type: ignore[arg-type]
        rows = await db.search_reflections("use_cache=False", use_embeddings=False, use_cache=False,
                                           project="repo-a")
        assert [r["id"] for r in rows] == [entry_id]
        assert rows[0]["tags"][:2] == ["insight", item.insight_type]
        assert await db.search_reflections("use_cache=False", use_embeddings=False, use_cache=False,
                                           project="repo-b") == []
        columns = {r[0] for r in db.conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'reflections_v2'").fetchall()}
        wanted = ["project"] + (["source_artifact_uri"] if "source_artifact_uri" in columns else [])
        stored = {r[0]: r[1:] for r in db.conn.execute(
            f"SELECT id, {', '.join(wanted)} FROM reflections_v2 WHERE id IN (?, ?)", [entry_id, odd_id]).fetchall()}
    assert stored[entry_id][0] == "repo-a"
    assert stored[odd_id][0] is None  # not a name Session-Buddy accepts; the project:<name> tag carries it
    if "source_artifact_uri" in columns:  # Session-Buddy 0.36
        assert stored[entry_id][1] == "oneiric-memory://m-1"


async def test_delete_insights_removes_them_from_session_buddys_own_search(tmp_path: Path, api: str) -> None:
    """Issue 12: forgetting deletes the delivered insight, by our id, by Session-Buddy's id or by handle."""
    settings = make_settings(tmp_path)
    a = delivery("repo-a", "Forget me: the first secret about the staging database.", "m-a")
    b = delivery("repo-a", "Forget me too: the second secret about the staging database.", "m-b")
    c = delivery("repo-b", "Forget me as well: the third secret about the staging database.", "m-c")
    keep = delivery("repo-a", "Keep me: the staging database is rebuilt nightly.", "m-k")
    async with open_sink(settings) as sink:
        async with sink.batch():
            ids = {d.insight_id: await sink.deliver(d) for d in (a, b, c, keep)}
        async with session_buddy_db(settings.session_buddy.database_path) as db:  # type: ignore[arg-type]
            plain = await db.store_reflection("A plain reflection about the staging database secret.",
                                              tags=["notes"])
        assert len(await sink.search_insights("*")) == 4

        assert await sink.delete_insights([a.insight_id]) == 1  # our id (the outbox key)
        assert await sink.delete_insights([a.insight_id]) == 0  # idempotent
        assert await sink.delete_insights([ids[b.insight_id], ids[b.insight_id]]) == 1  # Session-Buddy's own id
        assert await sink.delete_insights([f"om:{c.insight_id}", "om:never-delivered"]) == 1  # the MCP handle
        assert await sink.delete_insights([plain]) == 0  # never a row that is not an insight
        assert await sink.delete_insights([]) == 0
        for bad in ("abc", [""], ["x" * 129], ["no spaces"], [None], b"ab"):
            with pytest.raises(InvalidInput):
                await sink.delete_insights(bad)  # type: ignore[arg-type]

        remaining = await sink.search_insights("*")
        assert [(h.id, h.insight_id) for h in remaining] == [(ids[keep.insight_id], keep.insight_id)]
        assert [h.id for h in await sink.search_insights("secret")] == []
        assert (await sink.component_health()).metadata["deleted"] == 3
        # a forgotten insight delivered again (a re-remembered memory) is stored anew
        again = await sink.deliver(a)
        assert again != ids[a.insight_id] and await sink.delete_insights([a.insight_id]) == 1
    async with session_buddy_db(settings.session_buddy.database_path) as db:  # type: ignore[arg-type]
        for item in (a, b, c):
            assert await own_search_rows(db, f"om:{item.insight_id}") == []
        assert await own_search_rows(db, "Forget") == []
        assert [r["id"] for r in await own_search_rows(db, "Keep me")] == [ids[keep.insight_id]]
        plain_rows = await db.search_reflections("plain reflection", use_embeddings=False, use_cache=False)
        assert [r["id"] for r in plain_rows] == [plain]


async def test_delete_waits_while_another_process_holds_the_file(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    path = settings.session_buddy.database_path
    assert path is not None
    item = delivery("repo-a", "Delete me once the lock is released.")
    async with open_sink(settings) as sink:
        await sink.deliver(item)
        with hold_duckdb_lock(path):
            with pytest.raises(InsightSinkError) as caught:
                await sink.delete_insights([item.insight_id])
            assert caught.value.details["reason"] == "locked"
        assert await sink.delete_insights([item.insight_id]) == 1
        assert await sink.search_insights("*") == []


async def test_delivery_is_idempotent_by_insight_id(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    item = delivery("repo-a", "Prefer FOR UPDATE SKIP LOCKED for outbox relays.")
    async with open_sink(settings) as sink:
        async with sink.batch():
            first = await sink.deliver(item)
            assert await sink.deliver(item) == first
        assert await sink.deliver(item) == first  # a new open of the file
        health = await sink.component_health()
    assert health.metadata["delivered"] == 1 and health.metadata["deduplicated"] == 2
    async with open_sink(settings) as other:  # a restarted relay: nothing remembered in memory
        assert await other.deliver(item) == first
    async with session_buddy_db(settings.session_buddy.database_path) as db:  # type: ignore[arg-type]
        assert rows_tagged(db, f"om:{item.insight_id}") == 1
    # the same text from another project is another insight
    async with open_sink(settings) as sink:
        assert await sink.deliver(delivery("repo-b", item.content)) != first


async def test_search_insights_filters_by_project(tmp_path: Path, api: str) -> None:
    settings = make_settings(tmp_path)
    a = delivery("repo-a", "Watch out: the HNSW index ignores filters on small tables.")
    b = delivery("repo-b", "Watch out: an HNSW index needs SET LOCAL for ef_search.")
    c = delivery("repo-c", "Unrelated advice about logging levels.")
    async with open_sink(settings) as sink:
        async with sink.batch():
            ids = {d.project: await sink.deliver(d) for d in (a, b, c)}
        every = await sink.search_insights("hnsw index")
        assert {h.id for h in every} == {ids["repo-a"], ids["repo-b"]}
        only_a = await sink.search_insights("hnsw index", projects=["repo-a"])
        assert [h.id for h in only_a] == [ids["repo-a"]]
        hit = only_a[0]
        assert isinstance(hit, InsightHit)
        assert (hit.project, hit.insight_type, hit.insight_id) == ("repo-a", "gotcha", a.insight_id)
        assert hit.content == a.content and hit.score is not None
        assert "om:" not in " ".join(hit.topics) and "insight" not in hit.topics
        with pytest.raises(InvalidInput):  # [] names nothing (records.check_names), never "every project"
            await sink.search_insights("hnsw index", projects=[])
        assert await sink.search_insights("hnsw index", projects=["nobody"]) == []
        assert len(await sink.search_insights("*", limit=2)) == 2
        everything = await sink.search_insights("*")  # the wildcard lists every insight, whatever the version
        assert {h.id for h in everything} == set(ids.values()) and len(everything) == 3
        assert {h.project for h in await sink.search_insights("*", projects=["repo-b", "repo-c"])} == {
            "repo-b", "repo-c"}


async def test_lock_held_by_another_process_fails_cleanly_then_succeeds(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    path = settings.session_buddy.database_path
    assert path is not None
    first = delivery("repo-a", "The first insight creates the file.")
    queued = delivery("repo-a", "This one waits for the lock to be released.")
    async with open_sink(settings) as sink:
        await sink.deliver(first)
        holder = subprocess.Popen(
            [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('locked', flush=True);"
             " sys.stdin.read()", str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            with pytest.raises(InsightSinkError) as caught:
                await sink.deliver(queued)
            assert caught.value.details["reason"] == "locked"  # refused at once, not a timeout
            assert f"Session-Buddy holds {path}: deliveries stay queued" in str(caught.value)
            assert str(holder.pid) in str(caught.value.details["holder"])
            with pytest.raises(InsightSinkError):
                await sink.search_insights("insight")
            health = await sink.component_health()
            assert health.status is HealthStatus.DEGRADED
            assert health.metadata["lock"] == "held_by_other"
            assert health.metadata["mode"] == "in_process"
            assert "deliveries stay queued" in str(health.metadata["last_delivery_error"])
            assert await sink.health() is True  # degraded, not unhealthy
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=30)
        entry_id = await sink.deliver(queued)
        health = await sink.component_health()
        assert health.status is HealthStatus.HEALTHY and health.metadata["lock"] == "free"
    async with session_buddy_db(path) as db:
        rows = await own_search_rows(db, "waits")  # one word: 0.36's text search matches any word
        assert [r["id"] for r in rows] == [entry_id]


async def test_an_abandoned_open_releases_the_file(tmp_path: Path) -> None:
    """A call that outlives timeout_s, or whose caller is cancelled, never leaks the file lock."""
    settings = make_settings(tmp_path)
    path = settings.session_buddy.database_path
    assert path is not None
    async with open_sink(settings) as sink:
        await sink.deliver(delivery("repo-a", "Create the file first."))
        sink._sb.timeout_s = 0.000_001  # the next open cannot finish in time
        with pytest.raises(InsightSinkError) as caught:
            await sink.deliver(delivery("repo-a", "This open is abandoned."))
        assert caught.value.details["reason"] == "timeout"
        await assert_another_process_can_open(path)
        sink._sb.timeout_s = 30.0
        for delay in (0.0, 0.1):  # the caller is cancelled at various points of the open
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(delay):
                    await sink.deliver(delivery("repo-a", f"Cancelled after {delay}s."))
            await assert_another_process_can_open(path)
        assert await sink.deliver(delivery("repo-a", "Works again afterwards."))


async def test_a_file_without_hnsw_indexes_gets_the_quick_restricted_open(tmp_path: Path) -> None:
    """Session-Buddy's own indexes (ART) are not HNSW: the quick hand-off applies. (A file WITH HNSW indexes, as
    Session-Buddy writes them when DuckDB's vss extension is installed, is opened by Session-Buddy itself with
    HNSW enabled; vss cannot be installed offline here, so that branch is covered by reading, not by a test.)"""
    import duckdb

    from oneiric_memory.adapters.session_buddy.in_process import has_hnsw_index

    settings = make_settings(tmp_path)
    path = settings.session_buddy.database_path
    assert path is not None
    async with open_sink(settings) as sink:
        await sink.deliver(delivery("repo-a", "A file Session-Buddy created, with its own indexes."))
    connection = duckdb.connect(str(path))
    try:
        kinds = connection.execute("SELECT count(*) FROM duckdb_indexes()").fetchone()
        assert kinds is not None and kinds[0] > 0  # Session-Buddy made indexes (ART), so the query saw them
        assert has_hnsw_index(connection) is False
        connection.execute("CREATE TABLE probe (v INTEGER)")
        connection.execute("CREATE INDEX probe_hnsw_named ON probe (v)")  # a name is not a type
        assert has_hnsw_index(connection) is False
    finally:
        connection.close()
