"""Mahavishnu integration: :func:`attach` (0.36), the ``mahavishnu.adapters`` entry point (0.14) and an
``OrchestratorAdapter``-shaped class.

Mahavishnu 0.36 reads no entry-point group: its adapters are hard-coded in ``core/bootstrap.py``, so
``attach(app)`` is the only way in; it also reads the settings root Mahavishnu itself uses. Mahavishnu 0.14's
``HybridAdapterRegistry`` loads the entry point, expects a **dict** (adapter_id, domain, category, provider,
capabilities, factory_path), checks ``adapter_id`` against its allowlist (``mahavishnu.adapters.*``), builds
``cls(config=<MahavishnuSettings>)`` and never calls ``initialize()``; nothing in the 0.14 app starts that
registry either, so ``attach`` serves both. :class:`OneiricMemoryAdapter` initializes lazily on first use.

Dashboards call ``get_health()`` and read ``["status"]`` from a dict, and count anything but ``healthy`` as
unhealthy (0.36 raises a HIGH "Unhealthy Adapters" alert). So while the store works and only optional parts are
down (embedder, Session-Buddy, maintenance findings: nothing accepted is lost), the status is
``mahavishnu.degraded_status`` (default ``healthy``) and the degraded parts are listed beside it; the store down
is always ``unhealthy``. docs/mahavishnu.md explains the choice.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_common.health import ComponentHealth, HealthStatus

from oneiric_memory.errors import InvalidInput, OneiricMemoryError
from oneiric_memory.records import SearchFilters
from oneiric_memory.settings_sources import ROOT_ENV, mahavishnu_settings_root
from oneiric_memory.version import __version__

__all__ = ["ADAPTER_ID", "MemoryCapabilities", "OneiricMemoryAdapter", "attach", "mahavishnu_adapter_entry"]

ADAPTER_ID = "mahavishnu.adapters.oneiric_memory"
OPERATIONS = ("remember", "remember_many", "search", "unified_search", "forget", "health",
              "store_agent_conversation", "store_rag_chunks", "store_workflow_execution", "backfill",
              "ingest_repository")


def mahavishnu_adapter_entry() -> dict[str, Any]:
    """Entry point of group ``mahavishnu.adapters``: the registry's dict contract."""
    return {
        "adapter_id": ADAPTER_ID,
        "domain": "adapter",
        "category": "memory",
        "provider": "oneiric_memory",
        "capabilities": ["memory", "remember", "search", "unified_search", "insights", "health"],
        "factory_path": "oneiric_memory.mahavishnu:OneiricMemoryAdapter",
        "priority": 80,
        "metadata": {"version": __version__, "package": "oneiric-memory", "operations": list(OPERATIONS)},
    }


@dataclass(frozen=True, slots=True)
class MemoryCapabilities:
    """Mahavishnu's ``AdapterCapabilities`` flags, plus what a memory adapter offers."""

    can_deploy_flows: bool = False
    can_monitor_execution: bool = False
    can_cancel_workflows: bool = False
    can_sync_state: bool = True
    supports_batch_execution: bool = True
    has_cloud_ui: bool = False
    supports_multi_agent: bool = True
    supports_memory: bool = True


