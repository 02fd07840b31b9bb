"""The contracts the store and the coordinator rely on: the embedder (and, beside it, the insight sink).

Both :class:`~oneiric_memory.adapters.hashing_embedder.HashingEmbedder` and
:class:`~oneiric_memory.adapters.ollama_embedder.OllamaEmbedder` satisfy it. ``model_id`` is what the
store records in its meta table, so two different models never share one vector space by accident.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from mcp_common.health import ComponentHealth

__all__ = ["Embedder"]


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
