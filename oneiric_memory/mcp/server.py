"""``build_server``: the FastMCP server of one process, built the ecosystem's way.

Like Session-Buddy's server: ``FastMCP(name, version=..., lifespan=...)`` with mcp-common's OpenTelemetry
middleware, so every MCP request is a span next to the memory's own spans. The lifespan owns the one
:class:`~oneiric_memory.mcp.state.MemoryState`; tools reach it through a closure, not a global.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastmcp import FastMCP

from oneiric_memory.mcp.auth import StaticBearerVerifier
from oneiric_memory.mcp.scope import ProjectScope
from oneiric_memory.mcp.state import MemoryState
from oneiric_memory.mcp.tools import register_tools
from oneiric_memory.settings import MemorySettings
from oneiric_memory.version import __version__

__all__ = ["SERVER_NAME", "build_server"]

SERVER_NAME = "oneiric-memory"


def _instructions(scope: ProjectScope) -> str:
    where = (f"This server is {scope.describe()}; omit `project` to use "
             + ("it." if len(scope.pinned) == 1 else "them (writes must name one)."))
    if not scope.is_pinned:
        where = "This server is not pinned: every tool except list_projects and health needs `project`."
    return ("Long-term memory for agents (PostgreSQL + pgvector, insights shared with Session-Buddy). "
            "`search` before re-doing work or answering from memory; `remember` decisions, facts and results "
            "worth finding later; `forget` by id. " + where + " Errors starting with `retryable:` mean the store "
            "is briefly unavailable: retry the same call shortly; `InvalidInput:` means fix the arguments.")


def build_server(settings: MemorySettings, *, scope: ProjectScope | None = None, http: bool = False,
                 state: MemoryState | None = None) -> tuple[FastMCP, MemoryState]:
    """The server and the state it owns. ``http`` adds the bearer check when a token is configured."""
    scope = scope if scope is not None else ProjectScope(settings.mcp.projects)
    state = state or MemoryState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_server: Any) -> AsyncIterator[MemoryState]:
        state.begin()
        try:
            yield state
        finally:
            await state.close()

    auth = StaticBearerVerifier(settings.mcp.token) if http and settings.mcp.token is not None else None
    mcp = FastMCP(SERVER_NAME, instructions=_instructions(scope), version=__version__, lifespan=lifespan,
                  auth=auth)
    _add_telemetry(mcp)
    register_tools(mcp, state, scope)
    return mcp, state


def _add_telemetry(mcp: FastMCP) -> None:
    """mcp-common's span-per-request middleware; a no-op until the host installs an OpenTelemetry SDK."""
    from mcp_common.server import FastMCPOpenTelemetryMiddleware

    mcp.add_middleware(FastMCPOpenTelemetryMiddleware(SERVER_NAME, service_namespace="oneiric"))
