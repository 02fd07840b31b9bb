"""The server's one ``UnifiedMemory``: started in the background, awaited by tools, closed once.

``initialize`` and ``tools/list`` answer at once, even while the embedded PostgreSQL runs ``initdb`` on a first
start (hosts time out slow servers). A tool call waits for the start; if the store cannot be reached, the call
gets a retryable error and a later call tries again (at most every ``RETRY_INTERVAL_S``), so a server started
before its database recovers by itself. The relay and backfill run inside the memory, as in any other host.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import OneiricMemoryError, StoreUnavailable
from oneiric_memory.observability import get_logger
from oneiric_memory.settings import MemorySettings

__all__ = ["RETRY_INTERVAL_S", "MemoryState"]

RETRY_INTERVAL_S = 5.0


class MemoryState:
    """Owns the process's ``UnifiedMemory`` and its start/stop."""

    def __init__(self, settings: MemorySettings, *, background: bool = True) -> None:
        self.settings = settings
        self.memory = UnifiedMemory(settings)
        self._background = background
        self._started = False
        self._closed = False
        self._starting: asyncio.Task[None] | None = None
        self._last_error: BaseException | None = None
        self._next_try = 0.0
        self._log = get_logger("oneiric_memory.mcp")

    @property
    def started(self) -> bool:
        return self._started

    @property
    def begun(self) -> bool:
        """True once the server's lifespan began the start (the server is, or was, serving)."""
        return self._starting is not None or self._started or self._closed

    @property
    def last_error(self) -> str | None:
        if self._last_error is None:
            return None
        if isinstance(self._last_error, OneiricMemoryError):
            return f"{type(self._last_error).__name__}: {self._last_error.message}"
        return type(self._last_error).__name__

    def begin(self) -> None:
        """Start the memory in the background (called once the server runs)."""
        if self._starting is None and not self._started and not self._closed:
            self._starting = asyncio.create_task(self._start(), name="oneiric-memory-mcp-start")

    async def _start(self) -> None:
        try:
            await self.memory.init(background=self._background)
        except Exception as exc:
            self._last_error = exc
            self._next_try = time.monotonic() + RETRY_INTERVAL_S
            self._log.warning("mcp-memory-start-failed", error=self.last_error)
            return
        self._started = True
        self._last_error = None
        self._log.info("mcp-memory-ready", embedder=self.memory.embedder_note)

    async def ready(self) -> UnifiedMemory:
        """The started memory; raises a retryable ``StoreUnavailable`` while it cannot start."""
        if self._started:
            return self.memory
        if self._closed:
            raise StoreUnavailable("the server is shutting down")
        if self._starting is None or (self._starting.done() and time.monotonic() >= self._next_try):
            self._starting = None
            self.begin()
        assert self._starting is not None
        await asyncio.shield(self._starting)  # one caller giving up must not cancel the start for the others
        if self._started:
            return self.memory
        wait = max(0.0, self._next_try - time.monotonic())
        cause = self._last_error
        if isinstance(cause, OneiricMemoryError) and not isinstance(cause, StoreUnavailable):
            raise cause  # configuration or schema problems: not retryable, say exactly what is wrong
        raise StoreUnavailable(f"the memory store is not available ({self.last_error}); the server retries "
                               f"in {wait:.0f}s")

    async def close(self) -> None:
        """Stop the start (if running), the background tasks and the adapters; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        await self.memory.cleanup()
        self._started = False
        self._log.info("mcp-memory-closed")
