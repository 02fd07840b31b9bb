"""oneiric-memory: one reliable, fast memory for Mahavishnu and any Oneiric app.

PostgreSQL + pgvector store, Ollama (or offline hashing) embeddings, Session-Buddy insight delivery,
and the :class:`UnifiedMemory` coordinator that composes them. The user API is re-exported here::

    from oneiric_memory import UnifiedMemory, MemoryRecord, SearchFilters, InvalidInput

The names are imported on first use (module ``__getattr__``), so ``import oneiric_memory`` stays cheap for
the CLI and for apps that only need one part.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from oneiric_memory.coordinator import (
        ShareChange,
        SourceStatus,
        UnifiedMemory,
        UnifiedSearchResult,
    )
    from oneiric_memory.errors import (
        ConfigurationError,
        EmbedderError,
        EmbedderUnavailable,
        InsightSinkError,
        InvalidInput,
        MaintenanceBusy,
        OneiricMemoryError,
        SchemaMismatch,
        SourceLocked,
        StoreError,
        StoreUnavailable,
    )
    from oneiric_memory.insights import (
        Insight,
        InsightHit,
    )
    from oneiric_memory.rag import IngestOptions, IngestReport
    from oneiric_memory.records import (
        MEMORY_TYPES,
        MemoryRecord,
        MemoryType,
        ProjectGroup,
        SearchFilters,
        SearchHit,
        SearchMode,
        StoredMemory,
        UpsertResult,
    )
    from oneiric_memory.settings import (
        MemorySettings,
        load_settings,
    )
    from oneiric_memory.version import __version__

_EXPORTS: dict[str, str] = {
    "__version__": "oneiric_memory.version",  # importlib.metadata costs ~0.1 s: only when someone asks
    "SourceStatus": "oneiric_memory.coordinator",
    "UnifiedMemory": "oneiric_memory.coordinator",
    "UnifiedSearchResult": "oneiric_memory.coordinator",
    "ShareChange": "oneiric_memory.coordinator",
    "IngestOptions": "oneiric_memory.rag",
    "IngestReport": "oneiric_memory.rag",
    "MEMORY_TYPES": "oneiric_memory.records",
    "MemoryRecord": "oneiric_memory.records",
    "MemoryType": "oneiric_memory.records",
    "ProjectGroup": "oneiric_memory.records",
    "SearchFilters": "oneiric_memory.records",
    "SearchHit": "oneiric_memory.records",
    "SearchMode": "oneiric_memory.records",
    "StoredMemory": "oneiric_memory.records",
    "UpsertResult": "oneiric_memory.records",
    "Insight": "oneiric_memory.insights",
    "InsightHit": "oneiric_memory.insights",
    "MemorySettings": "oneiric_memory.settings",
    "load_settings": "oneiric_memory.settings",
    "ConfigurationError": "oneiric_memory.errors",
    "EmbedderError": "oneiric_memory.errors",
    "EmbedderUnavailable": "oneiric_memory.errors",
    "InsightSinkError": "oneiric_memory.errors",
    "InvalidInput": "oneiric_memory.errors",
    "MaintenanceBusy": "oneiric_memory.errors",
    "OneiricMemoryError": "oneiric_memory.errors",
    "SchemaMismatch": "oneiric_memory.errors",
    "SourceLocked": "oneiric_memory.errors",
    "StoreError": "oneiric_memory.errors",
    "StoreUnavailable": "oneiric_memory.errors",
}

__all__ = [
    "ConfigurationError",
    "EmbedderError",
    "EmbedderUnavailable",
    "IngestOptions",
    "IngestReport",
    "Insight",
    "InsightHit",
    "InsightSinkError",
    "InvalidInput",
    "MEMORY_TYPES",
    "MaintenanceBusy",
    "MemoryRecord",
    "MemorySettings",
    "MemoryType",
    "OneiricMemoryError",
    "ProjectGroup",
    "SchemaMismatch",
    "SearchFilters",
    "SearchHit",
    "SearchMode",
    "ShareChange",
    "SourceLocked",
    "SourceStatus",
    "StoreError",
    "StoreUnavailable",
    "StoredMemory",
    "UnifiedMemory",
    "UnifiedSearchResult",
    "UpsertResult",
    "__version__",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first use and cache it on the package."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
