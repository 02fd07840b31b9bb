"""The ``mahavishnu.adapters`` entry point, loaded the way Mahavishnu 0.14's ``HybridAdapterRegistry`` does.

Mahavishnu itself cannot be imported here (its wheels import a ``monitoring`` package they do not ship), so
this test repeats the registry's steps with the standard library: ``entry_points(group=...)``, call the
loaded callable, check the dict contract and the allowlist with ``fnmatch``, import ``module:Class`` and build
``cls(config=<settings model>)`` without calling ``initialize()``. The settings model is a pydantic model with
``extra="allow"``, which is how ``MahavishnuSettings`` keeps a top-level ``oneiric_memory:`` block.
"""

from __future__ import annotations

import importlib
import io
import uuid
from collections.abc import Iterator
from fnmatch import fnmatch
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.insights import format_insight_block
from oneiric_memory.mahavishnu import ADAPTER_ID, OneiricMemoryAdapter, attach
from oneiric_memory.settings_sources import (
    follows_legacy_llm_keys,
    installed_mahavishnu_version,
    is_mahavishnu_036_or_newer,
)
from tests.coordinator_fixtures import drop_schema

REQUIRED = ("adapter_id", "domain", "category", "provider", "capabilities", "factory_path")
DEFAULT_ALLOWLIST = ("mahavishnu.adapters.*", "mahavishnu.engines.*")


class MahavishnuLikeSettings(BaseModel):
    """Stands in for ``MahavishnuSettings``: declared groups, and extra top-level blocks kept."""

    model_config = ConfigDict(extra="allow")

    server_name: str = "Mahavishnu Global Orchestrator"
    llm: dict[str, Any] = {"model": "qwen2.5:7b", "ollama_base_url": "http://127.0.0.1:9"}


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No settings/ files and no oneiric_memory env vars: only the config handed over counts."""
    import os

    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("MAHAVISHNU_"):
            monkeypatch.delenv(name)
    yield tmp_path


def registry_load() -> tuple[dict[str, Any], type[Any]]:
    """Mahavishnu 0.14's discovery: entry point -> dict -> required fields -> allowlist -> import the class."""
    found = [ep for ep in entry_points(group="mahavishnu.adapters") if ep.name == "oneiric_memory"]
    assert len(found) == 1
    loaded = found[0].load()
    meta = loaded() if callable(loaded) else loaded
    assert isinstance(meta, dict)
    assert [name for name in REQUIRED if name not in meta] == []
    assert any(fnmatch(str(meta["adapter_id"]), pattern) for pattern in DEFAULT_ALLOWLIST)
    int(meta.get("priority", 0))
    dict(meta.get("metadata", {}))
    module_name, _, class_name = str(meta["factory_path"]).partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    assert isinstance(cls, type)
    return meta, cls


def test_entry_point_dict_contract() -> None:
    meta, cls = registry_load()
    assert meta["adapter_id"] == ADAPTER_ID == "mahavishnu.adapters.oneiric_memory"
    assert (meta["domain"], meta["category"]) == ("adapter", "memory")
    assert isinstance(meta["capabilities"], list) and {"remember", "search", "unified_search"} <= set(
        meta["capabilities"])
    assert cls is OneiricMemoryAdapter
    assert not fnmatch(ADAPTER_ID.replace("mahavishnu.", "other.", 1), DEFAULT_ALLOWLIST[0])  # the check bites
    adapter = cls(config=None)  # built without touching anything: no database, no threads
    assert adapter.name == "oneiric_memory" and adapter._memory is None
    assert adapter.capabilities.supports_memory and not adapter.capabilities.can_deploy_flows


def memory_block(pg_data_dir: Path, schema: str) -> dict[str, Any]:
    return {"postgres": {"embedded_data_dir": str(pg_data_dir), "db_schema": schema, "max_connections": 4},
            "embedder": {"provider": "hashing"}, "session_buddy": {"enabled": False},
            "coordinator": {"backfill_enabled": False}}


