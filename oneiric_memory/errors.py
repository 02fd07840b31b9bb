"""The exception hierarchy of oneiric-memory.

Every error says what to do next in its message and carries structured ``details``::

    OneiricMemoryError            base class; never shadows the builtin MemoryError
    ├── ConfigurationError        a setting is wrong or missing (names the key and the file)
    ├── StoreError                PostgreSQL refused or failed an operation
    │   ├── StoreUnavailable      transient: connection lost, pool exhausted, deadlock (retried)
    │   │   └── MaintenanceBusy   another maintenance run holds the schema's lock (retry later)
    │   └── SchemaMismatch        the database was built for another model/dimension/revision
    ├── EmbedderError             the embedder answered something unusable
    │   └── EmbedderUnavailable   transient: the embedder is down or too slow (retried)
    ├── InsightSinkError          Session-Buddy refused or is locked
    │   └── SourceLocked          another process holds Session-Buddy's DuckDB file (migration source)
    └── InvalidInput              bad input; nothing was changed

Retries with backoff apply to the *transient* classes only (``StoreUnavailable`` and
``EmbedderUnavailable``), so callers can tell "try again later" from "fix your call".
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

__all__ = [
    "ConfigurationError",
    "EmbedderError",
    "EmbedderUnavailable",
    "InsightSinkError",
    "InvalidInput",
    "MaintenanceBusy",
    "OneiricMemoryError",
    "SchemaMismatch",
    "SourceLocked",
    "StoreError",
    "StoreUnavailable",
    "TRANSIENT_ERRORS",
    "first_error",
    "without_driver_chain",
]


class OneiricMemoryError(Exception):
    """Base of every error raised by this package."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def __str__(self) -> str:
        return self.message


class ConfigurationError(OneiricMemoryError):
    """A setting is invalid or inconsistent; the message names the key and its source."""


class StoreError(OneiricMemoryError):
    """The PostgreSQL store failed an operation."""


class StoreUnavailable(StoreError):
    """Transient store failure (connection, pool timeout, serialization, deadlock, shutdown)."""


class MaintenanceBusy(StoreUnavailable):
    """Another maintenance run holds this schema's maintenance lock (transient: retry later)."""


class SchemaMismatch(StoreError):
    """The database schema does not match this package's model, dimension or revision."""


class EmbedderError(OneiricMemoryError):
    """The embedder answered something unusable (wrong dimension, bad JSON, unknown model)."""


class EmbedderUnavailable(EmbedderError):
    """Transient embedder failure: down, refusing, rate limited or too slow after retries."""


class InsightSinkError(OneiricMemoryError):
    """Session-Buddy could not take or return insights (locked file, server error)."""


class SourceLocked(InsightSinkError):
    """Another process (normally Session-Buddy) holds the DuckDB file; DuckDB allows one process per file."""


class InvalidInput(OneiricMemoryError, ValueError):
    """The caller's input is invalid; nothing was written."""


TRANSIENT_ERRORS: tuple[type[OneiricMemoryError], ...] = (StoreUnavailable, EmbedderUnavailable)


async def without_driver_chain[T](work: Awaitable[T]) -> T:
    """Await ``work``; re-raise our errors without the driver's traceback chain.

    Oneiric logs a failed activation with ``exc_info``, and structlog's default console renderer prints every
    frame's local variables: the driver frames under a connection error hold the password. Our messages
    already say what failed and what to do, so the chain is dropped.
    """
    try:
        return await work
    except OneiricMemoryError as exc:
        raise type(exc)(exc.message, **exc.details) from None


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real exception of a TaskGroup failure, never one of the cancellations it caused.

    When one task fails, ``asyncio.TaskGroup`` cancels its siblings; a sibling that was mid-``await`` can
    surface in the group as a ``CancelledError`` ahead of the cause, and re-raising that would look like a
    cancellation of the caller.
    """
    from asyncio import CancelledError  # here, not at import: errors is loaded by `--help`, asyncio costs ~40 ms

    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, CancelledError):
            return exc
    return group.exceptions[0]
