"""Reading memories: the row-to-:class:`StoredMemory` mapping ``get`` shares, and listing in a stable order,
one page at a time, for ``list`` and ``export`` (keyset pagination).

Pages are ordered by ``(created_at, id)`` and continue after a cursor, so a listing or an export of millions of
rows streams in bounded memory and never skips or repeats a row when rows are added meanwhile.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from oneiric_memory.adapters.pgvector.connection import run_with_retries
from oneiric_memory.adapters.pgvector.search_sql import Params, filter_clause
from oneiric_memory.adapters.pgvector.sharing import split_targets
from oneiric_memory.errors import InvalidInput
from oneiric_memory.records import SearchFilters, StoredMemory

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector.store import PgvectorMemoryStore

__all__ = ["MEMORY_COLUMNS", "MemoryPage", "list_memories", "stored_memory"]

_MAX_PAGE = 10_000


MEMORY_COLUMNS = ("m.id, m.project, m.memory_type, m.content, m.content_hash, m.metadata, m.source_system, "
                  "m.agent_id, m.workflow_id, m.repo_id, m.session_id, m.embedding_model, "
                  "m.embedding IS NULL AS pending, m.created_at, m.updated_at, m.expires_at, m.seen_count, "
                  "coalesce(m.last_seen_at, m.created_at) AS last_seen_at, m.shared_with")
"""The columns :func:`stored_memory` reads (``memories`` aliased ``m``)."""


def stored_memory(row: Mapping[str, Any], *, with_embedding: bool = False) -> StoredMemory:
    """One row selected with :data:`MEMORY_COLUMNS` (plus ``m.embedding`` when ``with_embedding``)."""
    vector = row["embedding"] if with_embedding else None
    shared_projects, shared_groups = split_targets(row["shared_with"])
    return StoredMemory(
        id=row["id"], project=row["project"], memory_type=row["memory_type"], content=row["content"],
        content_hash=row["content_hash"], metadata=row["metadata"], source_system=row["source_system"],
        agent_id=row["agent_id"], workflow_id=row["workflow_id"], repo_id=row["repo_id"],
        session_id=row["session_id"], embedding_model=row["embedding_model"], embedding_pending=row["pending"],
        created_at=row["created_at"], updated_at=row["updated_at"], expires_at=row["expires_at"],
        seen_count=row["seen_count"], last_seen_at=row["last_seen_at"], shared_projects=shared_projects,
        shared_groups=shared_groups,
        embedding=None if vector is None else [float(x) for x in vector.to_list()])


@dataclass(frozen=True, slots=True)
class MemoryPage:
    """One page and the cursor of the next (``None`` on the last page)."""

    memories: list[StoredMemory]
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
            sql = (f"SELECT {MEMORY_COLUMNS}{embedding} FROM {store.table('memories')} m "
                   f"WHERE {where} ORDER BY m.created_at, m.id LIMIT {params.add(limit + 1, 'int')}")
            return list(await connection.fetch(sql, *params.values))

    rows = await run_with_retries(store.settings.postgres, "listing memories", run)
    more = len(rows) > limit
    rows = rows[:limit]
    memories = [stored_memory(r, with_embedding=with_embeddings) for r in rows]
    last = memories[-1] if memories else None
    return MemoryPage(memories, _encode(last.created_at, last.id) if more and last is not None else None)
