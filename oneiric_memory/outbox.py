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
from typing import TYPE_CHECKING

from oneiric_memory.adapters.pgvector.gauges import gauge_values
from oneiric_memory.adapters.pgvector.outbox import ClaimedInsight, OutboxClaim, OutboxStatus
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
    forgotten: int = 0
    """Tombstones carried out: insights of forgotten memories deleted from the sink."""
    failed_attempts: int = 0
    gave_up: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def attempted(self) -> int:
        return self.delivered + self.forgotten + self.failed_attempts


def _feed_gauges(store: PgvectorMemoryStore, status: OutboxStatus) -> None:
    """Refresh the ``oneiric_memory.outbox.backlog`` / ``.oldest_age`` gauges (registered by the store for
    itself; they report the values cached here, since a gauge callback cannot run SQL)."""
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

    async def deliver_due(self, limit: int | None = None, *, tombstones_only: bool = False) -> RelayReport:
        """Deliver up to ``limit`` due rows in one claim; returns what happened.

        Tombstones (rows of forgotten memories) are carried out first, with one ``delete_insights`` call; they
        are retried until Session-Buddy takes them, never given up.
        """
        store = self._store()
        sink = self._sink()
        report = RelayReport()
        if sink is None:
            return report
        limit = limit or self.settings.relay_batch_size
        with span("deliver", limit=limit) as current:
            async with store.outbox.claim(limit, tombstones_only=tombstones_only) as claim:
                tombstones = [item for item in claim.items if item.tombstone]
                if tombstones:
                    await self._forget(claim, tombstones, sink, report)
                deliveries = [item for item in claim.items if not item.tombstone]
                if deliveries:
                    async with contextlib.AsyncExitStack() as stack:
                        open_error = await self._open_batch(sink, stack)
                        started = time.monotonic()
                        for item in deliveries:
                            if time.monotonic() - started > CLAIM_BUDGET_S:
                                break  # the rest stay due, untouched, for the next round
                            await self._deliver_one(claim, item, sink, open_error, report)
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

    async def _forget(self, claim: OutboxClaim, items: list[ClaimedInsight], sink: InsightSink,
                      report: RelayReport) -> None:
        """Delete the tombstones' insights from the sink (idempotent), then drop the rows; on failure they stay."""
        try:
            async with asyncio.timeout(self.settings.timeout_s * 2):
                await sink.delete_insights([item.insight.insight_id for item in items])
        except Exception as exc:
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
            for item in items:  # never given up: forgetting must reach Session-Buddy
                await claim.failed(item, error=error, give_up=False, retry_in_s=self._backoff_s(item.attempts + 1))
            report.failed_attempts += len(items)
            report.errors.append(error)
            return
        for item in items:
            await claim.forgotten(item)
        report.forgotten += len(items)

    async def _deliver_one(self, claim: OutboxClaim, item: ClaimedInsight, sink: InsightSink,
                           open_error: Exception | None, report: RelayReport) -> None:
        try:
            if open_error is not None:
                raise open_error
            async with asyncio.timeout(self.settings.timeout_s * 2):
                reference = await sink.deliver(item.insight)
        except Exception as exc:
            attempts = item.attempts + 1
            give_up = attempts >= self.settings.max_attempts
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
            await claim.failed(item, error=error, give_up=give_up, retry_in_s=self._backoff_s(attempts))
            report.failed_attempts += 1
            report.gave_up += int(give_up)
            report.errors.append(error)
            INSTRUMENTS.insights_failed.add(1)
            return
        await claim.delivered(item, str(reference))
        report.delivered += 1
        INSTRUMENTS.insights_delivered.add(1)

    async def drain(self, *, max_rounds: int = 1000) -> RelayReport:
        """Deliver until nothing is due (or every due row failed this round)."""
        total = RelayReport()
        for _ in range(max_rounds):
            report = await self.deliver_due()
            total.delivered += report.delivered
            total.forgotten += report.forgotten
            total.failed_attempts += report.failed_attempts
            total.gave_up += report.gave_up
            total.errors.extend(report.errors)
            if report.attempted == 0 or report.delivered + report.forgotten == 0:
                break
        return total

    async def status(self) -> OutboxStatus:
        """The outbox counts (and the backlog gauges refreshed from them)."""
        store = self._store()
        self.last_status = await store.outbox.status()
        _feed_gauges(store, self.last_status)
        return self.last_status

    async def retry_failed(self) -> int:
        """Put ``failed`` rows back in the queue (after fixing the cause)."""
        return await self._store().outbox.retry_failed()
