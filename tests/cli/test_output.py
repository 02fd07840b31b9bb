"""stdout carries results only (issue 12): the library logs to stderr, never in colour when stderr is not a
terminal, never Oneiric's debug resolver lines, and no warning about an unset XDG_RUNTIME_DIR."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from tests.cli_helpers import store_env

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def readme_snippet() -> str:
    """The README's Python example, exactly as users copy it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)  # type: ignore[union-attr]


def test_readme_snippet_writes_nothing_but_its_own_print_to_stdout(tmp_path: Path, pg_server: EmbeddedConnectInfo,
                                                                     pg_data_dir: Path) -> None:
    snippet = readme_snippet()
    assert "UnifiedMemory" in snippet and "print(" in snippet
    script = tmp_path / "snippet.py"
    # Top-level `async with` is what users paste into `python -m asyncio`; a script needs a coroutine around it.
    script.write_text("import asyncio\n\nasync def main():\n" + textwrap.indent(snippet, "    ")
                      + "\n\nasyncio.run(main())\n", encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MAHAVISHNU_", "ONEIRIC_")) and key != "XDG_RUNTIME_DIR"}
    env.update(store_env(pg_data_dir, f"out_{uuid.uuid4().hex[:10]}"))
    # the real Session-Buddy package, in process, on a DuckDB file under a temporary HOME
    env.update({"HOME": str(home), "XDG_CACHE_HOME": str(tmp_path / "cache"),
                "MAHAVISHNU_ONEIRIC_MEMORY__SESSION_BUDDY__ENABLED": "true",
                "MAHAVISHNU_ONEIRIC_MEMORY__SESSION_BUDDY__MODE": "in_process",
                "MAHAVISHNU_ONEIRIC_MEMORY__SESSION_BUDDY__DATABASE_PATH": str(tmp_path / "reflection.duckdb")})
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout[:3000]  # the snippet's own print, and nothing else
    health = ast.literal_eval(lines[0])
    assert {c["name"] for c in health["components"]} >= {"memory_store", "embedding", "insight_sink"}
    assert "store-ready" in result.stderr  # logs exist, at INFO, on stderr
    assert "[debug" not in result.stderr and "resolver-decision" not in result.stderr
    assert not ANSI.search(result.stderr)
    assert "RuntimeDirWarning" not in result.stderr and "XDG_RUNTIME_DIR" not in result.stderr
