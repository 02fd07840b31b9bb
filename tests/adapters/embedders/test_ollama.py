"""OllamaEmbedder against a real HTTP server on 127.0.0.1 that speaks Ollama's API (FakeOllama).

Ollama itself cannot be installed here, so the server is a loopback fake with deterministic vectors and
scripted faults; everything between the embedder and the socket (httpx, connection reuse, timeouts, retries)
is the real thing. Retry delays are shrunk through settings so the file stays fast.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from mcp_common.health import HealthStatus
from oneiric.adapters.embedding.embedding_interface import EmbeddingBase, EmbeddingBatch
from oneiric.core.lifecycle import LifecycleError, LifecycleManager, LifecycleSafetyOptions
from oneiric.core.resolution import Candidate, Resolver
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from oneiric_memory import observability
from oneiric_memory.adapters.embedders import http_embedder as http_module
from oneiric_memory.adapters.embedders.hashing import HashingEmbedder
from oneiric_memory.adapters.embedders.ollama import OllamaEmbedder, ollama_embedder_factory
from oneiric_memory.adapters.embedders.selection import select_embedder
from oneiric_memory.errors import EmbedderError, EmbedderUnavailable, InvalidInput
from oneiric_memory.protocols import Embedder
from oneiric_memory.settings import MemorySettings, load_settings
from oneiric_memory.testing.fake_ollama import FakeOllama

FAST = {
    "retry_attempts": 4,
    "retry_base_delay_s": 0.005,
    "retry_max_delay_s": 0.02,
    "request_timeout_s": 5.0,
    "connect_timeout_s": 1.0,
    "total_timeout_s": 10.0,
}
DOC = "search_document: "
QUERY = "search_query: "

SettingsFactory = Callable[..., MemorySettings]
PROVIDER = "ollama"  # for the make_settings fixture (conftest.py)


def norms(vectors: list[list[float]]) -> np.ndarray:
    return np.linalg.norm(np.asarray(vectors), axis=1)


def unit(vector: list[float]) -> np.ndarray:
    array = np.asarray(vector)
    return array / np.linalg.norm(array)


# --- the contract --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_is_an_oneiric_embedding_adapter_and_satisfies_the_embedder_protocol(
        fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        assert isinstance(embedder, EmbeddingBase)
        assert isinstance(embedder, Embedder)
        assert embedder.model_id == "ollama:nomic-embed-text"
        assert embedder.dimension == 768
        assert embedder.provider == "ollama"


@pytest.mark.asyncio
@pytest.mark.parametrize(("count", "batch_size"), [(10, 4), (8, 4), (1, 64), (130, 64)])
async def test_n_texts_make_ceil_n_over_batch_requests_and_keep_their_order(
        fake: FakeOllama, make_settings: SettingsFactory, count: int, batch_size: int) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url, batch_size=batch_size)) as embedder:
        fake.reset()
        texts = [f"memory number {i} about topic {i % 7}" for i in range(count)]
        vectors = await embedder.embed_documents(texts)

    requests = fake.embed_requests
    assert len(requests) == math.ceil(count / batch_size)
    sizes = sorted(len(request.body["input"]) for request in requests)
    expected_sizes = sorted([batch_size] * (count // batch_size) + ([count % batch_size] if count % batch_size else []))
    assert sizes == expected_sizes
    assert len(vectors) == count
    for text, vector in zip(texts, vectors, strict=True):
        assert len(vector) == 768
        np.testing.assert_allclose(vector, unit(fake.vector_for(DOC + text)), atol=1e-6)


@pytest.mark.asyncio
async def test_request_carries_keep_alive_truncate_and_model(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    settings = make_settings(fake.base_url, keep_alive="10m", truncate=False)
    async with OllamaEmbedder(settings) as embedder:
        fake.reset()
        await embedder.embed_documents(["one"])
    body = fake.embed_requests[0].body
    assert body["model"] == "nomic-embed-text"
    assert body["keep_alive"] == "10m"
    assert body["truncate"] is False
    assert "dimensions" not in body


@pytest.mark.asyncio
async def test_numeric_keep_alive_is_sent_as_seconds(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url, keep_alive="-1")) as embedder:
        await embedder.embed_documents(["one"])
    assert fake.embed_requests[-1].body["keep_alive"] == -1


@pytest.mark.asyncio
async def test_task_prefixes_are_applied_per_model(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    # the configured name carries :latest, the prefix table does not: they still match
    async with OllamaEmbedder(make_settings(fake.base_url, model="nomic-embed-text:latest")) as embedder:
        assert embedder.model_id == "ollama:nomic-embed-text"
        fake.reset()
        await embedder.embed_documents(["stored text"])
        await embedder.embed_query("what was stored")
    inputs = [request.body["input"] for request in fake.embed_requests]
    assert inputs == [[DOC + "stored text"], [QUERY + "what was stored"]]


@pytest.mark.asyncio
async def test_models_without_configured_prefixes_get_raw_text(fake: FakeOllama,
                                                               make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url, model="all-minilm")) as embedder:
        fake.reset()
        await embedder.embed_documents(["plain"])
        await embedder.embed_query("plain query")
    assert [r.body["input"] for r in fake.embed_requests] == [["plain"], ["plain query"]]


@pytest.mark.asyncio
async def test_custom_prefixes_from_settings(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    prefixes = {"all-minilm:latest": {"document": "doc| ", "query": "ask| "}}
    async with OllamaEmbedder(make_settings(fake.base_url, model="all-minilm", task_prefixes=prefixes)) as embedder:
        fake.reset()
        await embedder.embed_documents(["a"])
        await embedder.embed_query("b")
    assert [r.body["input"] for r in fake.embed_requests] == [["doc| a"], ["ask| b"]]


@pytest.mark.asyncio
@pytest.mark.parametrize(("normalize", "expected_norm"), [(True, 1.0), (False, 3.0)])
async def test_l2_normalization_follows_settings(make_settings: SettingsFactory, normalize: bool,
                                                 expected_norm: float) -> None:
    with FakeOllama(dimension=768, vector_norm=3.0) as server:  # a server whose vectors are not unit length
        async with OllamaEmbedder(make_settings(server.base_url, normalize=normalize)) as embedder:
            documents = await embedder.embed_documents(["alpha", "beta gamma"])
            query = await embedder.embed_query("delta")
    np.testing.assert_allclose(norms([*documents, query]), expected_norm, rtol=1e-6)


@pytest.mark.asyncio
async def test_empty_input_returns_empty_without_a_request(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        fake.reset()
        assert await embedder.embed_documents([]) == []
        batch = await embedder.embed_texts([])
    assert batch.results == []
    assert fake.request_count == 0


@pytest.mark.asyncio
async def test_a_single_string_or_non_strings_are_invalid_input(fake: FakeOllama,
                                                                 make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        fake.reset()
        with pytest.raises(InvalidInput, match="not one string"):
            await embedder.embed_documents("one string")
        with pytest.raises(InvalidInput, match="text #1"):
            await embedder.embed_documents(["ok", 42])  # type: ignore[list-item]
    assert fake.request_count == 0


# --- retries and failures --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_500_is_retried_then_succeeds(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        fake.reset()
        fake.inject(500)
        vectors = await embedder.embed_documents(["survives a 500"])
    assert len(fake.embed_requests) == 2
    np.testing.assert_allclose(vectors[0], unit(fake.vector_for(DOC + "survives a 500")), atol=1e-6)


@pytest.mark.asyncio
async def test_a_dropped_connection_is_retried(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        fake.reset()
        fake.inject(drop_connection=True)
        vectors = await embedder.embed_documents(["after a reset"])
    assert len(fake.embed_requests) == 2
    assert len(vectors) == 1


@pytest.mark.asyncio
async def test_a_429_with_retry_after_is_retried_then_succeeds(fake: FakeOllama,
                                                                make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        fake.reset()
        fake.inject(429, retry_after="0.01")
        vectors = await embedder.embed_documents(["rate limited once"])
    assert len(fake.embed_requests) == 2
    assert len(vectors[0]) == 768


@pytest.mark.asyncio
async def test_persistent_429_gives_up_with_unavailable_after_the_configured_attempts(
        fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url, retry_attempts=3)) as embedder:
        fake.reset()
        fake.inject(429, retry_after="0", times=10)
        with pytest.raises(EmbedderUnavailable, match="HTTP 429") as caught:
            await embedder.embed_documents(["never"])
    assert len(fake.embed_requests) == 3
    assert caught.value.details["attempts"] == 3
    assert "max_concurrency" in str(caught.value)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [400, 401, 403, 413, 422])
async def test_other_4xx_are_never_retried(fake: FakeOllama, make_settings: SettingsFactory, status: int) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        fake.reset()
        fake.inject(status)
        with pytest.raises(EmbedderError) as caught:
            await embedder.embed_documents(["bad request"])
    assert not isinstance(caught.value, EmbedderUnavailable)
    assert f"HTTP {status}" in str(caught.value)
    assert len(fake.embed_requests) == 1


def test_retry_after_parsing() -> None:
    parse = http_module.parse_retry_after
    assert parse("2") == 2.0
    assert parse(" 0.5 ") == 0.5
    assert parse("-3") == 0.0
    assert parse(None) is None
    assert parse("soon") is None
    assert parse("inf") is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25.0 < (parse(future) or 0.0) <= 30.0
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert parse(past) == 0.0


def test_retry_delay_is_exponential_with_jitter_capped_and_honours_retry_after() -> None:
    delay = http_module.retry_delay
    for attempt, low, high in [(1, 0.05, 0.1), (2, 0.1, 0.2), (3, 0.2, 0.4)]:
        samples = [delay(attempt, None, base=0.1, cap=10.0) for _ in range(200)]
        assert all(low <= sample <= high for sample in samples)
        assert len(set(samples)) > 1  # jittered
    assert delay(10, None, base=0.1, cap=1.0) <= 1.0
    assert delay(1, 3.0, base=0.1, cap=5.0) == 3.0  # waits at least Retry-After ...
    assert delay(1, 60.0, base=0.1, cap=5.0) == 5.0  # ... but never beyond the cap


@pytest.mark.asyncio
async def test_a_slow_response_hits_the_request_timeout_and_gives_up(fake: FakeOllama,
                                                                      make_settings: SettingsFactory) -> None:
    settings = make_settings(fake.base_url, request_timeout_s=0.2, retry_attempts=2)
    async with OllamaEmbedder(settings) as embedder:
        fake.reset()
        fake.inject(delay_s=3.0, times=2)
        with pytest.raises(EmbedderUnavailable, match=r"request_timeout_s=0\.2s") as caught:
            await embedder.embed_documents(["slow"])
    assert caught.value.details["reason"] == "timeout"
    assert len(fake.embed_requests) == 2


@pytest.mark.asyncio
async def test_a_slow_response_then_a_fast_one_succeeds(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url, request_timeout_s=0.2)) as embedder:
        fake.reset()
        fake.inject(delay_s=3.0)
        vectors = await embedder.embed_documents(["eventually"])
    assert len(vectors) == 1
    assert len(fake.embed_requests) == 2


@pytest.mark.asyncio
async def test_the_whole_call_is_bounded_by_total_timeout(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    settings = make_settings(fake.base_url, request_timeout_s=5.0, total_timeout_s=0.3)
    async with OllamaEmbedder(settings) as embedder:
        fake.inject(delay_s=3.0, times=4)
        with pytest.raises(EmbedderUnavailable, match=r"total_timeout_s=0\.3s"):
            await embedder.embed_documents(["a", "b"])


@pytest.mark.asyncio
async def test_connection_refused_is_unavailable_and_recovers_on_the_same_port(
        fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        fake.stop()
        with pytest.raises(EmbedderUnavailable, match="not reachable") as caught:
            await embedder.embed_documents(["while down"])
        assert "ollama serve" in str(caught.value)
        assert await embedder.health() is False
        fake.start()
        assert len(await embedder.embed_documents(["after restart"])) == 1
        assert await embedder.health() is True


@pytest.mark.asyncio
async def test_init_when_ollama_is_not_running_says_how_to_start_it(fake: FakeOllama,
                                                                     make_settings: SettingsFactory) -> None:
    settings = make_settings(fake.base_url)
    fake.stop()
    embedder = OllamaEmbedder(settings)
    with pytest.raises(EmbedderUnavailable) as caught:
        await embedder.init()
    await embedder.cleanup()
    message = str(caught.value)
    assert f"Ollama is not reachable at {fake.base_url}" in message
    assert "`ollama serve`" in message and "oneiric_memory.embedder.base_url" in message


@pytest.mark.asyncio
async def test_init_refuses_a_model_that_is_not_pulled(make_settings: SettingsFactory) -> None:
    with FakeOllama(models=("all-minilm",)) as server:
        embedder = OllamaEmbedder(make_settings(server.base_url))
        with pytest.raises(EmbedderError) as caught:
            await embedder.init()
        await embedder.cleanup()
    assert not isinstance(caught.value, EmbedderUnavailable)
    assert "model nomic-embed-text is not pulled" in str(caught.value)
    assert "run `ollama pull nomic-embed-text`" in str(caught.value)
    assert caught.value.details["available"] == ["all-minilm:latest"]


@pytest.mark.asyncio
async def test_a_model_removed_after_init_is_an_error_not_a_retry(fake: FakeOllama,
                                                                  make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        fake.models = ("all-minilm",)
        fake.reset()
        with pytest.raises(EmbedderError, match="ollama pull nomic-embed-text") as caught:
            await embedder.embed_documents(["x"])
        assert await embedder.health() is False
    assert not isinstance(caught.value, EmbedderUnavailable)
    assert len(fake.embed_requests) == 1


@pytest.mark.asyncio
async def test_init_refuses_the_wrong_dimension_with_both_fixes(make_settings: SettingsFactory) -> None:
    with FakeOllama(dimension=768) as server:
        embedder = OllamaEmbedder(make_settings(server.base_url, dimension=384))
        with pytest.raises(EmbedderError) as caught:
            await embedder.init()
        await embedder.cleanup()
    message = str(caught.value)
    assert "Ollama answers 768 dims, the store expects 384" in message
    assert "postgres.vector_dimension: 768" in message and "embedder.dimensions: 384" in message
    assert caught.value.details == {"expected": 384, "actual": 768}


@pytest.mark.asyncio
async def test_matryoshka_dimensions_are_requested_and_part_of_the_model_id(fake: FakeOllama,
                                                                           make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url, dimension=256, dimensions=256)) as embedder:
        assert embedder.dimension == 256
        assert embedder.model_id == "ollama:nomic-embed-text@256"
        vectors = await embedder.embed_documents(["short vectors"])
    assert len(vectors[0]) == 256
    assert fake.embed_requests[-1].body["dimensions"] == 256


@pytest.mark.asyncio
async def test_dimensions_on_a_model_without_matryoshka_is_refused(make_settings: SettingsFactory) -> None:
    with FakeOllama(dimension=768, supports_dimensions=False) as server:
        embedder = OllamaEmbedder(make_settings(server.base_url, dimension=256, dimensions=256))
        with pytest.raises(EmbedderError, match=r"although embedder\.dimensions is 256"):
            await embedder.init()
        await embedder.cleanup()


@pytest.mark.asyncio
async def test_malformed_json_is_an_error_and_not_retried(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        fake.reset()
        fake.inject(malformed=True)
        with pytest.raises(EmbedderError, match="not JSON") as caught:
            await embedder.embed_documents(["x"])
    assert not isinstance(caught.value, EmbedderUnavailable)
    assert len(fake.embed_requests) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(("body", "message"), [
    ({"embedding": [0.1]}, "without an 'embeddings' list"),
    ({"embeddings": [[0.1] * 768]}, "1 embeddings for 2 inputs"),
    ({"embeddings": [[0.1] * 768, [0.1] * 10]}, "not rows of numbers of one length"),
    ({"embeddings": [[0.1] * 768, [float("nan")] * 768]}, "NaN or infinite"),
    ({"embeddings": [[0.1] * 300, [0.1] * 300]}, "answered 300 dims, but 768 at start-up"),
    ({"embeddings": [[], []]}, "no values"),
])
async def test_wrong_shapes_are_errors(fake: FakeOllama, make_settings: SettingsFactory, body: Any,
                                       message: str) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        fake.inject(body=body)
        with pytest.raises(EmbedderError, match=message) as caught:
            await embedder.embed_documents(["one", "two"])
    assert not isinstance(caught.value, EmbedderUnavailable)


@pytest.mark.asyncio
async def test_one_failed_batch_fails_the_call(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url, batch_size=2)) as embedder:
        fake.inject(400)
        with pytest.raises(EmbedderError, match="HTTP 400"):
            await embedder.embed_documents(["a", "b", "c", "d", "e", "f"])


# --- cache and concurrency -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_repeated_queries_are_served_from_the_cache(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        fake.reset()
        first = await embedder.embed_query("where is the config?")
        first.append(123.0)  # callers may mutate what they get; the cache keeps its own copy
        second = await embedder.embed_query("where is the config?")
        assert len(fake.embed_requests) == 1
        assert (embedder.cache_hits, embedder.cache_misses) == (1, 1)
        assert second == first[:-1]
        await embedder.embed_query("another question")
        assert len(fake.embed_requests) == 2
        assert (embedder.cache_hits, embedder.cache_misses) == (1, 2)
        assert embedder.cache_hit_ratio == pytest.approx(1 / 3)
        # documents are never cached: the same text as a document is a new request with its own prefix
        await embedder.embed_documents(["where is the config?"])
        assert len(fake.embed_requests) == 3


@pytest.mark.asyncio
async def test_the_query_cache_is_a_bounded_lru(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url, query_cache_size=2)) as embedder:
        fake.reset()
        for text in ("a", "b", "a", "c"):  # "a" is refreshed, so "b" is the oldest when "c" arrives
            await embedder.embed_query(text)
        assert len(fake.embed_requests) == 3
        await embedder.embed_query("a")
        assert len(fake.embed_requests) == 3
        await embedder.embed_query("b")
        assert len(fake.embed_requests) == 4


@pytest.mark.asyncio
async def test_a_zero_sized_cache_disables_caching(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url, query_cache_size=0)) as embedder:
        fake.reset()
        await embedder.embed_query("same")
        await embedder.embed_query("same")
    assert len(fake.embed_requests) == 2


@pytest.mark.asyncio
async def test_never_more_requests_in_flight_than_the_limit(make_settings: SettingsFactory) -> None:
    with FakeOllama(latency_s=0.05) as server:
        settings = make_settings(server.base_url, max_concurrency=3, batch_size=1)
        async with OllamaEmbedder(settings) as embedder:
            server.reset()
            texts = [f"text {i}" for i in range(12)]
            query_tasks = [asyncio.create_task(embedder.embed_query(f"q{i}")) for i in range(4)]
            vectors = await embedder.embed_documents(texts)
            queries = await asyncio.gather(*query_tasks)
        assert 2 <= server.max_in_flight <= 3
        assert len(server.embed_requests) == 16
        for text, vector in zip(texts, vectors, strict=True):
            np.testing.assert_allclose(vector, unit(server.vector_for(DOC + text)), atol=1e-6)
        assert len(queries) == 4


@pytest.mark.asyncio
async def test_cleanup_lets_in_flight_calls_finish_then_refuses_new_ones(make_settings: SettingsFactory) -> None:
    with FakeOllama(latency_s=0.2) as server:
        embedder = OllamaEmbedder(make_settings(server.base_url))
        await embedder.init()
        call = asyncio.create_task(embedder.embed_documents(["in flight during a swap"]))
        while embedder.in_flight == 0:
            await asyncio.sleep(0.005)
        await embedder.cleanup()
        assert len(await call) == 1
        with pytest.raises(EmbedderUnavailable, match="cleaned up"):
            await embedder.embed_documents(["too late"])
        assert await embedder.health() is False
        await embedder.cleanup()  # idempotent


# --- health -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_health_is_a_tags_probe_that_never_raises(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url, request_timeout_s=0.3)) as embedder:
        fake.reset()
        assert await embedder.health() is True
        assert [(r.method, r.path) for r in fake.requests] == [("GET", "/api/tags")]  # never an embedding
        fake.inject(500, path="/api/tags")
        assert await embedder.health() is False
        fake.inject(delay_s=3.0, path="/api/tags")
        assert await embedder.health() is False
        fake.inject(malformed=True, path="/api/tags")
        assert await embedder.health() is False
        fake.stop()
        assert await embedder.health() is False


@pytest.mark.asyncio
async def test_health_is_false_for_an_unusable_url(make_settings: SettingsFactory) -> None:
    embedder = OllamaEmbedder(make_settings("ftp://127.0.0.1:1"))
    assert await embedder.health() is False
    with pytest.raises(EmbedderError, match=r"embedder\.base_url"):
        await embedder.embed_documents(["x"])
    await embedder.cleanup()


@pytest.mark.asyncio
async def test_component_health_reports_latency_model_dimension_url_and_cache(
        fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        await embedder.embed_query("q")
        await embedder.embed_query("q")
        health = await embedder.component_health()
        assert health.name == "embedding"
        assert health.status == HealthStatus.HEALTHY
        assert health.latency_ms is not None and health.latency_ms >= 0
        meta = health.metadata
        assert meta["model"] == "nomic-embed-text"
        assert meta["dimension"] == 768
        assert meta["base_url"] == fake.base_url
        assert meta["cache_hit_ratio"] == 0.5
        assert health.to_dict()["status"] == "healthy"

        fake.inject(400)
        with pytest.raises(EmbedderError):
            await embedder.embed_documents(["x"])
        degraded = await embedder.component_health()
        assert degraded.status == HealthStatus.DEGRADED
        assert "EmbedderError" in (degraded.message or "")

        fake.stop()
        down = await embedder.component_health()
        assert down.status == HealthStatus.UNHEALTHY
        assert "ollama serve" in (down.message or "")


@pytest.mark.asyncio
async def test_credentials_in_the_base_url_are_never_reported(fake: FakeOllama,
                                                              make_settings: SettingsFactory) -> None:
    url = fake.base_url.replace("http://", "http://user:s3cret@")
    async with OllamaEmbedder(make_settings(url)) as embedder:
        health = await embedder.component_health()
        fake.stop()
        with pytest.raises(EmbedderUnavailable) as caught:
            await embedder.embed_documents(["x"])
    assert "s3cret" not in str(health.metadata) and "s3cret" not in str(caught.value)
    assert health.metadata["base_url"] == f"http://***@127.0.0.1:{fake.port}"


# --- settings --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_defaults_follow_mahavishnus_llm_keys(fake: FakeOllama, tmp_path: Path) -> None:
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "mahavishnu.yaml").write_text(
        f"llm:\n  ollama_base_url: {fake.base_url}\n  model: all-minilm-embed\n", encoding="utf-8")
    # Mahavishnu before 0.36 has these keys (0.36 removed them; tests/test_settings.py covers both generations)
    settings = load_settings(root=tmp_path, environ={}, mahavishnu_version="0.14.0")
    assert settings.embedder.ollama_url == fake.base_url
    assert settings.embedder.model == "all-minilm-embed"

    fake.models = ("all-minilm-embed",)
    async with OllamaEmbedder(settings) as embedder:
        assert embedder.model_id == "ollama:all-minilm-embed"
        assert len(await embedder.embed_query("from mahavishnu's own keys")) == 768


def test_env_overrides_the_base_url(tmp_path: Path) -> None:
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "mahavishnu.yaml").write_text(
        "llm:\n  ollama_base_url: http://from-yaml:11434\n", encoding="utf-8")
    settings = load_settings(root=tmp_path, environ={
        "MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__BASE_URL": "http://from-env:11434"})
    assert settings.embedder.base_url == "http://from-env:11434"
    assert OllamaEmbedder(settings).base_url == "http://from-env:11434"


# --- Oneiric -----------------------------------------------------------------------------------------


@pytest.fixture
def factory_environment(fake: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeOllama:
    """The zero-argument factory reads settings from the working directory and env: point both at the fake."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__BASE_URL", fake.base_url)
    monkeypatch.setenv("MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__RETRY_BASE_DELAY_S", "0.005")
    monkeypatch.setenv("MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__RETRY_MAX_DELAY_S", "0.02")
    monkeypatch.setenv("MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__CONNECT_TIMEOUT_S", "1")
    return fake


