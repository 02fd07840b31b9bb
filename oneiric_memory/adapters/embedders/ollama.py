"""The Ollama embedder: Oneiric category ``embedding``, provider ``ollama``.

Every write and every search goes through it, so it is built to be fast, bounded and honest about failure:

* batched ``POST /api/embed`` calls over one reused ``httpx.AsyncClient`` connection pool, at most
  ``embedder.max_concurrency`` requests in flight (a semaphore, the pool is sized to match);
* per-request timeouts, and one bound on the whole call including retries (``embedder.total_timeout_s``);
* retries with exponential backoff and jitter on connection errors, timeouts, 5xx and 429 (``Retry-After`` is
  honoured, capped by ``embedder.retry_max_delay_s``), never on other 4xx: those are our bug or a config error;
* ``EmbedderUnavailable`` (transient: try later) is kept apart from ``EmbedderError`` (fix something), and each
  message says what to do;
* task prefixes per model (``search_document: `` / ``search_query: `` for nomic-embed-text);
* an LRU cache for query embeddings, since the same searches repeat.

It subclasses Oneiric's ``EmbeddingBase`` (so ``embed_texts``/``embed_text`` work as for Oneiric's own
adapters, on oneiric 0.17 and 0.33) and satisfies this package's :class:`~oneiric_memory.protocols.Embedder`
protocol. The two disagree on ``embed_documents``: here it is the protocol's (texts in, vectors out);
Oneiric's chunking variant is :meth:`OllamaEmbedder.embed_document_chunks`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import ssl
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
from oneiric.adapters.embedding.embedding_interface import (
    EmbeddingBase,
    EmbeddingBaseSettings,
    EmbeddingBatch,
    EmbeddingResult,
)

from oneiric_memory.adapters.embedders.inputs import check_texts
from oneiric_memory.errors import EmbedderError, EmbedderUnavailable, InvalidInput, OneiricMemoryError, first_error
from oneiric_memory.observability import INSTRUMENTS, Stopwatch, get_logger, span
from oneiric_memory.settings import MemorySettings, TaskPrefixes, load_settings

if TYPE_CHECKING:  # mcp_common pulls in fastmcp (seconds per process): imported where a health is built
    from mcp_common.health import ComponentHealth

__all__ = ["OllamaEmbedder", "ollama_embedder_factory"]

_HEALTH_TIMEOUT_S = 2.0
"""Upper bound of one health probe; health must stay cheap even when Ollama hangs."""
_CLEANUP_GRACE_S = 5.0
"""How long cleanup() waits for in-flight calls before closing the connections (lifecycle allows 10 s)."""
_JSON_THREAD_BYTES = 256 * 1024
"""Responses larger than this are decoded in a worker thread, off the event loop."""
_DETAIL_CHARS = 200
_UNIT_TOLERANCE = 1e-6
"""Rows whose squared norm is this close to 1 (Ollama's own output) are already normalised: norm within 5e-7."""

_ProblemKind = Literal["unreachable", "timeout", "broken", "rate_limited", "server_error"]


def _canonical(model: str) -> str:
    """Ollama treats ``name`` and ``name:latest`` as one model; so do our settings and ``model_id``."""
    return model.removesuffix(":latest")


def _redact(url: str) -> str:
    """The URL without credentials, for messages, logs and health metadata."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"***@{parts.hostname or ''}{port}"))
    except ValueError:
        return "<invalid url>"


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _retry_delay(attempt: int, retry_after: float | None, *, base: float, cap: float) -> float:
    """Exponential backoff with jitter (half fixed, half random); at least ``Retry-After``; at most ``cap``."""
    backoff = min(cap, base * (2.0 ** (attempt - 1)))
    delay = backoff * (0.5 + random.random() / 2)  # jitter, not cryptography
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(cap, delay)


def _keep_alive_value(value: str) -> str | int | float:
    """Ollama reads a number as seconds (``-1`` = forever) and a string as a Go duration (``5m``)."""
    try:
        number = float(value)
    except ValueError:
        return value
    if not math.isfinite(number):
        return value
    return int(number) if number.is_integer() else number


@cache
def _shared_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context per process: building one reads the CA bundle (~0.2 s) and is the bulk of
    creating an ``httpx.AsyncClient``."""
    return httpx.create_ssl_context()


class OllamaEmbedder(EmbeddingBase):  # type: ignore[misc, unused-ignore]  # oneiric ships no py.typed
    """Embeddings from a local (or remote) Ollama server; see the module docstring.

    ``transport`` replaces httpx's network transport (e.g. ``httpx.MockTransport``) for callers that want
    to test without sockets; the package's own tests use a real loopback server instead.
    """

    provider = "ollama"

    def __init__(self, settings: MemorySettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        cfg = settings.embedder
        # Oneiric's base class reads model/batch_size/normalize_embeddings/chunking from this object.
        # model_construct: no validation and no env reading (in oneiric 0.33 it is a BaseSettings).
        super().__init__(EmbeddingBaseSettings.model_construct(
            model=cfg.model, base_url=cfg.base_url, batch_size=cfg.batch_size,
            normalize_embeddings=cfg.normalize, timeout=cfg.request_timeout_s,
            max_retries=cfg.retry_attempts - 1,
        ))
        self._client: httpx.AsyncClient | None = None
        self._memory_settings = settings
        self._cfg = cfg
        self._model = cfg.model
        self._base_url = cfg.base_url.rstrip("/")
        self._public_url = _redact(self._base_url)
        self._transport = transport
        self._semaphore = asyncio.Semaphore(cfg.max_concurrency)
        self._cache: OrderedDict[tuple[str, str, str], list[float]] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0
        self._dimension: int | None = None
        self._initialized = False
        self._closed = False
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_error: str | None = None
        self._log = get_logger("oneiric_memory.embedder", provider=self.provider, model=_canonical(self._model),
                               base_url=self._public_url)

    # --- identity --------------------------------------------------------------------------------

    @property
    def memory_settings(self) -> MemorySettings:
        return self._memory_settings

    @property
    def model(self) -> str:
        return self._model

    @property
    def base_url(self) -> str:
        """The configured base URL without credentials."""
        return self._public_url

    @property
    def model_id(self) -> str:
        """``ollama:<model>`` (``:latest`` dropped), plus ``@<dimensions>`` under Matryoshka truncation."""
        suffix = f"@{self._cfg.dimensions}" if self._cfg.dimensions is not None else ""
        return f"ollama:{_canonical(self._model)}{suffix}"

    @property
    def dimension(self) -> int:
        """Learned at ``init()``; before that, the dimension the configuration expects."""
        if self._dimension is not None:
            return self._dimension
        return self._cfg.dimensions or self._memory_settings.postgres.vector_dimension

    @property
    def initialized(self) -> bool:
        return self._initialized

    @property
    def in_flight(self) -> int:
        """Embedding calls currently running on this instance."""
        return self._active

    @property
    def cache_hit_ratio(self) -> float:
        lookups = self.cache_hits + self.cache_misses
        return self.cache_hits / lookups if lookups else 0.0

    def prefixes_for(self, model: str | None = None) -> TaskPrefixes:
        """Task prefixes configured for ``model``; ``name`` and ``name:latest`` match, then the bare name."""
        table = {_canonical(key): value for key, value in self._cfg.task_prefixes.items()}
        name = _canonical(model or self._model)
        found = table.get(name) or table.get(name.split(":", 1)[0])
        return found if found is not None else TaskPrefixes()

    # --- the Embedder protocol -------------------------------------------------------------------

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:  # type: ignore[override, unused-ignore]
        """Embed stored text, with the model's document prefix. An empty list costs no request."""
        check_texts(texts)
        if not texts:
            return []
        prefix = self.prefixes_for().document
        return await self._embed_many([prefix + text for text in texts], model=self._model,
                                      batch_size=self._cfg.batch_size, normalize=self._cfg.normalize,
                                      kind="documents")

    async def embed_query(self, text: str) -> list[float]:
        """Embed a search query, with the model's query prefix; repeated queries come from the LRU cache."""
        if not isinstance(text, str):
            raise InvalidInput(f"the query is a {type(text).__name__}, not a str: pass a string")
        prefix = self.prefixes_for().query
        key = (_canonical(self._model), prefix, text)
        capacity = self._cfg.query_cache_size
        if capacity > 0:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return list(cached)
        self.cache_misses += 1
        vector = (await self._embed_many([prefix + text], model=self._model, batch_size=1,
                                         normalize=self._cfg.normalize, kind="query"))[0]
        if capacity > 0:
            self._cache[key] = list(vector)
            while len(self._cache) > capacity:
                self._cache.popitem(last=False)
        return vector

    async def init(self) -> None:
        """Check that Ollama answers, the model is pulled and its dimension fits the store.

        Connection refused is not retried here (Ollama not running is not a blip), so the ``auto`` provider
        falls back to the hashing embedder at once.
        """
        if self._initialized:
            return
        watch = Stopwatch()
        with span("embedder.init", provider=self.provider, model=_canonical(self._model)):
            try:
                async with asyncio.timeout(self._cfg.total_timeout_s):
                    deadline = asyncio.get_running_loop().time() + self._cfg.total_timeout_s
                    models = await self._fetch_tags(deadline, retry_connect=False)
                    if not any(_canonical(self._model) == _canonical(m) for m in self._model_names(models)):
                        raise EmbedderError(
                            f"model {self._model} is not pulled at {self._public_url}: run `ollama pull "
                            f"{self._model}` (or set oneiric_memory.embedder.model to one of: "
                            f"{', '.join(self._model_names(models)) or 'no models are pulled'})",
                            model=self._model, available=self._model_names(models))
                    probe = await self._embed_batch([self.prefixes_for().document + "dimension probe"],
                                                    model=self._model, normalize=False, deadline=deadline)
            except TimeoutError:
                raise EmbedderUnavailable(
                    f"Ollama at {self._public_url} did not answer the start-up checks within "
                    f"embedder.total_timeout_s={self._cfg.total_timeout_s:g}s: check that it is running and not "
                    "overloaded, or raise oneiric_memory.embedder.total_timeout_s") from None
        self._check_dimension(len(probe[0]))
        self._dimension = len(probe[0])
        self._initialized = True
        self._log.info("embedder-ready", dimension=self._dimension, model_id=self.model_id,
                       init_ms=round(watch.ms, 1))

    def _check_dimension(self, actual: int) -> None:
        store = self._memory_settings.postgres.vector_dimension
        wanted = self._cfg.dimensions
        if wanted is not None and actual != wanted:
            raise EmbedderError(
                f"Ollama answers {actual} dims although embedder.dimensions is {wanted}: model {self._model} "
                "(or this Ollama version) does not truncate (Matryoshka); remove embedder.dimensions and set "
                f"postgres.vector_dimension: {actual} (a migration), or use a model that supports it",
                expected=wanted, actual=actual)
        if actual != store:
            raise EmbedderError(
                f"Ollama answers {actual} dims, the store expects {store}: set postgres.vector_dimension: "
                f"{actual} (a migration) or embedder.dimensions: {store} (if the model supports Matryoshka)",
                expected=store, actual=actual)

    async def health(self) -> bool:
        """A cheap ``GET /api/tags`` probe (never an embedding); False on any problem, never raises."""
        try:
            healthy, _detail = await self._probe()
        except Exception:  # health must never raise, whatever went wrong
            return False
        return healthy

    async def component_health(self) -> ComponentHealth:
        """Rich health for the coordinator: probe latency, model, dimension, base URL, cache hit ratio."""
        from mcp_common.health import ComponentHealth, HealthStatus
        watch = Stopwatch()
        try:
            healthy, detail = await self._probe()
        except Exception as exc:
            healthy, detail = False, f"health probe failed: {type(exc).__name__}"
        latency = watch.ms
        if not healthy:
            status, message = HealthStatus.UNHEALTHY, detail
        elif not self._initialized:
            status, message = HealthStatus.DEGRADED, "Ollama answers but init() has not run"
        elif self._last_error is not None:
            status, message = HealthStatus.DEGRADED, f"Ollama answers; the last embedding call failed: " \
                                                     f"{self._last_error}"
        else:
            status, message = HealthStatus.HEALTHY, f"Ollama answers; model {_canonical(self._model)} is pulled"
        return ComponentHealth(name="embedding", status=status, message=message, latency_ms=latency,
                               metadata=self._metadata())

    def _metadata(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": _canonical(self._model),
            "model_id": self.model_id,
            "dimension": self.dimension,
            "base_url": self._public_url,
            "initialized": self._initialized,
            "cache_hit_ratio": round(self.cache_hit_ratio, 4),
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "cache_size": len(self._cache),
            "cache_capacity": self._cfg.query_cache_size,
            "batch_size": self._cfg.batch_size,
            "max_concurrency": self._cfg.max_concurrency,
            "in_flight": self._active,
            "last_error": self._last_error,
        }

    async def cleanup(self) -> None:
        """Let in-flight calls finish (briefly), then close the connection pool. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._active:
            try:
                async with asyncio.timeout(_CLEANUP_GRACE_S):
                    await self._idle.wait()
            except TimeoutError:
                self._log.warning("embedder-cleanup-forced", in_flight=self._active)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        self._cache.clear()
        self._initialized = False

    async def __aenter__(self) -> Self:
        try:
            await self.init()
        except BaseException:
            await self.cleanup()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.cleanup()

    # --- Oneiric's EmbeddingBase ----------------------------------------------------------------

    async def _ensure_client(self) -> httpx.AsyncClient:
        if self._client is None and not self._closed:
            tls = await asyncio.to_thread(_shared_ssl_context)  # file I/O, once per process
        if self._client is None:  # checked again: another task may have built it during the await
            if self._closed:
                raise EmbedderUnavailable(
                    "this Ollama embedder was cleaned up (the lifecycle replaced or stopped it): look the "
                    "embedder up again for each operation instead of keeping the instance")
            cfg = self._cfg
            try:
                self._client = httpx.AsyncClient(
                    verify=tls,
                    base_url=self._base_url,
                    timeout=httpx.Timeout(cfg.request_timeout_s, connect=cfg.connect_timeout_s),
                    # one connection per permitted request, plus one so a health probe never queues
                    limits=httpx.Limits(max_connections=cfg.max_concurrency + 1,
                                        max_keepalive_connections=cfg.max_concurrency + 1),
                    transport=self._transport,
                    headers={"User-Agent": "oneiric-memory"},
                )
            except (httpx.InvalidURL, ValueError, TypeError) as exc:
                raise EmbedderError(f"embedder.base_url {self._public_url!r} is not a usable URL "
                                    f"({type(exc).__name__}): set oneiric_memory.embedder.base_url, e.g. "
                                    "http://localhost:11434") from None
        client: httpx.AsyncClient = self._client
        return client

    async def _embed_texts(  # type: ignore[override, unused-ignore]  # the portable 0.17/0.33 signature
        self,
        texts: list[str],
        model: str,
        batch_size: int,
        normalize: bool | None = None,
        **kwargs: Any,
    ) -> EmbeddingBatch:
        """Oneiric's ``embed_texts``; ``task="query"`` selects the query prefix (default: document)."""
        check_texts(texts)
        name = str(model or self._model)
        watch = Stopwatch()
        if not texts:
            return EmbeddingBatch(results=[], model=name, batch_size=batch_size or self._cfg.batch_size,
                                  processing_time=0.0)
        prefixes = self.prefixes_for(name)
        prefix = prefixes.query if kwargs.get("task") == "query" else prefixes.document
        vectors = await self._embed_many([prefix + text for text in texts], model=name,
                                         batch_size=batch_size or self._cfg.batch_size,
                                         normalize=self._cfg.normalize if normalize is None else normalize,
                                         kind="texts")
        results = [EmbeddingResult(text=text, embedding=vector, model=name, dimensions=len(vector))
                   for text, vector in zip(texts, vectors, strict=True)]
        return EmbeddingBatch(results=results, model=name, batch_size=batch_size or self._cfg.batch_size,
                              processing_time=watch.ms / 1000.0)

    async def embed_document_chunks(self, documents: list[str], chunk_size: int | None = None,
                                    chunk_overlap: int | None = None, model: str | None = None,
                                    **kwargs: Any) -> list[EmbeddingBatch]:
        """Oneiric's chunking ``embed_documents`` (one ``EmbeddingBatch`` per document).

        Calls ``_embed_documents`` directly: the base class treats ``chunk_overlap=0`` as "use the default" (50),
        which with a small ``chunk_size`` makes its chunker loop forever.
        """
        return await self._embed_documents(
            documents,
            chunk_size=self.settings.chunk_size if chunk_size is None else chunk_size,
            chunk_overlap=self.settings.chunk_overlap if chunk_overlap is None else chunk_overlap,
            model=model or self._model, **kwargs)

    async def _embed_documents(self, documents: list[str], chunk_size: int, chunk_overlap: int, model: str,
                               **kwargs: Any) -> list[EmbeddingBatch]:
        if chunk_size < 1 or not 0 <= chunk_overlap < chunk_size:
            raise InvalidInput(f"chunk_size={chunk_size}, chunk_overlap={chunk_overlap}: need chunk_size >= 1 and "
                               "0 <= chunk_overlap < chunk_size")
        chunked = [self._chunk_text(document, chunk_size, chunk_overlap) for document in documents]
        flat = [chunk for chunks in chunked for chunk in chunks]
        batch = await self._embed_texts(flat, model=model, batch_size=self._cfg.batch_size, **kwargs)
        out: list[EmbeddingBatch] = []
        start = 0
        for chunks in chunked:
            results = batch.results[start:start + len(chunks)]
            start += len(chunks)
            out.append(EmbeddingBatch(results=results, model=batch.model, batch_size=batch.batch_size,
                                      processing_time=batch.processing_time))
        return out

    async def _compute_similarity(self, embedding1: list[float], embedding2: list[float],
                                  method: str = "cosine") -> float:
        first = np.asarray(embedding1, dtype=np.float64)
        second = np.asarray(embedding2, dtype=np.float64)
        if first.shape != second.shape:
            raise InvalidInput(f"vectors of different lengths ({first.shape[0]} and {second.shape[0]}) cannot "
                               "be compared: embed both with the same model")
        if method == "cosine":
            norms = float(np.linalg.norm(first) * np.linalg.norm(second))
            return float(first @ second) / norms if norms else 0.0
        if method in ("dot", "dot_product"):
            return float(first @ second)
        if method == "euclidean":
            return float(np.linalg.norm(first - second))
        if method == "manhattan":
            return float(np.abs(first - second).sum())
        raise InvalidInput(f"unknown similarity method {method!r}: use cosine, dot, euclidean or manhattan")

    async def _get_model_info(self, model: str) -> dict[str, Any]:
        name = str(model or self._model)
        for entry in await self._list_models():
            if _canonical(str(entry.get("name") or entry.get("model") or "")) == _canonical(name):
                info = dict(entry)
                prefixes = self.prefixes_for(name)
                info.update(provider=self.provider, document_prefix=prefixes.document,
                            query_prefix=prefixes.query)
                if _canonical(name) == _canonical(self._model):
                    info.update(model_id=self.model_id, dimension=self.dimension)
                return info
        raise EmbedderError(f"model {name} is not pulled at {self._public_url}: run `ollama pull {name}`",
                            model=name)

    async def _list_models(self) -> list[dict[str, Any]]:
        async with asyncio.timeout(self._cfg.total_timeout_s):
            deadline = asyncio.get_running_loop().time() + self._cfg.total_timeout_s
            return await self._fetch_tags(deadline, retry_connect=True)

    # --- the HTTP layer --------------------------------------------------------------------------

    def _begin(self) -> None:
        self._active += 1
        self._idle.clear()

    def _end(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    async def _embed_many(self, inputs: list[str], *, model: str, batch_size: int, normalize: bool,
                          kind: str) -> list[list[float]]:
        """Embed already-prefixed inputs: batches run concurrently, bounded by the semaphore."""
        watch = Stopwatch()
        outcome = "error"
        batches = [inputs[start:start + batch_size] for start in range(0, len(inputs), batch_size)]
        self._begin()
        try:
            with span("embed", provider=self.provider, model=_canonical(model), texts=len(inputs),
                      batches=len(batches), kind=kind):
                try:
                    async with asyncio.timeout(self._cfg.total_timeout_s):
                        deadline = asyncio.get_running_loop().time() + self._cfg.total_timeout_s
                        if len(batches) == 1:
                            results = [await self._embed_batch(batches[0], model=model, normalize=normalize,
                                                               deadline=deadline)]
                        else:
                            results = await self._embed_concurrently(batches, model=model, normalize=normalize,
                                                                     deadline=deadline)
                except TimeoutError:
                    raise EmbedderUnavailable(
                        f"Ollama at {self._public_url} did not embed {len(inputs)} text(s) within "
                        f"embedder.total_timeout_s={self._cfg.total_timeout_s:g}s: check that it is running and "
                        "not overloaded, lower oneiric_memory.embedder.batch_size or raise "
                        "oneiric_memory.embedder.total_timeout_s", texts=len(inputs)) from None
            outcome = "ok"
            self._last_error = None
            return [vector for batch in results for vector in batch]
        except OneiricMemoryError as exc:
            self._last_error = f"{type(exc).__name__}: {exc.message[:_DETAIL_CHARS]}"
            raise
        finally:
            self._end()
            INSTRUMENTS.embed_latency.record(watch.ms, {"provider": self.provider, "model": _canonical(model),
                                                        "kind": kind, "outcome": outcome})

    async def _embed_concurrently(self, batches: list[list[str]], *, model: str, normalize: bool,
                                  deadline: float) -> list[list[list[float]]]:
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._embed_batch(batch, model=model, normalize=normalize,
                                                             deadline=deadline))
                         for batch in batches]
        except BaseExceptionGroup as errors:  # one failed batch fails the call; the others were cancelled
            raise first_error(errors) from None
        return [task.result() for task in tasks]

    async def _embed_batch(self, inputs: list[str], *, model: str, normalize: bool,
                           deadline: float) -> list[list[float]]:
        cfg = self._cfg
        payload: dict[str, Any] = {"model": model, "input": inputs, "truncate": cfg.truncate}
        if cfg.keep_alive is not None:
            payload["keep_alive"] = _keep_alive_value(cfg.keep_alive)
        if cfg.dimensions is not None:
            payload["dimensions"] = cfg.dimensions
        response = await self._request("POST", "/api/embed", payload=payload, deadline=deadline)
        content = response.content
        check = _canonical(model) == _canonical(self._model)
        if len(content) > _JSON_THREAD_BYTES:
            return await asyncio.to_thread(self._parse_embeddings, content, len(inputs), normalize, check)
        return self._parse_embeddings(content, len(inputs), normalize, check)

    def _parse_embeddings(self, content: bytes, expected: int, normalize: bool,
                          check_dimension: bool) -> list[list[float]]:
        url = self._public_url
        try:
            body = json.loads(content)  # (parse_int=float would make this 2.5x slower; an int is a float here)
        except ValueError:
            raise EmbedderError(f"Ollama at {url} answered a body that is not JSON ({len(content)} bytes): check "
                                "that oneiric_memory.embedder.base_url points at Ollama itself, not at a proxy "
                                "or another service") from None
        embeddings = body.get("embeddings") if isinstance(body, dict) else None
        if not isinstance(embeddings, list):
            raise EmbedderError(f"Ollama at {url} answered JSON without an 'embeddings' list: upgrade Ollama to "
                                "0.3 or later (it needs /api/embed), or check oneiric_memory.embedder.base_url")
        if len(embeddings) != expected:
            raise EmbedderError(f"Ollama at {url} answered {len(embeddings)} embeddings for {expected} inputs: "
                                "the server or a proxy in front of it is misbehaving; check its version and logs",
                                expected=expected, actual=len(embeddings))
        # Plain Python, no numpy round trip: math.sumprod runs at C speed, while converting a 256 x 768 answer
        # to an array and back added about a quarter to the cost of decoding its JSON.
        first = embeddings[0] if embeddings else None
        width = len(first) if isinstance(first, list) else 0
        if width == 0:
            raise EmbedderError(f"Ollama at {url} answered embeddings with no values (shape ({expected}, 0)): "
                                "check the Ollama version and logs")
        if check_dimension and self._dimension is not None and width != self._dimension:
            raise EmbedderError(f"Ollama answered {width} dims, but {self._dimension} at start-up: model "
                                f"{self._model} was replaced while running; restart, and migrate if the dimension "
                                "really changed", expected=self._dimension, actual=width)
        vectors: list[list[float]] = []
        for row in embeddings:
            try:
                if not isinstance(row, list) or len(row) != width:
                    raise TypeError
                square = math.sumprod(row, row)
            except TypeError:
                raise EmbedderError(f"Ollama at {url} answered embeddings that are not rows of numbers of one "
                                    "length: check the Ollama version and logs") from None
            if not math.isfinite(square):
                raise EmbedderError(f"Ollama at {url} answered NaN or infinite values: the model file may be "
                                    f"damaged; run `ollama pull {self._model}` again")
            if normalize and square > 0.0 and abs(square - 1.0) > _UNIT_TOLERANCE:
                scale = 1.0 / math.sqrt(square)
                row = [value * scale for value in row]
            vectors.append(row)
        return vectors

    async def _fetch_tags(self, deadline: float, *, retry_connect: bool) -> list[dict[str, Any]]:
        response = await self._request("GET", "/api/tags", deadline=deadline, retry_connect=retry_connect)
        return self._parse_tags(response.content)

    def _parse_tags(self, content: bytes) -> list[dict[str, Any]]:
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        models = body.get("models") if isinstance(body, dict) else None
        if not isinstance(models, list):
            raise EmbedderError(f"{self._public_url}/api/tags did not answer Ollama's model list: check that "
                                "oneiric_memory.embedder.base_url points at Ollama")
        return [entry for entry in models if isinstance(entry, dict)]

    @staticmethod
    def _model_names(models: list[dict[str, Any]]) -> list[str]:
        names: list[str] = []
        for entry in models:
            for field in ("name", "model"):
                value = entry.get(field)
                if isinstance(value, str) and value not in names:
                    names.append(value)
        return names

    def _unreachable(self) -> str:
        return (f"Ollama is not reachable at {self._public_url}: start it with `ollama serve` or set "
                "oneiric_memory.embedder.base_url")

    async def _request(self, method: str, path: str, *, deadline: float, payload: dict[str, Any] | None = None,
                       retry_connect: bool = True) -> httpx.Response:
        """One logical request with retries on transient failures; raises our errors, never httpx's."""
        client = await self._ensure_client()
        cfg = self._cfg
        loop = asyncio.get_running_loop()
        attempt = 0
        kind: _ProblemKind = "unreachable"
        problem = ""
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                async with self._semaphore:
                    response = await client.request(method, path, json=payload)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if not retry_connect:
                    raise EmbedderUnavailable(self._unreachable(), cause=type(exc).__name__) from None
                kind, problem = "unreachable", type(exc).__name__
            except httpx.TimeoutException as exc:
                kind, problem = "timeout", type(exc).__name__
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                kind, problem = "broken", type(exc).__name__
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise EmbedderError(f"cannot call Ollama at {self._public_url} ({type(exc).__name__}: {exc}): "
                                    "check oneiric_memory.embedder.base_url, e.g. http://localhost:11434") from None
            else:
                status = response.status_code
                if status < 400:
                    return response
                detail = self._error_detail(response)
                if status != 429 and status < 500:
                    raise self._client_error(status, detail, path)
                kind = "rate_limited" if status == 429 else "server_error"
                problem = f"HTTP {status}: {detail}"
                retry_after = _parse_retry_after(response.headers.get("Retry-After"))
            if attempt >= cfg.retry_attempts:
                break
            delay = _retry_delay(attempt, retry_after, base=cfg.retry_base_delay_s, cap=cfg.retry_max_delay_s)
            if loop.time() + delay >= deadline:
                break  # the wait alone would overrun total_timeout_s: fail now, not at the deadline
            self._log.warning("embedder-retry", path=path, attempt=attempt, reason=kind, problem=problem,
                              delay_s=round(delay, 3))
            await asyncio.sleep(delay)
        raise EmbedderUnavailable(self._give_up_message(kind, problem, attempt), reason=kind, attempts=attempt)

    def _give_up_message(self, kind: _ProblemKind, problem: str, attempts: int) -> str:
        url, cfg = self._public_url, self._cfg
        tried = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
        if kind == "unreachable":
            return (f"Ollama is not reachable at {url} ({problem}, {tried}): start it with `ollama serve` or set "
                    "oneiric_memory.embedder.base_url")
        if kind == "timeout":
            return (f"Ollama at {url} did not answer within embedder.request_timeout_s="
                    f"{cfg.request_timeout_s:g}s ({tried}): the model may still be loading or the machine is "
                    "overloaded; retry later, lower oneiric_memory.embedder.batch_size or raise "
                    "oneiric_memory.embedder.request_timeout_s")
        if kind == "broken":
            return (f"the connection to Ollama at {url} broke ({problem}, {tried}): check that Ollama is healthy "
                    "and that nothing between us and it drops connections; retry later")
        if kind == "rate_limited":
            return (f"Ollama at {url} is refusing work ({problem}, {tried}): it is overloaded; lower "
                    "oneiric_memory.embedder.max_concurrency or retry later")
        return (f"Ollama at {url} keeps failing ({problem}, {tried}): check the Ollama server log; the call "
                "can be retried later")

    @staticmethod
    def _error_detail(response: httpx.Response) -> str:
        try:
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                return str(body["error"])[:_DETAIL_CHARS]
        except ValueError:
            pass
        return response.text[:_DETAIL_CHARS].strip() or response.reason_phrase

    def _client_error(self, status: int, detail: str, path: str) -> EmbedderError:
        url = self._public_url
        if status == 404 and "model" in detail.lower():
            return EmbedderError(f"model {self._model} is not pulled at {url} ({detail}): run `ollama pull "
                                 f"{self._model}`", status=status, model=self._model)
        if status == 404:
            return EmbedderError(f"{url} has no {path} endpoint (HTTP 404): upgrade Ollama to 0.3 or later, or "
                                 "check that oneiric_memory.embedder.base_url points at Ollama", status=status)
        if status == 400:
            return EmbedderError(f"Ollama at {url} rejected the request (HTTP 400: {detail}): if the text is too "
                                 "long for the model, set oneiric_memory.embedder.truncate: true or split it",
                                 status=status)
        return EmbedderError(f"Ollama at {url} refused the request (HTTP {status}: {detail}): check "
                             "oneiric_memory.embedder.base_url and any proxy in front of Ollama; not retried",
                             status=status)

    async def _probe(self) -> tuple[bool, str]:
        """One bounded ``GET /api/tags``: (healthy, why not)."""
        if self._closed:
            return False, "the embedder was cleaned up"
        client = await self._ensure_client()
        budget = min(_HEALTH_TIMEOUT_S, self._cfg.request_timeout_s)
        try:
            async with asyncio.timeout(budget + 0.5):
                response = await client.get(
                    "/api/tags", timeout=httpx.Timeout(budget, connect=min(budget, self._cfg.connect_timeout_s)))
        except TimeoutError:
            return False, f"Ollama at {self._public_url} did not answer within {budget:g}s"
        except (httpx.ConnectError, httpx.ConnectTimeout):
            return False, self._unreachable()
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return False, f"Ollama at {self._public_url} failed the probe ({type(exc).__name__})"
        if response.status_code != 200:
            return False, f"Ollama at {self._public_url} answered HTTP {response.status_code} to /api/tags"
        try:
            names = self._model_names(self._parse_tags(response.content))
        except EmbedderError as exc:
            return False, exc.message
        if not any(_canonical(self._model) == _canonical(name) for name in names):
            return False, f"model {self._model} is no longer pulled: run `ollama pull {self._model}`"
        return True, "ok"


async def ollama_embedder_factory(settings: MemorySettings | None = None) -> OllamaEmbedder:
    """The one way to build it: settings (loaded when omitted, as Oneiric calls it with no arguments), build,
    ``init()``; closes the client if init fails."""
    embedder = OllamaEmbedder(settings or load_settings())
    try:
        await embedder.init()
    except BaseException:
        await embedder.cleanup()
        raise
    return embedder
