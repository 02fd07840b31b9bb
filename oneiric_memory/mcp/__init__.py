"""``oneiric-memory mcp``: the memory as MCP tools for agents (an entry point: it calls ``UnifiedMemory``).

Run it with ``oneiric-memory mcp`` (stdio) or ``oneiric-memory mcp --http [HOST:]PORT``; see docs/mcp.md.
FastMCP and mcp-common are imported only when the server is built, so importing this package is cheap.
"""

from __future__ import annotations

from oneiric_memory.mcp.launcher import HttpAddress, parse_http_address, prepare_settings, serve
from oneiric_memory.mcp.scope import ProjectScope

__all__ = ["HttpAddress", "ProjectScope", "parse_http_address", "prepare_settings", "serve"]