@pytest.mark.asyncio
async def test_lazy_adapter_serves_tasks_health_and_attach(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, isolated: Path) -> None:
    _meta, cls = registry_load()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    config = MahavishnuLikeSettings(oneiric_memory=memory_block(pg_data_dir, schema))  # type: ignore[call-arg]
    adapter = cls(config=config)
    assert adapter._memory is None  # the registry never calls initialize()
    try:
        empty = await adapter.execute({"op": "search", "query": "anything"})  # initializes lazily
        assert empty == {"status": "ok", "op": "search", "hits": []}
        memory = adapter._memory
        assert memory is not None and memory.store.schema == schema  # the config block was used
        # Mahavishnu's llm.ollama_base_url is followed while the installed Mahavishnu still has it (< 0.36)
        followed = follows_legacy_llm_keys(installed_mahavishnu_version())
        assert (memory.settings.embedder.url_for("ollama") == "http://127.0.0.1:9") is followed

        text = "Agent run finished.\n" + format_insight_block("Mahavishnu tasks reach the memory through execute.")
        stored = await adapter.execute({"op": "remember", "content": text, "memory_type": "agent",
                                        "project": "mv", "agent_id": "a1"})
        assert stored["status"] == "ok" and uuid.UUID(stored["id"])
        convo = await adapter.execute({"op": "store_agent_conversation", "agent_id": "a2", "role": "user",
                                       "content": "please summarise the deploy", "project": "mv"})
        chunks = await adapter.execute({"op": "store_rag_chunks", "chunks": ["chunk one about pools"]},
                                       repos=["repo-x"])
        assert convo["status"] == "ok" and chunks["status"] == "ok" and len(chunks["ids"]) == 1

        found = await adapter.execute({"op": "search", "query": "Mahavishnu execute", "mode": "hybrid",
                                       "filters": {"projects": ["mv"]}, "limit": 5})
        assert found["status"] == "ok" and found["hits"][0]["id"] == stored["id"]
        assert found["hits"][0]["source"] == "postgres" and found["hits"][0]["project"] == "mv"
        unified = await adapter.execute({"op": "unified_search", "query": "Mahavishnu execute", "limit": 5})
        assert unified["status"] == "ok" and unified["degraded"] is False
        assert unified["sources"]["session_buddy"]["status"] == "disabled"
        assert unified["sources"]["postgres"]["status"] == "ok" and unified["hits"][0]["id"] == stored["id"]
        via_rag = await adapter.execute({"op": "search", "query": "pools", "memory_types": ["rag"], "mode": "text"})
        assert [hit["id"] for hit in via_rag["hits"]] == chunks["ids"]
        (isolated / "repo").mkdir()
        (isolated / "repo" / "tool.py").write_text("def orchestrate_flows():\n    return 1\n", encoding="utf-8")
        ingested = await adapter.execute({"op": "ingest_repository", "path": str(isolated / "repo"),
                                          "options": {"suffixes": [".py"]}}, repos=["repo-y"])
        assert ingested["status"] == "ok" and ingested["ingestion"]["counts"]["chunks_added"] == 1
        bad_ingest = await adapter.execute({"op": "ingest_repository", "path": str(isolated / "repo"),
                                            "repo_id": "r", "options": {"colour": "red"}})
        assert bad_ingest["status"] == "error"

        health = await adapter.get_health()
        assert isinstance(health, dict) and isinstance(health["status"], str)
        assert health["status"] in ("healthy", "degraded", "unhealthy") and health["status"] != "unhealthy"
        components = health["metadata"]["components"]
        assert {"memory_store", "embedding", "insight_sink", "pipeline"} <= set(components)
        assert all(isinstance(part["status"], str) for part in components.values())
        as_task = await adapter.execute({"op": "health"})
        assert as_task["status"] == "ok" and as_task["health"]["status"] in ("healthy", "degraded")

        # Bad tasks answer with an error dict; they never raise into the orchestrator.
        assert (await adapter.execute({"op": "drop_everything"}))["status"] == "error"
        assert (await adapter.execute("search"))["status"] == "error"  # not a mapping
        for bad in ({"op": "search"}, {"op": "search", "query": "x", "colour": "red"},
                    {"op": "search", "query": "x", "mode": "fuzzy"}, {"op": "remember"},
                    {"op": "remember", "content": ""}, {"op": "forget"}, {"op": "forget", "ids": ["not-a-uuid"]},
                    {"op": "search", "query": "x", "filters": {"colour": "red"}},
                    {"op": "store_rag_chunks", "chunks": ["no repo given"]}):
            answer = await adapter.execute(bad)
            assert answer["status"] == "error" and answer["error"], bad
        assert (await adapter.execute({"op": "forget", "ids": [stored["id"]]})) == {
            "status": "ok", "op": "forget", "deleted": 1}
        assert (await adapter.execute({"op": "forget", "filters": {"projects": ["mv"]}}))["deleted"] == 1

        app = SimpleNamespace()
        assert adapter.attach(app) is adapter and app.adapters == {"oneiric_memory": adapter}
        other = SimpleNamespace(adapters={"prefect": object()}, config=config)
        attached = attach(other)
        assert set(other.adapters) == {"prefect", "oneiric_memory"} and attached.config is config
        assert attached._memory is None  # attach stays lazy too
    finally:
        if adapter._memory is not None:
            await drop_schema(adapter._memory.store)
        await adapter.cleanup()
    assert adapter._memory is None
    await adapter.cleanup()  # twice is fine


