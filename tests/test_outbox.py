"""The insight outbox: same-transaction enqueue, idempotent at-least-once relay, concurrency, backoff, status.

Real parts: the session's embedded PostgreSQL and, where a real sink matters (crash and rerun), the real
Session-Buddy package in-process on a temp DuckDB. Two small sinks are written here on purpose: a recording
sink (to count deliveries per relay exactly) and a failing one (Session-Buddy cannot be told to fail on cue).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.adapters.session_buddy import SessionBuddyInsightSink
from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import InsightSinkError, StoreError
from oneiric_memory.insights import Insight, insight_id
from oneiric_memory.outbox import OutboxRelay
from oneiric_memory.records import MemoryRecord
from oneiric_memory.settings import MemorySettings
from tests.coordinator_fixtures import conversation, drop_schema, outbox_rows, sb_overrides, session_buddy_own_search
from tests.foundation_fixtures import opened_store
from tests.otel_fixtures import OtelCapture, install
from tests.support import make_settings

pytestmark = pytest.mark.asyncio


class Unbatched:
    """The relay opens the sink once per claim; these recording sinks have nothing to open."""

    def batch(self) -> contextlib.AbstractAsyncContextManager[str]:
        return contextlib.nullcontext("test")


class RecordingSink(Unbatched):
    """Records every delivery (relay name, insight id); idempotent like the real sink."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[str] = []

    async def deliver(self, insight: Insight) -> str:
        await asyncio.sleep(self.delay_s)  # lets the other relay run in between
        self.calls.append(insight.insight_id)
        return f"ref-{insight.insight_id}"


class FailingSink(Unbatched):
    async def deliver(self, insight: Insight) -> str:
        raise InsightSinkError("Session-Buddy is down (test)", reason="unreachable")


class DeliverThenFail:
    """The real sink, but the first ``fail_first`` deliveries raise *after* Session-Buddy stored them
    (a crash between delivering and marking); ``hang_after`` stops the relay mid-batch instead."""

    def __init__(self, sink: SessionBuddyInsightSink, *, fail_first: int = 0, hang_after: int | None = None) -> None:
        self.sink = sink
        self.fail_first = fail_first
        self.hang_after = hang_after
        self.delivered = 0
        self.hanging = asyncio.Event()

    def batch(self) -> Any:
        return self.sink.batch()

    async def deliver(self, insight: Insight) -> str:
        reference = await self.sink.deliver(insight)
        self.delivered += 1
        if self.fail_first > 0:
            self.fail_first -= 1
            raise RuntimeError("crashed after delivering, before marking")
        if self.hang_after is not None and self.delivered >= self.hang_after:
            self.hanging.set()
            await asyncio.Event().wait()  # until cancelled
        return reference


def insights_for(project: str, texts: list[str]) -> list[list[Insight]]:
    return [[Insight(insight_id=insight_id(project, text), content=text, insight_type="gotcha",
                           topics=("outbox",))] for text in texts]


async def enqueue(store: PgvectorMemoryStore, project: str, texts: list[str]) -> list[uuid.UUID]:
    records = [MemoryRecord(content=f"memory carrying: {text}", project=project) for text in texts]
    return (await store.upsert_many(records, insights=insights_for(project, texts))).ids


def relay_for(store: PgvectorMemoryStore, sink: Any, settings: MemorySettings | None = None) -> OutboxRelay:
    return OutboxRelay(lambda: store, lambda: sink, (settings or store.settings).session_buddy)


@asynccontextmanager
async def real_sink(settings: MemorySettings) -> AsyncIterator[SessionBuddyInsightSink]:
    sink = SessionBuddyInsightSink(settings)
    await sink.init()
    try:
        yield sink
    finally:
        await sink.cleanup()


# --- enqueue -------------------------------------------------------------------------------------------


async def test_insights_enter_the_outbox_in_the_memory_transaction(store: PgvectorMemoryStore) -> None:
    ids = await enqueue(store, "alpha", ["first insight text", "second insight text"])
    rows = {row["insight_id"]: row for row in await outbox_rows(store)}
    assert {key: (row["memory_id"], row["status"], row["attempts"]) for key, row in rows.items()} == {
        insight_id("alpha", "first insight text"): (ids[0], "pending", 0),
        insight_id("alpha", "second insight text"): (ids[1], "pending", 0)}

    bad = [[Insight(insight_id="broken-1", content="fine", insight_type=None)]]  # type: ignore[arg-type]
    with pytest.raises(StoreError):  # the outbox INSERT fails after the memory INSERT, in the same transaction
        await store.upsert_many([MemoryRecord(content="a memory that must not survive", project="alpha")],
                                insights=bad)
    assert await store.count() == 2  # neither the memory ...
    assert len(await outbox_rows(store)) == 2  # ... nor any outbox row was kept
    assert await store.search(query_text="survive", mode="text") == []


