"""``mcp``: serve the memory as MCP tools for agents (stdio, or streamable HTTP with ``--http``)."""

from __future__ import annotations

from typing import Annotated

import typer

from oneiric_memory.cli._runtime import STATE, settings

__all__ = ["ORDER", "register"]

ORDER = 40
_PANEL = "Agents"


def mcp(
    http: Annotated[str | None, typer.Option(
        "--http", metavar="[HOST:]PORT",
        help="Serve streamable HTTP on this address (default host 127.0.0.1; any other host needs mcp.token).")
    ] = None,
    project: Annotated[list[str] | None, typer.Option(
        "--project", "-p", metavar="NAME", help="Pin the server to this project (repeat for several); overrides mcp.projects.")
    ] = None,
) -> None:
    """Serve the memory over MCP (stdio by default): remember, search, unified_search, get, forget,
    list_projects, stats and health. See docs/mcp.md for registering it with Claude Code or Mahavishnu."""
    from oneiric_memory.mcp.launcher import prepare_settings, serve
    from oneiric_memory.observability import configure_logging

    configured = prepare_settings(settings(), projects=project or (), http=http)  # refuses before any start
    configure_logging(level=STATE.log_level)
    serve(configured, http=http is not None)


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel=_PANEL)(mcp)
