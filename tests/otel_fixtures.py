"""The OpenTelemetry SDK's in-memory span exporter and metric reader, installed once per test process.

OpenTelemetry lets a process set its global tracer and meter providers only once, so every test module
that asserts on spans or metrics imports the ``otel`` fixture from here instead of building its own.
The package's instruments come from the API's proxy meter/tracer, which forward to these providers as
soon as they are set, whenever the package was imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from oneiric_memory.errors import ConfigurationError
from oneiric_memory.testing.telemetry import install_in_memory_sdk

__all__ = ["OtelCapture", "otel"]


@dataclass
class OtelCapture:
    """The process-wide exporter and reader, with small helpers for assertions."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        found = list(self.spans.get_finished_spans())
        return [s for s in found if name is None or s.name == name]

    def points(self, metric: str) -> list[Any]:
        """Data points of ``metric`` (all scopes) from a fresh collection."""
        data: MetricsData | None = self.reader.get_metrics_data()
        result: list[Any] = []
        if data is None:
            return result
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for item in scope.metrics:
                    if item.name == metric:
                        result.extend(item.data.data_points)
        return result

    def total(self, metric: str, **attributes: str) -> float:
        """Sum of counter values (or histogram sums) whose attributes include ``attributes``."""
        value = 0.0
        for point in self.points(metric):
            if all(point.attributes.get(k) == v for k, v in attributes.items()):
                value += float(point.value if hasattr(point, "value") else point.sum)
        return value

    def count(self, metric: str, **attributes: str) -> int:
        """Number of histogram recordings whose attributes include ``attributes``."""
        return sum(int(point.count) for point in self.points(metric)
                   if all(point.attributes.get(k) == v for k, v in attributes.items()))


_capture: OtelCapture | None = None


def install() -> OtelCapture:
    """The process-wide capture of :mod:`oneiric_memory.testing.telemetry` (installed on first use)."""
    global _capture
    if _capture is not None:
        return _capture
    try:
        exporter, reader = install_in_memory_sdk()
    except ConfigurationError as exc:
        pytest.skip(str(exc))
    _capture = OtelCapture(spans=exporter, reader=reader)
    return _capture


@pytest.fixture(scope="session")
def otel() -> Iterator[OtelCapture]:
    """The session's in-memory span exporter and metric reader."""
    yield install()