async def test_a_duplicate_memory_does_not_enqueue_its_insights_twice(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    settings = make_settings(pg_data_dir)
    async with UnifiedMemory.open(settings, background=False) as memory:
        try:
            text = conversation("Agent output.", "Dedup keys include the project.")
            first = await memory.remember(text, project="alpha")
            assert await memory.remember(text, project="alpha") == first  # the same memory
            await memory.remember_many([{"content": text, "project": "alpha"},  # twice inside one batch
                                        {"content": text, "project": "alpha"}])
            await memory.remember(conversation("Other words.", "Dedup keys include the project."), project="alpha")
            assert len(await outbox_rows(memory.store)) == 1  # same insight, same project: one row
            await memory.remember(text, project="beta")
            rows = await outbox_rows(memory.store)
            assert sorted(row["project"] for row in rows) == ["alpha", "beta"]

            sink = RecordingSink()
            assert (await relay_for(memory.store, sink).drain()).delivered == 2
            await memory.remember(text, project="alpha")  # a duplicate after delivery stays delivered
            assert [row["status"] for row in await outbox_rows(memory.store)] == ["delivered", "delivered"]
            assert (await relay_for(memory.store, sink).drain()).attempted == 0 and len(sink.calls) == 2
        finally:
            await drop_schema(memory.store)


# --- crash and rerun (real Session-Buddy) ---------------------------------------------------------------


async def test_fail_or_cancel_mid_relay_then_rerun_no_duplicates_no_losses(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path, sb_home: Path) -> None:
    sb_file = tmp_path / "sb" / "reflection.duckdb"
    settings = make_settings(pg_data_dir, session_buddy=sb_overrides(sb_file))
    first_texts = [f"Crash-safe insight number {n} about idempotent delivery." for n in range(5)]
    second_texts = [f"Cancelled relay insight number {n} about rollbacks." for n in range(4)]
    async with opened_store(settings) as store, real_sink(settings) as sink:
        await enqueue(store, "kappa", first_texts)
        crashing = DeliverThenFail(sink, fail_first=3)
        report = await relay_for(store, crashing).drain()
        # Round 1: 3 stored-then-crashed (retried), 2 delivered; round 2: the 3 are found already stored.
        assert report.failed_attempts == 3 and report.delivered == 5
        rows = await outbox_rows(store)
        assert all(row["status"] == "delivered" for row in rows)
        assert sorted(row["attempts"] for row in rows) == [1, 1, 2, 2, 2]

        await enqueue(store, "kappa", second_texts)
        hanging = DeliverThenFail(sink, hang_after=2)
        task = asyncio.create_task(relay_for(store, hanging).drain())
        await asyncio.wait_for(hanging.hanging.wait(), timeout=120)
        task.cancel()  # killed mid-batch: the claim's transaction rolls back
        with pytest.raises(asyncio.CancelledError):
            await task
        pending = [row for row in await outbox_rows(store) if row["status"] == "pending"]
        assert len(pending) == 4 and all(row["attempts"] == 0 for row in pending)  # nothing marked, nothing lost

        report = await relay_for(store, sink).drain()
        assert report.delivered == 4 and report.failed_attempts == 0
        rows = await outbox_rows(store)
        assert len(rows) == 9 and all(row["status"] == "delivered" for row in rows)
        refs = {row["insight_id"]: row["delivered_ref"] for row in rows}

    tags = {f"om:{insight_id('kappa', text)}": insight_id("kappa", text) for text in first_texts + second_texts}
    found = await session_buddy_own_search(sb_file, list(tags))
    assert {tag: len(rows_) for tag, rows_ in found.items()} == dict.fromkeys(tags, 1)  # one copy each
    assert all(found[tag][0]["id"] == refs[our_id] for tag, our_id in tags.items())  # marked with its real id


# --- concurrency ---------------------------------------------------------------------------------------


async def test_two_relays_at_once_deliver_each_row_exactly_once(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    settings = make_settings(pg_data_dir, session_buddy={"relay_batch_size": 7})
    texts = [f"concurrent insight {n}" for n in range(60)]
    async with opened_store(settings) as first, opened_store(settings) as second:
        assert first.pool is not second.pool and first.schema == second.schema
        await enqueue(first, "lambda", texts)
        sink = RecordingSink(delay_s=0.002)
        one, two = await asyncio.gather(relay_for(first, sink).drain(), relay_for(second, sink).drain())
        assert one.delivered + two.delivered == 60
        assert one.delivered > 0 and two.delivered > 0  # both relays really worked
        assert sorted(sink.calls) == sorted(insight_id("lambda", t) for t in texts)  # each exactly once
        rows = await outbox_rows(first)
        assert all(row["status"] == "delivered" and row["attempts"] == 1 for row in rows)
        assert all(row["delivered_ref"] == f"ref-{row['insight_id']}" for row in rows)


# --- retries ---------------------------------------------------------------------------------------------


async def test_backoff_then_failed_after_max_attempts_then_retry_failed(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    base = 30.0
    settings = make_settings(pg_data_dir, session_buddy={"retry_base_delay_s": base, "retry_max_delay_s": 10_000.0,
                                                         "max_attempts": 3})
    async with opened_store(settings) as store:
        await enqueue(store, "mu", ["first failing insight", "second failing insight"])
        relay = relay_for(store, FailingSink())
        assert relay_for(store, None).settings is relay.settings
        assert (await relay_for(store, None).deliver_due()).attempted == 0  # no sink: nothing touched

        for attempt in (1, 2):
            report = await relay.deliver_due()
            assert report.failed_attempts == 2 and report.delivered == 0 and report.gave_up == 0
            async with store.gate.acquire() as connection:
                waits = await connection.fetch(
                    f"SELECT extract(epoch FROM next_attempt_at - now())::float8 AS wait, attempts, status "
                    f"FROM {store.table('insight_outbox')}")
            expected = base * 2 ** attempt  # exponential, with +-25 % jitter
            assert all(0.7 * expected <= row["wait"] <= 1.3 * expected for row in waits), waits
            assert all(row["attempts"] == attempt and row["status"] == "pending" for row in waits)
            status = await relay.status()
            assert (status.pending, status.due, status.failed) == (2, 0, 0)
            assert status.last_error and "Session-Buddy is down" in status.last_error
            assert (await relay.deliver_due()).attempted == 0  # backing off: not due yet
            async with store.gate.acquire() as connection:  # time travel: make the rows due again
                await connection.execute(f"UPDATE {store.table('insight_outbox')} SET next_attempt_at = now()")

        report = await relay.deliver_due()
        assert report.gave_up == 2
        status = await relay.status()
        assert (status.pending, status.failed, status.delivered) == (0, 2, 0)
        assert all(row["status"] == "failed" and row["attempts"] == 3 for row in await outbox_rows(store))
        assert (await relay.drain()).attempted == 0  # failed rows are kept, never retried on their own

        assert await relay.retry_failed() == 2
        status = await relay.status()
        assert (status.pending, status.due, status.failed) == (2, 2, 0)
        sink = RecordingSink()
        assert (await relay_for(store, sink).drain()).delivered == 2
        status = await relay.status()
        assert (status.pending, status.failed, status.delivered) == (0, 0, 2)
        assert status.oldest_pending_age_s is None


async def test_status_counts_and_backlog_gauges(store: PgvectorMemoryStore) -> None:
    otel: OtelCapture = install()  # the process-wide OpenTelemetry SDK reader, shared with other modules

    def gauge(name: str, **attrs: str) -> list[float]:
        return [point.value for point in otel.points(name) if point.attributes.get("schema") == store.schema
                and all(point.attributes.get(k) == v for k, v in attrs.items())]

    await enqueue(store, "nu", ["one pending insight", "another pending insight", "a third"])
    relay = relay_for(store, RecordingSink())
    status = await relay.status()
    assert (status.pending, status.due, status.failed, status.delivered) == (3, 3, 0, 0)
    assert status.oldest_pending_age_s is not None and status.oldest_pending_age_s >= 0
    # status() refreshes the backlog gauges (the coordinator's relay loop calls it every round).
    assert gauge("oneiric_memory.outbox.backlog", status="pending") == [3.0]
    assert gauge("oneiric_memory.outbox.backlog", status="failed") == [0.0]
    (age,) = gauge("oneiric_memory.outbox.oldest_age")
    assert 0.0 <= age < 600
    assert (await relay.deliver_due(limit=2)).delivered == 2  # a claim takes at most ``limit`` rows
    status = await relay.status()
    assert (status.pending, status.delivered) == (1, 2) and status.as_dict()["pending"] == 1
    assert gauge("oneiric_memory.outbox.backlog", status="pending") == [1.0]