@pytest.mark.asyncio
async def test_unreachable_database_gives_unhealthy_dict_and_error_answers(
        isolated: Path, capfd: pytest.CaptureFixture[str]) -> None:
    secret = "hunter2-never-logged"
    block = {"postgres": {"host": "127.0.0.1", "port": 9, "password": secret, "connect_timeout_s": 2.0,
                          "retry_attempts": 1, "db_schema": "t_unreachable"},
             "embedder": {"provider": "hashing"}, "session_buddy": {"enabled": False}}
    adapter = OneiricMemoryAdapter(config={"oneiric_memory": block})  # a plain dict config works as well
    health = await adapter.get_health()
    assert health["status"] == "unhealthy" and "PostgreSQL" in health["message"]
    answer = await adapter.execute({"op": "search", "query": "x"})
    assert answer["status"] == "error" and answer["error_type"] == "StoreUnavailable"
    assert adapter._memory is None
    await adapter.cleanup()
    out, err = capfd.readouterr()
    assert secret not in out + err and secret not in str(health) and secret not in str(answer)

    # Oneiric logs a failed activation with exc_info, and structlog's default console renderer prints it as a
    # rich traceback with every frame's locals. Render the logged exception exactly so: no frame shows it.
    from oneiric.core.lifecycle import LifecycleError
    from rich.console import Console
    from rich.traceback import Traceback

    from oneiric_memory.coordinator import _Components
    from oneiric_memory.settings import load_settings

    components = _Components(load_settings(block), None)
    with pytest.raises(LifecycleError) as caught:
        await components.lifecycle.activate("adapter", "memory_store", "pgvector")
    logged = caught.value.__cause__  # what the lifecycle passes as exc_info (its traceback starts there)
    assert logged is not None
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(Traceback.from_exception(type(logged), logged, logged.__traceback__, show_locals=True))
    rendered = console.export_text()
    assert "StoreUnavailable" in rendered and secret not in rendered


# --- get_health() for Mahavishnu's dashboards: optional parts down -------------------------------------------


