"""Cross-project memory end to end: embedded PostgreSQL and the real Session-Buddy package (temp DuckDB, HOME in a
temp folder). Project groups, shares, group search and the read rule "own memories, plus what is shared with me or
my groups, nothing else"; un-sharing and forgetting reach Session-Buddy's own search.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore, list_memories
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import InvalidInput
from oneiric_memory.insights import insight_id
from oneiric_memory.records import SearchFilters
from tests.coordinator_fixtures import conversation, drop_schema, sb_overrides, session_buddy_own_search
from tests.support import make_settings

pytestmark = pytest.mark.asyncio

INSIGHT = "Retry idempotent writes with jittered backoff, never the whole batch at once."
OTHER = "Outsiders keep their own notes about quarterly budget spreadsheets."
QUERY = "jittered backoff idempotent writes"


@asynccontextmanager
async def open_memory(pg_data_dir: Path, sb_file: Path | None) -> AsyncIterator[UnifiedMemory]:
    sb = sb_overrides(sb_file) if sb_file is not None else {"enabled": False}
    settings = make_settings(pg_data_dir, session_buddy=sb, search={"unified_timeout_s": 60.0})
    async with UnifiedMemory.open(settings, background=False) as memory:
        try:
            yield memory
        finally:
            await drop_schema(memory.store)


async def _copies(store: PgvectorMemoryStore) -> list[dict[str, Any]]:
    """The outbox rows of target copies (shared insights), sorted."""
    async with store.gate.acquire() as connection:
        rows = await connection.fetch(
            f"SELECT project, insight_id, source_project, kind, status FROM {store.table('insight_outbox')} "
            "WHERE source_project IS NOT NULL ORDER BY project, insight_id")
    return [dict(row) for row in rows]


async def _found(memory: UnifiedMemory, **scope: Any) -> list[tuple[str, str]]:
    """(project, source) of every hit with the insight's text, over every mode and unified search."""
    seen: list[tuple[str, str]] = []
    for mode in ("text", "hybrid", "vector"):
        hits = await memory.search(QUERY, mode=mode, limit=50, **scope)  # type: ignore[arg-type]
        seen += [(hit.project, hit.source) for hit in hits if "jittered" in hit.content]
    unified = await memory.unified_search(QUERY, limit=50, **scope)
    assert not unified.degraded, unified.sources
    seen += [(hit.project, hit.source) for hit in unified.hits if "jittered" in hit.content]
    return seen


async def test_share_with_a_group_then_find_from_a_target_then_unshare_then_gone(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path, sb_home: Path) -> None:
    sb_file = tmp_path / "sb" / "reflection.duckdb"
    copy_key = insight_id("tgt", INSIGHT)
    async with open_memory(pg_data_dir, sb_file) as memory:
        group = await memory.create_group("team", ["src", "tgt"], description="the platform team")
        assert (group.name, group.projects, group.description) == ("team", ("src", "tgt"), "the platform team")
        source = await memory.remember(conversation("Incident review.", INSIGHT), project="src")
        await memory.remember(conversation("Budget.", OTHER), project="out")
        assert (await memory.relay.drain()).delivered == 2
        assert await _found(memory, acting_for="tgt") == []  # not shared yet: the target sees nothing

        change = await memory.share([source], groups=["team"])
        assert (change.memories, change.copies_queued) == (1, 1)  # src is the owner: one copy, for tgt
        assert (await memory.share([source], groups=["team"])).memories == 0  # idempotent
        assert await memory.relay.drain()  # (share already delivered it when Session-Buddy answered)
        assert await _copies(memory.store) == [{"project": "tgt", "insight_id": copy_key, "source_project": "src",
                                                "kind": "deliver", "status": "delivered"}]
        [stored] = await memory.get([source])
        assert stored.shared_groups == ("team",) and stored.shared_projects == ()

        # the target finds it in PostgreSQL (naming its owner) and its own Session-Buddy copy
        found = await _found(memory, acting_for="tgt")
        assert set(found) == {("src", "postgres"), ("tgt", "session_buddy")}
        # group search ranks across the group's projects; each hit names its project
        group_hits = await memory.search(QUERY, group="team", mode="text", limit=10)
        assert [(hit.project, "jittered" in hit.content) for hit in group_hits][:1] == [("src", True)]
        # a project outside the group sees nothing of it, in either source
        assert await _found(memory, acting_for="out") == []
        assert await memory.store.count(SearchFilters(acting_for=["out"])) == 1  # only its own memory
        # a caller cannot widen its scope by naming share entries itself: the store recomputes them
        forged = SearchFilters(acting_for=["out"], shared_targets=["p:tgt", "g:team"])
        assert [m.project for m in (await list_memories(memory.store, filters=forged)).memories] == ["out"]
        own = await session_buddy_own_search(sb_file, [f"om:{copy_key}"])
        assert len(own[f"om:{copy_key}"]) == 1

        change = await memory.unshare([source], groups=["team"])
        assert (change.memories, change.copies_withdrawn) == (1, 1)
        assert (await memory.unshare([source], groups=["team"])).memories == 0  # idempotent
        await memory.relay.drain()
        assert await _copies(memory.store) == []  # the tombstone was carried out
        assert await _found(memory, acting_for="tgt") == []
        assert ("src", "postgres") in await _found(memory, acting_for="src")  # the owner still has it
    own = await session_buddy_own_search(sb_file, [f"om:{copy_key}", f"om:{insight_id('src', INSIGHT)}"])
    assert [len(own[f"om:{copy_key}"]), len(own[f"om:{insight_id('src', INSIGHT)}"])] == [0, 1]


