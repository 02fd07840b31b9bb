"""OpenAIEmbedder against a real HTTP server on 127.0.0.1 that speaks the OpenAI embeddings API.

llama-server, vLLM, TEI and OpenAI cannot run here; the server is FakeOllama's ``/v1`` (Ollama serves the same
API), real sockets, deterministic vectors and scripted faults: 429, 500, a stall, a wrong dimension and a
malformed body. The shared retry/cache/concurrency machinery is covered in depth by test_ollama.py; this file
proves the OpenAI dialect and its faults.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from mcp_common.health import HealthStatus
from oneiric.adapters.embedding.embedding_interface import EmbeddingBase

from oneiric_memory.adapters.embedders.openai import OpenAIEmbedder, openai_embedder_factory
from oneiric_memory.errors import EmbedderError, EmbedderUnavailable
from oneiric_memory.protocols import Embedder
from oneiric_memory.settings import MemorySettings, load_settings
from oneiric_memory.testing.fake_ollama import FakeOllama

FAST = {"retry_attempts": 3, "retry_base_delay_s": 0.005, "retry_max_delay_s": 0.05, "request_timeout_s": 5.0,
        "connect_timeout_s": 1.0, "total_timeout_s": 10.0}
SettingsFactory = Callable[..., MemorySettings]
PROVIDER = "openai"  # for the make_settings fixture (conftest.py)
PATH = "/v1/embeddings"


@pytest.mark.asyncio
@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_base_url_with_or_without_v1(fake: FakeOllama, make_settings: SettingsFactory, suffix: str) -> None:
    async with OpenAIEmbedder(make_settings(fake.base_url + suffix)) as embedder:
        assert embedder.base_url == fake.openai_url
        assert isinstance(embedder, Embedder) and isinstance(embedder, EmbeddingBase)
        assert embedder.model_id == "openai:nomic-embed-text" and embedder.dimension == 768
        vectors = await embedder.embed_documents(["alpha", "beta"])
    assert np.allclose(vectors[0], fake.vector_for("search_document: alpha"), atol=1e-7)
    assert all(r.path == PATH for r in fake.openai_requests)


@pytest.mark.asyncio
async def test_batches_keep_order_and_nomic_prefixes_follow_the_model_name(fake: FakeOllama,
                                                                          make_settings: SettingsFactory) -> None:
    texts = [f"text number {i}" for i in range(7)]
    async with OpenAIEmbedder(make_settings(fake.base_url, batch_size=3)) as embedder:
        fake.reset()
        vectors = await embedder.embed_documents(texts)
        query = await embedder.embed_query("which text")
    # Batches go out concurrently, so they may arrive in any order; the vectors must still come back in order.
    bodies = sorted((r.body for r in fake.openai_requests[:3]), key=lambda b: b["input"][0])
    assert [b["input"] for b in bodies] == [[f"search_document: {t}" for t in texts[i:i + 3]] for i in (0, 3, 6)]
    assert all(b["encoding_format"] == "float" and "dimensions" not in b for b in bodies)
    assert fake.openai_requests[3].body["input"] == ["search_query: which text"]
    for text, vector in zip(texts, vectors, strict=True):
        assert np.allclose(vector, fake.vector_for("search_document: " + text), atol=1e-7)
    assert np.allclose(query, fake.vector_for("search_query: which text"), atol=1e-7)


@pytest.mark.asyncio
async def test_a_gguf_style_model_name_still_gets_nomic_prefixes(make_settings: SettingsFactory) -> None:
    with FakeOllama(models=("nomic-embed-text-v1.5.Q8_0.gguf",)) as server:
        async with OpenAIEmbedder(make_settings(server.base_url, model="nomic-embed-text-v1.5.Q8_0.gguf")) as e:
            server.reset()
            await e.embed_query("q")
        assert server.openai_requests[0].body["input"] == ["search_query: q"]


@pytest.mark.asyncio
async def test_other_models_get_raw_text(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OpenAIEmbedder(make_settings(fake.base_url, model="all-minilm")) as embedder:
        fake.reset()
        await embedder.embed_documents(["raw"])
    assert fake.openai_requests[0].body["input"] == ["raw"]


@pytest.mark.asyncio
async def test_dimensions_are_sent_and_part_of_the_model_id(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OpenAIEmbedder(make_settings(fake.base_url, dimension=256, dimensions=256)) as embedder:
        assert embedder.model_id == "openai:nomic-embed-text@256"
        assert len(await embedder.embed_query("short")) == 256
    assert all(r.body["dimensions"] == 256 for r in fake.openai_requests)


@pytest.mark.asyncio
async def test_a_server_that_refuses_dimensions_says_to_remove_the_setting(make_settings: SettingsFactory) -> None:
    with FakeOllama(supports_dimensions=False) as server:
        embedder = OpenAIEmbedder(make_settings(server.base_url, dimension=256, dimensions=256))
        with pytest.raises(EmbedderError, match=r"remove oneiric_memory\.embedder\.dimensions"):
            await embedder.init()
        await embedder.cleanup()
        assert len(server.openai_requests) == 1  # a 400 is not retried


@pytest.mark.asyncio
async def test_api_key_is_sent_as_bearer_and_a_refused_key_is_a_clear_error(make_settings: SettingsFactory,
                                                                           ) -> None:
    with FakeOllama(api_key="sk-test-123") as server:
        async with OpenAIEmbedder(make_settings(server.base_url, api_key="sk-test-123")) as embedder:
            assert len(await embedder.embed_query("authorised")) == 768
            assert await embedder.health()
            assert "sk-test-123" not in repr(embedder.memory_settings) and "sk-test" not in str(embedder._metadata())
        assert server.openai_requests[0].headers["Authorization"] == "Bearer sk-test-123"
        server.reset()
        wrong = OpenAIEmbedder(make_settings(server.base_url, api_key="wrong"))
        with pytest.raises(EmbedderError, match=r"embedder\.api_key") as caught:
            await wrong.init()
        assert not isinstance(caught.value, EmbedderUnavailable) and "wrong" not in caught.value.message
        assert not await wrong.health()
        await wrong.cleanup()
        assert len(server.openai_requests) == 1  # 401 is never retried


@pytest.mark.asyncio
async def test_a_500_is_retried_then_succeeds(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OpenAIEmbedder(make_settings(fake.base_url)) as embedder:
        fake.reset()
        fake.inject(500, path=PATH)
        assert len(await embedder.embed_query("after a 500")) == 768
    assert len(fake.openai_requests) == 2


@pytest.mark.asyncio
async def test_a_429_honours_retry_after_then_gives_up_as_unavailable(fake: FakeOllama,
                                                                      make_settings: SettingsFactory) -> None:
    async with OpenAIEmbedder(make_settings(fake.base_url, retry_max_delay_s=0.2)) as embedder:
        fake.reset()
        fake.inject(429, retry_after="0.1", path=PATH)
        assert len(await embedder.embed_query("rate limited once")) == 768
        times = [r for r in fake.openai_requests]
        assert len(times) == 2
        fake.reset()
        fake.inject(429, retry_after="0", path=PATH, times=5)
        with pytest.raises(EmbedderUnavailable, match="refusing work") as caught:
            await embedder.embed_query("rate limited for good")
        assert caught.value.details["attempts"] == 3 and len(fake.openai_requests) == 3


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [400, 404, 422])
async def test_other_4xx_are_errors_never_retried(fake: FakeOllama, make_settings: SettingsFactory,
                                                 status: int) -> None:
    async with OpenAIEmbedder(make_settings(fake.base_url)) as embedder:
        fake.reset()
        fake.inject(status, path=PATH)
        with pytest.raises(EmbedderError) as caught:
            await embedder.embed_query("bad request")
        assert not isinstance(caught.value, EmbedderUnavailable)
        assert caught.value.details["status"] == status
    assert len(fake.openai_requests) == 1


@pytest.mark.asyncio
async def test_an_unknown_model_names_the_setting(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    embedder = OpenAIEmbedder(make_settings(fake.base_url, model="no-such-model"))
    with pytest.raises(EmbedderError, match=r"not served .* oneiric_memory\.embedder\.model"):
        await embedder.init()
    await embedder.cleanup()


@pytest.mark.asyncio
async def test_a_stall_hits_the_request_timeout_then_a_retry_succeeds(fake: FakeOllama,
                                                                      make_settings: SettingsFactory) -> None:
    async with OpenAIEmbedder(make_settings(fake.base_url, request_timeout_s=0.3)) as embedder:
        fake.reset()
        fake.inject(delay_s=2.0, path=PATH)
        assert len(await embedder.embed_query("after a stall")) == 768
        fake.inject(delay_s=2.0, path=PATH, times=3)
        with pytest.raises(EmbedderUnavailable, match=r"did not answer within embedder\.request_timeout_s"):
            await embedder.embed_query("stalled for good")


@pytest.mark.asyncio
async def test_a_wrong_dimension_is_refused_at_start_and_while_running(fake: FakeOllama,
                                                                       make_settings: SettingsFactory) -> None:
    embedder = OpenAIEmbedder(make_settings(fake.base_url, dimension=384))
    with pytest.raises(EmbedderError, match=r"answers 768 dims, the store expects 384.*vector_dimension"):
        await embedder.init()
    await embedder.cleanup()
    async with OpenAIEmbedder(make_settings(fake.base_url)) as embedder:
        fake.inject(path=PATH, dimension=1024)
        with pytest.raises(EmbedderError, match="answered 1024 dims, but 768 at start-up"):
            await embedder.embed_documents(["swapped model"])


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", [
    {"malformed": True},
    {"body": {"object": "list", "data": "nope"}},
    {"body": {"embeddings": [[0.1, 0.2]]}},
    {"body": {"object": "list", "data": [{"index": 0, "embedding": ["x", "y"]}]}},
])
async def test_malformed_bodies_are_errors_not_retries(fake: FakeOllama, make_settings: SettingsFactory,
                                                       fault: dict[str, Any]) -> None:
    async with OpenAIEmbedder(make_settings(fake.base_url)) as embedder:
        fake.reset()
        fake.inject(path=PATH, **fault)
        with pytest.raises(EmbedderError) as caught:
            await embedder.embed_documents(["broken answer"])
        assert not isinstance(caught.value, EmbedderUnavailable)
    assert len(fake.openai_requests) == 1


@pytest.mark.asyncio
async def test_rows_are_placed_by_their_index(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OpenAIEmbedder(make_settings(fake.base_url, model="all-minilm")) as embedder:
        a, b = fake.vector_for("a"), fake.vector_for("b")
        fake.inject(path=PATH, body={"object": "list", "data": [{"index": 1, "embedding": b},
                                                                {"index": 0, "embedding": a}]})
        vectors = await embedder.embed_documents(["a", "b"])
    assert np.allclose(vectors[0], a) and np.allclose(vectors[1], b)


@pytest.mark.asyncio
async def test_not_running_is_unavailable_at_once_and_says_how_to_start_one(fake: FakeOllama,
                                                                            make_settings: SettingsFactory) -> None:
    settings = make_settings(fake.base_url)
    fake.stop()
    embedder = OpenAIEmbedder(settings)
    with pytest.raises(EmbedderUnavailable) as caught:
        await embedder.init()
    await embedder.cleanup()
    assert f"no OpenAI-compatible server answers at {fake.openai_url}" in caught.value.message
    assert "llama-server" in caught.value.message and "embedder.base_url" in caught.value.message


@pytest.mark.asyncio
async def test_query_cache_and_health(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OpenAIEmbedder(make_settings(fake.base_url)) as embedder:
        fake.reset()
        first = await embedder.embed_query("repeat me")
        assert await embedder.embed_query("repeat me") == first
        assert (embedder.cache_hits, embedder.cache_misses) == (1, 1) and len(fake.openai_requests) == 1
        health = await embedder.component_health()
        assert health.status == HealthStatus.HEALTHY
        assert health.metadata["provider"] == "openai" and health.metadata["base_url"] == fake.openai_url
        assert [r.path for r in fake.requests][-1] == "/v1/models"  # health never embeds
        fake.stop()
        assert await embedder.health() is False
        down = await embedder.component_health()
        assert down.status == HealthStatus.UNHEALTHY and "no OpenAI-compatible server answers" in (down.message or "")


@pytest.mark.asyncio
async def test_the_factory_loads_settings_from_env_and_defaults_follow_llama_server(
        fake: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    defaults = load_settings(root=tmp_path, environ={})
    assert defaults.embedder.url_for("openai") == "http://localhost:8080/v1"
    assert defaults.embedder.model == "nomic-embed-text" and defaults.embedder.api_key is None
    assert load_settings(root=tmp_path, environ={"MAHAVISHNU__LLAMA_SERVER_URL": "http://gpu:8080/v1"}
                         ).embedder.url_for("openai") == "http://gpu:8080/v1"
    monkeypatch.setenv("MAHAVISHNU__LLAMA_SERVER_URL", fake.base_url)  # without /v1: handled
    monkeypatch.setenv("MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__PROVIDER", "openai")
    embedder = await openai_embedder_factory()
    try:
        assert embedder.base_url == fake.openai_url and embedder.initialized
    finally:
        await embedder.cleanup()


@pytest.mark.asyncio
async def test_logs_never_carry_the_api_key_or_texts(make_settings: SettingsFactory) -> None:
    with FakeOllama(api_key="sk-secret-999") as server:
        async with OpenAIEmbedder(make_settings(server.base_url, api_key="sk-secret-999")) as embedder:
            server.inject(500, path=PATH)
            with structlog.testing.capture_logs() as logs:
                await embedder.embed_documents(["private text about salaries"])
    assert any(entry.get("event") == "embedder-retry" for entry in logs)
    assert "sk-secret-999" not in repr(logs) and "salaries" not in repr(logs)
