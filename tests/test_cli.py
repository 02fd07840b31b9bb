"""The command line: the README's commands as subprocesses (console script, embedded default, stdout purity), the
rest in-process with typer's CliRunner (the same code path without ~3 s of interpreter start-up each)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.cli import EXIT_CODES
from tests.cli_helpers import invoke, run_cli, store_env


@pytest.fixture
def cli_env(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> dict[str, str]:
    return store_env(pg_data_dir, f"cli_{uuid.uuid4().hex[:10]}")


def test_demo_runs_on_the_embedded_default(tmp_path: Path) -> None:
    """`uv run oneiric-memory demo` with nothing configured: its own embedded server, corpus, searches, health."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path),
           # Ollama is not installable here; a closed port makes the demo take its documented fallback.
           "MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__BASE_URL": "http://127.0.0.1:9"}
    result = run_cli(["demo"], cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "fell back to the hashing embedder" in out
    assert "stored" in out and "memories" in out
    assert "search: 'why does a filtered vector search return too few rows'" in out
    assert "health:" in out and "memory_store" in out
    assert "Traceback" not in result.stderr
    assert (tmp_path / "cache" / "oneiric-memory" / "pgdata" / "PG_VERSION").is_file()
    # the server is stopped when the demo exits (no process keeps the folder)
    assert not (tmp_path / "cache" / "oneiric-memory" / "pgdata" / "postmaster.pid").exists()


def test_remember_search_and_json_output(tmp_path: Path, cli_env: dict[str, str]) -> None:
    stored = run_cli(["remember", "The canary query found an invalid HNSW index", "--type", "workflow",
                      "--project", "ops", "--metadata", '{"run": 7}'], cwd=tmp_path, env=cli_env,
                     drop=("XDG_RUNTIME_DIR",))
    assert stored.returncode == 0, stored.stderr
    memory_id = stored.stdout.strip()
    uuid.UUID(memory_id)  # stdout is the id and nothing else
    assert "RuntimeDirWarning" not in stored.stderr and "XDG_RUNTIME_DIR" not in stored.stderr
    found = run_cli(["search", "invalid HNSW index", "--mode", "text", "--project", "ops", "--json"],
                    cwd=tmp_path, env=cli_env)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert hits[0]["id"] == memory_id
    assert hits[0]["metadata"] == {"run": 7}
    assert hits[0]["memory_type"] == "workflow"
    health = invoke(["health", "--json"], env=cli_env, root=tmp_path)
    assert health.returncode == 0, health.stderr
    payload = json.loads(health.stdout)
    assert {c["name"] for c in payload["components"]} >= {"memory_store", "embedding", "insight_sink"}


@pytest.mark.parametrize(
    ("args", "env_extra", "code", "needle"),
    [
        (["remember", "x", "--type", "bogus"], {}, EXIT_CODES["invalid_input"], "memory_type 'bogus' is unknown"),
        (["search", "x", "--limit", "0"], {}, EXIT_CODES["invalid_input"], "limit"),
        (["search", "x"], {"MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__PORT": "not-a-port"},
         EXIT_CODES["configuration"], "MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__PORT"),
        (["remember", "x", "--metadata", "[1, 2]"], {}, EXIT_CODES["invalid_input"], "JSON object"),
    ],
)
def test_errors_are_one_line_with_stable_exit_codes(tmp_path: Path, cli_env: dict[str, str], args: list[str],
                                                    env_extra: dict[str, str], code: int, needle: str) -> None:
    result = invoke(args, env={**cli_env, **env_extra}, root=tmp_path)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_db_current_and_outbox_status(tmp_path: Path, cli_env: dict[str, str]) -> None:
    upgraded = invoke(["db", "upgrade"], env=cli_env, root=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    current = invoke(["db", "current"], env=cli_env, root=tmp_path)
    assert current.returncode == 0, current.stderr
    assert "current" in current.stdout and "head" in current.stdout
    revision_words = current.stdout.split()
    assert revision_words[revision_words.index("current") + 1].rstrip(",") == \
        revision_words[revision_words.index("head") + 1]
    status = invoke(["outbox", "status", "--json"], env=cli_env, root=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pending"] == 0


def test_remember_reads_stdin_and_debug_shows_traceback(tmp_path: Path, cli_env: dict[str, str]) -> None:
    stored = invoke(["remember", "-"], env=cli_env, root=tmp_path, stdin="text from a pipe about pgvector")
    assert stored.returncode == 0, stored.stderr
    failing = invoke(["--debug", "remember", "x", "--type", "bogus"], env=cli_env, root=tmp_path)
    assert failing.returncode == EXIT_CODES["invalid_input"]  # --debug keeps the documented code
    assert "Traceback" in failing.stderr


def test_ops_commands_stats_doctor_maintain_backup_restore(tmp_path: Path, cli_env: dict[str, str]) -> None:
    stored = invoke(["remember", "backup drill: restore the memories and compare counts", "--type", "workflow"],
                    env=cli_env, root=tmp_path)
    assert stored.returncode == 0, stored.stderr
    stats = invoke(["stats", "--json"], env=cli_env, root=tmp_path)
    assert stats.returncode == 0, stats.stderr
    assert "pool" in json.loads(stats.stdout)
    readable = invoke(["stats"], env=cli_env, root=tmp_path)  # tables by default, not a dict's repr
    assert readable.returncode == 0, readable.stderr
    assert "pool" in readable.stdout and "vector_index" in readable.stdout and "memories" in readable.stdout
    assert "{'" not in readable.stdout and "': " not in readable.stdout
    doctor = invoke(["doctor", "--json", "--no-canary"], env=cli_env, root=tmp_path)
    assert doctor.returncode in (0, EXIT_CODES["check_failed"]), doctor.stderr
    report = json.loads(doctor.stdout)
    assert 0 <= report["score"] <= 100 and isinstance(report["findings"], list)
    auto = invoke(["maintain", "auto", "--json"], env=cli_env, root=tmp_path)
    assert auto.returncode == 0, auto.stderr
    assert "actions" in json.loads(auto.stdout)
    archive = tmp_path / "memories.dump"
    backup = invoke(["backup", str(archive)], env=cli_env, root=tmp_path)
    assert backup.returncode == 0, backup.stderr
    assert archive.stat().st_size > 0
    refused = invoke(["restore", str(archive)], env=cli_env, root=tmp_path)
    assert refused.returncode == EXIT_CODES["usage"] and "--yes" in refused.stderr
    restored = invoke(["restore", str(archive), "--yes"], env=cli_env, root=tmp_path)
    assert restored.returncode == 0, restored.stderr
    found = invoke(["search", "backup drill", "--mode", "text", "--json"], env=cli_env, root=tmp_path)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["id"] == stored.stdout.strip().splitlines()[-1]