def _mahavishnu_mapping(config: Any) -> dict[str, Any]:
    """Whatever Mahavishnu passes (settings model, dict or None) as a plain mapping."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    dumped: dict[str, Any] = {}
    dump = getattr(config, "model_dump", None)
    if callable(dump):
        try:
            dumped = dict(dump())
        except Exception:
            dumped = {}
    extra = getattr(config, "__pydantic_extra__", None) or {}
    return {**dumped, **extra}


class OneiricMemoryAdapter:
    """The memory as a Mahavishnu adapter: lazy, dict-returning health, ``execute`` with ``{"op": ...}`` tasks."""

    adapter_type = "memory"

    def __init__(self, config: Any = None, *, settings: Any = None, settings_root: Path | None = None) -> None:
        self.config = config
        self._settings = settings
        self._settings_root = settings_root
        self._memory: Any | None = None
        self._lock = asyncio.Lock()
        self._init_error: str | None = None

    @property
    def name(self) -> str:
        return "oneiric_memory"

    @property
    def capabilities(self) -> MemoryCapabilities:
        return MemoryCapabilities()

    def _load_settings(self) -> Any:
        if self._settings is not None:
            return self._settings
        from oneiric_memory.settings import load_settings

        mapping = _mahavishnu_mapping(self.config)
        block = mapping.get("oneiric_memory") if isinstance(mapping.get("oneiric_memory"), Mapping) else None
        # The YAML/env layers are read by load_settings itself; an in-memory block from the app (0.14 keeps it in
        # __pydantic_extra__; 0.36 drops it) comes last.
        return load_settings(dict(block) if block else None, root=self._settings_root, mahavishnu_config=mapping)

    async def initialize(self) -> None:
        """Start the memory (idempotent; also called lazily by every operation)."""
        async with self._lock:
            if self._memory is not None:
                return
            from oneiric_memory.coordinator import UnifiedMemory

            memory = UnifiedMemory(self._load_settings())
            try:
                await memory.init()
            except Exception as exc:
                self._init_error = f"{type(exc).__name__}: {exc}"[:500]
                raise
            self._memory = memory
            self._init_error = None

    async def _ensure(self) -> Any:
        if self._memory is None:
            await self.initialize()
        return self._memory

    async def execute(self, task: Mapping[str, Any], repos: list[str] | None = None) -> dict[str, Any]:
        """Serve ``{"op": "search", "query": ...}``, ``{"op": "remember", "content": ...}`` and the other OPERATIONS."""
        if not isinstance(task, Mapping):
            return {"status": "error", "error": "task must be a mapping with an 'op' key"}
        op = task.get("op")
        if op not in OPERATIONS:
            return {"status": "error", "error": f"unknown op {op!r}; use one of {', '.join(OPERATIONS)}"}
        args = {key: value for key, value in task.items() if key != "op"}
        try:
            memory = await self._ensure()
            result = await self._dispatch(memory, str(op), args, repos or [])
        except OneiricMemoryError as exc:
            return {"status": "error", "op": op, "error": str(exc), "error_type": type(exc).__name__}
        except KeyError as exc:  # a required argument is missing: a bad task must not crash the orchestrator
            return {"status": "error", "op": op, "error": f"bad arguments for {op}: missing {exc}",
                    "error_type": "InvalidInput"}
        except (TypeError, ValueError) as exc:
            return {"status": "error", "op": op, "error": f"bad arguments for {op}: {exc}",
                    "error_type": "InvalidInput"}
        return {"status": "ok", "op": op, **result}

    async def _dispatch(self, memory: Any, op: str, args: dict[str, Any], repos: list[str]) -> dict[str, Any]:
        if op == "remember":
            content = args.pop("content")
            memory_type = args.pop("memory_type", "agent")
            return {"id": str(await memory.remember(content, memory_type, **args))}
        if op == "remember_many":
            return {"ids": [str(i) for i in await memory.remember_many(args["records"])]}
        if op in ("search", "unified_search"):
            query = args.pop("query")
            if op == "unified_search":
                result = await memory.unified_search(query, **args)
                return {"hits": [_hit_dict(h) for h in result.hits], "degraded": result.degraded,
                        "sources": {k: vars_of(v) for k, v in result.sources.items()}}
            if "filters" in args and isinstance(args["filters"], Mapping):
                args["filters"] = SearchFilters(**args["filters"])
            return {"hits": [_hit_dict(h) for h in await memory.search(query, **args)]}
        if op == "forget":
            ids = args.get("ids")
            filters = SearchFilters(**args["filters"]) if isinstance(args.get("filters"), Mapping) else None
            if ids is None and filters is None:
                raise InvalidInput("forget needs 'ids' or 'filters'")
            return {"deleted": await memory.forget(ids, filters=filters)}
        if op == "health":
            return {"health": (await memory.health()).to_dict()}
        if op == "store_agent_conversation":
            return {"id": str(await memory.store_agent_conversation(**args))}
        if op == "store_rag_chunks":
            repo_id = args.pop("repo_id", repos[0] if repos else None)
            if repo_id is None:
                raise InvalidInput("store_rag_chunks needs 'repo_id' (or one repo in repos)")
            return {"ids": [str(i) for i in await memory.store_rag_chunks(repo_id, args.pop("chunks"), **args)]}
        if op == "store_workflow_execution":
            return {"id": str(await memory.store_workflow_execution(**args))}
        if op == "ingest_repository":  # {"op", "path", "repo_id" (or one repo in repos), "project", "options": {...}}
            from oneiric_memory.rag import IngestOptions

            repo_id = args.pop("repo_id", repos[0] if repos else None)
            if repo_id is None:
                raise InvalidInput("ingest_repository needs 'repo_id' (or one repo in repos)")
            options = args.pop("options", None)
            if options is not None and not isinstance(options, Mapping):
                raise InvalidInput("options must be a mapping of IngestOptions fields")
            report = await memory.ingest_repository(args.pop("path"), repo_id, **args,
                                                    options=IngestOptions(**options) if options else None)
            return {"ingestion": report.as_dict()}
        report = await memory.backfill()
        return {"embedded": report.embedded, "remaining": report.remaining}

    async def get_health(self) -> dict[str, Any]:
        """Dashboard health: a dict with ``status`` of healthy/degraded/unhealthy and per-part details."""
        try:
            memory = await self._ensure()
            response = await memory.health()
        except Exception as exc:
            return ComponentHealth(name=self.name, status=HealthStatus.UNHEALTHY,
                                   message=self._init_error or f"{type(exc).__name__}: {exc}"[:500]).to_dict()
        degraded = [c.name for c in response.components if c.status != HealthStatus.HEALTHY]
        status = response.status
        if status == HealthStatus.DEGRADED and memory.settings.mahavishnu.degraded_status == "healthy":
            status = HealthStatus.HEALTHY  # serving: only optional parts are down, and nothing is lost
        return ComponentHealth(
            name=self.name, status=status,
            message="; ".join(f"{c.name}: {c.message}" for c in response.components
                              if c.status != HealthStatus.HEALTHY) or "all parts healthy",
            metadata={"version": __version__, "memory_status": str(response.status), "degraded_parts": degraded,
                      "components": {c.name: c.to_dict() for c in response.components}},
        ).to_dict()

    async def cleanup(self) -> None:
        memory, self._memory = self._memory, None
        if memory is not None:
            await memory.cleanup()

    async def shutdown(self) -> None:
        await self.cleanup()

    def attach(self, app: Any) -> OneiricMemoryAdapter:
        """Put this adapter into ``app.adapters`` so Mahavishnu's dashboards show it."""
        adapters = getattr(app, "adapters", None)
        if adapters is None:
            adapters = {}
            app.adapters = adapters
        adapters[self.name] = self
        return self


def attach(app: Any, config: Any = None, *, settings_root: Path | None = None) -> OneiricMemoryAdapter:
    """``attach(app)``: build the adapter from ``app.config`` (or ``config``) and register it on the app.

    The settings root is ``settings_root``, else ``ONEIRIC_MEMORY_SETTINGS_ROOT``, else, for a Mahavishnu 0.36 app,
    the folder Mahavishnu itself reads ``settings/`` from, else the working directory.
    """
    if settings_root is None and not os.environ.get(ROOT_ENV) and type(app).__module__.startswith("mahavishnu."):
        settings_root = mahavishnu_settings_root()
    adapter = OneiricMemoryAdapter(config=config if config is not None else getattr(app, "config", None),
                                   settings_root=settings_root)
    return adapter.attach(app)


def _hit_dict(hit: Any) -> dict[str, Any]:
    return {"id": str(hit.id), "score": hit.score, "content": hit.content, "memory_type": hit.memory_type,
            "project": hit.project, "source": hit.source, "metadata": hit.metadata,
            "vector_rank": hit.vector_rank, "text_rank": hit.text_rank}


def vars_of(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in getattr(value, "__slots__", ())}
