"""The store's gauges: pool numbers, outbox backlog, pending embeddings and the recall canary.

A gauge callback runs on the metric exporter's thread and must never wait on PostgreSQL, so the pool gauges
read asyncpg's in-memory counters and the rest read :class:`GaugeValues`, the numbers cached per store by
the last outbox status, ``stats()``, ``doctor()`` or canary run (written through :func:`gauge_values`).
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from oneiric_memory.errors import StoreError
from oneiric_memory.observability import register_gauge

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector.store import PgvectorMemoryStore

__all__ = ["GaugeValues", "gauge_values", "register_metrics"]


@dataclass(slots=True)
class GaugeValues:
    """The last numbers seen for one store; None until something measured them."""

    outbox_pending: int | None = None
    outbox_failed: int | None = None
    oldest_pending_epoch: float | None = None
    pending_embeddings: int | None = None
    recall: float | None = None


_lock = threading.Lock()
_cache: weakref.WeakKeyDictionary[PgvectorMemoryStore, GaugeValues] = weakref.WeakKeyDictionary()
_registered: weakref.WeakSet[PgvectorMemoryStore] = weakref.WeakSet()
_gauges_registered = False


def gauge_values(store: PgvectorMemoryStore) -> GaugeValues:
    """The cached gauge numbers of ``store`` (created on first use); callers update its fields."""
    with _lock:
        entry = _cache.get(store)
        if entry is None:
            entry = _cache[store] = GaugeValues()
        return entry


def _sources() -> list[tuple[PgvectorMemoryStore, GaugeValues | None]]:
    with _lock:
        return [(store, _cache.get(store)) for store in list(_registered)]


def _pool_values(state: str) -> list[tuple[float, dict[str, str]]]:
    values: list[tuple[float, dict[str, str]]] = []
    for store, _ in _sources():
        try:
            stats = store.gate.stats()
        except StoreError:  # not initialized or closed
            continue
        number = {"size": stats.size, "idle": stats.idle, "in_use": stats.in_use, "waiting": stats.waiting,
                  "max": stats.max_size}[state]
        values.append((float(number), {"schema": store.schema}))
    return values


def _cached_values(read: str) -> list[tuple[float, dict[str, str]]]:
    values: list[tuple[float, dict[str, str]]] = []
    now = time.time()
    for store, cached in _sources():
        if cached is None:
            continue
        attrs = {"schema": store.schema}
        if read == "backlog":
            if cached.outbox_pending is not None:
                values.append((float(cached.outbox_pending), {**attrs, "status": "pending"}))
            if cached.outbox_failed is not None:
                values.append((float(cached.outbox_failed), {**attrs, "status": "failed"}))
        elif read == "oldest" and cached.outbox_pending is not None:
            oldest = cached.oldest_pending_epoch
            values.append((max(now - oldest, 0.0) if oldest is not None else 0.0, attrs))
        elif read == "pending" and cached.pending_embeddings is not None:
            values.append((float(cached.pending_embeddings), attrs))
        elif read == "recall" and cached.recall is not None:
            values.append((cached.recall, attrs))
    return values


def register_metrics(store: PgvectorMemoryStore) -> None:
    """Export this store's pool, outbox, pending-embedding and recall-canary numbers as gauges.

    Each gauge is registered once per process (OpenTelemetry keeps the first callback of a name) and
    reports every registered store, labelled by ``schema``.
    """
    global _gauges_registered
    with _lock:
        _registered.add(store)
        if _gauges_registered:
            return
        _gauges_registered = True
    for state, description in (("size", "open connections in the pool"), ("idle", "idle pool connections"),
                               ("in_use", "pool connections checked out"),
                               ("waiting", "callers waiting for a pool connection"),
                               ("max", "the pool's maximum size")):
        register_gauge(f"oneiric_memory.pool.{state}", description,
                       "{caller}" if state == "waiting" else "{connection}", functools.partial(_pool_values, state))
    register_gauge("oneiric_memory.outbox.backlog", "insight outbox rows not delivered, by status", "{insight}",
                   lambda: _cached_values("backlog"))
    register_gauge("oneiric_memory.outbox.oldest_age", "age of the oldest pending insight", "s",
                   lambda: _cached_values("oldest"))
    register_gauge("oneiric_memory.embeddings.pending", "memories whose embedding is pending", "{memory}",
                   lambda: _cached_values("pending"))
    register_gauge("oneiric_memory.recall.canary", "recall@k of the vector index against exact search", "1",
                   lambda: _cached_values("recall"))
