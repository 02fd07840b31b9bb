"""Shared by the MCP server tests: the server's command line and environment, and small client helpers."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.cli_helpers import store_env

BIN = Path(sys.executable).parent
SERVER_COMMAND = [sys.executable, "-m", "oneiric_memory.mcp"]


def server_env(pg_data_dir: Path, *, schema: str | None = None, **extra: str) -> dict[str, str]:
    """A clean environment (no user settings) pointing at the test session's PostgreSQL and a fresh schema."""
    base = {key: value for key, value in os.environ.items() if not key.startswith(("MAHAVISHNU_", "ONEIRIC_"))}
    return {**base, **store_env(pg_data_dir, schema or f"t_{uuid.uuid4().hex[:12]}"),
            "MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__MAX_CONNECTIONS": "4", **extra}


def data(result: Any) -> dict[str, Any]:
    """The structured content of a successful tool call."""
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict), result
    return result.structured_content


def error_text(result: Any) -> str:
    assert result.is_error, result
    return " ".join(getattr(block, "text", "") for block in result.content)