async def test_forget_removes_a_shared_memory_and_every_copy_everywhere(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path, sb_home: Path) -> None:
    sb_file = tmp_path / "sb" / "reflection.duckdb"
    keys = [insight_id(p, INSIGHT) for p in ("src", "a", "b")]
    async with open_memory(pg_data_dir, sb_file) as memory:
        await memory.create_group("pair", ["b"])
        source = await memory.remember(conversation("Review.", INSIGHT), project="src")
        await memory.share([source], projects=["a"], groups=["pair"])
        await memory.relay.drain()
        assert [row["project"] for row in await _copies(memory.store)] == ["a", "b"]
        assert set(await _found(memory, acting_for="b")) == {("src", "postgres"), ("b", "session_buddy")}

        assert await memory.forget([source]) == 1
        await memory.relay.drain()
        assert await _copies(memory.store) == []
        for project in ("src", "a", "b"):
            assert await _found(memory, acting_for=project) == []
        assert await _found(memory, group="pair") == []
    own = await session_buddy_own_search(sb_file, [f"om:{key}" for key in keys] + ["jittered backoff"])
    assert {query: len(rows) for query, rows in own.items()} == {**{f"om:{key}": 0 for key in keys},
                                                                 "jittered backoff": 0}


async def test_membership_changes_move_the_copies(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path, sb_home: Path) -> None:
    sb_file = tmp_path / "sb" / "reflection.duckdb"
    async with open_memory(pg_data_dir, sb_file) as memory:
        await memory.create_group("guild", ["x"])
        source = await memory.remember(INSIGHT, "insight", project="src")  # an insight memory is shared as itself
        await memory.share([source], groups=["guild"])
        assert [row["project"] for row in await _copies(memory.store)] == ["x"]
        group = await memory.add_to_group("guild", ["y", "y"])
        assert group.projects == ("x", "y")
        assert [row["project"] for row in await _copies(memory.store)] == ["x", "y"]
        assert ("src", "postgres") in await _found(memory, acting_for="y")
        await memory.remove_from_group("guild", ["x"])
        await memory.relay.drain()
        assert [row["project"] for row in await _copies(memory.store)] == ["y"]
        assert await _found(memory, acting_for="x") == []
        assert [g.name for g in await memory.list_groups("y")] == ["guild"] and await memory.list_groups("x") == []
        assert await memory.delete_group("guild") is True
        assert await memory.delete_group("guild") is False
        await memory.relay.drain()
        assert await _copies(memory.store) == []
        assert await _found(memory, acting_for="y") == []
        [stored] = await memory.get([source])
        assert stored.shared_groups == ()
        with pytest.raises(InvalidInput, match="no project group"):
            await memory.search(QUERY, group="guild")
    own = await session_buddy_own_search(sb_file, [f"om:{insight_id(p, INSIGHT)}" for p in ("x", "y")])
    assert [len(rows) for rows in own.values()] == [0, 0]


HOSTILE = ["'; DROP TABLE memories; --", "%", "_", "g:team", "p:src", "team\\", "Ωmega ✓", '"quoted"', "a,b",
           " team", "team "]


