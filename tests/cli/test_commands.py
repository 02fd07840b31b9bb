"""The commands users expected and did not find (issue 12): get, list (filters, pages), forget (ids or a filter),
remember --ttl/--expires-at, search filters and min score, ids in the tables, export/import round trip. In-process."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.cli import EXIT_CODES
from tests.cli_helpers import invoke, store_env


@pytest.fixture
def env(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> dict[str, str]:
    return store_env(pg_data_dir, f"cmd_{uuid.uuid4().hex[:10]}")


def remember(env: dict[str, str], root: Path, *args: str) -> str:
    result = invoke(["remember", *args], env=env, root=root)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_remember_ttl_get_and_search_filters(env: dict[str, str], tmp_path: Path) -> None:
    first = remember(env, tmp_path, "the vacuum job ran long on the outbox table", "--agent", "ops-bot",
                     "--session", "s1", "--metadata", '{"run": 3, "team": "db"}', "--ttl", "7d")
    second = remember(env, tmp_path, "the vacuum job finished early on the memories table", "--agent", "planner",
                      "--workflow", "wf-9", "--expires-at", "2099-01-01T00:00:00Z")
    shown = invoke(["get", first, "--json"], env=env, root=tmp_path)
    assert shown.returncode == 0, shown.stderr
    [memory] = json.loads(shown.stdout)
    assert memory["agent_id"] == "ops-bot" and memory["session_id"] == "s1"
    expires = datetime.fromisoformat(memory["expires_at"])
    assert timedelta(days=6, hours=23) < expires - datetime.now(UTC) <= timedelta(days=7)
    table = invoke(["get", second], env=env, root=tmp_path)
    assert "2099-01-01" in table.stdout and "wf-9" in table.stdout

    def ids(*args: str) -> list[str]:
        found = invoke(["search", "vacuum job", "--mode", "text", "--json", *args], env=env, root=tmp_path)
        assert found.returncode == 0, found.stderr
        return [hit["id"] for hit in json.loads(found.stdout)]

    assert set(ids()) == {first, second}
    assert ids("--agent", "ops-bot") == [first]
    assert ids("--session", "s1") == [first]
    assert ids("--workflow", "wf-9") == [second]
    assert ids("--meta", "team=db") == [first]
    assert ids("--meta", "run=3") == [first]  # a JSON value compares as a number
    assert ids("--meta", "run=4") == []
    assert ids("--min-score", "1000") == []
    assert invoke(["search", "vacuum job", "--mode", "text"], env=env, root=tmp_path).stdout.count(first) == 1

    missing = str(uuid.uuid4())
    gone = invoke(["get", first, missing], env=env, root=tmp_path)
    assert gone.returncode == EXIT_CODES["error"] and missing in gone.stderr and first in gone.stdout
    bad = invoke(["get", "not-an-id"], env=env, root=tmp_path)
    assert bad.returncode == EXIT_CODES["invalid_input"]


def test_list_pages_and_forget(env: dict[str, str], tmp_path: Path) -> None:
    made = [remember(env, tmp_path, f"note number {n} about index bloat", "--project", "pages") for n in range(5)]
    remember(env, tmp_path, "a note in another project", "--project", "elsewhere")
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(4):
        page = invoke(["list", "--project", "pages", "--limit", "2", "--json", *cursor], env=env, root=tmp_path)
        assert page.returncode == 0, page.stderr
        body = json.loads(page.stdout)
        seen += [m["id"] for m in body["memories"]]
        if body["next_cursor"] is None:
            break
        cursor = ["--cursor", body["next_cursor"]]
    assert seen == made  # oldest first, every row once, across pages
    table = invoke(["list", "--project", "pages", "--limit", "2"], env=env, root=tmp_path)
    assert made[0] in table.stdout and "--cursor" in table.stderr and "--cursor" not in table.stdout

    refused = invoke(["forget", "--project", "pages"], env=env, root=tmp_path)
    assert refused.returncode == EXIT_CODES["usage"] and "--yes" in refused.stderr
    one = invoke(["forget", made[0]], env=env, root=tmp_path)
    assert one.returncode == 0 and one.stdout.strip() == "forgot 1 memories"
    rest = invoke(["forget", "--project", "pages", "--yes"], env=env, root=tmp_path)
    assert rest.returncode == 0 and rest.stdout.strip() == "forgot 4 memories"
    left = json.loads(invoke(["list", "--json"], env=env, root=tmp_path).stdout)["memories"]
    assert [m["project"] for m in left] == ["elsewhere"]


def test_export_import_round_trip_is_exact(env: dict[str, str], tmp_path: Path, pg_data_dir: Path) -> None:
    remember(env, tmp_path, "★ Insight ─────\nPartial indexes keep the hot rows small\n─────", "--type", "insight",
             "--project", "p1", "--metadata", '{"nested": {"a": [1, 2.5, null]}, "é": "ü"}')
    remember(env, tmp_path, "a workflow that expires", "--type", "workflow", "--workflow", "wf", "--ttl", "1h")
    remember(env, tmp_path, "plain agent memory", "--agent", "a1", "--session", "s")
    first = tmp_path / "first.jsonl"
    exported = invoke(["export", str(first)], env=env, root=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "exported 3 memories" in exported.stderr
    lines = first.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(json.loads(line)["embedding"] for line in lines)

    fresh = store_env(pg_data_dir, f"imp_{uuid.uuid4().hex[:10]}")
    imported = invoke(["import", str(first)], env=fresh, root=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "imported 3 memories (3 new, 0 already present)"
    second = tmp_path / "second.jsonl"
    assert invoke(["export", str(second)], env=fresh, root=tmp_path).returncode == 0
    assert second.read_bytes() == first.read_bytes()  # ids, times, metadata and vectors all survived
    again = invoke(["import", str(first)], env=fresh, root=tmp_path)
    assert again.stdout.strip() == "imported 3 memories (0 new, 3 already present)"
    to_stdout = invoke(["export", "-"], env=fresh, root=tmp_path)
    assert to_stdout.stdout == first.read_text(encoding="utf-8")


def test_import_checks_the_whole_file_before_writing(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"content": "fine"}) + "\n" + json.dumps({"content": "x", "memory_type": "nope"})
                   + "\n", encoding="utf-8")
    result = invoke(["import", str(bad)], env=env, root=tmp_path)
    assert result.returncode == EXIT_CODES["invalid_input"]
    assert "2" in result.stderr and "memory_type" in result.stderr
    listed = invoke(["list", "--json"], env=env, root=tmp_path)
    assert json.loads(listed.stdout)["memories"] == []  # the good first line was not written either
    typo = tmp_path / "typo.jsonl"
    typo.write_text(json.dumps({"content": "x", "contnet": "y"}) + "\n", encoding="utf-8")
    assert "line 1: unknown field(s) contnet" in invoke(["import", str(typo)], env=env, root=tmp_path).stderr
