"""Run the installed console scripts as subprocesses, the way users and CI do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run_cli(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 240.0,
            program: str = "oneiric-memory", stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a console script with a clean environment plus ``env``; never inherits the user's settings."""
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("MAHAVISHNU_", "ONEIRIC_"))}
    return subprocess.run([str(BIN / program), *args], cwd=cwd, env={**base, **env}, capture_output=True,
                          text=True, timeout=timeout, input=stdin, check=False)


def store_env(pg_data_dir: Path, schema: str) -> dict[str, str]:
    """Point a subprocess at the test session's embedded server and one schema, offline embedder, no Session-Buddy."""
    return {
        "MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__EMBEDDED_DATA_DIR": str(pg_data_dir),
        "MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__DB_SCHEMA": schema,
        "MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__PROVIDER": "hashing",
        "MAHAVISHNU_ONEIRIC_MEMORY__SESSION_BUDDY__ENABLED": "false",
    }
