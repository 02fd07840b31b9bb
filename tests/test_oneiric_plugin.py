"""Oneiric integration: the ``oneiric.adapters`` entry point, activation through ``LifecycleManager`` (the way an
Oneiric app or CLI does it), health probes, and ``adapters/manifest.yaml`` validated by Oneiric's own model.

The factories take no arguments and load their settings themselves, so the tests steer them the way a user
would: env vars ``MAHAVISHNU_ONEIRIC_MEMORY__...`` and a working directory without ``settings/`` files.
"""

from __future__ import annotations

import importlib
import inspect
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from oneiric.core.config import PluginsConfig
from oneiric.core.lifecycle import LifecycleError, LifecycleManager, LifecycleSafetyOptions, resolve_factory
from oneiric.core.resolution import CandidateSource, Resolver
from oneiric.plugins import register_entrypoint_plugins
from oneiric.remote.models import RemoteManifest

from oneiric_memory.adapters.catalog import ADAPTERS
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.plugin import ADAPTER_SPECS, oneiric_adapters
from tests.coordinator_fixtures import drop_schema

MANIFEST = Path(__file__).resolve().parents[1] / "adapters" / "manifest.yaml"
PAIRS = {(spec.category, spec.provider) for spec in ADAPTER_SPECS}


def our_errors(report: Any) -> list[Any]:
    """Registration errors of this package's entry point. Other installed packages may report their own: Mahavishnu
    0.36 (the Python 3.14 environment) ships an ``oneiric.adapters`` entry point ``worker`` that imports a
    ``monitoring`` package its wheel does not contain."""
    return [error for error in report.errors if error.entry_point == "oneiric_memory"]


def test_entry_point_registers_all_adapters_without_errors() -> None:
    resolver = Resolver()
    report = register_entrypoint_plugins(resolver, PluginsConfig(auto_load=True))
    assert our_errors(report) == []
    ours = [entry for entry in report.entries if entry.entry_point == "oneiric_memory"]
    assert len(ours) == 1 and ours[0].group == "oneiric.adapters" and ours[0].registered_candidates == 7
    assert {("memory_store", "pgvector"), ("embedding", "ollama"), ("embedding", "openai"), ("embedding", "local"),
            ("embedding", "hashing"), ("insight_sink", "session_buddy"), ("memory", "unified")} == PAIRS
    for category, provider in PAIRS:
        candidate = resolver.resolve("adapter", category, provider=provider)
        assert candidate is not None, (category, provider)
        assert callable(candidate.factory) and inspect.iscoroutinefunction(candidate.factory)
        assert candidate.source == CandidateSource.ENTRY_POINT
        assert candidate.metadata.get("owner") == "oneiric-memory"
    # Without a selection, Ollama (600) beats the offline hashing embedder (100) (and OpenAI's built-in, 500).
    winner = resolver.resolve("adapter", "embedding")
    assert winner is not None and winner.provider == "ollama"


def test_the_plugin_registers_the_catalog_the_coordinator_uses_plus_the_coordinator() -> None:
    """One list of candidates (adapters.catalog): the entry point adds only the coordinator itself."""
    assert ADAPTER_SPECS[:-1] == ADAPTERS
    assert [(spec.category, spec.provider) for spec in ADAPTER_SPECS[-1:]] == [("memory", "unified")]
    assert {(spec.category, spec.provider) for spec in ADAPTERS if spec.requires_secrets} == {
        ("memory_store", "pgvector"), ("embedding", "openai")}


def test_entry_point_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import oneiric.adapters.metadata as metadata_module

    real = metadata_module.AdapterMetadata

    def broken(*args: object, **kwargs: object) -> object:
        # Only our entry point's metadata fails: other installed plugins (Mahavishnu 0.36 builds AdapterMetadata
        # in its own entry points) must load as usual, or this test breaks Oneiric's plugin state for the
        # tests that run after it in the same process (seen under pytest-xdist on 3.14).
        if kwargs.get("owner") == "oneiric-memory":
            raise RuntimeError("simulated failure inside the plugin")
        return real(*args, **kwargs)

    monkeypatch.setattr(metadata_module, "AdapterMetadata", broken)
    assert oneiric_adapters() == []  # a RuntimeError would abort plugin loading for the whole app
    report = register_entrypoint_plugins(Resolver(), PluginsConfig(auto_load=True))
    ours = [entry for entry in report.entries if entry.entry_point == "oneiric_memory"]
    # the app keeps starting; the empty payload is only reported (0.33 records it as an error, 0.17 does not)
    assert sum(entry.registered_candidates for entry in ours) == 0
    assert all("simulated failure" not in error.reason for error in report.errors)


