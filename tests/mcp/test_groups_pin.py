"""The MCP project pin reads through the store's rule (issue 18): a server pinned to a project finds what is shared
with it or its groups, naming the owner; it can neither forget it nor see anything else. Real console script over
stdio, embedded PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.coordinator import UnifiedMemory
from tests.mcp.harness import SERVER_COMMAND, data, error_text, server_env
from tests.support import make_settings


def _client(pg_data_dir: Path, tmp_path: Path, schema: str, project: str) -> Client[Any]:
    transport = StdioTransport(command=SERVER_COMMAND[0], args=[*SERVER_COMMAND[1:], "--project", project],
                               env=server_env(pg_data_dir, schema=schema), cwd=str(tmp_path), keep_alive=False)
    return Client(transport, timeout=120)


async def test_a_pinned_server_reads_what_is_shared_with_its_project_and_nothing_else(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    async with UnifiedMemory.open(make_settings(pg_data_dir, schema=schema), background=False) as memory:
        await memory.create_group("team", ["tgt"])
        shared = str(await memory.remember("The deploy freeze starts Friday noon.", "insight", project="src"))
        private = str(await memory.remember("The deploy budget is private to src.", "insight", project="src"))
        await memory.share([shared], groups=["team"])
    async with _client(pg_data_dir, tmp_path, schema, "tgt") as client:
        hits = data(await client.call_tool("search", {"query": "deploy", "mode": "text"}))
        assert [(h["id"], h["project"]) for h in hits["hits"]] == [(shared, "src")]
        unified = data(await client.call_tool("unified_search", {"query": "deploy", "mode": "text"}))
        assert [h["id"] for h in unified["hits"]] == [shared]
        assert data(await client.call_tool("get", {"id": shared}))["project"] == "src"
        hidden = await client.call_tool("get", {"id": private}, raise_on_error=False)
        assert "no memory with id" in error_text(hidden)
        assert data(await client.call_tool("forget", {"ids": [shared]})) == {"removed": 0, "requested": 1}
    async with _client(pg_data_dir, tmp_path, schema, "out") as client:
        assert data(await client.call_tool("search", {"query": "deploy", "mode": "text"}))["hits"] == []
        assert "no memory with id" in error_text(await client.call_tool("get", {"id": shared}, raise_on_error=False))
    async with UnifiedMemory.open(make_settings(pg_data_dir, schema=schema), background=False) as memory:
        assert len(await memory.get([shared, private])) == 2  # the target's forget removed nothing
        async with memory.store.gate.acquire() as connection:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