@pytest.mark.asyncio
async def test_optional_parts_down_keep_the_dashboard_status_healthy_unless_configured(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, isolated: Path) -> None:
    """Mahavishnu 0.14 and 0.36 count anything but "healthy" as unhealthy (0.36 raises a HIGH alert). With no
    embedding server the memory still stores and searches (``auto`` falls back to the lexical hashing embedder):
    status stays "healthy" by default, the degraded part is named beside it, and ``mahavishnu.degraded_status:
    degraded`` reports it instead."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    block = memory_block(pg_data_dir, schema)
    block["embedder"] = {"provider": "auto", "ollama_url": "http://127.0.0.1:9", "openai_url": "http://127.0.0.1:9/v1",
                         "local_download": False, "probe_timeout_s": 1.0}
    adapter = OneiricMemoryAdapter(config={"oneiric_memory": block})
    strict = OneiricMemoryAdapter(config={"oneiric_memory": {**block, "mahavishnu": {"degraded_status": "degraded"}}})
    try:
        health = await adapter.get_health()
        assert health["status"] == "healthy", health
        assert health["metadata"]["memory_status"] == "degraded"
        assert "embedding" in health["metadata"]["degraded_parts"] and "embedding" in health["message"]
        assert health["metadata"]["components"]["memory_store"]["status"] == "healthy"
        strict_health = await strict.get_health()
        assert strict_health["status"] == "degraded" and "embedding" in strict_health["metadata"]["degraded_parts"]
    finally:
        for one in (adapter, strict):
            if one._memory is not None:
                await drop_schema(one._memory.store)
            await one.cleanup()


# --- the real Mahavishnu 0.36 app (runs in the Python 3.14 environment: .ci/py314) -------------------------------

MAHAVISHNU_036 = is_mahavishnu_036_or_newer(installed_mahavishnu_version())


@pytest.mark.skipif(not MAHAVISHNU_036, reason="needs Mahavishnu 0.36 (Python 3.14 environment: .ci/py314); "
                                               "Python 3.13 has 0.14, tested above through its entry point")
def test_attach_to_the_real_mahavishnu_036_app(pg_server: EmbeddedConnectInfo, pg_data_dir: Path,
                                               tmp_path: Path) -> None:
    """Mahavishnu 0.36 loads its settings through Oneiric (XDG ~/.config/mahavishnu/local.yaml among them) and
    drops the ``oneiric_memory:`` block; ``attach(app)`` still finds it there, follows ``pools.session_buddy_url``
    and serves the app through ``app.adapters``. The app runs in a child process (tests/mahavishnu036_child.py):
    it installs process-wide logging and OpenTelemetry state that would leak into later tests."""
    import json
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "repos.yaml").write_text("repos: []\n", encoding="utf-8")  # Mahavishnu requires one
    schema = f"t_{uuid.uuid4().hex[:12]}"
    block = memory_block(pg_data_dir, schema)
    block["search"] = {"default_limit": 3}
    local = home / ".config" / "mahavishnu" / "local.yaml"
    local.parent.mkdir(parents=True)
    # Mahavishnu's own OpenTelemetry export (to localhost:4317) is switched off.
    local.write_text(yaml.safe_dump({"pools": {"session_buddy_url": "http://127.0.0.1:9/mcp"},
                                     "observability": {"metrics_enabled": False, "tracing_enabled": False},
                                     "oneiric_memory": block}), encoding="utf-8")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("MAHAVISHNU_", "ONEIRIC_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    child = Path(__file__).with_name("mahavishnu036_child.py")
    # -P: tests/ must not shadow installed packages (tests/mcp would hide the MCP SDK)
    result = subprocess.run([sys.executable, "-P", str(child), schema], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["session_buddy_url"] == "http://127.0.0.1:9/mcp"  # Mahavishnu's loader read the XDG file
    assert facts["block_kept_by_mahavishnu"] is False  # and dropped our block: only we read it
    assert "oneiric_memory" not in facts["adapters_before"]  # 0.36 discovers nothing: attach is the way in
    assert facts["attached"] is True and facts["settings_root"] == facts["mahavishnu_anchor"]
    assert facts["stored"] is True and facts["found_first"] is True
    assert (facts["schema"], facts["default_limit"]) == (schema, 3)  # the block in ~/.config/mahavishnu/local.yaml
    assert facts["mcp_url"] == "http://127.0.0.1:9/mcp"  # followed from Mahavishnu's pools.session_buddy_url
    assert facts["health"]["status"] == "healthy", facts["health"]  # the check 0.36's MonitoringService applies
