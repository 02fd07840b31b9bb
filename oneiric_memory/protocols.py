"""The contracts the store and the coordinator rely on: the embedder and the insight sink.

Both :class:`~oneiric_memory.adapters.embedders.hashing.HashingEmbedder` and
:class:`~oneiric_memory.adapters.embedders.ollama.OllamaEmbedder` satisfy it. ``model_id`` is what the
store records in its meta table, so two different models never share one vector space by accident.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from oneiric_memory.insights import Insight, InsightHit

if TYPE_CHECKING:  # an annotation only: importing mcp_common pulls in fastmcp, seconds per process
    from mcp_common.health import ComponentHealth

__all__ = ["Embedder", "InsightSink"]


@runtime_checkable
class Embedder(Protocol):
    """Texts in, vectors out. Raises ``EmbedderUnavailable`` (transient) or ``EmbedderError``."""

    @property
    def model_id(self) -> str:
        """Stable identifier of the vector space, e.g. ``ollama:nomic-embed-text`` or ``hashing:v1``."""
        ...

    @property
    def dimension(self) -> int: ...

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed stored text (document task prefix applied)."""
        ...

    async def embed_query(self, text: str) -> list[float]:
        """Embed a search query (query prefix applied, cached)."""
        ...

    async def init(self) -> None: ...

    async def health(self) -> bool: ...

    async def component_health(self) -> ComponentHealth: ...

    async def cleanup(self) -> None: ...


@runtime_checkable
class InsightSink(Protocol):
    """Where insights go (Session-Buddy: :class:`~oneiric_memory.adapters.session_buddy.SessionBuddyInsightSink`).

    Every method raises ``InsightSinkError`` when the sink cannot be reached now (the caller keeps the work
    queued) and ``InvalidInput`` for bad arguments.
    """

    async def deliver(self, insight: Insight) -> str:
        """Store ``insight`` (it needs ``project``); returns the sink's id for it. Idempotent by ``insight_id``."""
        ...

    def batch(self) -> AbstractAsyncContextManager[str]:
        """Keep the sink open for several calls (one open of Session-Buddy's file); yields the mode used."""
        ...

    async def search_insights(self, query: str, limit: int = 10,
                              projects: Sequence[str] | None = None) -> list[InsightHit]:
        """Insights matching ``query`` (``'*'`` lists them), optionally only from ``projects``."""
        ...

    async def delete_insights(self, ids: Sequence[str]) -> int:
        """Delete delivered insights by insight id (or the id ``deliver`` returned); the number deleted.

        Idempotent: unknown or already deleted ids are ignored.
        """
        ...

    async def init(self) -> None: ...

    async def health(self) -> bool: ...

    async def component_health(self) -> ComponentHealth: ...

    async def cleanup(self) -> None: ...
