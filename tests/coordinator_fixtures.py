"""Helpers for the coordinator, outbox and Mahavishnu tests (imported explicitly; no hidden fixtures).

Everything here drives real parts: the session's embedded PostgreSQL, a real Session-Buddy package on a temp
DuckDB file, and a real second process that holds the DuckDB lock the way a running Session-Buddy server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.insights import format_insight_block

__all__ = [
    "conversation",
    "drop_schema",
    "hold_duckdb_lock",
    "outbox_rows",
    "sb_overrides",
    "own_search_rows",
    "session_buddy_own_search",
]


def sb_overrides(database_path: Path, **extra: Any) -> dict[str, Any]:
    """Session-Buddy in-process on a temp DuckDB, generous timeouts (the CI box is slow), fast retries."""
    return {"enabled": True, "mode": "in_process", "database_path": str(database_path), "timeout_s": 30.0,
            "relay_interval_s": 0.2, "retry_base_delay_s": 0.0, "retry_max_delay_s": 0.0, **extra}


def conversation(before: str, insight: str, after: str = "Done.") -> str:
    """Agent output with one canonical ``★ Insight`` block between two pieces of text."""
    return f"{before}\n\n{format_insight_block(insight)}\n\n{after}"


async def outbox_rows(store: PgvectorMemoryStore) -> list[dict[str, Any]]:
    async with store.gate.acquire() as connection:
        rows = await connection.fetch(
            f"SELECT project, insight_id, memory_id, content, status, attempts, last_error, next_attempt_at, "
            f"next_attempt_at > now() AS in_future, delivered_ref FROM {store.table('insight_outbox')} "
            "ORDER BY created_at, insight_id")
    return [dict(row) for row in rows]


async def drop_schema(store: PgvectorMemoryStore) -> None:
    async with store.gate.acquire() as connection:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')


async def own_search_rows(adapter: Any, query: str, limit: int = 100) -> list[dict[str, Any]]:
    """Session-Buddy's own search, whichever its version offers (detected, not assumed).

    Before 0.36 insights have their own ``search_insights`` (``'*'`` lists them all); 0.36 removed it and
    keeps insights as reflections, found by ``search_reflections`` (its text path also matches a tag
    exactly, so ``"om:<insight_id>"`` and ``"insight"`` work there).
    """
    search_insights = getattr(adapter, "search_insights", None)
    if callable(search_insights):
        return list(await search_insights(query, limit=limit, use_embeddings=False))
    return list(await adapter.search_reflections(query, limit=limit, use_embeddings=False, use_cache=False))


def _own_search_blocking(path: Path, queries: list[str]) -> dict[str, list[dict[str, Any]]]:
    from session_buddy.adapters.reflection_adapter_oneiric import ReflectionDatabaseAdapterOneiric
    from session_buddy.adapters.settings import ReflectionAdapterSettings

    async def run() -> dict[str, list[dict[str, Any]]]:
        adapter = ReflectionDatabaseAdapterOneiric(settings=ReflectionAdapterSettings(
            database_path=path, enable_embeddings=False, enable_hnsw_index=False))
        async with adapter:
            return {query: await own_search_rows(adapter, query) for query in queries}

    return asyncio.run(run())


async def session_buddy_own_search(path: Path, queries: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Session-Buddy's **own** search (its adapter, its SQL; :func:`own_search_rows`) on the file, from a thread.

    ``"om:<insight_id>"`` matches the sink's idempotency tag exactly (Session-Buddy's text search also
    matches ``list_contains(tags, query)``), so ``len(result)`` counts the copies of one insight.
    """
    return await asyncio.to_thread(_own_search_blocking, path, queries)


@contextlib.contextmanager
def hold_duckdb_lock(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process opens ``path`` read-write and keeps it, like a running Session-Buddy server."""
    script = ("import sys, time, duckdb\n"
              "connection = duckdb.connect(sys.argv[1])\n"
              "print('locked', flush=True)\n"
              "sys.stdin.read()\n")
    process = subprocess.Popen([sys.executable, "-c", script, str(path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "locked", f"the lock holder did not start: {line!r}"
        yield process
    finally:
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()  # EOF: the holder exits and DuckDB releases the lock
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
