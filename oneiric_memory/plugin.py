"""Oneiric registration: the ``oneiric.adapters`` entry point.

The entry-point callable returns ``AdapterMetadata`` with **callable** async zero-argument factories (string
factories outside ``oneiric.`` are refused by Oneiric's allowlist). It never raises: Oneiric aborts plugin loading
for the whole app on unexpected exceptions, so any failure is turned into an empty list and a log line.
Each factory loads the settings itself, builds its adapter and awaits ``init()`` (Oneiric never calls it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from oneiric_memory.errors import without_driver_chain
from oneiric_memory.version import __version__

__all__ = ["ADAPTER_SPECS", "FACTORIES", "oneiric_adapters"]

# category, provider, priority, capabilities, description
ADAPTER_SPECS: tuple[tuple[str, str, int, tuple[str, ...], str], ...] = (
    ("memory_store", "pgvector", 700, ("vector", "text", "hybrid", "filters", "dedup", "batch", "bulk-load"),
     "PostgreSQL + pgvector memory store"),
    ("embedding", "ollama", 600, ("embed", "batch", "cache"), "Ollama embeddings (nomic-embed-text)"),
    ("embedding", "openai", 550, ("embed", "batch", "cache", "openai-compatible"),
     "OpenAI-compatible /v1/embeddings: llama-server, vLLM, TEI, OpenAI, Ollama /v1"),
    ("embedding", "local", 300, ("embed", "batch", "cache", "offline", "in-process"),
     "in-process ONNX sentence-embedding model (extra oneiric-memory[local])"),
    ("embedding", "hashing", 100, ("embed", "offline", "lexical"), "deterministic offline hashing embedder"),
    ("insight_sink", "session_buddy", 600, ("insights", "search", "mcp", "in-process"),
     "delivers insights to Session-Buddy"),
    ("memory", "unified", 600, ("remember", "search", "unified-search", "forget", "health"),
     "unified memory coordinator for Mahavishnu"),
)


async def _pgvector_store() -> Any:
    from oneiric_memory.adapters.pgvector import pgvector_store_factory

    return await pgvector_store_factory()


def _embedder(provider: str) -> Callable[[], Awaitable[Any]]:
    """Oneiric's zero-argument factory for one embedder: built through the selection's one way."""

    async def build() -> Any:
        from oneiric_memory.adapters.embedders.selection import build_embedder
        from oneiric_memory.settings import load_settings

        return await build_embedder(provider, load_settings())

    build.__name__ = build.__qualname__ = f"{provider}_embedder"
    return build


async def _session_buddy_sink() -> Any:
    from oneiric_memory.adapters.session_buddy import session_buddy_sink_factory

    return await session_buddy_sink_factory()


async def _unified_memory() -> Any:
    from oneiric_memory.coordinator import unified_memory_factory

    return await without_driver_chain(unified_memory_factory())


FACTORIES = {
    ("memory_store", "pgvector"): _pgvector_store,
    ("embedding", "ollama"): _embedder("ollama"),
    ("embedding", "openai"): _embedder("openai"),
    ("embedding", "local"): _embedder("local"),
    ("embedding", "hashing"): _embedder("hashing"),
    ("insight_sink", "session_buddy"): _session_buddy_sink,
    ("memory", "unified"): _unified_memory,
}


def oneiric_adapters() -> list[Any]:
    """Entry point of group ``oneiric.adapters``: the package's adapters as ``AdapterMetadata``."""
    try:
        from oneiric.adapters.metadata import AdapterMetadata
        from oneiric.core.resolution import CandidateSource

        return [
            AdapterMetadata(
                category=category, provider=provider, factory=FACTORIES[(category, provider)],
                version=__version__, description=description, capabilities=list(capabilities), priority=priority,
                source=CandidateSource.ENTRY_POINT, owner="oneiric-memory",
                requires_secrets=(category, provider) in (("memory_store", "pgvector"), ("embedding", "openai")),
                extras={"package": "oneiric-memory", "settings_block": "oneiric_memory"},
            )
            for category, provider, priority, capabilities, description in ADAPTER_SPECS
        ]
    except Exception as exc:  # never let plugin loading abort the host app
        import structlog

        structlog.get_logger("oneiric_memory.plugin").warning("plugin-registration-failed", error=type(exc).__name__)
        return []
