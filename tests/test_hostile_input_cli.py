"""The CLI part of the hostile-input table (issue 12): every value-taking argument and option of the commands that
read memories or files, attacked with hostile values. Each row: exit 2 (usage) or 5 (invalid input), exactly one
line on stderr matching the row's regex, nothing on stdout, no traceback, and the store unchanged afterwards.

Rows run in-process (typer's CliRunner): argv strings can carry what a shell cannot (NUL), and a lone surrogate
is what Python makes of non-UTF-8 argv bytes. The API part of the table is ``test_hostile_input.py``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from oneiric_memory.cli import EXIT_CODES, app
from tests.cli_helpers import invoke, store_env
from tests.hostile_table import HostileCase, case_id

NUL = "bad\x00value"
SURROGATE = "bad\udcffvalue"
HUGE = "x" * 20_000
# A well-formed id no memory has. Fixed, not uuid4(): it is part of the test ids, which must be the same in every
# process that collects them (pytest-xdist workers refuse to start otherwise).
UUID = "0b6f2c1e-4d3a-4f5b-8c7d-9e0a1b2c3d4e"
FILTERS = ("project", "type", "agent", "session", "workflow", "repo", "meta")

# (command, option) -> hostile values with the regex of their one-line error
_FILTER_ROWS: list[tuple[str, object, str]] = [
    ("project", ["--project", NUL], "NUL"),
    ("project", ["--project", SURROGATE], "surrogate|UTF-8"),
    ("project", ["--project", ""], "project|empty"),
    ("type", ["--type", "bogus"], "unknown memory_type|memory_type"),
    ("type", ["--type", NUL], "unknown memory_type|NUL"),
    ("agent", ["--agent", NUL], "NUL"),
    ("agent", ["--agent", "a" * 600], "longer than"),
    ("session", ["--session", SURROGATE], "surrogate|UTF-8"),
    ("workflow", ["--workflow", NUL], "NUL"),
    ("repo", ["--repo", "r" * 600], "longer than"),
    ("meta", ["--meta", "novalue"], "not key=value"),
    ("meta", ["--meta", "=x"], "not key=value"),
    ("meta", ["--meta", f"k={NUL}"], "NUL"),
]


def _filter_cases(entry: str, before: list[str]) -> list[HostileCase]:
    return [HostileCase(f"cli {entry}", field, [*before, *argv], match)  # type: ignore[list-item]
            for field, argv, match in _FILTER_ROWS]


CLI_CASES: list[HostileCase] = [
    # remember TEXT
    HostileCase("cli remember", "content", ["remember", NUL], "NUL"),
    HostileCase("cli remember", "content", ["remember", SURROGATE], "surrogate|UTF-8"),
    HostileCase("cli remember", "content", ["remember", "   "], "empty"),
    HostileCase("cli remember", "content", ["remember", "x" * 1_100_000], "longer than"),
    HostileCase("cli remember", "type", ["remember", "x", "--type", "bogus"], "memory_type 'bogus' is unknown"),
    HostileCase("cli remember", "type", ["remember", "x", "--type", ""], "memory_type '' is unknown"),
    HostileCase("cli remember", "project", ["remember", "x", "--project", ""], "project"),
    HostileCase("cli remember", "project", ["remember", "x", "--project", NUL], "NUL"),
    HostileCase("cli remember", "project", ["remember", "x", "--project", "p" * 600], "longer than"),
    HostileCase("cli remember", "agent_id", ["remember", "x", "--agent", NUL], "NUL"),
    HostileCase("cli remember", "workflow_id", ["remember", "x", "--workflow", SURROGATE], "surrogate|UTF-8"),
    HostileCase("cli remember", "repo_id", ["remember", "x", "--repo", "r" * 600], "longer than"),
    HostileCase("cli remember", "session_id", ["remember", "x", "--session", NUL], "NUL"),
    HostileCase("cli remember", "metadata", ["remember", "x", "--metadata", "[1, 2]"], "JSON object"),
    HostileCase("cli remember", "metadata", ["remember", "x", "--metadata", '"x"'], "JSON object"),
    HostileCase("cli remember", "metadata", ["remember", "x", "--metadata", "{nope"], "not JSON"),
    HostileCase("cli remember", "metadata", ["remember", "x", "--metadata", "NaN"], "JSON object|not JSON"),
    HostileCase("cli remember", "metadata", ["remember", "x", "--metadata", '{"a": NaN}'], "JSON|NaN|finite"),
    HostileCase("cli remember", "metadata", ["remember", "x", "--metadata", '{"k": "\\u0000"}'], "NUL"),
    HostileCase("cli remember", "metadata", ["remember", "x", "--metadata", "[" * 100 + "]" * 100], "JSON object"),
    HostileCase("cli remember", "metadata",
                ["remember", "x", "--metadata", json.dumps({"k": "v" * 300_000})], "larger than"),
    HostileCase("cli remember", "ttl", ["remember", "x", "--ttl", "soon"], "not a positive duration"),
    HostileCase("cli remember", "ttl", ["remember", "x", "--ttl", "0"], "not a positive duration"),
    HostileCase("cli remember", "ttl", ["remember", "x", "--ttl", "-5m"], "not a positive duration"),
    HostileCase("cli remember", "ttl", ["remember", "x", "--ttl", "9" * 40 + "w"], "too long"),
    HostileCase("cli remember", "expires_at", ["remember", "x", "--expires-at", "tomorrow"], "not an ISO 8601"),
    HostileCase("cli remember", "expires_at", ["remember", "x", "--expires-at", "2099-01-01T00:00:00"],
                "time zone"),
    HostileCase("cli remember", "expires_at", ["remember", "x", "--expires-at", "2001-01-01T00:00:00Z"],
                "in the past"),
    HostileCase("cli remember", "expires_at", ["remember", "x", "--ttl", "1h", "--expires-at", "2099-01-01T00:00Z"],
                "not both"),
    # get / forget ID
    HostileCase("cli get", "ids", ["get", "not-a-uuid"], "not a memory id"),
    HostileCase("cli get", "ids", ["get", NUL], "not a memory id"),
    HostileCase("cli get", "ids", ["get", "'; DROP TABLE memories; --"], "not a memory id"),
    HostileCase("cli get", "ids", ["get"], "Missing argument"),
    HostileCase("cli forget", "ids", ["forget", "not-a-uuid"], "not a memory id"),
    HostileCase("cli forget", "ids", ["forget"], "give the ids"),
    HostileCase("cli forget", "ids", ["forget", UUID, "--project", "p"], "not both"),
    HostileCase("cli forget", "yes", ["forget", "--project", "p"], "--yes"),
    *_filter_cases("forget", ["forget", "--yes"]),
    # list
    HostileCase("cli list", "limit", ["list", "--limit", "0"], "--limit 0"),
    HostileCase("cli list", "limit", ["list", "--limit", "-1"], "--limit -1"),
    HostileCase("cli list", "limit", ["list", "--limit", "1000000000"], "out of range"),
    HostileCase("cli list", "limit", ["list", "--limit", "ten"], "--limit"),
    HostileCase("cli list", "cursor", ["list", "--cursor", "garbage!"], "cursor"),
    HostileCase("cli list", "cursor", ["list", "--cursor", NUL], "cursor"),
    *_filter_cases("list", ["list"]),
    # search
    HostileCase("cli search", "query", ["search", ""], "empty"),
    HostileCase("cli search", "query", ["search", "   "], "empty"),
    HostileCase("cli search", "query", ["search", NUL], "NUL"),
    HostileCase("cli search", "query", ["search", SURROGATE], "UTF-8"),
    HostileCase("cli search", "query", ["search", HUGE], "10,000"),
    HostileCase("cli search", "mode", ["search", "x", "--mode", "bogus"], "--mode 'bogus' is unknown"),
    HostileCase("cli search", "mode", ["search", "x", "--mode", ""], "is unknown"),
    HostileCase("cli search", "limit", ["search", "x", "--limit", "0"], "--limit 0"),
    HostileCase("cli search", "path_prefix", ["search", "x", "--path", ""], "path_prefix is empty"),
    HostileCase("cli search", "path_prefix", ["search", "x", "--path", NUL], "NUL"),
    HostileCase("cli search", "path_prefix", ["search", "x", "--path", SURROGATE], "surrogate|UTF-8"),
    HostileCase("cli search", "path_prefix", ["search", "x", "--path", HUGE], "longer than"),
    # ingest PATH --repo-id ID, ingestions ID
    HostileCase("cli ingest", "path", ["ingest", "{tmp}/missing", "--repo-id", "r"], "is not a folder"),
    HostileCase("cli ingest", "path", ["ingest", NUL, "--repo-id", "r"], "NUL|null"),
    HostileCase("cli ingest", "repo_id", ["ingest", "{tmp}", "--repo-id", ""], "repo_id must be a non-empty"),
    HostileCase("cli ingest", "repo_id", ["ingest", "{tmp}", "--repo-id", NUL], "NUL"),
    HostileCase("cli ingest", "repo_id", ["ingest", "{tmp}", "--repo-id", SURROGATE], "surrogate|UTF-8"),
    HostileCase("cli ingest", "repo_id", ["ingest", "{tmp}"], "repo-id"),
    HostileCase("cli ingest", "project", ["ingest", "{tmp}", "--repo-id", "r", "--project", ""], "project"),
    HostileCase("cli ingest", "suffix", ["ingest", "{tmp}", "--repo-id", "r", "--suffix", ""], "suffixes must be"),
    HostileCase("cli ingest", "exclude", ["ingest", "{tmp}", "--repo-id", "r", "--exclude", NUL], "exclude must be"),
    HostileCase("cli ingest", "max_file_bytes", ["ingest", "{tmp}", "--repo-id", "r", "--max-file-bytes", "0"],
                "max_file_bytes must be"),
    HostileCase("cli ingest", "chunk_chars", ["ingest", "{tmp}", "--repo-id", "r", "--chunk-chars", "x"],
                "chunk-chars"),
    HostileCase("cli ingest", "chunk_chars", ["ingest", "{tmp}", "--repo-id", "r", "--chunk-chars", "10"],
                "max_chars must be"),
    HostileCase("cli ingest", "overlap", ["ingest", "{tmp}", "--repo-id", "r", "--overlap", "-1"], "overlap must be"),
    HostileCase("cli ingest", "batch_chunks", ["ingest", "{tmp}", "--repo-id", "r", "--batch-chunks", "0"],
                "batch_chunks must be"),
    HostileCase("cli ingestions", "repo_id", ["ingestions", NUL], "NUL"),
    HostileCase("cli ingestions", "project", ["ingestions", "r", "--project", ""], "project"),
    HostileCase("cli ingestions", "limit", ["ingestions", "r", "--limit", "0"], "--limit 0"),
    HostileCase("cli search", "limit", ["search", "x", "--limit", "1000000000"], "out of range"),
    HostileCase("cli search", "limit", ["search", "x", "--limit", "5.5"], "--limit"),
    HostileCase("cli search", "min_score", ["search", "x", "--min-score", "high"], "--min-score"),
    HostileCase("cli search", "min_score", ["search", "x", "--min-score", "nan"], "--min-score"),
    *_filter_cases("search", ["search", "x"]),
    # unified-search
    HostileCase("cli unified-search", "query", ["unified-search", ""], "empty"),
    HostileCase("cli unified-search", "query", ["unified-search", NUL], "NUL"),
    HostileCase("cli unified-search", "query", ["unified-search", HUGE], "10,000"),
    HostileCase("cli unified-search", "project", ["unified-search", "x", "--project", NUL], "NUL"),
    HostileCase("cli unified-search", "project", ["unified-search", "x", "--project", ""], "project|empty"),
    HostileCase("cli unified-search", "limit", ["unified-search", "x", "--limit", "0"], "--limit 0"),
    HostileCase("cli unified-search", "limit", ["unified-search", "x", "--limit", "x"], "--limit"),
    # export / import
    HostileCase("cli export", "path", ["export", "{tmp}"], "is a folder"),
    HostileCase("cli export", "project", ["export", "-", "--project", NUL], "NUL"),
    HostileCase("cli export", "type", ["export", "-", "--type", "bogus"], "memory_type"),
    HostileCase("cli import", "path", ["import", "{tmp}/missing.jsonl"], "is not a file"),
    HostileCase("cli import", "path", ["import", "{tmp}"], "is not a file"),
    HostileCase("cli import", "content", ["import", "{file:not json}"], "line 1: not JSON"),
    HostileCase("cli import", "content", ["import", "{file:[1, 2]}"], "line 1: a memory must be a JSON object"),
    HostileCase("cli import", "content", ["import", '{file:{"content": null}}'], "content must be a string"),
    HostileCase("cli import", "content", ["import", '{file:{"content": "a\\u0000b"}}'], "NUL"),
    HostileCase("cli import", "id", ["import", '{file:{"content": "x", "id": "nope"}}'], "not a UUID"),
    HostileCase("cli import", "embedding", ["import", '{file:{"content": "x", "embedding": "abc"}}'],
                "list of numbers"),
    HostileCase("cli import", "embedding",
                ["import", '{file:{"content": "x", "embedding": [1, 2], "embedding_model": "m"}}'], "dimension"),
    HostileCase("cli import", "metadata", ["import", '{file:{"content": "x", "metadata": [1]}}'], "JSON object"),
    HostileCase("cli import", "created_at", ["import", '{file:{"content": "x", "created_at": "yesterday"}}'],
                "ISO 8601"),
    HostileCase("cli import", "expires_at", ["import", '{file:{"content": "x", "expires_at": "2099-01-01"}}'],
                "time zone"),
    HostileCase("cli import", "memory_type", ["import", '{file:{"content": "x", "memory_type": "bogus"}}'],
                "memory_type"),
    HostileCase("cli import", "agent_id", ["import", '{file:{"content": "x", "agent_id": 5}}'], "must be a string"),
    HostileCase("cli import", "fields", ["import", '{file:{"content": "x", "DROP TABLE": 1}}'], "unknown field"),
    HostileCase("cli import", "encoding", ["import", "{latin1}"], "not UTF-8"),
    # groups: names are data, bad ones are one-line invalid input before anything opens
    HostileCase("cli groups create", "name", ["groups", "create", NUL], "NUL"),
    HostileCase("cli groups create", "name", ["groups", "create", ""], "non-empty"),
    HostileCase("cli groups create", "name", ["groups", "create", "g" * 600], "longer than"),
    HostileCase("cli groups create", "projects", ["groups", "create", "g", "ok", SURROGATE], "surrogate|UTF-8"),
    HostileCase("cli groups create", "description", ["groups", "create", "g", "--description", "d" * 1001],
                "at most 1000"),
    HostileCase("cli groups create", "description", ["groups", "create", "g", "--description", NUL], "NUL"),
    HostileCase("cli groups share", "ids", ["groups", "share", "'; DROP TABLE memories; --", "--project", "p"],
                "not a memory id"),
    HostileCase("cli groups share", "project", ["groups", "share", UUID, "--project", NUL], "NUL"),
    HostileCase("cli groups share", "project", ["groups", "share", UUID], "--project or --group"),
    HostileCase("cli groups share", "group", ["groups", "share", UUID, "--group", ""], "non-empty"),
    HostileCase("cli groups share", "group", ["groups", "share", UUID, "--group", "never-created"],
                "no project group"),
    HostileCase("cli groups search", "query", ["groups", "search", NUL, "--as", "p"], "NUL"),
    HostileCase("cli groups search", "group", ["groups", "search", "x", "--group", NUL], "NUL"),
    HostileCase("cli groups search", "group", ["groups", "search", "x", "--group", "%"], "no project group"),
    HostileCase("cli groups search", "group", ["groups", "search", "x"], "either --group or --as"),
    HostileCase("cli groups search", "acting_for", ["groups", "search", "x", "--as", SURROGATE], "surrogate|UTF-8"),
    HostileCase("cli groups search", "acting_for", ["groups", "search", "x", "--as", "p", "--group", "g"],
                "either --group or --as"),
    HostileCase("cli groups search", "mode", ["groups", "search", "x", "--as", "p", "--mode", "bogus"], "unknown"),
    HostileCase("cli groups search", "limit", ["groups", "search", "x", "--as", "p", "--limit", "0"], "--limit 0"),
    # operations that take values
    HostileCase("cli maintain reindex", "index_type", ["maintain", "reindex", "--index-type", "btree"],
                "hnsw or ivfflat"),
    HostileCase("cli maintain expire", "batch_size", ["maintain", "expire", "--batch-size", "0"], "batch-size"),
    HostileCase("cli maintain expire", "batch_size", ["maintain", "expire", "--batch-size", "x"], "batch-size"),
    HostileCase("cli restore", "path", ["restore", "{tmp}/missing.dump", "--yes"], "does not exist"),
    HostileCase("cli restore", "yes", ["restore", "{tmp}/missing.dump"], "--yes"),
    HostileCase("cli migrate-duckdb", "path", ["migrate-duckdb"], "PATH"),
    HostileCase("cli migrate-duckdb", "sample", ["migrate-duckdb", "--validate", UUID, "--sample", "0"], "--sample"),
    HostileCase("cli migrate-duckdb", "project", ["migrate-duckdb", "x.duckdb", "--project", NUL], "NUL"),
    HostileCase("cli migrate-duckdb", "project", ["migrate-duckdb", "x.duckdb", "--project", ""], "project"),
    HostileCase("cli migrate-duckdb", "rollback", ["migrate-duckdb", "x.duckdb", "--rollback", UUID], "one of them"),
    HostileCase("cli migrate-duckdb", "batch_size", ["migrate-duckdb", "x.duckdb", "--batch-size", "x"],
                "batch-size"),
]


@pytest.fixture(scope="module")
def seeded(pg_server: object, pg_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One schema holding one memory; every row runs against it and must leave it as it was."""
    env = store_env(pg_data_dir, f"hcli_{uuid.uuid4().hex[:10]}")
    root = tmp_path_factory.mktemp("hostile-root")
    stored = invoke(["remember", "the one memory hostile input must not change", "--project", "p"], env=env,
                    root=root)
    assert stored.returncode == 0, stored.stderr
    env["ROOT_UNDER_TEST"] = str(root)
    yield env