async def test_hostile_group_and_project_names_are_data(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    async with open_memory(pg_data_dir, None) as memory:
        source = await memory.remember(INSIGHT, "insight", project="src")
        await memory.remember(OTHER, "insight", project="team")
        for index, name in enumerate(HOSTILE):
            group = await memory.create_group(name, [name, f"member-{index}"])
            assert group.name == name and set(group.projects) == {name, f"member-{index}"}
            await memory.share([source], groups=[name])
            hits = await memory.search(QUERY, acting_for=f"member-{index}", mode="text")
            assert [hit.project for hit in hits] == ["src"], name
            assert [hit.project for hit in await memory.search(QUERY, group=name, mode="text")] == ["src"]
        # look-alike names never match: 'g:team' the group is not 'team', '%' matches nothing but itself
        await memory.unshare([source])
        for name in HOSTILE:
            assert await memory.search(QUERY, acting_for=name, mode="text") == []
        assert [hit.project for hit in await memory.search("budget spreadsheets", group="%", mode="text")] == []
        await memory.share([source], projects=["p:src"])
        assert await memory.search(QUERY, acting_for="src", mode="text")  # its owner, always
        assert await memory.search(QUERY, acting_for="p:src", mode="text")
        assert await memory.search(QUERY, acting_for="p", mode="text") == []
        groups_before = await memory.list_groups()
        [before] = await memory.get([source])
        for bad in ("", "a\x00b", "\udcff", "x" * 600, 42, None, ["team"]):
            with pytest.raises(InvalidInput):
                await memory.create_group(bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidInput):
                await memory.share([source], projects=[bad])  # type: ignore[list-item]
            if bad is not None:  # group=None is "no group"
                with pytest.raises(InvalidInput):
                    await memory.search(QUERY, group=bad)  # type: ignore[arg-type]
            if bad is not None and not isinstance(bad, list):  # acting_for: one name or a list of names
                with pytest.raises(InvalidInput):
                    await memory.unified_search(QUERY, acting_for=bad)  # type: ignore[arg-type]
        for bad_list in ("team", [], [""], {"a": 1}):
            with pytest.raises(InvalidInput):
                await memory.share([source], groups=bad_list)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="no project group"):
            await memory.share([source], groups=["never-created"])
        with pytest.raises(InvalidInput, match="either group or acting_for"):
            await memory.search(QUERY, group="%", acting_for="src")
        with pytest.raises(InvalidInput, match="exists already"):
            await memory.create_group("%")
        with pytest.raises(InvalidInput, match="acting_for"):
            await memory.forget(filters=SearchFilters(acting_for=["src"]))
        assert await memory.list_groups() == groups_before  # nothing changed
        assert await memory.get([source]) == [before]
        assert (await memory.store.count()) == 2