def ollama_candidate() -> Candidate:
    return Candidate(domain="adapter", key="embedding", provider="ollama", factory=ollama_embedder_factory,
                     priority=600)


@pytest.mark.asyncio
async def test_oneiric_lifecycle_activates_it_and_probes_health(factory_environment: FakeOllama) -> None:
    resolver = Resolver()
    resolver.register(ollama_candidate())
    lifecycle = LifecycleManager(resolver, safety=LifecycleSafetyOptions(activation_timeout=10.0,
                                                                          health_timeout=3.0))
    instance = await lifecycle.activate("adapter", "embedding")
    try:
        assert isinstance(instance, OllamaEmbedder)
        assert instance.initialized
        status = lifecycle.get_status("adapter", "embedding")
        assert status is not None and status.state == "ready"
        assert await lifecycle.probe_instance_health("adapter", "embedding") is True
        assert len(await instance.embed_documents(["through the lifecycle"])) == 1

        factory_environment.stop()
        assert await lifecycle.probe_instance_health("adapter", "embedding") is False
    finally:
        await instance.cleanup()


@pytest.mark.asyncio
async def test_oneiric_activation_fails_cleanly_when_ollama_is_down(factory_environment: FakeOllama) -> None:
    factory_environment.stop()
    resolver = Resolver()
    resolver.register(ollama_candidate())
    lifecycle = LifecycleManager(resolver, safety=LifecycleSafetyOptions(activation_timeout=10.0))
    with pytest.raises(LifecycleError) as caught:
        await lifecycle.activate("adapter", "embedding")
    assert isinstance(caught.value.__cause__, EmbedderUnavailable)
    status = lifecycle.get_status("adapter", "embedding")
    assert status is not None and status.state == "failed"
    assert lifecycle.get_instance("adapter", "embedding") is None


