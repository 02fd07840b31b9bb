"""What the model embedders (the HTTP ones and the in-process local model) share around their model call.

Task prefixes by model name (``search_document: `` / ``search_query: `` for nomic-embed-text), the LRU cache for
query embeddings (the same searches repeat), one metering of every call (span, latency histogram, the last error
that health reports), the async context manager, and the factories' "init, or clean up and re-raise". Each
embedder says only how it embeds a list of already-prefixed texts (:meth:`PrefixedEmbedder._embed_prefixed`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

from oneiric_memory.adapters.embedders.inputs import check_query, check_texts, task_prefixes
from oneiric_memory.adapters.embedders.query_cache import QueryCache
from oneiric_memory.errors import OneiricMemoryError
from oneiric_memory.observability import INSTRUMENTS, Stopwatch, span
from oneiric_memory.settings import EmbedderSettings, MemorySettings, TaskPrefixes

__all__ = ["DETAIL_CHARS", "PrefixedEmbedder", "initialized"]

DETAIL_CHARS = 200
"""How much of an error message health keeps (and the HTTP embedders quote of a server's answer)."""


class PrefixedEmbedder:
    """Mixin for an embedder that runs a model: prefixes, query cache, metering, ``async with``.

    The subclass sets ``_memory_settings``, ``_cfg``, ``_cache`` and ``_last_error`` in its constructor, names its
    model (``model``) and implements ``_embed_prefixed``, ``init`` and ``cleanup``.
    """

    provider: ClassVar[str] = ""
    _memory_settings: MemorySettings
    _cfg: EmbedderSettings
    _cache: QueryCache
    _last_error: str | None

    @property
    def memory_settings(self) -> MemorySettings:
        return self._memory_settings

    @property
    @abstractmethod
    def model(self) -> str:
        """The model name requests and prefixes use."""

    @property
    def cache_hits(self) -> int:
        return self._cache.hits

    @property
    def cache_misses(self) -> int:
        return self._cache.misses

    @property
    def cache_hit_ratio(self) -> float:
        return self._cache.hit_ratio

    def prefixes_for(self, model: str | None = None) -> TaskPrefixes:
        """Task prefixes configured for ``model``; ``name`` and ``name:latest`` match, then the bare name."""
        return task_prefixes(self._cfg.task_prefixes, model or self.model)

    @abstractmethod
    async def _embed_prefixed(self, inputs: list[str], *, kind: str) -> list[list[float]]:
        """Vectors for already-prefixed ``inputs`` (``kind`` is "documents" or "query", for metering)."""

    @abstractmethod
    async def init(self) -> None: ...

    @abstractmethod
    async def cleanup(self) -> None: ...

    # --- the Embedder protocol -------------------------------------------------------------------

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed stored text, with the model's document prefix. An empty list costs nothing."""
        check_texts(texts)
        if not texts:
            return []
        prefix = self.prefixes_for().document
        return await self._embed_prefixed([prefix + text for text in texts], kind="documents")

    async def embed_query(self, text: str) -> list[float]:
        """Embed a search query, with the model's query prefix; repeated queries come from the LRU cache."""
        check_query(text)
        prefix = self.prefixes_for().query
        key = (self.model, prefix, text)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        vector = (await self._embed_prefixed([prefix + text], kind="query"))[0]
        self._cache.put(key, vector)
        return vector

    @contextmanager
    def _metered(self, *, model: str, kind: str, **attributes: Any) -> Iterator[None]:
        """One embedding call: an ``embed`` span, the latency histogram by outcome, and ``_last_error``."""
        watch = Stopwatch()
        outcome = "error"
        try:
            with span("embed", provider=self.provider, model=model, kind=kind, **attributes):
                yield
            outcome = "ok"
            self._last_error = None
        except OneiricMemoryError as exc:
            self._last_error = f"{type(exc).__name__}: {exc.message[:DETAIL_CHARS]}"
            raise
        finally:
            INSTRUMENTS.embed_latency.record(watch.ms, {"provider": self.provider, "model": model, "kind": kind,
                                                        "outcome": outcome})

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


class _Startable(Protocol):
    async def init(self) -> None: ...

    async def cleanup(self) -> None: ...


async def initialized[E: _Startable](embedder: E) -> E:
    """``init()`` a freshly built embedder; if that fails, ``cleanup()`` (no client or model left open) and
    re-raise. What every embedder factory does after building its instance."""
    try:
        await embedder.init()
    except BaseException:
        await embedder.cleanup()
        raise
    return embedder