def _snapshot(env: dict[str, str]) -> str:
    exported = invoke(["export", "-"], env=env, root=Path(env["ROOT_UNDER_TEST"]))
    assert exported.returncode == 0, exported.stderr
    return exported.stdout


def _argv(case: HostileCase, tmp_path: Path) -> list[str]:
    argv: list[str] = []
    for item in case.value:  # type: ignore[attr-defined]
        text = str(item)
        if text.startswith("{file:"):
            target = tmp_path / "rows.jsonl"
            target.write_text(text[len("{file:"):-1] + "\n", encoding="utf-8")
            text = str(target)
        elif text == "{latin1}":
            target = tmp_path / "latin1.jsonl"
            target.write_bytes(b'{"content": "caf\xe9"}\n')
            text = str(target)
        argv.append(text.replace("{tmp}", str(tmp_path)))
    return argv


@pytest.mark.parametrize("case", CLI_CASES, ids=case_id)
def test_hostile_cli_input_is_one_line_invalid_input_or_usage(case: HostileCase, seeded: dict[str, str],
                                                              tmp_path: Path) -> None:
    result = invoke(_argv(case, tmp_path), env=seeded, root=Path(seeded["ROOT_UNDER_TEST"]))
    assert result.returncode in (EXIT_CODES["usage"], EXIT_CODES["invalid_input"]), (result.returncode,
                                                                                       result.stderr[-500:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-1000:]
    assert len(lines[0]) < 700  # never an echo of a 1 MB argument
    import re

    assert re.search(case.match, lines[0]), lines[0]
    assert result.stdout == ""


def test_the_hostile_rows_changed_nothing(seeded: dict[str, str]) -> None:
    """Runs after the table (same module): the seeded store still holds exactly its one memory."""
    rows = [json.loads(line) for line in _snapshot(seeded).splitlines()]
    assert [row["content"] for row in rows] == ["the one memory hostile input must not change"]


COVERED = ("remember", "get", "list", "forget", "search", "unified-search", "export", "import", "maintain reindex",
           "maintain expire", "restore", "migrate-duckdb", "groups create", "groups share", "groups search",
           "ingest", "ingestions")


def test_the_table_covers_every_value_of_the_covered_commands() -> None:
    root = typer.main.get_command(app)
    covered = {(case.entry.removeprefix("cli "), case.field.replace("-", "_")) for case in CLI_CASES}
    fields = {"type": "memory_type", "agent": "agent_id", "session": "session_id", "workflow": "workflow_id",
              "repo": "repo_id", "meta": "meta"}
    covered |= {(entry, fields.get(field, field)) for entry, field in covered}
    missing = []
    for name in COVERED:
        command: object = root
        for part in name.split():
            command = command.commands[part]  # type: ignore[attr-defined]
        for param in command.params:  # type: ignore[attr-defined]
            if getattr(param, "is_flag", False) or param.name in ("as_json", "help", "include_expired",
                                                                  "knowledge_graph", "concurrency", "source_id",
                                                                  "validate", "bin_dir", "dry_run", "no_validate",
                                                                  "list_runs"):
                continue
            if (name, param.name) not in covered:
                missing.append(f"{name} {param.name}")
    assert missing == []
