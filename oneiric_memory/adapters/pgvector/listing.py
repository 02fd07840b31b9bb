"""Reading memories in a stable order, one page at a time: ``list`` and ``export`` (keyset pagination).

Pages are ordered by ``(created_at, id)`` and continue after a cursor, so a listing or an export of millions of
rows streams in bounded memory and never skips or repeats a row when rows are added meanwhile.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from oneiric_memory.adapters.pgvector.connection import run_with_retries
from oneiric_memory.adapters.pgvector.search_sql import Params, filter_clause
from oneiric_memory.errors import InvalidInput
from oneiric_memory.records import SearchFilters

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector.store import PgvectorMemoryStore

__all__ = ["ListedMemory", "MemoryPage", "list_memories"]

_MAX_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class ListedMemory:
    """Every stored column of one memory; ``embedding`` only when it was asked for (export)."""

    id: uuid.UUID
    project: str
    memory_type: str
    content: str
    metadata: dict[str, Any]
    source_system: str | None
    agent_id: str | None
    workflow_id: str | None
    repo_id: str | None
    session_id: str | None
    embedding_model: str | None
    embedding_pending: bool
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    embedding: list[float] | None = None


@dataclass(frozen=True, slots=True)
class MemoryPage:
    """One page and the cursor of the next (``None`` on the last page)."""

    memories: list[ListedMemory]
    next_cursor: str | None


def _encode(created_at: datetime, memory_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{memory_id}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, memory_id = raw.partition("|")
        parsed = datetime.fromisoformat(when)
        if parsed.tzinfo is None:
            raise ValueError("naive")
        return parsed, uuid.UUID(memory_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(f"cursor {cursor[:40]!r} is not one this store handed out", field="cursor") from None


async def list_memories(store: PgvectorMemoryStore, *, filters: SearchFilters | None = None, limit: int = 50,
                        after: str | None = None, with_embeddings: bool = False) -> MemoryPage:
    """Up to ``limit`` memories matching ``filters`` after ``after`` (a cursor from the previous page)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {_MAX_PAGE}", field="limit")
    filters = filters or SearchFilters()
    filters.validate()
    position = _decode(after) if after is not None else None
    embedding = ", m.embedding" if with_embeddings else ""

    async def run() -> list[Any]:
        async with store.gate.acquire() as connection:
            params = Params()
            where = filter_clause(await store.scoped(connection, filters), params)
            if position is not None:
                where += (f" AND (m.created_at, m.id) > ({params.add(position[0], 'timestamptz')}, "
                          f"{params.add(position[1], 'uuid')})")
            sql = (f"SELECT m.id, m.project, m.memory_type, m.content, m.metadata, m.source_system, m.agent_id, "
                   f"m.workflow_id, m.repo_id, m.session_id, m.embedding_model, m.embedding IS NULL AS pending, "
                   f"m.created_at, m.updated_at, m.expires_at{embedding} FROM {store.table('memories')} m "
                   f"WHERE {where} ORDER BY m.created_at, m.id LIMIT {params.add(limit + 1, 'int')}")
            return list(await connection.fetch(sql, *params.values))

    rows = await run_with_retries(store.settings.postgres, "listing memories", run)
    more = len(rows) > limit
    rows = rows[:limit]
    memories = [ListedMemory(
        id=r["id"], project=r["project"], memory_type=r["memory_type"], content=r["content"],
        metadata=r["metadata"], source_system=r["source_system"], agent_id=r["agent_id"],
        workflow_id=r["workflow_id"], repo_id=r["repo_id"], session_id=r["session_id"],
        embedding_model=r["embedding_model"], embedding_pending=r["pending"], created_at=r["created_at"],
        updated_at=r["updated_at"], expires_at=r["expires_at"],
        embedding=[float(x) for x in r["embedding"].to_list()] if with_embeddings and r["embedding"] is not None
        else None) for r in rows]
    last = memories[-1] if memories else None
    return MemoryPage(memories, _encode(last.created_at, last.id) if more and last is not None else None)
