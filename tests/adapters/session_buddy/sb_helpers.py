"""Helpers for the Session-Buddy sink tests: settings on a temp DuckDB, the real adapter, Session-Buddy's own
MCP server in a subprocess. Nothing here is a fake: every helper drives the real session-buddy package."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from oneiric_memory.adapters.session_buddy import SessionBuddyInsightSink
from oneiric_memory.adapters.session_buddy.mcp_backend import tool_arguments
from oneiric_memory.insights import Insight, extract_insights, format_insight_block, insight_id
from oneiric_memory.settings import MemorySettings, load_settings

__all__ = ["AGENT_OUTPUT", "SESSION_BUDDY_ID", "SessionBuddyServer", "assert_another_process_can_open", "delivery",
           "free_port", "insight_api", "make_settings", "open_sink", "rows_tagged", "session_buddy_db"]

AGENT_OUTPUT = "\r\n".join([
    "I changed the relay.",
    format_insight_block("Watch out: DuckDB lets one process open a file, so Session-Buddy's server blocks us."),
    "Then I added a test.",
    "★ Insight ────",
    "Use the repository pattern for the outbox queries; it keeps SQL out of the relay loop.",
])

SESSION_BUDDY_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}|[0-9a-f]{32}")
"""A Session-Buddy id: a ULID (before 0.36) or the hex of a uuid7 (0.36)."""


def insight_api() -> bool:
    """Whether the installed Session-Buddy still has its insight API (``store_insight``; gone in 0.36)."""
    from session_buddy.adapters.reflection_adapter_oneiric import ReflectionDatabaseAdapterOneiric

    return hasattr(ReflectionDatabaseAdapterOneiric, "store_insight")


def make_settings(tmp_path: Path, **session_buddy: Any) -> MemorySettings:
    values: dict[str, Any] = {"mode": "in_process", "database_path": str(tmp_path / "reflection.duckdb"),
                              "timeout_s": 30.0}
    values.update(session_buddy)
    return load_settings({"session_buddy": values}, root=tmp_path, environ={})


@asynccontextmanager
async def open_sink(settings: MemorySettings, **kwargs: Any) -> AsyncIterator[SessionBuddyInsightSink]:
    sink = SessionBuddyInsightSink(settings, **kwargs)
    await sink.init()
    try:
        yield sink
    finally:
        await sink.cleanup()


@asynccontextmanager
async def session_buddy_db(path: Path) -> AsyncIterator[Any]:
    """Session-Buddy's own adapter on the file, opened the way Session-Buddy opens it."""
    from session_buddy.adapters.reflection_adapter_oneiric import ReflectionDatabaseAdapterOneiric
    from session_buddy.adapters.settings import ReflectionAdapterSettings

    adapter = ReflectionDatabaseAdapterOneiric(settings=ReflectionAdapterSettings(
        database_path=path, enable_embeddings=False, enable_hnsw_index=False))
    async with adapter:
        yield adapter


def rows_tagged(adapter: Any, tag: str) -> int:
    row = adapter.conn.execute("SELECT count(*) FROM reflections_v2 WHERE list_contains(tags, ?)", [tag]).fetchone()
    return int(row[0])


def delivery(project: str, content: str, memory_id: str | None = None) -> Insight:
    (found,) = extract_insights(format_insight_block(content))
    keyed = found.keyed(project, memory_id=memory_id)
    assert keyed.insight_id == insight_id(project, content)
    return keyed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def assert_another_process_can_open(path: Path) -> None:
    """Another process can take the file once any late open was closed (polls for up to 30 s)."""
    probe: subprocess.CompletedProcess[str] | None = None
    for _ in range(60):
        probe = subprocess.run([sys.executable, "-c", "import duckdb, sys; duckdb.connect(sys.argv[1]).close()",
                                str(path)], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return
        await asyncio.sleep(0.5)
    pytest.fail(f"the file stayed locked: {probe.stderr[-300:] if probe else ''}")


class SessionBuddyServer:
    """Session-Buddy's own MCP server (streamable HTTP on 127.0.0.1) in a subprocess, offline, temp HOME."""

    def __init__(self, root: Path) -> None:
        home = root / "home"
        home.mkdir()
        (home / ".duckdb").write_text("")  # a file: DuckDB's extension installs fail at once, not by timeout
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.database_path = home / ".claude" / "data" / "reflection.duckdb"
        self.log = root / "server.log"
        code = ("import sys; from session_buddy.server_optimized import run_server; "
                "run_server('127.0.0.1', int(sys.argv[1]))")
        with self.log.open("wb") as output:
            self.process = subprocess.Popen([sys.executable, "-c", code, str(port)], cwd=root, stdout=output,
                                            stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(home)})
        self.ready = False

    async def wait_until_answering(self) -> None:
        from fastmcp import Client

        deadline = time.monotonic() + 180
        while not self.ready:
            if self.process.poll() is not None:
                pytest.fail(f"Session-Buddy's server exited ({self.process.returncode}):\n"
                            f"{self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"Session-Buddy's server did not answer within 180 s:\n{self.log.read_text()[-2000:]}")
            try:
                async with Client(self.url, timeout=5, init_timeout=5) as client:
                    await client.list_tools()  # not ping(): 0.36 with fastmcp 4 answers it "Method not found"
                self.ready = True
            except Exception:
                await asyncio.sleep(0.3)

    async def tool_arguments(self, tool: str) -> set[str]:
        """The argument names the server's ``tool`` accepts (its input schema)."""
        from fastmcp import Client

        async with Client(self.url, timeout=30) as client:
            for listed in await client.list_tools():
                if listed.name == tool:
                    return set(tool_arguments(listed))
        return set()

    def snapshot_row(self, scratch: Path, entry_id: str, columns: list[str]) -> dict[str, Any]:
        """One row of the server's file, read from a copy (the server keeps the file locked).

        Committed writes are in the file or its WAL; the copy replays the WAL. Columns the file lacks are absent.
        """
        import duckdb

        copy = scratch / "snapshot.duckdb"
        shutil.copyfile(self.database_path, copy)
        wal = self.database_path.with_name(self.database_path.name + ".wal")
        if wal.exists():
            shutil.copyfile(wal, copy.with_name(copy.name + ".wal"))
        connection = duckdb.connect(str(copy))
        try:
            present = [c for c in columns if connection.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = 'reflections_v2' "
                "AND column_name = ?", [c]).fetchone() == (1,)]
            row = connection.execute(f"SELECT {', '.join(['id', *present])} FROM reflections_v2 WHERE id = ?",
                                     [entry_id]).fetchone()
        finally:
            connection.close()
        assert row is not None, f"{entry_id} is not in the server's file"
        return dict(zip(["id", *present], row, strict=True))

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        from fastmcp import Client

        async with Client(self.url, timeout=30) as client:
            return await client.call_tool(tool, arguments)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
