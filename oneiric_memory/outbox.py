"""The insight outbox relay: delivers ``insight_outbox`` rows to Session-Buddy, at least once, never twice.

Rows enter the outbox in the same transaction as their memory. A relay claims due rows with
``FOR UPDATE SKIP LOCKED`` (so concurrent relays never take the same row), delivers each one, and records
the outcome in that same transaction. A crash rolls the claim back and the row is delivered again later;
the sink's delivery is idempotent by insight id, so that never makes a duplicate in Session-Buddy.
Failures back off exponentially per row; after ``max_attempts`` a row is ``failed`` (kept, never dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from oneiric_memory.adapters.pgvector.gauges import gauge_values
from oneiric_memory.errors import StoreError
from oneiric_memory.insights import Insight
from oneiric_memory.observability import INSTRUMENTS, get_logger, span
from oneiric_memory.protocols import InsightSink
from oneiric_memory.settings import SessionBuddySettings

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector import PgvectorMemoryStore

__all__ = ["OutboxRelay", "OutboxStatus", "RelayReport"]

CLAIM_BUDGET_S = 20.0
"""Stop delivering from one claim after this long; the rest stay due for the next round. A claim holds a
transaction open, and PostgreSQL ends sessions idle in a transaction (idle_in_transaction_session_timeout)."""


@dataclass(slots=True)
class RelayReport:
    delivered: int = 0
    failed_attempts: int = 0
    gave_up: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def attempted(self) -> int:
        return self.delivered + self.failed_attempts


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    pending: int
    due: int
    failed: int
    delivered: int
    oldest_pending_age_s: float | None
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"pending": self.pending, "due": self.due, "failed": self.failed, "delivered": self.delivered,
                "oldest_pending_age_s": self.oldest_pending_age_s, "last_error": self.last_error}


def _feed_gauges(store: PgvectorMemoryStore, status: OutboxStatus) -> None:
    """Refresh the ``oneiric_memory.outbox.backlog`` / ``.oldest_age`` gauges (registered by ``monitoring``
    for every store; they report the values cached here, since a gauge callback cannot run SQL)."""
    cached = gauge_values(store)
    cached.outbox_pending = status.pending
    cached.outbox_failed = status.failed
    cached.oldest_pending_epoch = (time.time() - status.oldest_pending_age_s
                                   if status.oldest_pending_age_s is not None else None)


class OutboxRelay:
    """Moves outbox rows to a sink. ``store`` and ``sink`` are looked up per call (hot-swap safe)."""

    def __init__(self, store: Callable[[], PgvectorMemoryStore], sink: Callable[[], InsightSink | None],
                 settings: SessionBuddySettings) -> None:
        self._store = store
        self._sink = sink
        self.settings = settings
        self._log = get_logger("oneiric_memory.outbox")
        self.last_status: OutboxStatus | None = None

    def _backoff_s(self, attempts: int) -> float:
        base = self.settings.retry_base_delay_s * (2 ** min(attempts, 20))
        return float(min(base, self.settings.retry_max_delay_s) * (0.75 + random.random() * 0.5))

    async def deliver_due(self, limit: int | None = None) -> RelayReport:
        """Deliver up to ``limit`` due rows in one claim; returns what happened."""
        store = self._store()
        sink = self._sink()
        report = RelayReport()
        if sink is None:
            return report
        outbox = store.table("insight_outbox")
        limit = limit or self.settings.relay_batch_size
        with span("deliver", limit=limit) as current:
            async with store.gate.acquire() as connection, connection.transaction():
                rows = await connection.fetch(
                    f"SELECT project, insight_id, memory_id, content, insight_type, topics, attempts FROM {outbox} "
                    "WHERE status = 'pending' AND next_attempt_at <= now() ORDER BY next_attempt_at, created_at "
                    "LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
                if rows:
                    async with contextlib.AsyncExitStack() as stack:
                        open_error = await self._open_batch(sink, stack)
                        started = time.monotonic()
                        for row in rows:
                            if time.monotonic() - started > CLAIM_BUDGET_S:
                                break  # the rest stay due, untouched, for the next round
                            await self._deliver_row(connection, outbox, sink, row, open_error, report)
            current.set_attribute("delivered", report.delivered)
            current.set_attribute("failed", report.failed_attempts)
        if report.errors:
            self._log.warning("outbox-delivery-failed", failed=report.failed_attempts, error=report.errors[-1][:120])
        return report

    @staticmethod
    async def _open_batch(sink: InsightSink, stack: contextlib.AsyncExitStack) -> Exception | None:
        """Open the sink once for the whole claim (one DuckDB open, not one per row).

        A failure to open (e.g. Session-Buddy holds the file) is returned, and every row of the claim records
        it as a failed attempt.
        """
        try:
            await stack.enter_async_context(sink.batch())
        except Exception as exc:
            return exc
        return None

    async def _deliver_row(self, connection: Any, outbox: str, sink: InsightSink, row: Any,
                           open_error: Exception | None, report: RelayReport) -> None:
        delivery = Insight(
            insight_id=row["insight_id"], content=row["content"], insight_type=row["insight_type"],
            topics=tuple(row["topics"] or ()), project=row["project"],
            memory_id=str(row["memory_id"]) if row["memory_id"] else None)
        try:
            if open_error is not None:
                raise open_error
            async with asyncio.timeout(self.settings.timeout_s * 2):
                reference = await sink.deliver(delivery)
        except Exception as exc:
            attempts = int(row["attempts"]) + 1
            give_up = attempts >= self.settings.max_attempts
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
            await connection.execute(
                f"UPDATE {outbox} SET attempts = $3, last_error = $4, status = $5, "
                "next_attempt_at = now() + make_interval(secs => $6) "
                "WHERE project = $1 AND insight_id = $2",
                row["project"], row["insight_id"], attempts, error,
                "failed" if give_up else "pending", self._backoff_s(attempts))
            report.failed_attempts += 1
            report.gave_up += int(give_up)
            report.errors.append(error)
            INSTRUMENTS.insights_failed.add(1)
            return
        await connection.execute(
            f"UPDATE {outbox} SET status = 'delivered', delivered_at = now(), delivered_ref = $3, "
            "attempts = attempts + 1, last_error = NULL WHERE project = $1 AND insight_id = $2",
            row["project"], row["insight_id"], str(reference))
        report.delivered += 1
        INSTRUMENTS.insights_delivered.add(1)

    async def drain(self, *, max_rounds: int = 1000) -> RelayReport:
        """Deliver until nothing is due (or every due row failed this round)."""
        total = RelayReport()
        for _ in range(max_rounds):
            report = await self.deliver_due()
            total.delivered += report.delivered
            total.failed_attempts += report.failed_attempts
            total.gave_up += report.gave_up
            total.errors.extend(report.errors)
            if report.attempted == 0 or report.delivered == 0:
                break
        return total

    async def status(self) -> OutboxStatus:
        store = self._store()
        async with store.gate.acquire() as connection:
            row = await connection.fetchrow(
                "SELECT count(*) FILTER (WHERE status = 'pending') AS pending, "
                "count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= now()) AS due, "
                "count(*) FILTER (WHERE status = 'failed') AS failed, "
                "count(*) FILTER (WHERE status = 'delivered') AS delivered, "
                "extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending'))::float8 AS oldest, "
                "(SELECT last_error FROM " + store.table("insight_outbox") + " WHERE last_error IS NOT NULL "
                "ORDER BY next_attempt_at DESC LIMIT 1) AS last_error "
                f"FROM {store.table('insight_outbox')}")
        assert row is not None
        self.last_status = OutboxStatus(
            pending=int(row["pending"]), due=int(row["due"]), failed=int(row["failed"]),
            delivered=int(row["delivered"]), oldest_pending_age_s=row["oldest"], last_error=row["last_error"])
        _feed_gauges(store, self.last_status)
        return self.last_status

    async def retry_failed(self) -> int:
        """Put ``failed`` rows back in the queue (after fixing the cause)."""
        store = self._store()
        async with store.gate.acquire() as connection:
            result = await connection.execute(
                f"UPDATE {store.table('insight_outbox')} SET status = 'pending', attempts = 0, "
                "next_attempt_at = now() WHERE status = 'failed'")
        return int(result.split()[-1])

    async def run(self, stop: asyncio.Event) -> None:
        """Background loop for the coordinator: deliver, sleep, repeat until ``stop`` is set."""
        while not stop.is_set():
            try:
                report = await self.deliver_due()
                if report.delivered and report.delivered == report.attempted:
                    continue  # more may be due right away
            except (StoreError, OSError) as exc:
                self._log.warning("outbox-relay-error", error=type(exc).__name__)
            except Exception as exc:  # keep the loop alive; the next round retries
                self._log.error("outbox-relay-crashed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.relay_interval_s)
