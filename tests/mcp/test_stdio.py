"""The MCP server over stdio, as a host runs it: a subprocess spoken to by a real MCP client.

The client is fastmcp's ``Client`` over ``StdioTransport``; one test speaks raw JSON-RPC instead, to prove
that stdout carries nothing but protocol frames and that SIGTERM ends the process cleanly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from tests.mcp.harness import SERVER_COMMAND, data, error_text, server_env, wire

TOOLS = {"remember", "search", "unified_search", "get", "forget", "list_projects", "stats", "health"}


def _client(pg_data_dir: Path, tmp_path: Path, *args: str, **env: str) -> Client[Any]:
    transport = StdioTransport(command=SERVER_COMMAND[0], args=[*SERVER_COMMAND[1:], *args],
                               env=server_env(pg_data_dir, **env), cwd=str(tmp_path), keep_alive=False)
    return Client(transport, timeout=120)


async def test_stdio_remember_search_get_forget(pg_server: EmbeddedConnectInfo, pg_data_dir: Path,
                                                 tmp_path: Path) -> None:
    async with _client(pg_data_dir, tmp_path) as client:
        tools = {tool.name: wire(tool) for tool in await client.list_tools()}
        assert set(tools) == TOOLS
        for name in ("remember", "search", "get", "forget", "stats"):  # unpinned: project is required
            assert "project" in tools[name]["inputSchema"]["required"], name
        assert tools["remember"]["outputSchema"]["required"] == ["id", "project"]
        assert tools["forget"]["annotations"]["destructiveHint"] is True
        assert tools["search"]["annotations"]["readOnlyHint"] is True

        created = data(await client.call_tool("remember", {
            "content": "The deploy pipeline needs the staging database migrated first", "project": "alpha",
            "memory_type": "workflow", "workflow_id": "wf-7", "metadata": {"ticket": "OPS-12"}}))
        memory_id = created["id"]
        assert created["project"] == "alpha"
        uuid.UUID(memory_id)

        found = data(await client.call_tool("search", {"query": "staging database migration",
                                                        "project": "alpha", "mode": "text"}))
        assert [hit["id"] for hit in found["hits"]] == [memory_id]
        assert found["hits"][0]["metadata"] == {"ticket": "OPS-12"}

        got = data(await client.call_tool("get", {"id": memory_id, "project": "alpha"}))
        assert got["content"].startswith("The deploy pipeline") and got["workflow_id"] == "wf-7"

        assert data(await client.call_tool("stats", {"project": "alpha"}))["total"] == 1
        listed = data(await client.call_tool("list_projects", {}))
        assert listed["projects"] == [{"project": "alpha", "memories": 1, "by_type": {"workflow": 1}}]

        removed = data(await client.call_tool("forget", {"ids": [memory_id], "project": "alpha"}))
        assert removed == {"removed": 1, "requested": 1}
        after = data(await client.call_tool("search", {"query": "staging database migration",
                                                        "project": "alpha", "mode": "text"}))
        assert after["hits"] == []
        health = data(await client.call_tool("health", {}))
        assert health["status"] in ("healthy", "degraded") and health["scope"].startswith("not pinned")


async def test_stdio_invalid_input_is_a_tool_error_and_the_server_keeps_serving(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path) -> None:
    async with _client(pg_data_dir, tmp_path) as client:
        bad = await client.call_tool("remember", {"content": "nul \x00 byte", "project": "alpha"},
                                     raise_on_error=False)
        assert error_text(bad).startswith("InvalidInput: ") and "NUL byte" in error_text(bad)
        missing = await client.call_tool("search", {"query": "x", "project": None}, raise_on_error=False)
        assert "InvalidInput: project is required" in error_text(missing)
        not_an_id = await client.call_tool("forget", {"ids": ["not-a-uuid"], "project": "alpha"},
                                           raise_on_error=False)
        assert "InvalidInput: " in error_text(not_an_id) and "not a memory id" in error_text(not_an_id)
        wrong_type = await client.call_tool("remember", {"content": "x", "project": "alpha", "memory_type": "bogus"},
                                            raise_on_error=False)
        assert wrong_type.is_error  # the schema's enum, checked before the tool runs
        # Nothing was stored by the refused calls, and the server still answers.
        assert data(await client.call_tool("stats", {"project": "alpha"}))["total"] == 0


async def test_stdio_pinned_project_cannot_be_escaped(pg_server: EmbeddedConnectInfo, pg_data_dir: Path,
                                                      tmp_path: Path) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    async with _client(pg_data_dir, tmp_path, schema=schema) as admin:  # unpinned: seeds another tenant
        other = data(await admin.call_tool("remember", {"content": "beta's secret roadmap", "project": "beta"}))["id"]
    async with _client(pg_data_dir, tmp_path, "--project", "alpha", schema=schema) as client:
        tools = {tool.name: wire(tool) for tool in await client.list_tools()}
        assert "project" not in tools["search"]["inputSchema"].get("required", [])
        mine = data(await client.call_tool("remember", {"content": "alpha's own roadmap"}))
        assert mine["project"] == "alpha"
        hits = data(await client.call_tool("search", {"query": "roadmap", "mode": "text"}))
        assert [h["project"] for h in hits["hits"]] == ["alpha"]
        for name, args in (("search", {"query": "roadmap", "project": "beta"}),
                           ("search", {"query": "roadmap", "project": ["alpha", "beta"]}),
                           ("remember", {"content": "planted", "project": "beta"}),
                           ("get", {"id": other, "project": "beta"}),
                           ("stats", {"project": "beta"}),
                           ("unified_search", {"query": "roadmap", "project": "beta"})):
            refused = await client.call_tool(name, args, raise_on_error=False)
            assert "outside this server's scope" in error_text(refused), (name, args)
        hidden = await client.call_tool("get", {"id": other}, raise_on_error=False)
        assert "InvalidInput: no memory with id" in error_text(hidden)
        kept = data(await client.call_tool("forget", {"ids": [other]}))
        assert kept == {"removed": 0, "requested": 1}
        listed = data(await client.call_tool("list_projects", {}))
        assert listed == {"projects": [{"project": "alpha", "memories": 1, "by_type": {"agent": 1}}], "pinned": True}
    async with _client(pg_data_dir, tmp_path, schema=schema) as admin:  # beta's memory is still there
        assert data(await admin.call_tool("get", {"id": other, "project": "beta"}))["content"] == "beta's secret roadmap"


def _frame(message_id: int | None, method: str, params: dict[str, Any]) -> bytes:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if message_id is not None:
        body["id"] = message_id
    return (json.dumps(body) + "\n").encode()


def test_stdout_carries_only_protocol_and_sigterm_exits_cleanly(pg_server: EmbeddedConnectInfo, pg_data_dir: Path,
                                                                tmp_path: Path) -> None:
    """Raw JSON-RPC over the pipes: every stdout line is a JSON-RPC message; SIGTERM ends the process with 0
    while stdin is still open (as a host that kills its servers does)."""
    env = server_env(pg_data_dir, ONEIRIC_MEMORY_LOG_LEVEL="DEBUG")  # as chatty as the library gets
    process = subprocess.Popen(SERVER_COMMAND, cwd=tmp_path, env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    try:
        answers: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + 120

        def ask(message_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
            # One request at a time: the server handles requests concurrently, so a search sent with a
            # remember could run first.
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(_frame(message_id, method, params))
            process.stdin.flush()
            while message_id not in answers and time.monotonic() < deadline:
                line = process.stdout.readline()
                assert line, "the server closed stdout early"
                message = json.loads(line)  # any log line or banner on stdout fails here
                assert message["jsonrpc"] == "2.0"
                if "id" in message:
                    answers[message["id"]] = message
            return answers[message_id]

        ask(1, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                              "clientInfo": {"name": "raw", "version": "0"}})
        process.stdin.write(_frame(None, "notifications/initialized", {}))
        assert not ask(2, "tools/call", {"name": "remember",
                                         "arguments": {"content": "raw frames", "project": "p"}})["result"]["isError"]
        ask(3, "tools/call", {"name": "search", "arguments": {"query": "raw frames", "project": "p"}})
        assert answers[3]["result"]["structuredContent"]["count"] == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        rest = process.stdout.read()
        for line in rest.splitlines():
            assert json.loads(line)["jsonrpc"] == "2.0"
        stderr = process.stderr.read().decode() if process.stderr else ""
        assert "mcp-memory-closed" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
