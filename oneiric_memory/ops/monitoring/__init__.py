"""Monitoring: statistics, the recall canary and ``doctor`` (findings with their fixes, and a health score).

Named parts: :mod:`.stats` (what is measured), :mod:`.findings` (one rule per finding), :mod:`.monitor` (the
:class:`Monitor` that collects and evaluates).
"""

from oneiric_memory.ops.monitoring.findings import (
    RULES,
    DoctorReport,
    Finding,
    Severity,
    Thresholds,
    evaluate,
    health_score,
)
from oneiric_memory.ops.monitoring.monitor import Monitor
from oneiric_memory.ops.monitoring.stats import (
    CanaryResult,
    IndexStats,
    MonitorStats,
    OutboxStats,
    SlowQuery,
    StatementStats,
    TableStats,
    VectorIndexStats,
    VectorStorage,
)

__all__ = [
    "RULES",
    "CanaryResult",
    "DoctorReport",
    "Finding",
    "IndexStats",
    "Monitor",
    "MonitorStats",
    "OutboxStats",
    "Severity",
    "SlowQuery",
    "StatementStats",
    "TableStats",
    "Thresholds",
    "VectorIndexStats",
    "VectorStorage",
    "evaluate",
    "health_score",
]
