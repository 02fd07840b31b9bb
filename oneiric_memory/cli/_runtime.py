"""What every command module shares: the two consoles, the exit codes, the error-to-exit-code mapping, the run
loop, settings, progress bars and the adapters a command opens.

Private to the ``cli`` package. It imports only the standard library, typer, rich and the ground floor
(``errors``) at module level, so ``--help`` and argument errors never load a database, MCP or DuckDB module.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from oneiric_memory.errors import (
    ConfigurationError,
    EmbedderUnavailable,
    InvalidInput,
    OneiricMemoryError,
    SchemaMismatch,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
    from oneiric_memory.coordinator import UnifiedMemory
    from oneiric_memory.settings import MemorySettings

__all__ = [
    "EXIT_CODES",
    "STATE",
    "CheckFailed",
    "UsageProblem",
    "console",
    "err_console",
    "exit_code",
    "health_table",
    "hits_table",
    "invalid",
    "open_memory",
    "parse_ids",
    "open_store",
    "print_json",
    "progress",
    "report_cli_error",
    "report_error",
    "run",
    "settings",
]

T = TypeVar("T")

EXIT_CODES: dict[str, int] = {
    "ok": 0, "error": 1, "usage": 2, "configuration": 3, "unavailable": 4, "invalid_input": 5,
    "schema_mismatch": 6, "check_failed": 7, "interrupted": 130,
}
"""Stable exit codes (documented in the README): scripts branch on them."""

def _width() -> int | None:
    """A terminal's own width; 160 columns when piped (rich's 80 folds ids and tables) unless COLUMNS says."""
    import os

    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    return None if sys.stdout.isatty() else 160


console = Console(width=_width())
"""Standard output: the command's result and nothing else."""
err_console = Console(stderr=True)
"""Standard error: progress, notes and the one-line error."""


@dataclass(slots=True)
class _State:
    debug: bool = False
    settings_root: Path | None = None
    log_level: str = "WARNING"


STATE = _State()
"""Global options of the current invocation (set by the root callback)."""


class CheckFailed(Exception):
    """A command ran but its check failed (unhealthy, validation mismatch, critical finding): exit 7."""


def exit_code(exc: BaseException) -> int:
    """The documented exit code for an exception."""
    if isinstance(exc, ConfigurationError):
        return EXIT_CODES["configuration"]
    if isinstance(exc, (StoreUnavailable, EmbedderUnavailable)):
        return EXIT_CODES["unavailable"]
    if isinstance(exc, InvalidInput):
        return EXIT_CODES["invalid_input"]
    if isinstance(exc, SchemaMismatch):
        return EXIT_CODES["schema_mismatch"]
    if isinstance(exc, CheckFailed):
        return EXIT_CODES["check_failed"]
    if isinstance(exc, UsageProblem):
        return EXIT_CODES["usage"]
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_CODES["interrupted"]
    return EXIT_CODES["error"]


