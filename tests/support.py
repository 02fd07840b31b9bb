"""Helpers the tests import (pytest loads ``conftest.py`` itself; no test imports it as a module)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from oneiric_memory.settings import MemorySettings, load_settings

__all__ = ["make_settings"]


def make_settings(pg_data_dir: Path, schema: str | None = None, **overrides: Any) -> MemorySettings:
    """Settings for a test: the session's embedded server, a fresh schema, no files or env read."""
    base: dict[str, Any] = {
        "postgres": {"embedded_data_dir": str(pg_data_dir), "db_schema": schema or f"t_{uuid.uuid4().hex[:12]}",
                     "max_connections": 4, "retry_base_delay_s": 0.01},
        "embedder": {"provider": "hashing"},
        "session_buddy": {"enabled": False},
        # Health parts answer within 3 s in production; on a loaded 2-core CI box give them room.
        "coordinator": {"health_timeout_s": 30.0},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            base.setdefault(section, {}).update(values)
        else:
            base[section] = values
    return load_settings(base, root=pg_data_dir.parent, environ={})
