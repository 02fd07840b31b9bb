"""Maintenance of the store: VACUUM, autovacuum tuning, vector-index rebuilds, expiry and ``auto``.

Why a dedicated connection: VACUUM and ``... CONCURRENTLY`` cannot run inside a transaction, and pooled
connections carry the application's ``statement_timeout`` (an index build on 150K rows takes a minute).
Maintenance therefore opens one direct connection with ``statement_timeout = 0`` and a raised
``maintenance_work_mem``, never borrows a pool slot for minutes, and never leaks session settings into
the pool. A session-level advisory lock per schema keeps two maintenance runs (cron and the coordinator's
periodic task) from rebuilding the same index at once. Behind PgBouncer, point maintenance at the server
directly: session settings and advisory locks need a session.

``auto()`` does only what the statistics say is due, in the order the reference requires: expire first
(it creates dead tuples), then reindex (after large deletes, before VACUUM), then VACUUM.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from oneiric_memory.adapters.pgvector import ivfflat_lists_for
from oneiric_memory.adapters.pgvector.direct import REBUILD_SUFFIX, DirectSession, direct_session
from oneiric_memory.adapters.pgvector.schema import PACKAGE_TABLES
from oneiric_memory.errors import InvalidInput, MaintenanceBusy, OneiricMemoryError
from oneiric_memory.observability import Stopwatch, get_logger, span
from oneiric_memory.ops.reports import jsonable
from oneiric_memory.settings import MemorySettings

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector import PgvectorMemoryStore

__all__ = [
    "AUTOVACUUM_SETTINGS",
    "ActionRecord",
    "AutoReport",
    "AutovacuumReport",
    "Maintenance",
    "ReindexReport",
    "TableVacuum",
    "VacuumReport",
    "ivfflat_probes_for",
    "run_periodically",
]

# Tuned for this write pattern (see docs/operations.md): the defaults (20% dead before a vacuum) let a
# 1M-row memories table carry 200K dead tuples; the side tables are small and hot, so an absolute
# threshold matters more than a fraction.
AUTOVACUUM_SETTINGS: Mapping[str, Mapping[str, str]] = {
    # Large, append-mostly, deletes by expiry, occasional updates (pending fills, refresh).
    "memories": {
        "autovacuum_vacuum_scale_factor": "0.05",
        "autovacuum_vacuum_threshold": "1000",
        "autovacuum_vacuum_insert_scale_factor": "0.1",
        "autovacuum_vacuum_insert_threshold": "10000",
        "autovacuum_analyze_scale_factor": "0.02",
        "autovacuum_analyze_threshold": "1000",
        "autovacuum_vacuum_cost_limit": "2000",
        "toast.autovacuum_vacuum_scale_factor": "0.05",
    },
    # Hot counters updated on every read: leave room on each page for HOT updates, vacuum often.
    "memory_access": {
        "fillfactor": "80",
        "autovacuum_vacuum_scale_factor": "0.02",
        "autovacuum_vacuum_threshold": "200",
        "autovacuum_analyze_scale_factor": "0.05",
    },
    # A queue: every row is inserted, updated a few times, then settles; vacuum on an absolute count.
    "insight_outbox": {
        "autovacuum_vacuum_scale_factor": "0",
        "autovacuum_vacuum_threshold": "500",
        "autovacuum_analyze_scale_factor": "0.05",
        "autovacuum_analyze_threshold": "500",
    },
}

_MIN_DEAD_TUPLES = 50  # below this a dead-tuple ratio is noise (autovacuum's own base threshold)
_MIN_ROWS_CHANGE = 1000  # fewer changed rows never justify rebuilding a vector index


def ivfflat_probes_for(lists: int) -> int:
    """pgvector's guidance: probes ≈ sqrt(lists), at least 1."""
    return max(1, round(math.sqrt(max(lists, 1))))


