"""oneiric-memory: one reliable, fast memory for Mahavishnu and any Oneiric app.

PostgreSQL + pgvector store, Ollama (or offline hashing) embeddings, Session-Buddy insight delivery,
and the :class:`~oneiric_memory.coordinator.UnifiedMemory` coordinator that composes them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("oneiric-memory")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = ["__version__"]
