"""Calling the async memory from the frameworks' sync and async methods, and their filter dicts as
:class:`SearchFilters`.

A :class:`UnifiedMemory` lives on one event loop (its connection pool does). Frameworks call vector stores from
plain sync code, from their own loop, or from worker threads; :class:`MemoryBridge` runs every call on the
memory's loop and waits for it the right way: a sync call blocks (never on the memory's own loop thread, where
it would deadlock: it raises instead), an async call awaits directly on that loop or hops to it from another.
:meth:`MemoryBridge.start` gives sync programs a memory on a private loop thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from typing import Any

from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import InvalidInput
from oneiric_memory.records import SearchFilters
from oneiric_memory.settings import MemorySettings

__all__ = ["MemoryBridge", "filters_from_mapping"]

_COLUMNS = ("repo_id", "agent_id", "workflow_id", "session_id", "source_system", "path_prefix")


def filters_from_mapping(filters: Mapping[str, Any] | None, *, project: str, memory_type: str,
                         repo_id: str | None) -> SearchFilters:
    """``{"repo_id": ..., "path_prefix": ..., "project": ..., "memory_type": ..., other: value}``: the named
    keys become column filters, every other key an equality on metadata (JSON containment)."""
    values = dict(filters or {})
    for key in values:
        if not isinstance(key, str):
            raise InvalidInput(f"filter keys must be strings, got {type(key).__name__}", field="filters")
    projects = values.pop("project", project)
    types = values.pop("memory_type", memory_type)
    columns = {name: values.pop(name) for name in _COLUMNS if name in values}
    columns.setdefault("repo_id", repo_id)
    result = SearchFilters(projects=[projects] if isinstance(projects, str) else projects,
                           memory_types=[types] if isinstance(types, str) else types,
                           metadata=values or None, **columns)
    result.validate()
    return result


class MemoryBridge:
    """Runs coroutines on the memory's event loop from any thread, sync or async (see the module docstring)."""

    def __init__(self, memory: UnifiedMemory, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise InvalidInput("pass the event loop the memory was opened on (or build the bridge inside "
                                   "it, or use MemoryBridge.start for sync programs)", field="loop") from None
        self.memory = memory
        self.loop = loop
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, settings: MemorySettings | None = None) -> MemoryBridge:
        """Open a memory on a private loop thread (for sync programs); :meth:`close` shuts both down."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="oneiric-memory-bridge", daemon=True)
        thread.start()
        opened: Future[UnifiedMemory] = asyncio.run_coroutine_threadsafe(_opened(settings), loop)
        try:
            memory = opened.result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        bridge = cls(memory, loop)
        bridge._thread = thread
        return bridge

    def close(self) -> None:
        """Clean the memory up and stop the private loop (only for a bridge made by :meth:`start`)."""
        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.memory.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
        self._thread = None

    def call[T](self, work: Callable[[UnifiedMemory], Awaitable[T]]) -> T:
        """Run ``work(memory)`` and wait for it, from sync code."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError("a sync vector-store method was called on the memory's own event loop, where "
                               "waiting would deadlock: use the async method (aadd, aquery, adelete, ...)")
        return asyncio.run_coroutine_threadsafe(_awaited(work, self.memory), self.loop).result()

    async def acall[T](self, work: Callable[[UnifiedMemory], Awaitable[T]]) -> T:
        """Run ``work(memory)`` from async code on any loop."""
        if asyncio.get_running_loop() is self.loop:
            return await work(self.memory)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_awaited(work, self.memory), self.loop))


async def _opened(settings: MemorySettings | None) -> UnifiedMemory:
    memory = UnifiedMemory(settings)
    await memory.init(background=False)
    return memory


async def _awaited[T](work: Callable[[UnifiedMemory], Awaitable[T]], memory: UnifiedMemory) -> T:
    return await work(memory)