# --- reports ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableVacuum:
    """One table's numbers around a VACUUM (ANALYZE)."""

    table: str
    dead_before: int
    dead_after: int
    live_after: int
    heap_bytes_before: int
    heap_bytes_after: int
    total_bytes_before: int
    total_bytes_after: int
    duration_ms: float


@dataclass(frozen=True, slots=True)
class VacuumReport:
    """What ``vacuum()`` did; sizes rarely shrink (VACUUM frees space for reuse), dead tuples do."""

    tables: list[TableVacuum]
    duration_ms: float

    @property
    def total_bytes_before(self) -> int:
        return sum(t.total_bytes_before for t in self.tables)

    @property
    def total_bytes_after(self) -> int:
        return sum(t.total_bytes_after for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {"tables": [asdict(t) for t in self.tables], "duration_ms": self.duration_ms,
                "total_bytes_before": self.total_bytes_before, "total_bytes_after": self.total_bytes_after}


@dataclass(frozen=True, slots=True)
class AutovacuumReport:
    """The per-table settings now in force, and which tables changed (empty on a second run)."""

    settings: dict[str, dict[str, str]]
    changed: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "changed": self.changed}


@dataclass(frozen=True, slots=True)
class ReindexReport:
    """A vector-index rebuild. For IVFFlat, ``probes`` is the matching ``search.ivfflat_probes``."""

    action: Literal["reindexed", "created", "skipped"]
    index: str | None
    method: str
    rows: int
    duration_ms: float
    dropped: list[str] = field(default_factory=list)
    lists: int | None = None
    probes: int | None = None
    probes_applied: bool = False
    reason: str | None = None

    @property
    def advice(self) -> str | None:
        """What to persist in settings (the in-process value is already applied)."""
        if self.probes is None:
            return None
        return (f"set oneiric_memory.search.ivfflat_probes: {self.probes} (≈ sqrt(lists={self.lists})) in "
                "settings so every process searches with the matching probes")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["advice"] = self.advice
        return data


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One step ``auto()`` decided on: what, why, and (unless a dry run) its result."""

    action: Literal["expire", "reindex", "vacuum"]
    reason: str
    result: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AutoReport:
    """Everything ``auto()`` found due and did; ``skipped`` says why it did nothing or stopped."""

    actions: list[ActionRecord]
    dry_run: bool
    duration_ms: float
    skipped: str | None = None
    observations: dict[str, Any] = field(default_factory=dict)

    @property
    def performed(self) -> list[str]:
        return [a.action for a in self.actions]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable({"actions": [asdict(a) for a in self.actions], "dry_run": self.dry_run,
                          "duration_ms": self.duration_ms, "skipped": self.skipped,
                          "observations": self.observations})
        return data


# --- maintenance ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Observed:
    rows: int
    built_rows: int
    built_at: datetime | None
    expired: int
    vector_index: str | None
    vector_method: str | None
    broken: list[str]
    tables: dict[str, tuple[int, int]]  # name -> (live, dead)


class Maintenance:
    """The maintenance API behind ``oneiric-memory maintain ...`` (the store must be initialized)."""

    def __init__(self, store: PgvectorMemoryStore) -> None:
        self.store = store
        self.settings = store.settings
        self.schema = store.schema
        self._lock_key = f"oneiric_memory.maintain.{self.schema}"
        self._log = get_logger("oneiric_memory.maintenance", schema=self.schema)

    @asynccontextmanager
    async def _session(self, *, lock: bool) -> AsyncIterator[DirectSession]:
        async with direct_session(self.store, purpose="maintenance", statement_timeout_ms=0,
                                  maintenance_work_mem=self.settings.maintenance.maintenance_work_mem) as conn:
            if lock and not await conn.try_lock(self._lock_key):
                raise MaintenanceBusy(
                    f"another maintenance run is working on schema {self.schema!r}; wait for it to finish "
                    "(see pg_stat_activity, application_name 'oneiric-memory-maintenance')", schema=self.schema)
            try:
                yield conn
            finally:
                if lock:  # closing the connection releases the lock too, so a broken connection is fine
                    await conn.unlock(self._lock_key)

    # --- vacuum ---------------------------------------------------------------------------------------

    async def vacuum(self, tables: Sequence[str] | None = None) -> VacuumReport:
        """VACUUM (ANALYZE) the package's tables (or ``tables``), reporting sizes and dead tuples around it."""
        names = self._check_tables(tables)
        with span("maintain.vacuum", schema=self.schema, tables=len(names)) as sp:
            async with self._session(lock=False) as conn:
                report = await self._vacuum(conn, names)
            sp.set_attribute("bytes_before", report.total_bytes_before)
            sp.set_attribute("bytes_after", report.total_bytes_after)
        self._log.info("maintain-vacuum", tables=len(names), duration_ms=round(report.duration_ms, 1))
        return report

    def _check_tables(self, tables: Sequence[str] | None) -> list[str]:
        if tables is None:
            return list(PACKAGE_TABLES)
        if isinstance(tables, str):
            tables = [tables]
        unknown = [t for t in tables if t not in PACKAGE_TABLES]
        if unknown:
            raise InvalidInput(f"unknown table(s) {unknown}: choose from {', '.join(PACKAGE_TABLES)}")
        return list(dict.fromkeys(tables))

    async def _vacuum(self, conn: DirectSession, names: Sequence[str]) -> VacuumReport:
        watch = Stopwatch()
        before = await conn.table_numbers(names)
        timings: dict[str, float] = {}
        for name in names:
            if name not in before:
                continue
            table_watch = Stopwatch()
            await conn.vacuum_analyze(name)
            timings[name] = table_watch.ms
        after = await conn.table_numbers(names)
        tables = [
            TableVacuum(table=name, dead_before=int(before[name]["dead"]), dead_after=int(after[name]["dead"]),
                        live_after=int(after[name]["live"]), heap_bytes_before=int(before[name]["heap"]),
                        heap_bytes_after=int(after[name]["heap"]), total_bytes_before=int(before[name]["total"]),
                        total_bytes_after=int(after[name]["total"]), duration_ms=round(timings[name], 3))
            for name in names if name in before and name in after]
        return VacuumReport(tables=tables, duration_ms=round(watch.ms, 3))

    # --- autovacuum -------------------------------------------------------------------------------------

    async def apply_autovacuum(self) -> AutovacuumReport:
        """Apply :data:`AUTOVACUUM_SETTINGS` with ``ALTER TABLE ... SET (...)``; only what differs is changed."""
        with span("maintain.autovacuum", schema=self.schema) as sp:
            async with self._session(lock=False) as conn:
                current = await conn.reloptions()
                changed: list[str] = []
                for table, wanted in AUTOVACUUM_SETTINGS.items():
                    have = current.get(table)
                    if have is None:
                        continue
                    if all(_same_option(have.get(k), v) for k, v in wanted.items()):
                        continue
                    await conn.set_reloptions(table, wanted)
                    changed.append(table)
                after = await conn.reloptions()
            sp.set_attribute("changed", len(changed))
        applied = {table: {k: after.get(table, {}).get(k, "") for k in wanted}
                   for table, wanted in AUTOVACUUM_SETTINGS.items()}
        self._log.info("maintain-autovacuum", changed=changed)
        return AutovacuumReport(settings=applied, changed=changed)

    # --- reindex ------------------------------------------------------------------------------------------

    async def reindex(self, *, index_type: Literal["hnsw", "ivfflat"] | None = None, lists: int | None = None,
                      apply_probes: bool = True) -> ReindexReport:
        """Drop invalid/leftover indexes, then rebuild the vector index.

        HNSW: ``REINDEX INDEX CONCURRENTLY``. IVFFlat: a concurrent build with ``lists`` from the current row
        count (or ``lists``), swapped in for the old index; the matching probes (≈ sqrt(lists)) are returned
        and, with ``apply_probes``, set on this process's ``search.ivfflat_probes``.
        """
        if lists is not None and (isinstance(lists, bool) or not isinstance(lists, int) or lists < 1):
            raise InvalidInput("lists must be a positive integer")
        if index_type is not None and index_type not in ("hnsw", "ivfflat"):
            raise InvalidInput(f"index_type {index_type!r} is unknown; use hnsw or ivfflat")
        with span("maintain.reindex", schema=self.schema) as sp:
            async with self._session(lock=True) as conn:
                report = await self._reindex(conn, index_type=index_type, lists=lists, apply_probes=apply_probes)
            sp.set_attribute("method", report.method)
            sp.set_attribute("action", report.action)
            sp.set_attribute("rows", report.rows)
        self._log.info("maintain-reindex", action=report.action, method=report.method, rows=report.rows,
                       lists=report.lists, probes=report.probes, dropped=len(report.dropped),
                       duration_ms=round(report.duration_ms, 1))
        return report

    async def _reindex(self, conn: DirectSession, *, index_type: str | None, lists: int | None,
                       apply_probes: bool) -> ReindexReport:
        watch = Stopwatch()
        pg = self.settings.postgres
        kind = index_type or pg.index_type
        dropped: list[str] = []
        broken = await conn.broken_indexes()
        if broken and await conn.builds_in_progress():
            raise MaintenanceBusy(
                f"an index build is in progress on schema {self.schema!r} (pg_stat_progress_create_index); "
                "retry when it has finished", schema=self.schema)
        for name in broken:
            await conn.drop_index_concurrently(name)
            dropped.append(name)
        rows = await conn.count_embedded_rows()
        existing = await conn.vector_index()
        if kind == "hnsw":
            if existing is not None and existing[1] == "hnsw":
                name = existing[0]
                await conn.reindex_concurrently(name)
                action: Literal["reindexed", "created", "skipped"] = "reindexed"
            else:
                name = "memories_embedding_hnsw"
                await conn.create_hnsw_concurrently(name, m=pg.hnsw_m, ef_construction=pg.hnsw_ef_construction)
                if existing is not None:
                    await conn.drop_index_concurrently(existing[0])
                action = "created"
            await conn.record_index_build(rows)
            return ReindexReport(action=action, index=name, method="hnsw", rows=rows, dropped=dropped,
                                 duration_ms=round(watch.ms, 3))
        if rows == 0:
            return ReindexReport(action="skipped", index=existing[0] if existing else None, method="ivfflat", rows=0,
                                 dropped=dropped, duration_ms=round(watch.ms, 3),
                                 reason="no stored embeddings: an IVFFlat index built on no rows clusters nothing")
        chosen = lists or ivfflat_lists_for(rows)
        probes = ivfflat_probes_for(chosen)
        name = "memories_embedding_ivfflat"
        temporary = name + REBUILD_SUFFIX
        await conn.create_ivfflat_concurrently(temporary, lists=chosen)
        if existing is not None:
            await conn.drop_index_concurrently(existing[0])
        await conn.rename_index(temporary, name)
        await conn.record_index_build(rows)
        if apply_probes:
            self.settings.search.ivfflat_probes = probes
        return ReindexReport(action="reindexed" if existing else "created", index=name, method="ivfflat", rows=rows,
                             dropped=dropped, duration_ms=round(watch.ms, 3), lists=chosen, probes=probes,
                             probes_applied=apply_probes)

    # --- expire ----------------------------------------------------------------------------------------------

    async def expire(self, batch_size: int | None = None, *, max_batches: int | None = None) -> int:
        """Delete memories past ``expires_at`` in bounded batches (short transactions); returns rows deleted."""
        size = batch_size if batch_size is not None else self.settings.maintenance.expire_batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidInput("batch_size must be a positive integer")
        deleted = batches = 0
        with span("maintain.expire", schema=self.schema, batch_size=size) as sp:
            while max_batches is None or batches < max_batches:
                count = await self.store.expire_batch(size)
                deleted += count
                batches += 1
                if count < size:
                    break
            sp.set_attribute("deleted", deleted)
            sp.set_attribute("batches", batches)
        if deleted:
            self._log.info("maintain-expire", deleted=deleted, batches=batches)
        return deleted

    # --- auto ---------------------------------------------------------------------------------------------

    async def _observe(self, conn: DirectSession) -> _Observed:
        meta = await conn.index_build()
        rows = await conn.count_embedded_rows()
        expired = await conn.count_expired()
        vector = await conn.vector_index()
        numbers = await conn.table_numbers(PACKAGE_TABLES)
        return _Observed(
            rows=rows, built_rows=int(meta["index_built_rows"]) if meta else 0,
            built_at=meta["index_built_at"] if meta else None, expired=expired,
            vector_index=vector[0] if vector else None, vector_method=vector[1] if vector else None,
            broken=await conn.broken_indexes(),
            tables={name: (int(r["live"]), int(r["dead"])) for name, r in numbers.items()})

    def _reindex_reason(self, seen: _Observed, rows_after: int) -> str | None:
        ms = self.settings.maintenance
        kind = self.settings.postgres.index_type
        if seen.broken:
            return f"invalid or leftover index(es) {', '.join(seen.broken)}"
        if seen.vector_index is None:
            if kind == "ivfflat" and rows_after < _MIN_ROWS_CHANGE:
                return None  # IVFFlat waits for data: clustering a handful of rows is pointless
            return f"no valid vector index ({kind} expected)"
        if seen.vector_method != kind:
            return f"the vector index is {seen.vector_method} but settings ask for {kind}"
        change = abs(rows_after - seen.built_rows)
        ratio = change / max(seen.built_rows, 1)
        if change >= _MIN_ROWS_CHANGE and ratio > ms.reindex_growth_ratio:
            return (f"rows with embeddings changed by {change} ({ratio:.0%}) since the last build at "
                    f"{seen.built_rows} rows (threshold {ms.reindex_growth_ratio:.0%})")
        return None

    def _vacuum_due(self, seen: _Observed, expired_deleted: int) -> dict[str, str]:
        threshold = self.settings.maintenance.dead_tuple_ratio
        due: dict[str, str] = {}
        for name, (live, dead) in seen.tables.items():
            if name == "memories":
                live, dead = max(live - expired_deleted, 0), dead + expired_deleted
            total = live + dead
            if dead >= _MIN_DEAD_TUPLES and total and dead / total > threshold:
                due[name] = f"{name}: {dead} dead tuples ({dead / total:.0%} > {threshold:.0%})"
        return due

    async def auto(self, *, dry_run: bool = False, run_canary: bool = True) -> AutoReport:
        """Do only what is due: expire → reindex → vacuum. ``dry_run`` reports the plan and changes nothing.

        When another maintenance run holds the schema's lock, nothing is done and ``skipped`` says so.
        """
        watch = Stopwatch()
        actions: list[ActionRecord] = []
        observations: dict[str, Any] = {}
        with span("maintain.auto", schema=self.schema, dry_run=dry_run) as sp:
            try:
                async with self._session(lock=True) as conn:
                    await self._auto(conn, actions, observations, dry_run=dry_run, run_canary=run_canary)
            except MaintenanceBusy as exc:
                sp.set_attribute("skipped", True)
                self._log.info("maintain-auto-skipped", reason=exc.message)
                return AutoReport(actions=actions, dry_run=dry_run, duration_ms=round(watch.ms, 3),
                                  skipped=exc.message, observations=observations)
            sp.set_attribute("actions", ",".join(a.action for a in actions))
        report = AutoReport(actions=actions, dry_run=dry_run, duration_ms=round(watch.ms, 3),
                            observations=observations)
        self._log.info("maintain-auto", actions=report.performed, dry_run=dry_run,
                       duration_ms=round(report.duration_ms, 1))
        return report

    async def _auto(self, conn: DirectSession, actions: list[ActionRecord], observations: dict[str, Any], *,
                    dry_run: bool, run_canary: bool) -> None:
        seen = await self._observe(conn)
        observations.update({
            "rows_with_embeddings": seen.rows, "index_built_rows": seen.built_rows,
            "index_built_at": seen.built_at, "expired": seen.expired, "vector_index": seen.vector_index,
            "dead_tuples": {name: dead for name, (_, dead) in seen.tables.items()}})
        expired_deleted = 0
        if seen.expired:
            reason = f"{seen.expired} memories are past expires_at"
            if dry_run:
                expired_deleted = seen.expired
                actions.append(ActionRecord("expire", reason))
            else:
                expired_deleted = await self.expire()
                actions.append(ActionRecord("expire", reason, {"deleted": expired_deleted}))
        if dry_run:
            rows_after = max(seen.rows - expired_deleted, 0)
        else:
            rows_after = await conn.count_embedded_rows()
        reason_reindex = self._reindex_reason(seen, rows_after)
        if reason_reindex is None and run_canary and seen.vector_index is not None \
                and rows_after > self.settings.maintenance.canary_k:
            reason_reindex = await self._canary_reason(observations)
        if reason_reindex is not None:  # after large deletes: rebuild the index *before* VACUUM
            if dry_run:
                actions.append(ActionRecord("reindex", reason_reindex))
            else:
                reindexed = await self._reindex(conn, index_type=None, lists=None, apply_probes=True)
                actions.append(ActionRecord("reindex", reason_reindex, reindexed.to_dict()))
        due = self._vacuum_due(seen, expired_deleted)
        if due:
            reason = "; ".join(due.values())
            if dry_run:
                actions.append(ActionRecord("vacuum", reason))
            else:
                vacuumed = await self._vacuum(conn, list(due))
                actions.append(ActionRecord("vacuum", reason, vacuumed.to_dict()))

    async def _canary_reason(self, observations: dict[str, Any]) -> str | None:
        from oneiric_memory.ops.monitoring import Monitor

        try:
            canary = await Monitor(self.store, outbox_table=False).recall_canary()
        except OneiricMemoryError as exc:
            observations["recall_canary"] = f"not run: {exc.message}"
            return None
        observations["recall_canary"] = canary.recall
        if canary.below_floor:
            return (f"recall@{canary.k} canary {canary.recall:.3f} is below the floor "
                    f"{self.settings.maintenance.recall_floor:.2f}")
        return None


