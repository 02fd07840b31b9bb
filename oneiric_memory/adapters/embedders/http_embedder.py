"""What the two HTTP embedders (Ollama, OpenAI-compatible) share: calling a model server fast, bounded and honestly.

* batched requests over one reused ``httpx.AsyncClient`` connection pool, at most ``embedder.max_concurrency``
  requests in flight (a semaphore, the pool is sized to match);
* per-request timeouts, and one bound on the whole call including retries (``embedder.total_timeout_s``);
* retries with exponential backoff and jitter on connection errors, timeouts, 5xx and 429 (``Retry-After`` is
  honoured, capped by ``embedder.retry_max_delay_s``), never on other 4xx: those are our bug or a config error;
* ``EmbedderUnavailable`` (transient: try later) is kept apart from ``EmbedderError`` (fix something), and each
  message says what to do;
* task prefixes per model and the LRU cache for query embeddings (:class:`.prefixed.PrefixedEmbedder`'s, shared with
  the local embedder);
* a dimension probe at start, checked against the store's ``postgres.vector_dimension``.

A subclass says where the server's API differs: its start-up checks, the embed request and the name of the
vectors in the answer, its health probe, and the advice its messages give. It subclasses Oneiric's
``EmbeddingBase`` (so ``embed_texts``/``embed_text`` work as for Oneiric's own adapters, on oneiric 0.17 and
0.33) and satisfies :class:`~oneiric_memory.protocols.Embedder`. The two disagree on ``embed_documents``: here
it is the protocol's (texts in, vectors out); Oneiric's chunking variant is :meth:`embed_document_chunks`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import ssl
from abc import abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar, Literal
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
from oneiric_memory.adapters.embedders.prefixed import DETAIL_CHARS, PrefixedEmbedder
from oneiric_memory.adapters.embedders.query_cache import QueryCache
from oneiric_memory.errors import EmbedderError, EmbedderUnavailable, InvalidInput, first_error
from oneiric_memory.observability import Stopwatch, get_logger, span
from oneiric_memory.settings import MemorySettings

if TYPE_CHECKING:  # mcp_common pulls in fastmcp (seconds per process): imported where a health is built
    from mcp_common.health import ComponentHealth

__all__ = ["HttpEmbedder", "ProblemKind", "canonical_model", "parse_retry_after", "redact_url",
           "retry_delay"]

HEALTH_TIMEOUT_S = 2.0
"""Upper bound of one health probe; health must stay cheap even when the server hangs."""
_CLEANUP_GRACE_S = 5.0
"""How long cleanup() waits for in-flight calls before closing the connections (lifecycle allows 10 s)."""
_JSON_THREAD_BYTES = 256 * 1024
"""Responses larger than this are decoded in a worker thread, off the event loop."""
_UNIT_TOLERANCE = 1e-6
"""Rows whose squared norm is this close to 1 (a server's normalised output) are left alone: norm within 5e-7."""

ProblemKind = Literal["unreachable", "timeout", "broken", "rate_limited", "server_error"]


def canonical_model(model: str) -> str:
    """Ollama treats ``name`` and ``name:latest`` as one model; so do our settings and ``model_id``."""
    return model.removesuffix(":latest")


def redact_url(url: str) -> str:
    """The URL without credentials, for messages, logs and health metadata."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"***@{parts.hostname or ''}{port}"))
    except ValueError:
        return "<invalid url>"


def parse_retry_after(value: str | None) -> float | None:
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


def retry_delay(attempt: int, retry_after: float | None, *, base: float, cap: float) -> float:
    """Exponential backoff with jitter (half fixed, half random); at least ``Retry-After``; at most ``cap``."""
    backoff = min(cap, base * (2.0 ** (attempt - 1)))
    delay = backoff * (0.5 + random.random() / 2)  # jitter, not cryptography
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(cap, delay)


@cache
def _shared_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context per process: building one reads the CA bundle (~0.2 s) and is the bulk of
    creating an ``httpx.AsyncClient``."""
    return httpx.create_ssl_context()


class HttpEmbedder(PrefixedEmbedder, EmbeddingBase):  # type: ignore[misc, unused-ignore]  # oneiric: no py.typed
    """Embeddings from a model server over HTTP; see the module docstring. Subclasses fill in the API.

    ``transport`` replaces httpx's network transport (e.g. ``httpx.MockTransport``) for callers that want
    to test without sockets; the package's own tests use real loopback servers instead.
    """

    provider: ClassVar[str] = ""
    server_name: ClassVar[str] = ""
    """How messages name the server ("Ollama", "the OpenAI-compatible server")."""
    example_url: ClassVar[str] = ""
    embed_path: ClassVar[str] = ""
    checks_reachability: ClassVar[bool] = False
    """True when ``_start_checks`` already failed fast on a refused connection (the probe may then retry)."""

    def __init__(self, settings: MemorySettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        cfg = settings.embedder
        # Oneiric's base class reads model/batch_size/normalize_embeddings/chunking from this object.
        # model_construct: no validation and no env reading (in oneiric 0.33 it is a BaseSettings).
        super().__init__(EmbeddingBaseSettings.model_construct(
            model=cfg.model, base_url=cfg.url_for(self.provider), batch_size=cfg.batch_size,
            normalize_embeddings=cfg.normalize, timeout=cfg.request_timeout_s,
            max_retries=cfg.retry_attempts - 1,
        ))
        self._client: httpx.AsyncClient | None = None
        self._memory_settings = settings
        self._cfg = cfg
        self._model = cfg.model
        self._base_url = self._server_root(cfg.url_for(self.provider))
        self._public_url = redact_url(self._base_url)
        self._transport = transport
        self._semaphore = asyncio.Semaphore(cfg.max_concurrency)
        self._cache = QueryCache(cfg.query_cache_size)
        self._dimension: int | None = None
        self._initialized = False
        self._closed = False
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_error: str | None = None
        self._log = get_logger("oneiric_memory.embedder", provider=self.provider,
                               model=canonical_model(self._model), base_url=self._public_url)

    # --- what a subclass says about its server ---------------------------------------------------------

    def _server_root(self, url: str) -> str:
        """The base URL requests are relative to (the OpenAI client adds ``/v1`` when missing)."""
        return url.rstrip("/")

    def _headers(self) -> dict[str, str]:
        return {"User-Agent": "oneiric-memory"}

    @abstractmethod
    async def _start_checks(self, deadline: float) -> None:
        """Server-specific checks before the dimension probe (e.g. that the model is pulled)."""

    @abstractmethod
    def _embed_payload(self, inputs: list[str], model: str) -> dict[str, Any]: ...

    @abstractmethod
    def _vectors_of(self, body: Any, expected: int) -> list[Any]:
        """The list of vectors in a parsed answer; raises ``EmbedderError`` naming what is wrong."""

    @abstractmethod
    async def _probe(self) -> tuple[bool, str]:
        """One bounded, cheap request (never an embedding): (healthy, why not)."""

    @abstractmethod
    def _unreachable(self, why: str = "") -> str:
        """The sentence for "nothing answers at the URL" (``why`` goes right after the URL), with what to do."""

    @abstractmethod
    def _client_error(self, status: int, detail: str, path: str) -> EmbedderError:
        """The error for a 4xx other than 429: never retried, and it says what to fix."""

    def _model_damaged_hint(self) -> str:
        return "check the server's model file and logs"

    def _healthy_message(self) -> str:
        return f"{self.server_name} answers; model {canonical_model(self._model)} is ready"

    # --- identity --------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        return self._model

    @property
    def base_url(self) -> str:
        """The configured base URL without credentials."""
        return self._public_url

    @property
    def model_id(self) -> str:
        """``<provider>:<model>`` (``:latest`` dropped), plus ``@<dimensions>`` under Matryoshka truncation."""
        suffix = f"@{self._cfg.dimensions}" if self._cfg.dimensions is not None else ""
        return f"{self.provider}:{canonical_model(self._model)}{suffix}"

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

    # --- the Embedder protocol (embed_documents, embed_query: PrefixedEmbedder's) ---------------------

    async def _embed_prefixed(self, inputs: list[str], *, kind: str) -> list[list[float]]:
        return await self._embed_many(inputs, model=self._model, batch_size=self._cfg.batch_size,
                                      normalize=self._cfg.normalize, kind=kind)

    async def init(self) -> None:
        """Check that the server answers and is ready, then probe the dimension against the store's.

        Connection refused is not retried here (a server not running is not a blip), so the ``auto`` provider
        moves on at once.
        """
        if self._initialized:
            return
        watch = Stopwatch()
        with span("embedder.init", provider=self.provider, model=canonical_model(self._model)):
            try:
                async with self._total_budget() as deadline:
                    await self._start_checks(deadline)
                    probe = await self._embed_batch([self.prefixes_for().document + "dimension probe"],
                                                    model=self._model, normalize=False, deadline=deadline,
                                                    retry_connect=not self.checks_reachability)
            except TimeoutError:
                raise EmbedderUnavailable(
                    f"{self.server_name} at {self._public_url} did not answer the start-up checks within "
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
        name = self.server_name
        if wanted is not None and actual != wanted:
            raise EmbedderError(
                f"{name} answers {actual} dims although embedder.dimensions is {wanted}: model {self._model} "
                f"(or this {name} version) does not truncate (Matryoshka); remove embedder.dimensions and set "
                f"postgres.vector_dimension: {actual} (a migration), or use a model that supports it",
                expected=wanted, actual=actual)
        if actual != store:
            raise EmbedderError(
                f"{name} answers {actual} dims, the store expects {store}: set postgres.vector_dimension: "
                f"{actual} (a migration) or embedder.dimensions: {store} (if the model supports Matryoshka)",
                expected=store, actual=actual)

    async def health(self) -> bool:
        """A cheap probe (never an embedding); False on any problem, never raises."""
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
            status, message = HealthStatus.DEGRADED, f"{self.server_name} answers but init() has not run"
        elif self._last_error is not None:
            status, message = HealthStatus.DEGRADED, f"{self.server_name} answers; the last embedding call " \
                                                     f"failed: {self._last_error}"
        else:
            status, message = HealthStatus.HEALTHY, self._healthy_message()
        return ComponentHealth(name="embedding", status=status, message=message, latency_ms=latency,
                               metadata=self._metadata())

    def _metadata(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": canonical_model(self._model),
            "model_id": self.model_id,
            "dimension": self.dimension,
            "base_url": self._public_url,
            "initialized": self._initialized,
            **self._cache.stats(),
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

    # --- Oneiric's EmbeddingBase ----------------------------------------------------------------

    async def _ensure_client(self) -> httpx.AsyncClient:
        if self._client is None and not self._closed:
            tls = await asyncio.to_thread(_shared_ssl_context)  # file I/O, once per process
        if self._client is None:  # checked again: another task may have built it during the await
            if self._closed:
                raise EmbedderUnavailable(
                    f"this {self.provider} embedder was cleaned up (the lifecycle replaced or stopped it): look "
                    "the embedder up again for each operation instead of keeping the instance")
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
                    headers=self._headers(),
                )
            except (httpx.InvalidURL, ValueError, TypeError) as exc:
                raise EmbedderError(f"embedder.base_url {self._public_url!r} is not a usable URL "
                                    f"({type(exc).__name__}): set oneiric_memory.embedder.base_url, e.g. "
                                    f"{self.example_url}") from None
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
        batches = [inputs[start:start + batch_size] for start in range(0, len(inputs), batch_size)]
        self._begin()
        try:
            with self._metered(model=canonical_model(model), kind=kind, texts=len(inputs), batches=len(batches)):
                try:
                    async with self._total_budget() as deadline:
                        if len(batches) == 1:
                            results = [await self._embed_batch(batches[0], model=model, normalize=normalize,
                                                               deadline=deadline)]
                        else:
                            results = await self._embed_concurrently(batches, model=model, normalize=normalize,
                                                                     deadline=deadline)
                except TimeoutError:
                    raise EmbedderUnavailable(
                        f"{self.server_name} at {self._public_url} did not embed {len(inputs)} text(s) within "
                        f"embedder.total_timeout_s={self._cfg.total_timeout_s:g}s: check that it is running and "
                        "not overloaded, lower oneiric_memory.embedder.batch_size or raise "
                        "oneiric_memory.embedder.total_timeout_s", texts=len(inputs)) from None
            return [vector for batch in results for vector in batch]
        finally:
            self._end()

    @asynccontextmanager
    async def _total_budget(self) -> AsyncIterator[float]:
        """The bound on one whole call, retries included (``embedder.total_timeout_s``); yields its deadline."""
        async with asyncio.timeout(self._cfg.total_timeout_s):
            yield asyncio.get_running_loop().time() + self._cfg.total_timeout_s

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

    async def _embed_batch(self, inputs: list[str], *, model: str, normalize: bool, deadline: float,
                           retry_connect: bool = True) -> list[list[float]]:
        response = await self._request("POST", self.embed_path, payload=self._embed_payload(inputs, model),
                                       deadline=deadline, retry_connect=retry_connect)
        content = response.content
        check = canonical_model(model) == canonical_model(self._model)
        if len(content) > _JSON_THREAD_BYTES:
            return await asyncio.to_thread(self._parse_embeddings, content, len(inputs), normalize, check)
        return self._parse_embeddings(content, len(inputs), normalize, check)

    def _parse_embeddings(self, content: bytes, expected: int, normalize: bool,
                          check_dimension: bool) -> list[list[float]]:
        url, name = self._public_url, self.server_name
        try:
            body = json.loads(content)  # (parse_int=float would make this 2.5x slower; an int is a float here)
        except ValueError:
            raise EmbedderError(f"{name} at {url} answered a body that is not JSON ({len(content)} bytes): check "
                                f"that oneiric_memory.embedder.base_url points at {name} itself, not at a proxy "
                                "or another service") from None
        embeddings = self._vectors_of(body, expected)
        if len(embeddings) != expected:
            raise EmbedderError(f"{name} at {url} answered {len(embeddings)} embeddings for {expected} inputs: "
                                "the server or a proxy in front of it is misbehaving; check its version and logs",
                                expected=expected, actual=len(embeddings))
        # Plain Python, no numpy round trip: math.sumprod runs at C speed, while converting a 256 x 768 answer
        # to an array and back added about a quarter to the cost of decoding its JSON.
        first = embeddings[0] if embeddings else None
        width = len(first) if isinstance(first, list) else 0
        if width == 0:
            raise EmbedderError(f"{name} at {url} answered embeddings with no values (shape ({expected}, 0)): "
                                f"check the {name} version and logs")
        if check_dimension and self._dimension is not None and width != self._dimension:
            raise EmbedderError(f"{name} answered {width} dims, but {self._dimension} at start-up: model "
                                f"{self._model} was replaced while running; restart, and migrate if the dimension "
                                "really changed", expected=self._dimension, actual=width)
        vectors: list[list[float]] = []
        for row in embeddings:
            try:
                if not isinstance(row, list) or len(row) != width:
                    raise TypeError
                square = math.sumprod(row, row)
            except TypeError:
                raise EmbedderError(f"{name} at {url} answered embeddings that are not rows of numbers of one "
                                    f"length: check the {name} version and logs") from None
            if not math.isfinite(square):
                raise EmbedderError(f"{name} at {url} answered NaN or infinite values: the model file may be "
                                    f"damaged; {self._model_damaged_hint()}")
            if normalize and square > 0.0 and abs(square - 1.0) > _UNIT_TOLERANCE:
                scale = 1.0 / math.sqrt(square)
                row = [value * scale for value in row]
            vectors.append(row)
        return vectors

    async def _request(self, method: str, path: str, *, deadline: float, payload: dict[str, Any] | None = None,
                       retry_connect: bool = True) -> httpx.Response:
        """One logical request with retries on transient failures; raises our errors, never httpx's."""
        client = await self._ensure_client()
        cfg = self._cfg
        loop = asyncio.get_running_loop()
        attempt = 0
        kind: ProblemKind = "unreachable"
        problem = ""
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                async with self._semaphore:
                    response = await client.request(method, path, json=payload)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Refused means nothing listens: not a blip, so start-up fails at once. A connect timeout may be
                # an overloaded machine, so it is retried like any transient fault.
                if not retry_connect and isinstance(exc, httpx.ConnectError):
                    raise EmbedderUnavailable(self._unreachable(), cause=type(exc).__name__) from None
                kind, problem = "unreachable", type(exc).__name__
            except httpx.TimeoutException as exc:
                kind, problem = "timeout", type(exc).__name__
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                kind, problem = "broken", type(exc).__name__
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise EmbedderError(f"cannot call {self.server_name} at {self._public_url} ({type(exc).__name__}: "
                                    f"{exc}): check oneiric_memory.embedder.base_url, e.g. {self.example_url}"
                                    ) from None
            else:
                status = response.status_code
                if status < 400:
                    return response
                detail = self._error_detail(response)
                if status != 429 and status < 500:
                    raise self._client_error(status, detail, path)
                kind = "rate_limited" if status == 429 else "server_error"
                problem = f"HTTP {status}: {detail}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if attempt >= cfg.retry_attempts:
                break
            delay = retry_delay(attempt, retry_after, base=cfg.retry_base_delay_s, cap=cfg.retry_max_delay_s)
            if loop.time() + delay >= deadline:
                break  # the wait alone would overrun total_timeout_s: fail now, not at the deadline
            self._log.warning("embedder-retry", path=path, attempt=attempt, reason=kind, problem=problem,
                              delay_s=round(delay, 3))
            await asyncio.sleep(delay)
        raise EmbedderUnavailable(self._give_up_message(kind, problem, attempt), reason=kind, attempts=attempt)

    def _give_up_message(self, kind: ProblemKind, problem: str, attempts: int) -> str:
        url, cfg, name = self._public_url, self._cfg, self.server_name
        tried = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
        if kind == "unreachable":
            return self._unreachable(f" ({problem}, {tried})")
        if kind == "timeout":
            return (f"{name} at {url} did not answer within embedder.request_timeout_s="
                    f"{cfg.request_timeout_s:g}s ({tried}): the model may still be loading or the machine is "
                    "overloaded; retry later, lower oneiric_memory.embedder.batch_size or raise "
                    "oneiric_memory.embedder.request_timeout_s")
        if kind == "broken":
            return (f"the connection to {name} at {url} broke ({problem}, {tried}): check that {name} is healthy "
                    "and that nothing between us and it drops connections; retry later")
        if kind == "rate_limited":
            return (f"{name} at {url} is refusing work ({problem}, {tried}): it is overloaded; lower "
                    "oneiric_memory.embedder.max_concurrency or retry later")
        return (f"{name} at {url} keeps failing ({problem}, {tried}): check the {name} server log; the call "
                "can be retried later")

    @staticmethod
    def _error_detail(response: httpx.Response) -> str:
        """The server's own error text: ``{"error": "..."}`` (Ollama) or ``{"error": {"message": ...}}`` (OpenAI)."""
        try:
            body = response.json()
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict):
                error = error.get("message")
            if isinstance(error, str):
                return error[:DETAIL_CHARS]
        except ValueError:
            pass
        return response.text[:DETAIL_CHARS].strip() or response.reason_phrase

    async def _get(self, path: str) -> tuple[httpx.Response | None, str]:
        """One bounded GET for health probes: (the response, or None and why nothing answered)."""
        if self._closed:
            return None, "the embedder was cleaned up"
        client = await self._ensure_client()
        budget = min(HEALTH_TIMEOUT_S, self._cfg.request_timeout_s)
        try:
            async with asyncio.timeout(budget + 0.5):
                response = await client.get(
                    path, timeout=httpx.Timeout(budget, connect=min(budget, self._cfg.connect_timeout_s)))
        except TimeoutError:
            return None, f"{self.server_name} at {self._public_url} did not answer within {budget:g}s"
        except (httpx.ConnectError, httpx.ConnectTimeout):
            return None, self._unreachable()
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return None, f"{self.server_name} at {self._public_url} failed the probe ({type(exc).__name__})"
        return response, "ok"
