"""The insight outbox table, as a queue: claim due rows, record each outcome, count, requeue.

Rows enter the outbox in the same transaction as their memory (see :mod:`.writes`). A claim takes due rows
``FOR UPDATE SKIP LOCKED`` inside one transaction, so concurrent relays never take the same row and a crash
rolls the claim back (the row is delivered again later). The relay policy (backoff, budget, the sink) lives
beside the coordinator in :mod:`oneiric_memory.outbox`; this module only speaks SQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from oneiric_memory.insights import Insight

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector.store import PgvectorMemoryStore

__all__ = ["ClaimedInsight", "OutboxClaim", "OutboxQueue", "OutboxStatus"]


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """Outbox counts by status, the age of the oldest pending row and the latest error."""

    pending: int
    due: int
    failed: int
    delivered: int
    oldest_pending_age_s: float | None
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"pending": self.pending, "due": self.due, "failed": self.failed, "delivered": self.delivered,
                "oldest_pending_age_s": self.oldest_pending_age_s, "last_error": self.last_error}


@dataclass(frozen=True, slots=True)
class ClaimedInsight:
    """A claimed outbox row: the insight to deliver (or, for a tombstone, to delete from the sink) and how
    many attempts it has had."""

    insight: Insight
    attempts: int
    kind: str = "deliver"

    @property
    def tombstone(self) -> bool:
        return self.kind == "delete"


class OutboxClaim:
    """Due rows locked by one open transaction; record each row's outcome before the claim ends."""

    def __init__(self, connection: asyncpg.Connection, table: str, items: list[ClaimedInsight]) -> None:
        self._connection = connection
        self._table = table
        self.items = items

    async def delivered(self, item: ClaimedInsight, reference: str) -> None:
        await self._connection.execute(
            f"UPDATE {self._table} SET status = 'delivered', delivered_at = now(), delivered_ref = $3, "
            "attempts = attempts + 1, last_error = NULL WHERE project = $1 AND insight_id = $2",
            item.insight.project, item.insight.insight_id, reference)

    async def forgotten(self, item: ClaimedInsight) -> None:
        """A tombstone was carried out (the sink deleted the insight): nothing of it is kept."""
        await self._connection.execute(
            f"DELETE FROM {self._table} WHERE project = $1 AND insight_id = $2 AND kind = 'delete'",
            item.insight.project, item.insight.insight_id)

    async def failed(self, item: ClaimedInsight, *, error: str, give_up: bool, retry_in_s: float) -> None:
        """Count a failed attempt; the row is due again in ``retry_in_s``, or ``failed`` for good."""
        await self._connection.execute(
            f"UPDATE {self._table} SET attempts = $3, last_error = $4, status = $5, "
            "next_attempt_at = now() + make_interval(secs => $6) WHERE project = $1 AND insight_id = $2",
            item.insight.project, item.insight.insight_id, item.attempts + 1, error,
            "failed" if give_up else "pending", retry_in_s)


class OutboxQueue:
    """The ``insight_outbox`` table of one store."""

    def __init__(self, store: PgvectorMemoryStore) -> None:
        self._store = store
        self._table = store.table("insight_outbox")

    @asynccontextmanager
    async def claim(self, limit: int, *, tombstones_only: bool = False) -> AsyncIterator[OutboxClaim]:
        """Lock up to ``limit`` due rows, oldest due first; outcomes commit together when the block exits."""
        only = "AND kind = 'delete' " if tombstones_only else ""
        async with self._store.gate.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                f"SELECT project, insight_id, memory_id, content, insight_type, topics, attempts, kind "
                f"FROM {self._table} WHERE status = 'pending' AND next_attempt_at <= now() {only}"
                "ORDER BY next_attempt_at, created_at LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
            items = [ClaimedInsight(insight=Insight(
                insight_id=row["insight_id"], content=row["content"], insight_type=row["insight_type"],
                topics=tuple(row["topics"] or ()), project=row["project"],
                memory_id=str(row["memory_id"]) if row["memory_id"] else None), attempts=int(row["attempts"]),
                kind=row["kind"])
                for row in rows]
            yield OutboxClaim(connection, self._table, items)

    async def status(self) -> OutboxStatus:
        async with self._store.gate.acquire() as connection:
            row = await connection.fetchrow(
                "SELECT count(*) FILTER (WHERE status = 'pending') AS pending, "
                "count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= now()) AS due, "
                "count(*) FILTER (WHERE status = 'failed') AS failed, "
                "count(*) FILTER (WHERE status = 'delivered') AS delivered, "
                "extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending'))::float8 AS oldest, "
                f"(SELECT last_error FROM {self._table} WHERE last_error IS NOT NULL "
                "ORDER BY next_attempt_at DESC LIMIT 1) AS last_error "
                f"FROM {self._table}")
        assert row is not None
        return OutboxStatus(pending=int(row["pending"]), due=int(row["due"]), failed=int(row["failed"]),
                            delivered=int(row["delivered"]), oldest_pending_age_s=row["oldest"],
                            last_error=row["last_error"])

    async def tombstoned(self, insight_ids: Sequence[str]) -> set[str]:
        """Which of these insight ids belong to forgotten memories whose deletion has not reached the sink yet."""
        if not insight_ids:
            return set()
        async with self._store.gate.acquire() as connection:
            rows = await connection.fetch(
                f"SELECT insight_id FROM {self._table} WHERE kind = 'delete' AND insight_id = ANY($1::text[])",
                list(insight_ids))
        return {row["insight_id"] for row in rows}

    async def retry_failed(self) -> int:
        """Put ``failed`` rows back in the queue (after fixing the cause); returns how many."""
        async with self._store.gate.acquire() as connection:
            result = await connection.execute(
                f"UPDATE {self._table} SET status = 'pending', attempts = 0, next_attempt_at = now() "
                "WHERE status = 'failed'")
        return int(result.split()[-1])