async def test_revision_0007_downgrades_to_0006_keeping_memories_and_upgrades_again(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    from oneiric_memory.adapters.pgvector.migrator import Migrator
    from tests.foundation_fixtures import admin_connection

    async with open_memory(pg_data_dir, None) as memory:
        store = memory.store
        schema = store.schema
        await memory.create_group("team", ["tgt"])
        kept = await memory.remember(conversation("Review.", INSIGHT), project="src")
        await memory.share([kept], groups=["team"])
        assert [row["project"] for row in await _copies(store)] == ["tgt"]
        migrator = Migrator(store.connect_params, store.settings.postgres)
        admin = await admin_connection(store)
        try:
            await store.cleanup()  # the pool goes: the downgrade takes exclusive locks
            assert await migrator.downgrade("0006_rag_files") == "0006_rag_files"
            columns = await admin.fetch(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = $1 "
                "AND column_name IN ('shared_with', 'source_project')", schema)
            assert columns == []
            assert await admin.fetchval("SELECT to_regclass($1)", f'"{schema}".project_groups') is None
            assert await admin.fetchval(f'SELECT count(*) FROM "{schema}".memories WHERE id = $1', kept) == 1
            assert await admin.fetchval(f'SELECT count(*) FROM "{schema}".insight_outbox') == 1  # its own row
            assert await migrator.upgrade() == migrator.head_revision()
            assert await admin.fetchval(f'SELECT shared_with FROM "{schema}".memories WHERE id = $1', kept) == []
            assert await admin.fetchval(f'SELECT count(*) FROM "{schema}".project_groups') == 0
        finally:
            await admin.close()
            await store.init()


async def test_session_buddy_groups_are_create_only_records_so_shares_travel_as_tagged_copies(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path, sb_home: Path) -> None:
    """What the installed Session-Buddy offers for groups (docs/groups.md): a coordinator that can create and list
    groups but neither update nor delete one, and (0.36) no ``project_groups`` table in a fresh database. So our
    groups are not mirrored there, and what a share needs (the target finding the insight) is the tagged copy."""
    import asyncio

    import duckdb
    from session_buddy.multi_project_coordinator import MultiProjectCoordinator

    offered = {name for name in dir(MultiProjectCoordinator) if "group" in name and not name.startswith("_")}
    assert {"create_project_group", "get_project_groups"} <= offered
    assert not {name for name in offered if name.startswith(("update", "delete", "remove", "rename"))}
    sb_file = tmp_path / "sb" / "reflection.duckdb"
    async with open_memory(pg_data_dir, sb_file) as memory:
        await memory.create_group("team", ["tgt"])
        source = await memory.remember(INSIGHT, "insight", project="src")
        await memory.share([source], groups=["team"])
        await memory.relay.drain()

    def tables() -> set[str]:
        with duckdb.connect(str(sb_file), read_only=True) as connection:
            names = {row[0] for row in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            if "project_groups" in names:  # 0.23 creates it; nothing of ours is written there
                assert connection.execute("SELECT count(*) FROM project_groups").fetchone() == (0,)
            return names

    await asyncio.to_thread(tables)
    own = await session_buddy_own_search(sb_file, [f"om:{insight_id('tgt', INSIGHT)}"])
    assert [row.get("project") or "tgt" for row in own[f"om:{insight_id('tgt', INSIGHT)}"]] == ["tgt"]


async def test_a_share_racing_a_group_deletion_never_leaves_a_share_behind(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    """Either the share commits first (and the deletion withdraws it) or the deletion does (and the share is refused):
    a re-created group of the same name never inherits an old share."""
    import asyncio

    async with open_memory(pg_data_dir, None) as memory:
        ids = [await memory.remember(f"{INSIGHT} #{n}", "insight", project="src") for n in range(5)]
        for _round in range(8):
            await memory.create_group("flaky", ["tgt"])

            async def share() -> None:
                try:
                    await memory.share(ids, groups=["flaky"])
                except InvalidInput as exc:
                    assert "no project group" in str(exc)

            await asyncio.gather(share(), memory.delete_group("flaky"), share())
            stored = await memory.get(ids)
            assert all(item.shared_groups == () for item in stored)
        await memory.create_group("flaky", ["tgt"])
        assert await memory.search(QUERY, acting_for="tgt", mode="text") == []
        assert await _copies(memory.store) == []


async def test_a_target_that_remembers_a_shared_insight_itself_keeps_it_after_the_unshare(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path, sb_home: Path) -> None:
    sb_file = tmp_path / "sb" / "reflection.duckdb"
    copy_key = insight_id("tgt", INSIGHT)
    async with open_memory(pg_data_dir, sb_file) as memory:
        source = await memory.remember(conversation("Review.", INSIGHT), project="src")
        await memory.share([source], projects=["tgt"])
        await memory.relay.drain()
        own = await memory.remember(conversation("Our own review.", INSIGHT), project="tgt")  # same insight text
        change = await memory.unshare([source])
        assert (change.memories, change.copies_withdrawn) == (1, 0)  # the row is tgt's own now
        await memory.relay.drain()
        assert await _copies(memory.store) == []
        assert ("tgt", "session_buddy") in await _found(memory, acting_for="tgt")
        assert await memory.forget([own]) == 1  # and tgt's own forget removes it, as for any own insight
        await memory.relay.drain()
        assert await _found(memory, acting_for="tgt") == []
    found = await session_buddy_own_search(sb_file, [f"om:{copy_key}"])
    assert found[f"om:{copy_key}"] == []


async def test_a_target_forgetting_its_own_copy_of_a_shared_insight_keeps_the_share(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path, sb_home: Path) -> None:
    sb_file = tmp_path / "sb" / "reflection.duckdb"
    copy_key = insight_id("tgt", INSIGHT)
    async with open_memory(pg_data_dir, sb_file) as memory:
        own = await memory.remember(conversation("Our note.", INSIGHT), project="tgt")  # tgt had it first
        source = await memory.remember(conversation("Review.", INSIGHT), project="src")
        await memory.share([source], projects=["tgt"])
        await memory.relay.drain()
        assert await _copies(memory.store) == []  # one row for tgt: its own
        assert await memory.forget([own]) == 1
        await memory.relay.drain()
        # the share still stands, so the row became the share's copy instead of a deletion
        assert await _copies(memory.store) == [{"project": "tgt", "insight_id": copy_key, "source_project": "src",
                                                "kind": "deliver", "status": "delivered"}]
        assert set(await _found(memory, acting_for="tgt")) == {("src", "postgres"), ("tgt", "session_buddy")}
        await memory.unshare([source])
        await memory.relay.drain()
        assert await _found(memory, acting_for="tgt") == []
    found = await session_buddy_own_search(sb_file, [f"om:{copy_key}"])
    assert found[f"om:{copy_key}"] == []
