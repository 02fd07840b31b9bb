"""The private event-loop thread Session-Buddy's blocking coroutines run on.

Session-Buddy's adapter methods are ``async def`` but block on DuckDB, so they never run on the caller's
loop. One daemon thread per process owns a loop; Session-Buddy shares DuckDB connections between adapters
on the same file (a module-level cache), so every sink's calls go through that one thread and never
interleave.

Coroutines are created ON the worker loop (callers hand over a factory, never a coroutine object): a
coroutine made here and dropped because the loop stopped first would warn "was never awaited".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from oneiric_memory.errors import InsightSinkError

__all__ = ["LoopThread", "acquire_worker", "release_worker"]


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned future's outcome so asyncio never warns it was not retrieved."""
    if not future.cancelled():
        future.exception()


class LoopThread:
    """One daemon thread owning an event loop.

    A call that outlives its timeout keeps running (DuckDB cannot be interrupted); its result is
    dropped, or handed to ``cleanup`` so an abandoned open never leaks the file lock.
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._finish()

    def _finish(self) -> None:
        """Cancel what is still pending (a task created just before the stop has not started yet), then close.

        A task destroyed while pending leaves its coroutine "never awaited"; a cancelled one ends cleanly.
        """
        loop = self._loop
        with contextlib.suppress(Exception):
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=5.0))
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def submit[T](self, factory: Callable[[], Coroutine[Any, Any, T]]) -> concurrent.futures.Future[T]:
        """Run ``factory()`` on the worker loop without waiting; the coroutine is created there.

        Cancelling the returned future before the loop got to it means the coroutine is never created.
        """
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def finished(task: asyncio.Task[T]) -> None:
            if task.cancelled():
                result.set_exception(concurrent.futures.CancelledError())
            elif (error := task.exception()) is not None:
                result.set_exception(error)
            else:
                result.set_result(task.result())

        def start() -> None:
            if not result.set_running_or_notify_cancel():
                return  # cancelled before it started: nothing was created
            try:
                task = self._loop.create_task(factory())
            except BaseException as exc:
                result.set_exception(exc)
                return
            task.add_done_callback(finished)

        self._loop.call_soon_threadsafe(start)  # RuntimeError when the loop is closed
        return result

    async def run[T](self, factory: Callable[[], Coroutine[Any, Any, T]], *, bound_s: float, what: str,
                     cleanup: Callable[[T], Coroutine[Any, Any, None]] | None = None) -> T:
        """Await ``factory()`` on the worker loop for at most ``bound_s``; then raise ``InsightSinkError``."""
        guard = threading.Lock()
        state = {"abandoned": False, "done": False}

        async def guarded() -> T:
            result = await factory()
            with guard:
                if not state["abandoned"]:
                    state["done"] = True
                    return result
            if cleanup is not None:
                with contextlib.suppress(Exception):
                    await cleanup(result)
            return result

        try:
            future = self.submit(guarded)
        except RuntimeError:
            raise InsightSinkError("the Session-Buddy worker has stopped; the sink was cleaned up",
                                   reason="closed", operation=what) from None
        wrapped = asyncio.wrap_future(future)

        def give_up() -> bool:
            """Mark the call abandoned; True when its result had already been handed over."""
            with guard:
                finished = state["done"]
                state["abandoned"] = not finished
            return finished

        try:
            done, _pending = await asyncio.wait({wrapped}, timeout=bound_s)
        except asyncio.CancelledError:  # our caller gave up (e.g. the relay's own timeout)
            if give_up() and cleanup is not None:
                future.add_done_callback(lambda f: self._cleanup_later(f, cleanup))
            wrapped.add_done_callback(_consume)
            raise
        if done:
            return wrapped.result()
        if give_up():  # it completed in the instant we gave up: use it
            return await wrapped
        wrapped.add_done_callback(_consume)
        raise InsightSinkError(
            f"Session-Buddy did not answer within {bound_s:g}s ({what}); deliveries stay queued and are retried",
            reason="timeout", operation=what,
        )

    def _cleanup_later[T](self, future: concurrent.futures.Future[T],
                          cleanup: Callable[[T], Coroutine[Any, Any, None]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        value = future.result()
        with contextlib.suppress(RuntimeError):  # the loop may already be closed at shutdown
            self.submit(lambda: cleanup(value))

    def stop(self, join_timeout: float) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(join_timeout)


_WORKER_GUARD = threading.Lock()
_worker: LoopThread | None = None
_worker_users = 0


def acquire_worker() -> LoopThread:
    """The process's worker thread (started on first use); pair with :func:`release_worker`."""
    global _worker, _worker_users
    with _WORKER_GUARD:
        if _worker is None:
            _worker = LoopThread("oneiric-memory-session-buddy")
        _worker_users += 1
        return _worker


def release_worker(join_timeout: float) -> None:
    """Drop one user; the last one stops the thread (a stuck call delays that by at most ``join_timeout``)."""
    global _worker, _worker_users
    with _WORKER_GUARD:
        _worker_users = max(0, _worker_users - 1)
        if _worker_users or _worker is None:
            return
        worker, _worker = _worker, None
    worker.stop(join_timeout)
