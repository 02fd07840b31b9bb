"""Run the installed console scripts as subprocesses, the way users and CI do."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def run_cli(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 240.0,
            program: str = "oneiric-memory", stdin: str | None = None,
            drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run a console script with a clean environment plus ``env`` (minus ``drop``); never inherits the user's
    settings."""
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("MAHAVISHNU_", "ONEIRIC_")) and key not in drop}
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


def invoke(args: list[str], *, env: dict[str, str], stdin: str | bytes | None = None,
           root: Path | None = None) -> CliResult:
    """Run the ``oneiric-memory`` app in this process (typer's CliRunner): the same code path as the console
    script minus the interpreter start-up, for tests where a subprocess is not the point. ``root`` is passed as
    ``--settings-root`` (in-process the working directory is the repository, whose settings/ must not apply)."""
    if root is not None:
        args = ["--settings-root", str(root), *args]
    import structlog
    from typer.testing import CliRunner

    from oneiric_memory.cli import app

    clean: dict[str, str | None] = {key: None for key in os.environ if key.startswith(("MAHAVISHNU_", "ONEIRIC_"))}
    saved = structlog.get_config()  # the CLI configures logging for the process (WARNING): never let it leak,
    try:  # even from a module-scoped fixture, into later tests' capture_logs()
        result = CliRunner().invoke(app, args, env={**clean, **env}, input=stdin, catch_exceptions=False)
    finally:
        structlog.configure(**saved)
    return CliResult(result.exit_code, result.stdout, result.stderr)


@dataclass(frozen=True, slots=True)
class CliResult:
    """What a CLI invocation left: its exit code, stdout and stderr (the names subprocess results use)."""

    returncode: int
    stdout: str
    stderr: str
