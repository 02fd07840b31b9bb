"""Oneiric registration: the ``oneiric.adapters`` entry point.

The entry-point callable returns ``AdapterMetadata`` with **callable** async zero-argument factories (string
factories outside ``oneiric.`` are refused by Oneiric's allowlist). It never raises: Oneiric aborts plugin loading
for the whole app on unexpected exceptions, so any failure is turned into an empty list and a log line.
Each factory loads the settings itself, builds its adapter and awaits ``init()`` (Oneiric never calls it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from oneiric_memory.adapters.catalog import ADAPTERS, AdapterContext, AdapterSpec
from oneiric_memory.errors import without_driver_chain
from oneiric_memory.version import __version__

if TYPE_CHECKING:
    from oneiric_memory.settings import MemorySettings

__all__ = ["ADAPTER_SPECS", "FACTORIES", "oneiric_adapters"]


async def _unified_memory(settings: MemorySettings, _context: AdapterContext) -> Any:
    from oneiric_memory.coordinator import unified_memory_factory

    return await without_driver_chain(unified_memory_factory(settings))


ADAPTER_SPECS: tuple[AdapterSpec, ...] = (
    *ADAPTERS,
    AdapterSpec("memory", "unified", 600, ("remember", "search", "unified-search", "forget", "health"),
                "unified memory coordinator for Mahavishnu", False, _unified_memory),
)
"""The adapter candidates (:data:`.adapters.catalog.ADAPTERS`) plus the coordinator itself."""


def _zero_argument(spec: AdapterSpec) -> Callable[[], Awaitable[Any]]:
    """Oneiric's zero-argument factory for one candidate: settings loaded from the layers at build time."""

    async def build() -> Any:
        from oneiric_memory.settings import load_settings

        return await spec.build(load_settings(), AdapterContext())

    build.__name__ = build.__qualname__ = f"{spec.provider}_{spec.category}"
    return build


FACTORIES: dict[tuple[str, str], Callable[[], Awaitable[Any]]] = {
    (spec.category, spec.provider): _zero_argument(spec) for spec in ADAPTER_SPECS}


def oneiric_adapters() -> list[Any]:
    """Entry point of group ``oneiric.adapters``: the package's adapters as ``AdapterMetadata``."""
    try:
        from oneiric.adapters.metadata import AdapterMetadata
        from oneiric.core.resolution import CandidateSource

        return [
            AdapterMetadata(
                category=spec.category, provider=spec.provider, factory=FACTORIES[(spec.category, spec.provider)],
                version=__version__, description=spec.description, capabilities=list(spec.capabilities),
                priority=spec.priority, source=CandidateSource.ENTRY_POINT, owner="oneiric-memory",
                requires_secrets=spec.requires_secrets,
                extras={"package": "oneiric-memory", "settings_block": "oneiric_memory"},
            )
            for spec in ADAPTER_SPECS
        ]
    except Exception as exc:  # never let plugin loading abort the host app
        import structlog

        structlog.get_logger("oneiric_memory.plugin").warning("plugin-registration-failed", error=type(exc).__name__)
        return []