def _same_option(have: str | None, want: str) -> bool:
    if have is None:
        return False
    try:
        return math.isclose(float(have), float(want))
    except ValueError:
        return have == want


# --- periodic runner ------------------------------------------------------------------------------------

StoreProvider = Callable[[], "PgvectorMemoryStore | Awaitable[PgvectorMemoryStore]"]


async def run_periodically(store_provider: StoreProvider, settings: MemorySettings,
                           stop_event: asyncio.Event) -> None:
    """Run :meth:`Maintenance.auto` every ``maintenance.auto_interval_s`` until ``stop_event`` is set.

    Off by default (``maintenance.auto_enabled``): returns at once when disabled. The store is looked up
    on every run (``store_provider``), so an Oneiric hot swap is safe. Failures are logged and the loop
    continues; the first run happens one interval after start, not during startup.
    """
    log = get_logger("oneiric_memory.maintenance", task="auto")
    ms = settings.maintenance
    if not ms.auto_enabled:
        log.debug("maintenance-auto-disabled")
        return
    while not stop_event.is_set():
        try:
            await asyncio.wait_for(stop_event.wait(), timeout=ms.auto_interval_s)
            return
        except TimeoutError:
            pass
        try:
            provided = store_provider()
            store = await provided if inspect.isawaitable(provided) else provided
            report = await Maintenance(store).auto()
            if report.skipped:
                log.info("maintenance-auto-skipped", reason=report.skipped)
        except asyncio.CancelledError:
            raise
        except OneiricMemoryError as exc:
            log.warning("maintenance-auto-failed", error=type(exc).__name__, message=exc.message)
        except Exception as exc:
            log.warning("maintenance-auto-failed", error=type(exc).__name__)
