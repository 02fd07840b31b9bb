"""Run the server: stdio (default) or streamable HTTP, one ``UnifiedMemory`` per process, clean on SIGTERM.

- HTTP refuses, before anything starts, a non-loopback bind without ``mcp.token`` (see ``bind.check_bind``).
- SIGTERM: over HTTP uvicorn drains requests, then the lifespan closes the memory (the relay and backfill
  stop, the pool closes, the embedded PostgreSQL handle is released). Over stdio the memory is closed the same
  way and the process exits 0 at once: the SDK's stdin reader thread cannot be interrupted, and waiting for the
  host to close stdin would ignore the signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from oneiric_memory.errors import InvalidInput
from oneiric_memory.mcp.bind import check_bind
from oneiric_memory.settings import MemorySettings

__all__ = ["HttpAddress", "parse_http_address", "prepare_settings", "serve"]


@dataclass(frozen=True, slots=True)
class HttpAddress:
    host: str
    port: int


def parse_http_address(value: str, *, default_host: str = "127.0.0.1") -> HttpAddress:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT``."""
    text = value.strip()
    host, port_text = default_host, text
    if text.startswith("["):
        inside, _, rest = text[1:].partition("]")
        if not rest.startswith(":"):
            raise InvalidInput(f"--http {value!r}: write an IPv6 address as [ADDRESS]:PORT", field="http")
        host, port_text = inside, rest[1:]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise InvalidInput(f"--http {value!r}: expected [HOST:]PORT, e.g. 8686 or 127.0.0.1:8686",
                           field="http") from None
    if not 0 < port < 65536 or not host:
        raise InvalidInput(f"--http {value!r}: the port must be 1-65535 and the host non-empty", field="http")
    return HttpAddress(host, port)


def prepare_settings(settings: MemorySettings, *, projects: Sequence[str] = (), http: str | None = None
                     ) -> MemorySettings:
    """Apply the command-line pin and address, then the safety check; nothing has started yet."""
    updates: dict[str, Any] = {}
    if projects:
        updates["projects"] = list(projects)
    if http is not None:
        address = parse_http_address(http, default_host=settings.mcp.host)
        updates["host"], updates["port"] = address.host, address.port
    mcp_settings = settings.mcp.model_validate({**settings.mcp.model_dump(), **updates}) if updates else settings.mcp
    if http is not None:
        check_bind(mcp_settings.host, mcp_settings.token)
    return settings.model_copy(update={"mcp": mcp_settings})


def serve(settings: MemorySettings, *, http: bool = False) -> None:
    """Block serving MCP until stdin closes (stdio), or SIGTERM/SIGINT. ``settings`` from :func:`prepare_settings`."""
    if not http:
        from oneiric_memory.mcp.stdio import reserve_stdout_for_protocol

        reserve_stdout_for_protocol()
    asyncio.run(_serve(settings, http=http))


async def _serve(settings: MemorySettings, *, http: bool) -> None:
    from oneiric_memory.mcp.server import build_server

    mcp, state = build_server(settings, http=http)
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    stopping = False

    async def close_and_exit() -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(state.close(), timeout=30)
        sys.stderr.flush()
        os._exit(0)  # see the module docstring: the stdin reader thread would keep the process alive

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        if http:
            # While serving, uvicorn's own handler is installed; it drains, then re-raises the signal here,
            # where the lifespan is already closing the memory: nothing to do. Before that (start-up), stop.
            stopping = True
            if not state.begun and main is not None:
                loop.call_soon_threadsafe(main.cancel)
            return
        stopping = True
        loop.call_soon_threadsafe(lambda: loop.create_task(close_and_exit()))

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if http:
            await mcp.run_http_async(
                transport="http", host=settings.mcp.host, port=settings.mcp.port, path=settings.mcp.path,
                show_banner=False, uvicorn_config={"timeout_graceful_shutdown": 10, "access_log": False})
        else:
            await mcp.run_stdio_async(show_banner=False)
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        await state.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
