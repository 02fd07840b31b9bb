"""``oneiric-memory groups ...`` in-process against the session's embedded PostgreSQL: create, list, share, search as
a project and as a group, unshare, delete; stdout holds only results."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.cli import EXIT_CODES
from tests.cli_helpers import invoke, store_env


@pytest.fixture
def env(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> dict[str, str]:
    return store_env(pg_data_dir, f"grp_{uuid.uuid4().hex[:10]}")


def ok(env: dict[str, str], root: Path, *args: str) -> str:
    result = invoke(list(args), env=env, root=root)
    assert result.returncode == 0, result.stderr
    return result.stdout


def found(env: dict[str, str], root: Path, *args: str) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = json.loads(ok(env, root, "groups", "search", "vacuum freeze", "--mode", "text",
                                               "--json", *args))
    return hits


def test_groups_share_search_unshare_delete(env: dict[str, str], tmp_path: Path) -> None:
    memory_id = ok(env, tmp_path, "remember", "Vacuum freeze the audit table weekly.", "--type", "insight",
                   "--project", "src").strip()
    ok(env, tmp_path, "remember", "Vacuum freeze notes of an outsider.", "--project", "out")
    created = json.loads(ok(env, tmp_path, "groups", "create", "team", "tgt", "src", "--description", "ops", "--json"))
    assert [(g["name"], g["projects"], g["description"]) for g in created] == [("team", ["src", "tgt"], "ops")]
    assert found(env, tmp_path, "--as", "tgt") == []

    shared = json.loads(ok(env, tmp_path, "groups", "share", memory_id, "--group", "team", "--json"))
    assert shared["memories"] == 1
    assert json.loads(ok(env, tmp_path, "groups", "share", memory_id, "--group", "team", "--json"))["memories"] == 0
    assert [(h["id"], h["project"]) for h in found(env, tmp_path, "--as", "tgt")] == [(memory_id, "src")]
    assert {h["project"] for h in found(env, tmp_path, "--group", "team")} == {"src"}
    assert [h["project"] for h in found(env, tmp_path, "--as", "out")] == ["out"]  # its own only
    table = ok(env, tmp_path, "groups", "search", "vacuum freeze", "--as", "tgt", "--mode", "text")
    assert memory_id in table and "src" in table
    listed = json.loads(ok(env, tmp_path, "groups", "list", "--project", "tgt", "--json"))
    assert [g["name"] for g in listed] == ["team"]

    ok(env, tmp_path, "groups", "unshare", memory_id)
    assert found(env, tmp_path, "--as", "tgt") == []
    refused = invoke(["groups", "delete", "team"], env=env, root=tmp_path)
    assert refused.returncode == EXIT_CODES["invalid_input"] and "--yes" in refused.stderr and refused.stdout == ""
    ok(env, tmp_path, "groups", "delete", "team", "--yes")
    assert json.loads(ok(env, tmp_path, "groups", "list", "--json")) == []
    missing = invoke(["groups", "show", "team"], env=env, root=tmp_path)
    assert missing.returncode == EXIT_CODES["invalid_input"] and "no project group" in missing.stderr