@pytest.mark.asyncio
async def test_oneiric_embedding_api_works(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        fake.reset()
        batch = await embedder.embed_texts(["one", "two"])
        assert isinstance(batch, EmbeddingBatch)
        assert [r.text for r in batch.results] == ["one", "two"]
        assert batch.results[0].dimensions == 768
        assert fake.embed_requests[-1].body["input"] == [DOC + "one", DOC + "two"]

        single = await embedder.embed_text("a question", task="query")
        assert fake.embed_requests[-1].body["input"] == [QUERY + "a question"]
        raw = await embedder.embed_texts(["x"], normalize=False)
        assert float(np.linalg.norm(raw.results[0].embedding)) == pytest.approx(1.0, abs=1e-6)

        assert await embedder.compute_similarity(single, single) == pytest.approx(1.0)
        with pytest.raises(InvalidInput):
            await embedder.compute_similarity(single, single[:10])

        info = await embedder.get_model_info()
        assert info["model_id"] == "ollama:nomic-embed-text" and info["dimension"] == 768
        assert info["query_prefix"] == QUERY
        assert {m["name"] for m in await embedder.list_models()} == {"nomic-embed-text:latest", "all-minilm:latest"}
        with pytest.raises(EmbedderError, match="ollama pull mxbai"):
            await embedder.get_model_info("mxbai")

        chunks = await embedder.embed_document_chunks(["x" * 25, "short"], chunk_size=10, chunk_overlap=0)
        assert [len(batch.results) for batch in chunks] == [3, 1]
        if tuple(int(part) for part in version("oneiric").split(".")[:2]) < (0, 33):  # 0.17 (Python 3.13)
            # Oneiric's own embed_documents turns chunk_overlap=0 into 50: this guard keeps it from looping forever
            with pytest.raises(InvalidInput, match="chunk_overlap"):
                await EmbeddingBase.embed_documents(embedder, ["x" * 25], chunk_size=10, chunk_overlap=0)
        else:  # 0.33 (Python 3.14) keeps chunk_overlap=0: Oneiric's own entry point chunks like ours
            through_oneiric = await EmbeddingBase.embed_documents(embedder, ["x" * 25], chunk_size=10, chunk_overlap=0)
            assert [len(batch.results) for batch in through_oneiric] == [3]
        with pytest.raises(InvalidInput, match="chunk_overlap"):  # an overlap as large as the chunk never ends
            await EmbeddingBase.embed_documents(embedder, ["x" * 25], chunk_size=10, chunk_overlap=10)


# --- selection -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_auto_uses_ollama_when_it_is_reachable(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    selection = await select_embedder(make_settings(fake.base_url, provider="auto"))
    embedder, sentence = selection.embedder, selection.note
    try:
        assert isinstance(embedder, OllamaEmbedder)
        assert "using Ollama model nomic-embed-text" in sentence
    finally:
        await embedder.cleanup()


@pytest.mark.asyncio
async def test_auto_falls_back_to_hashing_and_says_why(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    settings = make_settings(fake.base_url, provider="auto")
    fake.stop()
    selection = await select_embedder(settings)
    embedder, sentence = selection.embedder, selection.note
    assert isinstance(embedder, HashingEmbedder)
    assert embedder.model_id == "hashing:v1:768"
    assert f"Ollama is not reachable at {fake.base_url}" in sentence
    assert sentence.endswith("fell back to the hashing embedder (lexical only)")


@pytest.mark.asyncio
async def test_auto_falls_back_when_the_model_is_missing(make_settings: SettingsFactory) -> None:
    with FakeOllama(models=("all-minilm",)) as server:
        selection = await select_embedder(make_settings(server.base_url, provider="auto"))
        embedder, sentence = selection.embedder, selection.note
    assert isinstance(embedder, HashingEmbedder)
    assert "ollama pull nomic-embed-text" in sentence


@pytest.mark.asyncio
async def test_provider_ollama_raises_instead_of_falling_back(fake: FakeOllama,
                                                              make_settings: SettingsFactory) -> None:
    settings = make_settings(fake.base_url, provider="ollama")
    fake.stop()
    with pytest.raises(EmbedderUnavailable):
        await select_embedder(settings)


@pytest.mark.asyncio
async def test_provider_hashing_never_calls_ollama(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    selection = await select_embedder(make_settings(fake.base_url, provider="hashing"))
    embedder, sentence = selection.embedder, selection.note
    assert isinstance(embedder, HashingEmbedder)
    assert "hashing" in sentence
    assert fake.request_count == 0


# --- observability ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_spans_and_latency_carry_counts_never_text(fake: FakeOllama, make_settings: SettingsFactory,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # local SDK providers, patched in, so no process-global provider is set for other tests
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(observability, "_tracer", lambda: tracer_provider.get_tracer("test"))
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    monkeypatch.setattr(observability.INSTRUMENTS, "embed_latency",
                        meter.create_histogram("oneiric_memory.embed.duration", unit="ms"))
    secret_text = "the launch code is 0000"

    async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
        await embedder.embed_documents([secret_text, "another", "third"])

    spans = [s for s in exporter.get_finished_spans() if s.name == "oneiric_memory.embed"]
    documents = [s for s in spans if s.attributes and s.attributes.get("kind") == "documents"]
    assert len(documents) == 1
    attributes = dict(documents[0].attributes or {})
    assert attributes["model"] == "nomic-embed-text" and attributes["texts"] == 3
    assert all(secret_text not in str(value) for span in spans for value in (span.attributes or {}).values())

    data = reader.get_metrics_data()
    assert data is not None
    points = [point for resource in data.resource_metrics for scope in resource.scope_metrics
              for metric in scope.metrics if metric.name == "oneiric_memory.embed.duration"
              for point in metric.data.data_points]
    assert any((point.attributes or {}).get("kind") == "documents"
               and (point.attributes or {}).get("outcome") == "ok" and getattr(point, "count", 0) == 1
               for point in points)


@pytest.mark.asyncio
async def test_retry_logs_carry_no_text(fake: FakeOllama, make_settings: SettingsFactory) -> None:
    secret_text = "private note about salaries"
    with structlog.testing.capture_logs() as logs:
        async with OllamaEmbedder(make_settings(fake.base_url)) as embedder:
            fake.inject(503)
            await embedder.embed_documents([secret_text])
    retries = [entry for entry in logs if entry["event"] == "embedder-retry"]
    assert len(retries) == 1 and retries[0]["reason"] == "server_error"
    assert secret_text not in repr(logs)


# --- the fake server itself ---------------------------------------------------------------------------


def test_fake_ollama_speaks_the_legacy_endpoint_and_reports_unknown_models() -> None:
    import httpx

    with FakeOllama(dimension=16) as server, httpx.Client() as client:
        legacy = client.post(f"{server.base_url}/api/embeddings", json={"model": "nomic-embed-text", "prompt": "hi"})
        assert legacy.status_code == 200
        assert legacy.json()["embedding"] == pytest.approx(server.vector_for("hi"))
        missing = client.post(f"{server.base_url}/api/embed", json={"model": "nope", "input": ["x"]})
        assert missing.status_code == 404 and "try pulling it first" in missing.json()["error"]
        assert client.get(f"{server.base_url}/").text == "Ollama is running"
        port = server.port
        server.stop()
        assert not server.running
        with pytest.raises(httpx.TransportError):
            client.get(f"http://127.0.0.1:{port}/api/tags")
        server.start()
        assert server.port == port
        assert client.get(f"{server.base_url}/api/tags").status_code == 200
