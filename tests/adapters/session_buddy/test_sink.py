"""The sink as an adapter: health, modes without a server, bad input, Oneiric activation, clean shutdown."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from mcp_common.health import HealthStatus

from oneiric_memory.adapters.session_buddy import SessionBuddyInsightSink, session_buddy_sink_factory
from oneiric_memory.errors import ConfigurationError, InsightSinkError, InvalidInput
from oneiric_memory.insights import Insight
from tests.adapters.session_buddy.sb_helpers import (
    delivery,
    free_port,
    make_settings,
    open_sink,
)

pytestmark = pytest.mark.asyncio


async def test_health_reports_mode_path_lock_and_backlog(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    backlog: dict[str, Any] = {"pending": 0, "oldest_age_s": None}

    async def provider() -> Mapping[str, Any]:
        return backlog

    async with open_sink(settings, backlog_provider=provider) as sink:
        health = await sink.component_health()
        assert health.name == "insight_sink"
        assert health.status is HealthStatus.HEALTHY
        meta = health.metadata
        assert meta["mode"] == "in_process" and meta["mode_configured"] == "in_process"
        assert meta["database_path"] == str(settings.session_buddy.database_path)
        assert meta["lock"] == "absent" and meta["last_delivery_error"] is None
        assert meta["backlog"] == backlog
        assert health.to_dict()["status"] == "healthy"

        backlog.update(pending=7, oldest_age_s=settings.session_buddy.degraded_backlog_age_s + 1)
        health = await sink.component_health()
        assert health.status is HealthStatus.DEGRADED and "backlog" in (health.message or "")
        assert await sink.health() is True

    async def broken() -> Mapping[str, Any]:
        raise RuntimeError("outbox table missing")

    async with open_sink(settings, backlog_provider=broken) as sink:
        health = await sink.component_health()
        assert health.metadata["backlog_error"] == "RuntimeError"
        assert health.status is HealthStatus.HEALTHY


async def test_mcp_mode_with_no_server_is_degraded_and_refuses_cleanly(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, mode="mcp", mcp_url=f"http://127.0.0.1:{free_port()}/mcp", timeout_s=5)
    async with open_sink(settings) as sink:
        with pytest.raises(InsightSinkError) as caught:
            await sink.deliver(delivery("repo-a", "Nobody listens."))
        assert caught.value.details["reason"] == "unreachable"
        health = await sink.component_health()
        assert health.status is HealthStatus.DEGRADED
        assert health.metadata["mode"] == "mcp" and health.metadata["mcp_answers"] is False
        assert await sink.health() is True


async def test_auto_mode_uses_in_process_when_no_server_answers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, mode="auto", mcp_url=f"http://127.0.0.1:{free_port()}/mcp")
    async with open_sink(settings) as sink:
        async with sink.batch() as mode:
            assert mode == "in_process"
            await sink.deliver(delivery("repo-a", "Auto mode falls back to the file."))
        health = await sink.component_health()
    assert health.status is HealthStatus.HEALTHY
    assert health.metadata["mode"] == "in_process" and health.metadata["last_mode_used"] == "in_process"
    assert health.metadata["mcp_answers"] is False


async def test_disabled_sink_and_bad_input(tmp_path: Path) -> None:
    async with open_sink(make_settings(tmp_path, enabled=False)) as sink:
        assert await sink.health() is True
        health = await sink.component_health()
        assert health.metadata["mode"] == "disabled"
        with pytest.raises(InsightSinkError, match="enabled=true"):
            await sink.deliver(delivery("repo-a", "Nothing happens."))
        assert await sink.search_insights("anything") == []
    async with open_sink(make_settings(tmp_path)) as sink:
        good = delivery("repo-a", "Valid content.")
        for bad in (Insight("bad id!", "x", "general", (), "repo-a"),
                    Insight(good.insight_id, "   ", "general", (), "repo-a"),
                    Insight(good.insight_id, "x", "general", (), ""),
                    Insight(good.insight_id, "nul\x00byte", "general", (), "repo-a")):
            with pytest.raises(InvalidInput):
                await sink.deliver(bad)
        with pytest.raises(InvalidInput):
            await sink.deliver(Insight(good.insight_id, "x", "general", "topic", "repo-a"))  # type: ignore[arg-type]
        hostile_searches: list[dict[str, Any]] = [
            {"query": "x", "limit": 0}, {"query": "x", "limit": 10**9}, {"query": "x", "limit": "5"},
            {"query": "x", "limit": True}, {"query": ""}, {"query": "   "}, {"query": "nul\x00"},
            {"query": "lone \ud800"}, {"query": "x" * 10_001}, {"query": None},
            {"query": "x", "projects": "repo-a"},  # a string is not split into one-letter projects
            {"query": "x", "projects": [""]}, {"query": "x", "projects": [1]},
        ]
        for arguments in hostile_searches:
            with pytest.raises(InvalidInput):
                await sink.search_insights(**arguments)
        assert await sink.search_insights("Valid", projects=("repo-a",)) == []
    with pytest.raises(ConfigurationError, match="mcp_url"):
        await SessionBuddyInsightSink(make_settings(tmp_path, mode="mcp", mcp_url="localhost:8678")).init()
    not_initialized = SessionBuddyInsightSink(make_settings(tmp_path))
    with pytest.raises(InsightSinkError, match="init"):
        await not_initialized.deliver(delivery("repo-a", "Too early."))


async def test_oneiric_activation_and_health_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from oneiric.core.lifecycle import LifecycleManager
    from oneiric.core.resolution import Candidate, Resolver

    monkeypatch.chdir(tmp_path)  # no settings/ folder here: defaults + env only
    monkeypatch.setenv("MAHAVISHNU_ONEIRIC_MEMORY__SESSION_BUDDY__MODE", "in_process")
    monkeypatch.setenv("MAHAVISHNU_ONEIRIC_MEMORY__SESSION_BUDDY__DATABASE_PATH", str(tmp_path / "sb.duckdb"))
    resolver = Resolver()
    resolver.register(Candidate(domain="adapter", key="insight_sink", provider="session_buddy",
                                factory=session_buddy_sink_factory))
    lifecycle = LifecycleManager(resolver)
    sink = await lifecycle.activate("adapter", "insight_sink")
    try:
        assert isinstance(sink, SessionBuddyInsightSink)
        assert sink.database_path == tmp_path / "sb.duckdb"
        assert await lifecycle.probe_instance_health("adapter", "insight_sink") is True
        status = lifecycle.get_status("adapter", "insight_sink")
        assert status is not None and status.state == "ready" and status.current_provider == "session_buddy"
        assert await sink.deliver(delivery("repo-a", "Activated through Oneiric."))
    finally:
        await sink.cleanup()
    monkeypatch.setenv("MAHAVISHNU_ONEIRIC_MEMORY__SESSION_BUDDY__MODE", "mcp")
    monkeypatch.setenv("MAHAVISHNU_ONEIRIC_MEMORY__SESSION_BUDDY__MCP_URL", "not-a-url")
    with pytest.raises(ConfigurationError):
        await session_buddy_sink_factory()


async def test_cleanup_right_after_init_leaves_no_coroutine_unawaited(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11: ``coroutine '_start_import.<locals>.importing' was never awaited`` when the worker stopped
    before the import it had been handed started. The worker now cancels what is pending before it closes."""
    import gc
    import warnings

    settings = make_settings(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            sink = SessionBuddyInsightSink(settings)
            await sink.init()  # starts importing Session-Buddy on the worker thread
            await sink.cleanup()  # ...and stops the worker at once
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
    assert [r.getMessage() for r in caplog.records if "Task was destroyed" in r.getMessage()] == []
