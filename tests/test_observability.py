"""Spans, metrics and logs, asserted through the OpenTelemetry SDK's in-memory exporter/reader.

The SDK providers are process-global and can be set once, so they come from ``tests/otel_fixtures.py``
(a session fixture). Logs are captured with ``structlog.testing.capture_logs``.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry import trace
from structlog.testing import capture_logs

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.adapters.pgvector.gauges import register_metrics
from oneiric_memory.errors import InvalidInput
from oneiric_memory.insights import Insight
from oneiric_memory.observability import add_trace_ids, get_logger, span
from oneiric_memory.ops.backup import backup
from oneiric_memory.ops.maintenance import Maintenance
from oneiric_memory.ops.monitoring import Monitor
from oneiric_memory.records import MemoryRecord
from tests.ops_fixtures import clustered_vectors, load, open_store
from tests.otel_fixtures import OtelCapture, install
from tests.support import make_settings

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


# structlog's Processor type wants a MutableMapping signature; ours takes the dict structlog passes
TRACE_IDS: Any = add_trace_ids


@pytest.fixture(scope="session")
def otel() -> OtelCapture:
    """The process-wide in-memory exporter and reader (installed once, shared with other modules)."""
    return install()


def _attrs(capture: OtelCapture, name: str) -> list[dict[str, Any]]:
    return [dict(s.attributes or {}) for s in capture.finished(name)]


@pytest.mark.asyncio
async def test_store_spans_and_write_search_metrics(otel: OtelCapture, pg_server: EmbeddedConnectInfo,
                                                    pg_data_dir: Path) -> None:
    async with open_store(pg_data_dir) as store:
        otel.spans.clear()
        stored = otel.total("oneiric_memory.memories.stored")
        dedup = otel.total("oneiric_memory.memories.dedup_hits")
        searches = {mode: otel.count("oneiric_memory.search.duration", mode=mode)
                    for mode in ("vector", "text", "hybrid")}
        vectors = clustered_vectors(3)
        first = [MemoryRecord(content=f"observed memory {i}", embedding=v) for i, v in enumerate(vectors)]
        await store.upsert_many(first)
        await store.upsert_many([first[0], MemoryRecord(content="observed memory new", embedding=vectors[1])])
        assert otel.total("oneiric_memory.memories.stored") - stored == 4
        assert otel.total("oneiric_memory.memories.dedup_hits") - dedup == 1
        assert otel.count("oneiric_memory.write.batch_size", operation="upsert") >= 2

        await store.search(query_embedding=vectors[0], mode="vector", limit=2)
        await store.search(query_text="observed", mode="text", limit=10)
        await store.search(query_text="observed", query_embedding=vectors[0], mode="hybrid", limit=3)
        for mode in ("vector", "text", "hybrid"):
            assert otel.count("oneiric_memory.search.duration", mode=mode) == searches[mode] + 1

        upserts = _attrs(otel, "oneiric_memory.store.upsert_many")
        assert [a["rows"] for a in upserts] == [3, 2]
        by_mode = {a["mode"]: a for a in _attrs(otel, "oneiric_memory.store.search")}
        assert by_mode["vector"]["hits"] == 2 and by_mode["vector"]["limit"] == 2
        assert by_mode["text"]["hits"] == 4 and by_mode["hybrid"]["hits"] == 3


@pytest.mark.asyncio
async def test_maintenance_monitoring_and_backup_spans(otel: OtelCapture, pg_server: EmbeddedConnectInfo,
                                                       pg_data_dir: Path, tmp_path: Path) -> None:
    async with open_store(pg_data_dir) as store:
        await load(store, clustered_vectors(30), expires_at=datetime.now(UTC) - timedelta(seconds=1))
        await load(store, clustered_vectors(30, seed=2), prefix="kept")
        otel.spans.clear()
        maintenance = Maintenance(store)
        assert await maintenance.expire(batch_size=20) == 30
        await maintenance.vacuum(["memories"])
        await maintenance.apply_autovacuum()
        await maintenance.reindex()
        await maintenance.auto(run_canary=False)
        await Monitor(store).doctor()
        await backup(store, tmp_path / "spans.dump")

        expire = _attrs(otel, "oneiric_memory.maintain.expire")[0]
        assert expire == {"schema": store.schema, "batch_size": 20, "deleted": 30, "batches": 2}
        vacuum = _attrs(otel, "oneiric_memory.maintain.vacuum")[0]
        assert vacuum["tables"] == 1 and vacuum["bytes_before"] > 0 and vacuum["bytes_after"] > 0
        assert _attrs(otel, "oneiric_memory.maintain.autovacuum")[0]["changed"] == 3
        reindex = _attrs(otel, "oneiric_memory.maintain.reindex")[0]
        assert reindex["method"] == "hnsw" and reindex["action"] == "reindexed" and reindex["rows"] == 30
        assert _attrs(otel, "oneiric_memory.maintain.auto")[0]["dry_run"] is False
        doctor = _attrs(otel, "oneiric_memory.monitor.doctor")[0]
        assert doctor["score"] == 100
        canary = _attrs(otel, "oneiric_memory.monitor.recall_canary")[0]
        assert canary["recall"] == 1.0 and canary["k"] == store.settings.maintenance.canary_k
        dump = _attrs(otel, "oneiric_memory.backup.dump")[0]
        assert dump["schema"] == store.schema and dump["bytes"] > 0 and dump["entries"] > 0
        (auto_span,) = otel.finished("oneiric_memory.maintain.auto")
        (stats_span,) = [s for s in otel.finished("oneiric_memory.monitor.stats")]
        (doctor_span,) = otel.finished("oneiric_memory.monitor.doctor")
        assert stats_span.parent is not None and stats_span.parent.span_id == doctor_span.context.span_id
        assert auto_span.status.is_ok


@pytest.mark.asyncio
async def test_failed_operations_mark_their_span(otel: OtelCapture, store: PgvectorMemoryStore) -> None:
    otel.spans.clear()
    with pytest.raises(InvalidInput):
        await Maintenance(store).vacuum(["not_a_table"])
    with pytest.raises(InvalidInput), span("maintain.custom", schema=store.schema):
        raise InvalidInput("bad")
    (failed,) = otel.finished("oneiric_memory.maintain.custom")
    assert not failed.status.is_ok and failed.attributes is not None
    assert failed.attributes["error.type"] == "InvalidInput"


@pytest.mark.asyncio
async def test_pool_and_cached_gauges(otel: OtelCapture, pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    async with open_store(pg_data_dir) as store:
        register_metrics(store)
        register_metrics(store)  # idempotent

        def gauge(name: str, **attrs: str) -> list[float]:
            return [p.value for p in otel.points(name)
                    if p.attributes.get("schema") == store.schema
                    and all(p.attributes.get(k) == v for k, v in attrs.items())]

        stats = store.gate.stats()
        assert gauge("oneiric_memory.pool.max") == [4.0]
        assert gauge("oneiric_memory.pool.size") == [float(stats.size)]
        assert gauge("oneiric_memory.pool.idle") == [float(stats.idle)]
        assert gauge("oneiric_memory.outbox.backlog") == []  # nothing cached yet: no SQL from a gauge callback

        async with AsyncExitStack() as stack:
            for _ in range(4):
                await stack.enter_async_context(store.gate.acquire())
            waiter = asyncio.create_task(store.count())
            await asyncio.sleep(0.05)
            assert gauge("oneiric_memory.pool.waiting") == [1.0]
            assert gauge("oneiric_memory.pool.in_use") == [4.0]
        await waiter
        assert gauge("oneiric_memory.pool.waiting") == [0.0]

        await load(store, clustered_vectors(40))
        await store.upsert_many(
            [MemoryRecord(content=f"gauge memory {i}") for i in range(3)],
            insights=[[Insight(insight_id=f"g{i}", content="insight")] for i in range(3)])
        await Monitor(store).doctor()
        assert gauge("oneiric_memory.outbox.backlog", status="pending") == [3.0]
        assert gauge("oneiric_memory.outbox.backlog", status="failed") == [0.0]
        (age,) = gauge("oneiric_memory.outbox.oldest_age")
        assert 0.0 <= age < 600
        assert gauge("oneiric_memory.embeddings.pending") == [3.0]
        assert gauge("oneiric_memory.recall.canary") == [1.0]


def test_add_trace_ids_writes_w3c_ids_inside_a_span(otel: OtelCapture) -> None:
    from oneiric.core.logging import _otel_context_processor

    with capture_logs(processors=[TRACE_IDS]) as logs:
        log = get_logger("oneiric_memory.test")
        log.info("outside")
        with span("test.logging") as current:
            log.info("inside")
            context = current.get_span_context()
    outside, inside = logs
    assert "trace_id" not in outside and "span_id" not in outside
    assert HEX32.match(inside["trace_id"]) and HEX16.match(inside["span_id"])
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")

    # Oneiric's processor pads with a space; ours, run after it, writes the correct ids
    with capture_logs(processors=[_otel_context_processor, TRACE_IDS]) as logs, span("test.padded"):
        structlog.get_logger("x").info("both")
    assert HEX32.match(logs[0]["trace_id"]) and not logs[0]["trace_id"].startswith(" ")
    with capture_logs(processors=[_otel_context_processor]) as logs, span("test.oneiric"):
        structlog.get_logger("x").info("oneiric only")
    assert logs[0]["trace_id"].startswith(" ")  # the bug our processor exists for
    assert trace.get_current_span().get_span_context().is_valid is False


@pytest.mark.asyncio
async def test_no_log_line_or_span_attribute_carries_the_password_or_content(
        otel: OtelCapture, pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path) -> None:
    marker = f"zqxsecretcontent{uuid.uuid4().hex}"
    password = f"pw-{uuid.uuid4().hex}"
    settings = make_settings(pg_data_dir, postgres={"vector_dimension": 32, "password": password},
                             maintenance={"slow_query_ms": 0})
    otel.spans.clear()
    with capture_logs(processors=[TRACE_IDS]) as logs:
        store = PgvectorMemoryStore(settings)  # loggers are bound at construction: inside the capture
        await store.init()
        try:
            register_metrics(store)
            vectors = clustered_vectors(12)
            records = [MemoryRecord(content=f"{marker} memory {i}", metadata={"note": marker}, embedding=v,
                                    agent_id="agent-1")
                       for i, v in enumerate(vectors)]
            records.append(MemoryRecord(content=f"{marker} pending"))
            records.append(MemoryRecord(content=f"{marker} expired", expires_at=datetime.now(UTC) - timedelta(days=1)))
            insights: list[list[Insight]] = [[] for _ in records]
            insights[0] = [Insight(insight_id="leak-1", content=f"insight {marker}")]
            await store.upsert_many(records, insights=insights)
            await store.upsert_many(records[:2])  # dedup hits
            with pytest.raises(InvalidInput):
                await store.upsert_many([MemoryRecord(content=f"{marker}\x00nul")])
            hits = await store.search(query_text=marker, query_embedding=vectors[0], mode="hybrid", limit=5)
            assert hits and marker in hits[0].content  # the content is really there to leak
            await store.search(query_text=marker, mode="text", limit=5)
            await store.search(query_embedding=vectors[1], mode="vector", limit=5)
            maintenance = Maintenance(store)
            await maintenance.auto()
            await maintenance.reindex()
            await maintenance.vacuum()
            report = await Monitor(store).doctor()
            await backup(store, tmp_path / "leak.dump")
            rendered = json.dumps(report.to_dict(), default=str)
            assert marker not in rendered and password not in rendered
            assert report.stats.statements.available and report.stats.statements.slow
        finally:
            async with store.gate.acquire() as connection:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
            await store.cleanup()

    spans = otel.finished()
    assert {"oneiric_memory.store.upsert_many", "oneiric_memory.store.search", "oneiric_memory.maintain.auto",
            "oneiric_memory.monitor.doctor", "oneiric_memory.backup.dump"} <= {s.name for s in spans}
    exported: list[str] = []
    for item in spans:
        exported.append(item.name)
        exported.extend(f"{k}={v!r}" for k, v in (item.attributes or {}).items())
        exported.append(str(item.status.description))
        for event in item.events:
            exported.append(event.name)
            exported.extend(f"{k}={v!r}" for k, v in (event.attributes or {}).items())
    for metric in ("oneiric_memory.search.duration", "oneiric_memory.memories.stored", "oneiric_memory.outbox.backlog"):
        exported.extend(str(dict(p.attributes)) for p in otel.points(metric))
    assert logs, "the scenario must have logged something"
    exported.extend(repr(entry) for entry in logs)
    text = "\n".join(exported)
    assert marker not in text
    assert password not in text