def _one_line(text: str, limit: int = 600) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def report_error(exc: BaseException) -> int:
    """Print ``error: …`` as one line on stderr (after the traceback with ``--debug``); return the exit code."""
    if STATE.debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        message = "interrupted"
    elif isinstance(exc, (OneiricMemoryError, CheckFailed, UsageProblem)):
        message = str(exc)
    else:
        message = f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"
    err_console.print(f"[bold red]error:[/] {_one_line(message)}", highlight=False, markup=True, soft_wrap=True,
                      emoji=False)
    return exit_code(exc)


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run a command's async work after configuring logging; errors propagate to the app's error handler."""
    import asyncio

    from oneiric_memory.observability import configure_logging

    configure_logging(level=STATE.log_level, extra_processors=() if STATE.debug else (_drop_tracebacks,))
    return asyncio.run(work())  # type: ignore[arg-type]


def _drop_tracebacks(_logger: Any, _method: str, event: Any) -> Any:
    """structlog processor: an event carrying a traceback is about the failure the CLI reports as its one-line
    error (e.g. Oneiric's ``swap-failed``); ``--debug`` shows both."""
    if event.get("exc_info") or "exception" in event:
        import structlog

        raise structlog.DropEvent
    return event


def settings(overrides: dict[str, Any] | None = None) -> MemorySettings:
    """The layered settings (``--settings-root`` decides where ``settings/`` is)."""
    from oneiric_memory.settings import load_settings

    return load_settings(overrides, root=STATE.settings_root)


async def open_store(overrides: dict[str, Any] | None = None, *, migrate: bool = True) -> PgvectorMemoryStore:
    """The store alone (ops commands need no embedder or sink), built by its factory."""
    configured = settings(overrides)
    from oneiric_memory.adapters.pgvector import pgvector_store_factory

    if not migrate:
        configured.postgres.auto_migrate = False
    store = await pgvector_store_factory(configured)
    return store


@asynccontextmanager
async def open_memory(overrides: dict[str, Any] | None = None) -> AsyncIterator[UnifiedMemory]:
    """The coordinator with no background loops (a command does its work, then exits)."""
    configured = settings(overrides)  # a configuration error is reported before the heavy imports
    from oneiric_memory.coordinator import UnifiedMemory

    async with UnifiedMemory.open(configured, background=False) as memory:
        yield memory


def print_json(data: Any) -> None:
    """JSON on stdout (plain when piped; ``default=str`` for dates and UUIDs)."""
    import json

    console.print_json(json.dumps(data, default=str, ensure_ascii=False))


@contextmanager
def progress(description: str, total: int | None, *, enabled: bool = True) -> Iterator[Callable[[int, int | None], None]]:
    """A progress bar on stderr; the callback takes ``(done, total)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=False, disable=not enabled) as bar:
        task = bar.add_task(description, total=total)

        def update(done: int, total_now: int | None) -> None:
            bar.update(task, completed=done, total=total_now)

        yield update


def hits_table(title: str, hits: list[Any]) -> Table:
    """Search hits, with their ids (``get ID`` and ``forget ID`` take them)."""
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("id", no_wrap=True)
    table.add_column("score", justify="right")
    table.add_column("ranks v/t", justify="center")
    table.add_column("type")
    table.add_column("project", overflow="fold", max_width=24)
    table.add_column("source")
    table.add_column("content", overflow="fold", max_width=80)
    for position, hit in enumerate(hits, start=1):
        ranks = f"{hit.vector_rank or '-'}/{hit.text_rank or '-'}"
        text = " ".join(hit.content.split())
        meta = hit.metadata or {}
        if isinstance(meta.get("path"), str):  # an ingested repository chunk: file, symbol and lines first
            where = f"{meta['path']}:{meta.get('start_line', '?')}-{meta.get('end_line', '?')}"
            text = f"{where}{' (' + str(meta['symbol']) + ')' if meta.get('symbol') else ''} — {text}"
        table.add_row(str(position), str(hit.id), f"{hit.score:.4f}", ranks, hit.memory_type, hit.project, hit.source,
                      text[:160] + ("…" if len(text) > 160 else ""))
    return table


def health_table(response: dict[str, Any]) -> Table:
    """The aggregated health (``HealthCheckResponse.to_dict()``), one row per component."""
    table = Table(title=f"health: {response['status']}", title_justify="left")
    table.add_column("component")
    table.add_column("status")
    table.add_column("latency ms", justify="right")
    table.add_column("message", overflow="fold", max_width=90)
    colors = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}
    for component in response["components"]:
        status = str(component["status"])
        latency = component.get("latency_ms")
        table.add_row(component["name"], f"[{colors.get(status, 'white')}]{status}[/]",
                      f"{latency:.1f}" if latency is not None else "", component.get("message") or "")
    return table


class UsageProblem(Exception):
    """The command line is incomplete or contradictory (a missing ``--yes``, two exclusive options): exit 2."""


def invalid(message: str, **details: Any) -> InvalidInput:
    """An argument value is wrong (exit 5); raised before anything is opened."""
    return InvalidInput(message, **details)


def report_cli_error(exc: typer.TyperException) -> int:
    """One line for the parser's own errors: a bad value is invalid input (5), the rest usage (2)."""
    if STATE.debug:
        traceback.print_exception(exc, file=sys.stderr)
    code = exc.exit_code
    message = exc.format_message()
    context = getattr(exc, "ctx", None)
    if isinstance(exc, typer.BadParameter) and type(exc).__name__ != "MissingParameter":
        code = EXIT_CODES["invalid_input"]
    if code == EXIT_CODES["usage"] and context is not None:
        message += f" (see `{context.command_path} --help`)"
    err_console.print(f"[bold red]error:[/] {_one_line(message)}", highlight=False, markup=True, soft_wrap=True,
                      emoji=False)
    return code


def parse_ids(ids: list[str]) -> list[str]:
    """Memory ids as the tables show them (UUIDs); a malformed one is invalid input."""
    import uuid

    for value in ids:
        try:
            uuid.UUID(value)
        except ValueError:
            raise invalid(f"{value[:64]!r} is not a memory id (a UUID, as `search` and `list` show)",
                          field="id") from None
    return ids
