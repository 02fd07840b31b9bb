"""Logging, tracing and metrics for oneiric-memory (OpenTelemetry API only).

With no OpenTelemetry SDK installed every call here is a cheap no-op; the host app installs the SDK.
Span attributes and log fields carry counts, modes and types, never memory content or secrets.

Oneiric's own trace processor writes ``f"{trace_id: 032x}"`` (a leading space instead of a zero);
:func:`add_trace_ids` writes W3C-correct ids and overwrites whatever ran before it.

The library never writes to stdout (it belongs to the app: ``--json`` pipes, MCP stdio). structlog's own
default prints to stdout, so unless the app configured structlog first, importing this module configures it:
stderr, INFO, colours only when stderr is a terminal. An app's later ``structlog.configure`` replaces that.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, Status, StatusCode

__all__ = [
    "INSTRUMENTS",
    "Instruments",
    "add_trace_ids",
    "configure_logging",
    "get_logger",
    "register_gauge",
    "Stopwatch",
    "span",
]

_SCOPE = "oneiric_memory"


def add_trace_ids(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: ``trace_id`` as 32 and ``span_id`` as 16 lower-case hex digits."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def get_logger(name: str, **bound: Any) -> Any:
    """A structlog logger bound to its component; bind at construction, not at import time."""
    return structlog.get_logger(name).bind(**bound)


class _Stderr:
    """Writes to whatever ``sys.stderr`` is at the time (test runners and the CLI swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(*, json: bool = False, level: str = "INFO", extra_processors: Iterable[Any] = ()) -> None:
    """structlog to stderr at ``level`` (JSON lines, or console lines coloured only on a terminal).

    ``extra_processors`` run just before rendering (the CLI drops traceback-carrying events unless ``--debug``).
    """
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"log level {level!r} is unknown; use DEBUG, INFO, WARNING or ERROR")
    processors: list[Any] = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                              structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False), add_trace_ids,
                              structlog.processors.StackInfoRenderer(), *extra_processors]
    if json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(),
                                                        exception_formatter=structlog.dev.plain_traceback))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


if not structlog.is_configured():  # structlog's default writes to stdout; ours goes to stderr
    configure_logging()


def _tracer() -> trace.Tracer:
    return trace.get_tracer(_SCOPE)


@contextmanager
def span(name: str, **attributes: str | int | float | bool | None) -> Iterator[Span]:
    """A span named ``oneiric_memory.<name>``; exceptions mark it as an error and propagate."""
    clean = {key: value for key, value in attributes.items() if value is not None}
    with _tracer().start_as_current_span(f"{_SCOPE}.{name}", attributes=clean,
                                         record_exception=False, set_status_on_exception=False) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            current.set_attribute("error.type", type(exc).__name__)
            raise


class Instruments:
    """All counters and histograms of the package.

    They come from the API's proxy meter, which forwards to whatever SDK the app installs later.
    """

    def __init__(self) -> None:
        meter = metrics.get_meter(_SCOPE)
        self.memories_stored = meter.create_counter(
            "oneiric_memory.memories.stored", unit="{memory}", description="memories newly stored")
        self.dedup_hits = meter.create_counter(
            "oneiric_memory.memories.dedup_hits", unit="{memory}", description="writes that matched a stored memory")
        self.insights_delivered = meter.create_counter(
            "oneiric_memory.insights.delivered", unit="{insight}", description="insights delivered to Session-Buddy")
        self.insights_failed = meter.create_counter(
            "oneiric_memory.insights.failed", unit="{attempt}", description="failed insight delivery attempts")
        self.search_latency = meter.create_histogram(
            "oneiric_memory.search.duration", unit="ms", description="search latency by mode")
        self.embed_latency = meter.create_histogram(
            "oneiric_memory.embed.duration", unit="ms", description="embedder call latency")
        self.batch_size = meter.create_histogram(
            "oneiric_memory.write.batch_size", unit="{memory}", description="records per write batch")


INSTRUMENTS = Instruments()


def register_gauge(name: str, description: str, unit: str,
                   read: Callable[[], Iterable[tuple[float, Mapping[str, str]]]]) -> None:
    """Register an observable gauge whose callback never raises (a failing read reports nothing)."""

    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        try:
            return [Observation(value, dict(attrs)) for value, attrs in read()]
        except Exception:
            return []

    metrics.get_meter(_SCOPE).create_observable_gauge(name, callbacks=[callback], unit=unit, description=description)


class Stopwatch:
    """Milliseconds since construction; used for latency histograms and health reports."""

    __slots__ = ("_start",)

    def __init__(self) -> None:
        self._start = time.perf_counter()

    @property
    def ms(self) -> float:
        return (time.perf_counter() - self._start) * 1000.0
