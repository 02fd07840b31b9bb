"""In stdio mode stdout is the protocol: everything else written to it goes to stderr instead.

Done at the file-descriptor level, before the memory starts, so it also covers what no Python setting reaches:
loggers that captured ``sys.stdout`` early, C extensions and child processes (the embedded PostgreSQL's
``pg_ctl`` inherits fd 1). The protocol keeps a private duplicate of the original stdout.
"""

from __future__ import annotations

import io
import os
import sys
from typing import IO, Any, cast

__all__ = ["reserve_stdout_for_protocol"]


class _ProtocolStdout(io.TextIOBase):
    """``sys.stdout`` while serving: ``.buffer`` is the protocol stream (what the MCP SDK writes frames to);
    text written with ``print`` and friends goes to stderr."""

    def __init__(self, protocol: IO[bytes], diagnostics: IO[str]) -> None:
        super().__init__()
        self.buffer = protocol
        self._diagnostics = diagnostics

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return self._diagnostics.write(text)

    def flush(self) -> None:
        self._diagnostics.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # anything else behaves like the diagnostics stream
        return getattr(self._diagnostics, name)


def reserve_stdout_for_protocol() -> None:
    """Point fd 1 at stderr and give the protocol a private duplicate of the original stdout."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.set_inheritable(protocol_fd, False)  # children must never write into the protocol pipe
    os.dup2(2, 1)
    protocol = os.fdopen(protocol_fd, "wb")
    sys.stdout = cast(Any, _ProtocolStdout(protocol, sys.stderr))