@pytest.fixture
def env_settings(pg_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The factories' ``load_settings()`` finds the session's server and a fresh schema through env vars."""
    monkeypatch.chdir(tmp_path)  # no settings/ files are read
    for name in list(os.environ):
        if name.startswith("MAHAVISHNU_"):
            monkeypatch.delenv(name)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    prefix = "MAHAVISHNU_ONEIRIC_MEMORY__"
    monkeypatch.setenv(f"{prefix}POSTGRES__EMBEDDED_DATA_DIR", str(pg_data_dir))
    monkeypatch.setenv(f"{prefix}POSTGRES__DB_SCHEMA", schema)
    monkeypatch.setenv(f"{prefix}POSTGRES__MAX_CONNECTIONS", "4")
    monkeypatch.setenv(f"{prefix}EMBEDDER__PROVIDER", "hashing")
    monkeypatch.setenv(f"{prefix}SESSION_BUDDY__ENABLED", "false")
    monkeypatch.setenv(f"{prefix}COORDINATOR__BACKFILL_ENABLED", "false")
    yield schema


def lifecycle_with_plugins() -> LifecycleManager:
    resolver = Resolver()
    assert our_errors(register_entrypoint_plugins(resolver, PluginsConfig(auto_load=True))) == []
    return LifecycleManager(resolver, safety=LifecycleSafetyOptions(activation_timeout=120.0, health_timeout=60.0))


@pytest.mark.asyncio
async def test_lifecycle_activates_the_store_and_probes_it(pg_server: EmbeddedConnectInfo, env_settings: str) -> None:
    lifecycle = lifecycle_with_plugins()
    store = await lifecycle.activate("adapter", "memory_store")
    try:
        assert type(store).__name__ == "PgvectorMemoryStore" and store.schema == env_settings
        assert await lifecycle.probe_instance_health("adapter", "memory_store") is True
        status = lifecycle.get_status("adapter", "memory_store")
        assert status is not None and status.state == "ready" and status.current_provider == "pgvector"
        assert (await store.component_health()).metadata["schema"] == env_settings
    finally:
        await drop_schema(store)
        await store.cleanup()
    assert await store.health() is False  # closed: the probe now fails (a literal False)


@pytest.mark.asyncio
async def test_lifecycle_activates_the_hashing_embedder(env_settings: str) -> None:
    lifecycle = lifecycle_with_plugins()
    embedder = await lifecycle.activate("adapter", "embedding", "hashing")
    try:
        assert embedder.model_id.startswith("hashing:")
        assert await lifecycle.probe_instance_health("adapter", "embedding") is True
        assert len(await embedder.embed_query("probe")) == 768
    finally:
        await embedder.cleanup()


@pytest.mark.asyncio
async def test_lifecycle_activates_the_openai_and_local_embedders(env_settings: str, monkeypatch: pytest.MonkeyPatch,
                                                                  ) -> None:
    from oneiric_memory.testing.fake_ollama import FakeOllama
    from oneiric_memory.testing.models import find_test_model

    lifecycle = lifecycle_with_plugins()
    with FakeOllama(dimension=768) as server:
        monkeypatch.setenv("MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__BASE_URL", server.base_url)  # /v1 is added
        embedder = await lifecycle.activate("adapter", "embedding", "openai")
        try:
            assert embedder.model_id == "openai:nomic-embed-text" and embedder.base_url == server.openai_url
            assert await lifecycle.probe_instance_health("adapter", "embedding") is True
            assert len(await embedder.embed_query("through Oneiric")) == 768
        finally:
            await embedder.cleanup()
    folder, why = find_test_model(Path(__file__).resolve().parents[1])
    if folder is None:
        pytest.skip(f"the real test model is not available: {why}")
    monkeypatch.setenv("MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__MODEL_PATH", str(folder))
    monkeypatch.setenv("MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__VECTOR_DIMENSION", "384")
    local = await lifecycle.swap("adapter", "embedding", "local")
    try:
        assert local.model_id.startswith("local:") and local.dimension == 384
        assert await lifecycle.probe_instance_health("adapter", "embedding") is True
    finally:
        await local.cleanup()


@pytest.mark.asyncio
async def test_lifecycle_activates_unified_memory(pg_server: EmbeddedConnectInfo, env_settings: str) -> None:
    lifecycle = lifecycle_with_plugins()
    memory = await lifecycle.activate("adapter", "memory")
    try:
        assert type(memory).__name__ == "UnifiedMemory" and memory.store.schema == env_settings
        assert memory.settings.session_buddy.enabled is False and memory.embedder.model_id.startswith("hashing:")
        assert await lifecycle.probe_instance_health("adapter", "memory") is True
        assert await memory.is_healthy() is True
        memory_id = await memory.remember("activated through Oneiric", project="oneiric")
        assert (await memory.search("activated through Oneiric", limit=1))[0].id == memory_id
        health = await memory.health()
        assert {"memory_store", "embedding", "insight_sink", "pipeline"} <= {c.name for c in health.components}
    finally:
        await drop_schema(memory.store)
        await memory.cleanup()


def test_manifest_matches_the_entry_point_and_its_factories_import(monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = RemoteManifest.model_validate(yaml.safe_load(MANIFEST.read_text(encoding="utf-8")))
    entries = {(entry.key, entry.provider): entry for entry in manifest.entries}
    assert set(entries) == PAIRS and len(manifest.entries) == len(PAIRS)
    priorities = {(spec.category, spec.provider): spec.priority for spec in ADAPTER_SPECS}
    for pair, entry in entries.items():
        assert entry.domain == "adapter" and entry.priority == priorities[pair]
        module_name, _, attr = entry.factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        assert callable(factory) and inspect.iscoroutinefunction(factory), entry.factory
        if entry.settings_model:
            settings_module, _, settings_class = entry.settings_model.partition(":")
            assert isinstance(getattr(importlib.import_module(settings_module), settings_class), type)
    # Oneiric refuses these strings by default and accepts them once the app allows the prefix, as documented.
    factory_string = entries[("memory_store", "pgvector")].factory
    monkeypatch.delenv("ONEIRIC_FACTORY_ALLOWLIST", raising=False)
    with pytest.raises(LifecycleError):
        resolve_factory(factory_string)
    monkeypatch.setenv("ONEIRIC_FACTORY_ALLOWLIST", "oneiric.,oneiric_memory.")
    assert resolve_factory(factory_string).__name__ == "pgvector_store_factory"
