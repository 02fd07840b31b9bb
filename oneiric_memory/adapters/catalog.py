"""The one list of the package's adapter candidates: what Oneiric's resolver may build, and how.

Both registrations read it: the coordinator's own resolver (when no app lifecycle is passed) and the
``oneiric.adapters`` entry point in :mod:`oneiric_memory.plugin`. Each candidate is built the one way, by its
adapter's ``*_factory(settings)``, imported lazily: loading this list (at plugin discovery) imports no adapter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from oneiric_memory.adapters.session_buddy.sink import BacklogProvider
    from oneiric_memory.settings import MemorySettings

__all__ = ["ADAPTERS", "AdapterContext", "AdapterSpec"]


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """What a running coordinator hands its adapters beyond the settings (nothing, under a bare Oneiric app)."""

    backlog_provider: BacklogProvider | None = None


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """One candidate: Oneiric's key (category, provider), its priority and description, and its factory."""

    category: str
    provider: str
    priority: int
    capabilities: tuple[str, ...]
    description: str
    requires_secrets: bool
    build: Callable[[MemorySettings, AdapterContext], Awaitable[Any]]


async def _pgvector_store(settings: MemorySettings, _context: AdapterContext) -> Any:
    from oneiric_memory.adapters.pgvector import pgvector_store_factory

    return await pgvector_store_factory(settings)


def _embedder(provider: str) -> Callable[[MemorySettings, AdapterContext], Awaitable[Any]]:
    async def build(settings: MemorySettings, _context: AdapterContext) -> Any:
        from oneiric_memory.adapters.embedders.selection import build_embedder

        return await build_embedder(provider, settings)

    build.__name__ = build.__qualname__ = f"{provider}_embedder"
    return build


async def _session_buddy_sink(settings: MemorySettings, context: AdapterContext) -> Any:
    from oneiric_memory.adapters.session_buddy import session_buddy_sink_factory

    return await session_buddy_sink_factory(settings, backlog_provider=context.backlog_provider)


ADAPTERS: tuple[AdapterSpec, ...] = (
    AdapterSpec("memory_store", "pgvector", 700,
                ("vector", "text", "hybrid", "filters", "dedup", "batch", "bulk-load"),
                "PostgreSQL + pgvector memory store", True, _pgvector_store),
    AdapterSpec("embedding", "ollama", 600, ("embed", "batch", "cache"), "Ollama embeddings (nomic-embed-text)",
                False, _embedder("ollama")),
    AdapterSpec("embedding", "openai", 550, ("embed", "batch", "cache", "openai-compatible"),
                "OpenAI-compatible /v1/embeddings: llama-server, vLLM, TEI, OpenAI, Ollama /v1", True,
                _embedder("openai")),
    AdapterSpec("embedding", "local", 300, ("embed", "batch", "cache", "offline", "in-process"),
                "in-process ONNX sentence-embedding model (extra oneiric-memory[local])", False, _embedder("local")),
    AdapterSpec("embedding", "hashing", 100, ("embed", "offline", "lexical"),
                "deterministic offline hashing embedder", False, _embedder("hashing")),
    AdapterSpec("insight_sink", "session_buddy", 600, ("insights", "search", "mcp", "in-process"),
                "delivers insights to Session-Buddy", False, _session_buddy_sink),
)
"""Every adapter candidate, highest priority first within a category."""
