"""How a failure becomes a tool error an agent can act on, and why nothing reaches the transport raw.

- ``InvalidInput``          -> ``InvalidInput: <what to fix>`` (do not retry the same call);
- ``StoreUnavailable`` / ``EmbedderUnavailable`` -> ``retryable: ...`` (the same call may succeed later);
- any other package error   -> ``<ErrorClass>: <message>``;
- anything else             -> ``internal error (<Type>)``, logged to stderr with its traceback.

The message of a package error is written to say what to do and never holds a secret; unknown exceptions
are not echoed, since their text may hold anything (a DSN, a row).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from fastmcp.exceptions import ToolError

from oneiric_memory.errors import TRANSIENT_ERRORS, InvalidInput, OneiricMemoryError
from oneiric_memory.observability import get_logger

__all__ = ["RETRYABLE_PREFIX", "as_tool_error", "tool_errors"]

P = ParamSpec("P")
R = TypeVar("R")

RETRYABLE_PREFIX = "retryable: "


def as_tool_error(exc: BaseException, *, tool: str) -> ToolError:
    """The one-line tool error for ``exc`` (logged here when it is not the caller's fault)."""
    if isinstance(exc, ToolError):
        return exc
    if isinstance(exc, InvalidInput):
        return ToolError(f"InvalidInput: {exc.message}")
    if isinstance(exc, TRANSIENT_ERRORS):
        get_logger("oneiric_memory.mcp").warning("mcp-tool-unavailable", tool=tool, error=type(exc).__name__)
        return ToolError(f"{RETRYABLE_PREFIX}{type(exc).__name__}: {exc.message} (retry the same call shortly)")
    if isinstance(exc, OneiricMemoryError):
        get_logger("oneiric_memory.mcp").warning("mcp-tool-failed", tool=tool, error=type(exc).__name__)
        return ToolError(f"{type(exc).__name__}: {exc.message}")
    get_logger("oneiric_memory.mcp").error("mcp-tool-crashed", tool=tool, error=type(exc).__name__, exc_info=exc)
    return ToolError(f"internal error ({type(exc).__name__}) in {tool}; the server logged it and keeps running")


def tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Wrap a tool so every exception leaves it as a :class:`ToolError` (``functools.wraps`` keeps the schema)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            raise as_tool_error(exc, tool=fn.__name__) from None

    return wrapper
