"""The MCP server over streamable HTTP on loopback: the real console script, fastmcp's HTTP client."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from tests.mcp.harness import SERVER_COMMAND, HttpServer, data, error_text, free_port, server_env

TOKEN = secrets.token_urlsafe(36)


def _client(url: str, token: str | None = None) -> Client[Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    return Client(StreamableHttpTransport(url, headers=headers), timeout=120)


@pytest.fixture
def http_server(pg_server: EmbeddedConnectInfo, pg_data_dir: Path, tmp_path: Path) -> Iterator[HttpServer]:
    server = HttpServer(server_env(pg_data_dir, ONEIRIC_MEMORY_LOG_LEVEL="INFO"), tmp_path, "--project", "alpha",
                        "--project", "beta")
    try:
        server.wait_ready()
        yield server
    finally:
        code = server.stop()
        assert code == 0, server.stderr()  # SIGTERM: drained, memory closed, clean exit
        assert "mcp-memory-closed" in server.stderr()


async def test_http_flow_and_pin(http_server: HttpServer) -> None:
    async with _client(http_server.url) as client:
        assert {t.name for t in await client.list_tools()} >= {"remember", "search", "forget", "health"}
        refused = await client.call_tool("remember", {"content": "no project named"}, raise_on_error=False)
        assert "pinned to several projects" in error_text(refused)  # two pinned: a write names one
        memory_id = data(await client.call_tool("remember", {"content": "HTTP transport keeps sessions",
                                                             "project": "beta"}))["id"]
        found = data(await client.call_tool("search", {"query": "HTTP transport sessions", "mode": "text"}))
        assert [hit["id"] for hit in found["hits"]] == [memory_id] and found["projects"] == ["alpha", "beta"]
        assert data(await client.call_tool("get", {"id": memory_id}))["project"] == "beta"
        escaped = await client.call_tool("search", {"query": "x", "project": "gamma"}, raise_on_error=False)
        assert "outside this server's scope" in error_text(escaped)
        assert data(await client.call_tool("forget", {"ids": [memory_id]}))["removed"] == 1
        gone = data(await client.call_tool("search", {"query": "HTTP transport sessions", "mode": "text"}))
        assert gone["hits"] == []
        bad = await client.call_tool("search", {"query": "", "project": "alpha"}, raise_on_error=False)
        assert error_text(bad).startswith("InvalidInput: ")


async def test_http_100_concurrent_calls_have_no_errors(http_server: HttpServer) -> None:
    async with _client(http_server.url) as client:
        async def call(i: int) -> Any:
            if i % 2:
                return await client.call_tool("remember", {"content": f"concurrent note {i}", "project": "alpha"},
                                              raise_on_error=False)
            return await client.call_tool("search", {"query": f"concurrent note {i}", "project": "alpha"},
                                          raise_on_error=False)

        results = await asyncio.gather(*(call(i) for i in range(100)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException) or r.is_error]
        assert errors == []
        stats = data(await client.call_tool("stats", {"project": "alpha"}))
        assert stats["total"] == 50


async def test_http_token_is_required_when_configured(pg_server: EmbeddedConnectInfo, pg_data_dir: Path,
                                                      tmp_path: Path) -> None:
    env = server_env(pg_data_dir, MAHAVISHNU_ONEIRIC_MEMORY__MCP__TOKEN=TOKEN,
                     MAHAVISHNU_ONEIRIC_MEMORY__MCP__PROJECTS="alpha")
    server = HttpServer(env, tmp_path)
    try:
        server.wait_ready()
        async with httpx.AsyncClient() as raw:
            for headers in ({}, {"Authorization": "Bearer " + "x" * len(TOKEN)},
                            {"Authorization": f"Bearer {TOKEN[:-1]}"}, {"Authorization": TOKEN}):
                response = await raw.post(server.url, headers={**headers, "Accept": "application/json, text/event-stream"},
                                          json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
                assert response.status_code == 401, headers
        for token in (None, "wrong-" + TOKEN):
            with pytest.raises(Exception):  # noqa: B017 - the client surfaces the 401 as its own error type
                async with _client(server.url, token) as client:
                    await client.list_tools()
        async with _client(server.url, TOKEN) as client:
            assert data(await client.call_tool("stats", {}))["projects"][0]["project"] == "alpha"
    finally:
        assert server.stop() == 0
    assert TOKEN not in server.stderr()  # never logged


@pytest.mark.parametrize("token", ["short", " " + TOKEN], ids=["short", "leading-space"])  # TOKEN is random: not in ids
def test_weak_token_is_refused_at_start(pg_data_dir: Path, tmp_path: Path, token: str) -> None:
    result = subprocess.run([*SERVER_COMMAND, "--http", "0.0.0.0:8686"], cwd=tmp_path, capture_output=True, text=True,
                            env=server_env(pg_data_dir, MAHAVISHNU_ONEIRIC_MEMORY__MCP__TOKEN=token), timeout=60,
                            check=False)
    assert result.returncode == 3 and "at least 32 characters" in result.stderr
    assert token.strip() not in result.stderr


async def test_store_unavailable_is_a_retryable_error_and_the_server_stays_up(
        pg_data_dir: Path, tmp_path: Path) -> None:
    """No PostgreSQL at the configured address: the server starts anyway, tools say `retryable:`, health
    reports it, and nothing crashes."""
    env = server_env(pg_data_dir, schema=f"t_{uuid.uuid4().hex[:8]}",
                     MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__DSN=f"postgresql://nobody@127.0.0.1:{free_port()}/none",
                     MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__CONNECT_TIMEOUT_S="1",
                     MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__RETRY_ATTEMPTS="1")
    server = HttpServer(env, tmp_path)
    try:
        server.wait_ready()
        async with _client(server.url) as client:
            for _ in range(2):
                failed = await client.call_tool("search", {"query": "x", "project": "alpha"}, raise_on_error=False)
                assert error_text(failed).startswith("retryable: StoreUnavailable: ")
            health = data(await client.call_tool("health", {}))
            assert health["status"] == "unhealthy" and health["components"][0]["name"] == "memory_store"
            assert len(await client.list_tools()) == 8
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("args", [["--http", "0.0.0.0:8686"], ["--http", "10.1.2.3:8686"]])
def test_non_loopback_http_without_token_is_refused_at_start(tmp_path: Path, pg_data_dir: Path,
                                                             args: list[str]) -> None:
    started = time.monotonic()
    result = subprocess.run([*SERVER_COMMAND, *args], cwd=tmp_path, env=server_env(pg_data_dir),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 3
    assert "refusing to listen on" in result.stderr and "mcp.token" in result.stderr
    assert result.stdout == ""
    assert time.monotonic() - started < 30  # refused before anything (the database) started
