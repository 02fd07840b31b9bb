"""``embedder.provider: auto`` through every step of its chain (ollama → openai → local → hashing), each step with
a real server or model: FakeOllama for Ollama's API and the OpenAI API, the real bge-small ONNX model for local;
and remember + search end to end through the OpenAI-compatible and local embedders on the embedded PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp_common.health import HealthStatus

from oneiric_memory.adapters.embedders.selection import AUTO_CHAIN, describe_embedder, select_embedder
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import EmbedderUnavailable, SchemaMismatch
from oneiric_memory.settings import MemorySettings, load_settings
from oneiric_memory.testing.fake_ollama import FakeOllama
from oneiric_memory.testing.models import find_test_model
from tests.support import make_settings

ROOT = Path(__file__).resolve().parents[3]
CLOSED = "http://127.0.0.1:9"  # nothing listens on the discard port here
FAST = {"retry_attempts": 2, "retry_base_delay_s": 0.01, "retry_max_delay_s": 0.05, "connect_timeout_s": 1.0,
        "total_timeout_s": 10.0, "probe_timeout_s": 1.0}


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(dimension=384, models=("nomic-embed-text",)) as server:
        yield server


@pytest.fixture(scope="module")
def bge_folder() -> Path:
    folder, why = find_test_model(ROOT)
    if folder is None:
        pytest.skip(f"the real test model is not available: {why}")
    return folder


def auto_settings(tmp_path: Path, **embedder: Any) -> MemorySettings:
    """auto with a private cache (no downloaded model) and a 384-d store, nothing read from files or env."""
    return load_settings({"embedder": {"provider": "auto", **FAST, **embedder},
                          "postgres": {"vector_dimension": 384}, "cache_dir": str(tmp_path / "cache")},
                         root=tmp_path, environ={})


def test_the_chain_is_ollama_openai_local_hashing() -> None:
    assert AUTO_CHAIN == ("ollama", "openai", "local", "hashing")


@pytest.mark.asyncio
async def test_step_1_ollama_when_it_answers(fake: FakeOllama, tmp_path: Path) -> None:
    selection = await select_embedder(auto_settings(tmp_path, ollama_url=fake.base_url, openai_url=CLOSED))
    assert selection.embedder is not None
    await selection.embedder.cleanup()
    assert selection.provider == "ollama" and selection.skipped == [] and not selection.fell_back
    assert selection.model_id == "ollama:nomic-embed-text" and "using Ollama model" in selection.note


@pytest.mark.asyncio
async def test_step_2_openai_when_ollama_is_missing(fake: FakeOllama, tmp_path: Path) -> None:
    selection = await select_embedder(auto_settings(tmp_path, ollama_url=CLOSED, openai_url=fake.openai_url))
    assert selection.embedder is not None
    await selection.embedder.cleanup()
    assert selection.provider == "openai" and selection.model_id == "openai:nomic-embed-text"
    assert [s.provider for s in selection.skipped] == ["ollama"]
    assert f"Ollama is not reachable at {CLOSED}" in selection.skipped[0].reason
    assert "ollama skipped: Ollama is not reachable" in selection.note and "OpenAI-compatible" in selection.note
    assert fake.openai_requests and not fake.embed_requests  # Ollama's API was never called


@pytest.mark.asyncio
async def test_step_3_local_when_no_server_answers(bge_folder: Path, tmp_path: Path) -> None:
    selection = await select_embedder(auto_settings(tmp_path, ollama_url=CLOSED, openai_url=CLOSED,
                                                    model_path=str(bge_folder)))
    assert selection.embedder is not None
    await selection.embedder.cleanup()
    assert selection.provider == "local" and selection.model_id == f"local:{bge_folder.name}"
    assert [s.provider for s in selection.skipped] == ["ollama", "openai"]
    assert "no OpenAI-compatible server" in selection.skipped[1].reason


@pytest.mark.asyncio
async def test_step_4_hashing_when_nothing_else_is_there_says_why_for_each(tmp_path: Path) -> None:
    selection = await select_embedder(auto_settings(tmp_path, ollama_url=CLOSED, openai_url=CLOSED))
    assert selection.provider == "hashing" and selection.fell_back and selection.lexical_only
    assert [s.provider for s in selection.skipped] == ["ollama", "openai", "local"]
    assert "not downloaded yet" in selection.skipped[2].reason  # auto never starts a download
    assert selection.note.endswith("fell back to the hashing embedder (lexical only)")
    report = selection.as_dict()
    assert report["provider"] == "hashing" and len(report["skipped"]) == 3  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_wrong_base_url_under_auto_skips_both_servers(fake: FakeOllama, tmp_path: Path) -> None:
    # base_url replaces both servers' URLs: a wrong one is visible in the skip reasons
    selection = await describe_embedder(auto_settings(tmp_path, base_url=CLOSED, ollama_url=fake.base_url,
                                                      openai_url=fake.openai_url))
    assert selection.embedder is None  # describe releases what it built
    assert selection.provider == "hashing"
    assert all(CLOSED in s.reason for s in selection.skipped[:2])


@pytest.mark.asyncio
async def test_an_explicit_provider_never_falls_back(tmp_path: Path) -> None:
    with pytest.raises(EmbedderUnavailable, match="no OpenAI-compatible server answers"):
        await select_embedder(load_settings({"embedder": {"provider": "openai", "base_url": CLOSED, **FAST}},
                                            root=tmp_path, environ={}))


# --- end to end: remember + search on the embedded PostgreSQL ------------------------------------------


@pytest.mark.asyncio
async def test_remember_and_search_through_the_openai_embedder(pg_server: EmbeddedConnectInfo, pg_data_dir: Path,
                                                               fake: FakeOllama) -> None:
    settings = make_settings(pg_data_dir, embedder={"provider": "openai", "base_url": fake.openai_url, **FAST},
                             postgres={"vector_dimension": 384})
    async with UnifiedMemory.open(settings, background=False) as memory:
        stored = await memory.remember("pgvector HNSW indexes need ef_search at least LIMIT", project="e2e")
        await memory.remember("Session-Buddy keeps insights in DuckDB", project="e2e")
        assert await memory.store.count_pending() == 0
        hits = await memory.search("HNSW ef_search LIMIT", mode="vector", limit=1)
        assert hits[0].id == stored and memory.store.embedding_model == "openai:nomic-embed-text"
        health = {part.name: part for part in (await memory.health()).components}
        assert health["embedding"].status == HealthStatus.HEALTHY
        assert health["embedding"].metadata["selection"]["provider"] == "openai"
    assert any(r.body["input"][0].startswith("search_query: ") for r in fake.openai_requests)


@pytest.mark.asyncio
async def test_remember_and_search_through_the_local_embedder_and_the_binding_refuses_another_model(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, bge_folder: Path, fake: FakeOllama) -> None:
    schema = "t_local_e2e"
    local = make_settings(pg_data_dir, schema, embedder={"provider": "local", "model_path": str(bge_folder)},
                          postgres={"vector_dimension": 384})
    async with UnifiedMemory.open(local, background=False) as memory:
        cat = await memory.remember("The cat slept on the warm windowsill all afternoon.", project="e2e")
        await memory.remember("Quarterly revenue grew by eight percent.", project="e2e")
        hits = await memory.search("where did the kitten nap", mode="vector", limit=1)
        assert hits[0].id == cat  # no shared content word: the local model's semantics found it
        assert memory.store.embedding_model == f"local:{bge_folder.name}"
    # The same store opened with another model (same dimension) refuses writes and vector search, naming the fix.
    other = make_settings(pg_data_dir, schema, embedder={"provider": "openai", "base_url": fake.openai_url, **FAST},
                          postgres={"vector_dimension": 384})
    async with UnifiedMemory.open(other, background=False) as memory:
        count = await memory.store.count()
        with pytest.raises(SchemaMismatch, match="db reembed") as caught:
            await memory.remember("must not get an openai vector in a local store", project="e2e")
        assert "local:" in str(caught.value) and "openai:" in str(caught.value)
        with pytest.raises(SchemaMismatch, match="db reembed"):
            await memory.search("kitten", mode="vector")
        assert await memory.store.count() == count


@pytest.mark.asyncio
async def test_auto_falling_back_to_hashing_is_visible_in_health(pg_server: EmbeddedConnectInfo,
                                                                 pg_data_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(pg_data_dir, embedder={"provider": "auto", "base_url": CLOSED, **FAST},
                             cache_dir=str(tmp_path / "cache"))
    async with UnifiedMemory.open(settings, background=False) as memory:
        response = await memory.health()
        embedding = {part.name: part for part in response.components}["embedding"]
        assert embedding.status == HealthStatus.DEGRADED
        assert f"Ollama is not reachable at {CLOSED}" in (embedding.message or "")
        assert "fell back to the hashing embedder" in (embedding.message or "")
        skipped = embedding.metadata["selection"]["skipped"]
        assert [s["provider"] for s in skipped] == ["ollama", "openai", "local"]
        assert "fell back" in response.metadata["embedder"]
