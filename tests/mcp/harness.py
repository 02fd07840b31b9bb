"""Shared by the MCP server tests: the server command line and environment, an HTTP server process, and small
client helpers."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.cli_helpers import store_env

BIN = Path(sys.executable).parent
SERVER_COMMAND = [str(BIN / "oneiric-memory"), "mcp"]


def server_env(pg_data_dir: Path, *, schema: str | None = None, **extra: str) -> dict[str, str]:
    """A clean environment (no user settings) pointing at the test session's PostgreSQL and a fresh schema."""
    base = {key: value for key, value in os.environ.items() if not key.startswith(("MAHAVISHNU_", "ONEIRIC_"))}
    return {**base, **store_env(pg_data_dir, schema or f"t_{uuid.uuid4().hex[:12]}"),
            "MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__MAX_CONNECTIONS": "4", **extra}


def data(result: Any) -> dict[str, Any]:
    """The structured content of a successful tool call."""
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict), result
    return result.structured_content


def wire(model: Any) -> dict[str, Any]:
    """A protocol object as it goes over the wire (camelCase keys in MCP SDK 1.x and 2.x alike)."""
    return dict(model.model_dump(mode="json", by_alias=True, exclude_none=True))


def error_text(result: Any) -> str:
    assert result.is_error, result
    return " ".join(getattr(block, "text", "") for block in result.content)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HttpServer:
    """``oneiric-memory mcp --http`` as a subprocess; ``url`` once it accepts connections."""

    def __init__(self, env: dict[str, str], cwd: Path, *args: str) -> None:
        import subprocess

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.stderr_path = cwd / f"mcp-http-{self.port}.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen([*SERVER_COMMAND, "--http", f"127.0.0.1:{self.port}", *args], cwd=cwd,
                                        env=env, stdout=subprocess.PIPE, stderr=self._stderr)

    def wait_ready(self, timeout: float = 120.0) -> None:
        import socket
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}: {self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("the server did not listen in time")

    def stop(self) -> int:
        """SIGTERM, then the exit code (killed after 60 s)."""
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()
        return self.process.returncode

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")
