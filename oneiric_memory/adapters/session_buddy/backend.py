"""What the sink needs from a way into Session-Buddy (in-process or MCP), and the errors both share."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Protocol

import duckdb

from oneiric_memory.errors import InsightSinkError
from oneiric_memory.insights import Insight, InsightHit

__all__ = ["Backend", "is_lock_error", "lock_error", "lock_holder", "mapped"]


class Backend(Protocol):
    """One open way into Session-Buddy for one batch."""

    mode: str

    async def deliver(self, insight: Insight) -> tuple[str, bool]:
        """Store ``insight`` unless an entry tagged with its id exists; ``(Session-Buddy id, created)``."""
        ...

    async def search(self, query: str, fetch: int, projects: frozenset[str] | None) -> list[InsightHit]:
        """Insights matching ``query`` (``'*'`` lists them, newest first)."""
        ...

    async def delete(self, insight_ids: Sequence[str]) -> int:
        """Delete the insights with these ids (ours, or Session-Buddy's); the number of rows deleted."""
        ...

    async def close(self) -> None: ...


def lock_holder(message: str) -> str | None:
    match = re.search(r"Conflicting lock is held in (.+?)(?:\. See also|$)", message)
    return match.group(1) if match else None


def is_lock_error(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.Error) and "lock" in str(exc).lower()


def lock_error(path: Path, exc: BaseException) -> InsightSinkError:
    return InsightSinkError(
        f"Session-Buddy holds {path}: deliveries stay queued; they go through MCP mode or once the lock "
        "is released",
        reason="locked", path=str(path), holder=lock_holder(str(exc)),
    )


async def mapped[T](operation: Awaitable[T], what: str) -> T:
    """Session-Buddy's own exceptions become InsightSinkError, so callers handle one class."""
    try:
        return await operation
    except InsightSinkError:
        raise
    except Exception as exc:
        if "unknown index type" in str(exc).lower():
            raise InsightSinkError(
                f"Session-Buddy's file has HNSW indexes and DuckDB's vss extension could not be loaded, so it cannot "
                f"{what}; run Session-Buddy once with network access (it installs vss) or use MCP mode",
                reason="needs_vss", operation=what) from exc
        raise InsightSinkError(f"Session-Buddy failed to {what}: {type(exc).__name__}: {str(exc)[:200]}",
                               reason="session_buddy_error", operation=what) from exc
