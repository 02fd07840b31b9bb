"""Capture oneiric-memory's OpenTelemetry spans and metrics in tests, like structlog's ``capture_logs``.

::

    from oneiric_memory.testing.telemetry import capture_telemetry

    with capture_telemetry() as telemetry:
        await memory.remember("hello")
    assert "oneiric_memory.remember" in telemetry.span_names()
    assert telemetry.total("oneiric_memory.memories.stored") == 1

It uses the OpenTelemetry SDK's in-memory span exporter and metric reader (install ``opentelemetry-sdk`` in the
test environment; the library itself needs only the API). OpenTelemetry lets a process set its global
providers once, so the first capture installs them for the whole process (or adds the span exporter to an SDK
tracer provider the app installed); every capture then reports only what happened inside its own block:
spans finished since it began, counter and histogram totals as differences from its start.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from oneiric_memory.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = ["TelemetryCapture", "capture_telemetry", "install_in_memory_sdk"]

_lock = threading.Lock()
_installed: tuple[InMemorySpanExporter, InMemoryMetricReader] | None = None


def install_in_memory_sdk() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    """The process-wide in-memory span exporter and metric reader, installed on first call."""
    global _installed
    with _lock:
        if _installed is not None:
            return _installed
        try:
            from opentelemetry import metrics, trace
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        except ImportError as exc:  # the library needs only the API; capturing needs the SDK
            raise ConfigurationError("capturing telemetry needs the OpenTelemetry SDK: install opentelemetry-sdk "
                                     "in the test environment") from exc
        if isinstance(metrics.get_meter_provider(), MeterProvider):
            raise ConfigurationError("a MeterProvider is already installed in this process, and OpenTelemetry "
                                     "allows one: call capture_telemetry() before the app installs its own")
        exporter = InMemorySpanExporter()
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):  # the app installed an SDK: add our exporter to it
            current.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        _installed = (exporter, reader)
        return _installed


class TelemetryCapture:
    """What happened inside one :func:`capture_telemetry` block."""

    def __init__(self, exporter: InMemorySpanExporter, reader: InMemoryMetricReader) -> None:
        self._exporter = exporter
        self._reader = reader
        self._first_span = len(exporter.get_finished_spans())
        self._last_span: int | None = None  # set when the block ends: later spans are not this block's
        self._baseline = self._snapshot()
        self._final: dict[str, list[Any]] | None = None

    def close(self) -> None:
        """Freeze the capture at the end of its block (:func:`capture_telemetry` calls it)."""
        if self._last_span is None:
            self._last_span = len(self._exporter.get_finished_spans())
            self._final = self._snapshot()

    @property
    def spans(self) -> list[ReadableSpan]:
        """Spans finished inside the block, oldest first."""
        return list(self._exporter.get_finished_spans())[self._first_span:self._last_span]

    def span_names(self) -> list[str]:
        return [span.name for span in self.spans]

    def finished(self, name: str) -> list[ReadableSpan]:
        """The captured spans called ``name`` (e.g. ``oneiric_memory.store.search``)."""
        return [span for span in self.spans if span.name == name]

    def points(self, metric: str) -> list[Any]:
        """The data points of ``metric`` at the end of the block (or now, inside it); cumulative since the
        process began, every attribute set."""
        snapshot = self._final if self._final is not None else self._snapshot()
        return list(snapshot.get(metric, []))

    def total(self, metric: str, **attributes: str) -> float:
        """How much a counter (or a histogram's sum) grew inside the block, over points matching ``attributes``."""
        return self._sum(self.points(metric), attributes, "value") - self._sum(
            self._baseline.get(metric, []), attributes, "value")

    def count(self, metric: str, **attributes: str) -> int:
        """How many values a histogram recorded inside the block, over points matching ``attributes``."""
        return int(self._sum(self.points(metric), attributes, "count")
                   - self._sum(self._baseline.get(metric, []), attributes, "count"))

    def _snapshot(self) -> dict[str, list[Any]]:
        data = self._reader.get_metrics_data()
        snapshot: dict[str, list[Any]] = {}
        if data is None:
            return snapshot
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for item in scope.metrics:
                    snapshot.setdefault(item.name, []).extend(item.data.data_points)
        return snapshot

    @staticmethod
    def _sum(points: list[Any], attributes: Mapping[str, str], field: str) -> float:
        total = 0.0
        for point in points:
            if all(point.attributes.get(key) == value for key, value in attributes.items()):
                if field == "count":
                    total += float(getattr(point, "count", 0))
                else:
                    total += float(point.value if hasattr(point, "value") else point.sum)
        return total


@contextmanager
def capture_telemetry() -> Iterator[TelemetryCapture]:
    """Capture the spans and metric changes of the block (see the module docstring)."""
    exporter, reader = install_in_memory_sdk()
    capture = TelemetryCapture(exporter, reader)
    try:
        yield capture
    finally:
        capture.close()
