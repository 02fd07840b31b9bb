"""Migrate Session-Buddy's DuckDB data into the PostgreSQL store (``oneiric-memory migrate-duckdb``).

Why it is built this way:

- **Read-only and safe.** Each source file is opened with ``duckdb.connect(path, read_only=True)`` on its own
  worker thread (DuckDB calls block). While Session-Buddy holds the file, DuckDB refuses even a read-only
  open; that becomes :class:`SourceLocked` with what to do. Nothing ever writes to the source.
- **Detected, not assumed.** Tables come from ``duckdb_tables()`` and columns from ``information_schema``;
  a real file may hold the v2 family (``conversations_v2``, ``reflections_v2``), the legacy family
  (``conversations``, ``reflections`` with ``"timestamp"``, ``reflection_tags``) or both. The knowledge
  graph (``kg_entities``, ``kg_relationships``) lives in a second file.
- **Re-embedded.** Session-Buddy's 384-dim vectors live in another space and are never read; the content is
  embedded again with this package's embedder. If the embedder is unavailable the rows are stored pending
  (for backfill) and the run goes on.
- **Idempotent and exact.** ``migration_items`` records every source row under
  ``(project, source_file_id, source_table, source_id)``. The store deduplicates by content, so two
  identical source rows map to one memory, with two items. A rerun diffs the source keys against the
  items and only touches what is missing, skipped before, or whose memory was deleted since.
- **Resumable.** Memories are written first (``upsert_many``), then their items, then the per-table
  checkpoint in source-id order. Each memory carries its source key and run id in ``metadata["source"]``,
  so a crash between the upsert and the items is recognised on resume (the row was *inserted* by this run),
  and rollback finds such rows too. An interrupted run is resumed by the next run on the same source.
- **Exact rollback.** A run removes only the memories it inserted, never pre-existing duplicates; a
  memory another run also maps to is kept and handed over to that run.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncpg

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.errors import (
    EmbedderError,
    EmbedderUnavailable,
    InvalidInput,
    first_error,
)
from oneiric_memory.observability import get_logger, span
from oneiric_memory.ops.duckdb_migration.mapping import MAX_ID_CHARS, Mapped, Mapper
from oneiric_memory.ops.duckdb_migration.reports import (
    Inventory,
    MigrationReport,
    ProgressEvent,
    RollbackReport,
    RowIssue,
    RunSummary,
    TableInventory,
    TableReport,
    TableValidation,
    ValidationReport,
)
from oneiric_memory.ops.duckdb_migration.source import (
    AUXILIARY_TABLES,
    MIGRATED_TABLES,
    SOURCE_ID,
    DuckDBSource,
    Row,
    TableSpec,
)
from oneiric_memory.ops.duckdb_migration.validation import validate_table
from oneiric_memory.protocols import Embedder
from oneiric_memory.records import MemoryRecord, UpsertResult
from oneiric_memory.settings import MemorySettings

__all__ = ["BULK_LOAD_ROWS", "DuckDBMigration"]

BULK_LOAD_ROWS = 50_000
"""Sources larger than this load through ``store.bulk_loading()`` (vector index rebuilt once at the end)."""
_MAX_ISSUES = 1000
_EMBED_RETRY_S = 30.0




@dataclass(slots=True)
class _Job:
    run_id: uuid.UUID
    target: str
    mapper: Mapper
    batch_size: int
    concurrency: int
    progress: Callable[[ProgressEvent], None] | None
    reports: dict[str, TableReport]
    issues: list[RowIssue] = field(default_factory=list)
    issues_omitted: int = 0
    keyless: dict[str, int] = field(default_factory=dict)
    """Rows per table that cannot be keyed (no id, or a duplicate id): counted as errors, never recorded."""

    def issue(self, table: str, source_id: str | None, reason: str) -> None:
        if len(self.issues) < _MAX_ISSUES:
            self.issues.append(RowIssue(table, source_id, reason))
        else:
            self.issues_omitted += 1


@dataclass(slots=True)
class _Outcome:
    rows: int
    last_id: str
    added: int
    errors: int


class DuckDBMigration:
    """Inventory, run, validate and roll back migrations of Session-Buddy DuckDB files into ``store``.

    ``embedder`` follows the :class:`~oneiric_memory.protocols.Embedder` protocol; its ``model_id`` is bound
    to the store before anything is written.
    """

    def __init__(self, store: PgvectorMemoryStore, embedder: Embedder, settings: MemorySettings | None = None,
                 *, fault_hook: Callable[[str, int], None] | None = None) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings or store.settings
        # Test-only fault injection: called after a batch's memories are committed and before its items
        # are written (the worst moment for a crash); raising there simulates one.
        self._fault_hook = fault_hook
        self._embed_down_until = 0.0
        self._log = get_logger("oneiric_memory.migrate", component="duckdb_migration")

    # --- small helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _file_ids(path: Path, kg_path: Path | None, source_id: str | None) -> tuple[str, str | None]:
        main = source_id or str(path.resolve())
        if kg_path is None:
            return main, None
        return main, (f"{source_id}#knowledge_graph" if source_id else str(kg_path.resolve()))

    @asynccontextmanager
    async def _sources(self, path: Path, kg_path: Path | None, main_id: str,
                       kg_id: str | None) -> AsyncIterator[list[DuckDBSource]]:
        """Open the reflection file and the optional knowledge-graph file read-only; always close them."""
        sources = [DuckDBSource(path, "reflection", main_id)]
        if kg_path is not None:
            if kg_path.resolve() == path.resolve():
                raise InvalidInput("--knowledge-graph names the same file as PATH: pass knowledge_graph.duckdb")
            sources.append(DuckDBSource(kg_path, "knowledge_graph", kg_id or str(kg_path.resolve())))
        try:
            for source in sources:
                await source.open()
            yield sources
        finally:
            for source in sources:
                await source.close()

    async def _scan(self, sources: Sequence[DuckDBSource]) -> tuple[Inventory, list[tuple[TableSpec,
                                                                                           DuckDBSource]]]:
        tables: list[TableInventory] = []
        specs: list[tuple[TableSpec, DuckDBSource]] = []
        families: set[str] = set()
        notes: list[str] = []
        claimed: set[str] = set()
        for source in sources:
            for name, columns, rows in await source.tables():
                family = MIGRATED_TABLES.get(name)
                missing = [c for c in family.required if c not in {col.name for col in columns}] if family else []
                migrate = family is not None and not missing and name not in claimed
                if family is None:
                    maps_to = AUXILIARY_TABLES.get(name, "not migrated (Session-Buddy's operational data)")
                elif missing:
                    maps_to = f"not migrated: no {', '.join(missing)} column"
                    notes.append(f"{source.path}: {name} lacks {', '.join(missing)}; it is skipped")
                elif name in claimed:
                    maps_to = "not migrated: the same table was found in the other file first"
                else:
                    maps_to = family.maps_to
                inventory = TableInventory(file=source.role, path=str(source.path), name=name, rows=rows,
                                           columns=columns, migrate=migrate, maps_to=maps_to)
                if migrate and family is not None:
                    claimed.add(name)
                    families.add(family.family)
                    spec = TableSpec(name, family, source.role, source.file_id, str(source.path), tuple(columns))
                    specs.append((spec, source))
                    inventory.split = await self._split(spec, source, rows)
                tables.append(inventory)
        main = sources[0]
        kg = sources[1] if len(sources) > 1 else None
        if kg is None and (main.path.parent / "knowledge_graph.duckdb").exists() and "kg_entities" not in claimed:
            notes.append(f"{main.path.parent / 'knowledge_graph.duckdb'} exists: pass --knowledge-graph to "
                         "migrate the knowledge graph too")
        if not specs:
            notes.append("no Session-Buddy table was found: nothing to migrate")
        order = list(MIGRATED_TABLES)
        specs.sort(key=lambda item: order.index(item[0].name))
        inventory_result = Inventory(
            path=str(main.path), size_bytes=main.size(), kg_path=None if kg is None else str(kg.path),
            kg_size_bytes=None if kg is None else kg.size(),
            families=sorted(families), tables=tables, notes=notes)
        return inventory_result, specs

    @staticmethod
    async def _split(spec: TableSpec, source: DuckDBSource, rows: int) -> dict[str, int]:
        """Rows per target memory_type: reflections split on ``insight_type``."""
        if spec.kind == "reflection" and ("insight_type" in spec.names or "tags" in spec.names):
            # 0.23: insight_type; 0.36 (no such column): the sink's `insight` / `om:<id>` tags (tags.looks_like_insight).
            typed = "(insight_type IS NOT NULL AND trim(insight_type) <> '')" if "insight_type" in spec.names else "false"
            tagged = ("EXISTS (SELECT 1 FROM unnest(tags) AS u(t) WHERE t = 'insight' OR starts_with(t, 'om:'))"
                      if "tags" in spec.names else "false")
            insights = await source.count(spec.name, f"{typed} OR {tagged}")
            return {"insight": insights, "agent": rows - insights}
        return {"insight" if spec.kind in ("entity", "relation") else "agent": rows}

    # --- inventory ---------------------------------------------------------------------------------------

    async def inventory(self, path: str | Path, kg_path: str | Path | None = None) -> Inventory:
        """Tables, rows, columns, file sizes and the mapping plan; opens the files read-only."""
        with span("migrate.inventory"):
            main, kg = Path(path), None if kg_path is None else Path(kg_path)
            async with self._sources(main, kg, *self._file_ids(main, kg, None)) as sources:
                inventory, _ = await self._scan(sources)
        return inventory

    # --- run ---------------------------------------------------------------------------------------------

    async def run(
        self,
        path: str | Path,
        kg_path: str | Path | None = None,
        *,
        project: str | None = None,
        batch_size: int = 256,
        concurrency: int | None = None,
        progress: Callable[[ProgressEvent], None] | None = None,
        dry_run: bool = False,
        bulk: bool | None = None,
        source_id: str | None = None,
    ) -> MigrationReport:
        """Migrate (or, with ``dry_run``, plan) one Session-Buddy file and its optional knowledge graph.

        An interrupted earlier run on the same source (status running or failed) is resumed under its run id.
        ``bulk=None`` picks the bulk-load path when the target is empty or the source has more than
        :data:`BULK_LOAD_ROWS` rows. ``source_id`` names the source for idempotency (default: its absolute
        path); give the same id when you migrate a fresh copy of the same file.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 10_000:
            raise InvalidInput("batch_size must be between 1 and 10,000")
        if project is not None and (not isinstance(project, str) or not project.strip() or "\x00" in project
                                    or len(project) > MAX_ID_CHARS):
            raise InvalidInput("project must be a non-empty string without NUL bytes, at most 512 characters")
        main_path, kg = Path(path), None if kg_path is None else Path(kg_path)
        pg = self.settings.postgres
        workers = concurrency or max(1, min(self.settings.embedder.max_concurrency, pg.max_connections - 1, 4))
        mapper = Mapper(project=project, dimension=self.store.dimension, max_content_bytes=pg.max_content_bytes)
        started = time.perf_counter()
        with span("migrate", dry_run=dry_run, batch_size=batch_size, project_override=project is not None) as sp:
            async with self._sources(main_path, kg, *self._file_ids(main_path, kg, source_id)) as sources:
                inventory, specs = await self._scan(sources)
                main_id, kg_id = sources[0].file_id, (sources[1].file_id if len(sources) > 1 else None)
                target = project or ""
                if dry_run:
                    report = await self._dry_run(inventory, specs, mapper, main_id, kg_id, project)
                    report.elapsed_s = time.perf_counter() - started
                    return report
                async with self.store.migration_ledger.source_lock([main_id], target):
                    report = await self._run_locked(
                        sources, inventory, specs, mapper, target, project, batch_size, workers, progress, bulk)
            report.elapsed_s = time.perf_counter() - started
            sp.set_attribute("rows_added", report.added)
            sp.set_attribute("rows_errors", report.errors)
        self._log.info("migration-finished", run_id=str(report.run_id), added=report.added, errors=report.errors,
                       skipped=report.skipped, pending=report.pending_embeddings, elapsed_s=round(report.elapsed_s, 2))
        return report

    async def _dry_run(self, inventory: Inventory, specs: list[tuple[TableSpec, DuckDBSource]], mapper: Mapper,
                       main_id: str, kg_id: str | None, project: str | None) -> MigrationReport:
        """What a run would do: per table, the rows still to migrate. Reads only; writes nothing."""
        tables: list[TableReport] = []
        for spec, source in specs:
            keys, nulls = await source.keys(spec, with_project=mapper.project is None)
            done = await self._done_keys(spec)
            todo = {sid for sid, p in keys if (mapper.target_project(p), sid) not in done}
            tables.append(TableReport(table=spec.name, file=spec.file_role, maps_to=spec.family.maps_to,
                                      source_rows=len(keys) + nulls, to_migrate=len(todo),
                                      already_migrated=len({sid for sid, _ in keys}) - len(todo),
                                      target_rows=len(done)))
        return MigrationReport(
            run_id=None, status="dry_run", source_path=inventory.path, kg_path=inventory.kg_path, project=project,
            source_file_id=main_id, kg_file_id=kg_id, dry_run=True, bulk_load=False, resumed=False,
            embedding_model=self.embedder.model_id, tables=tables, inventory=inventory)

    async def _run_locked(self, sources: list[DuckDBSource], inventory: Inventory,
                          specs: list[tuple[TableSpec, DuckDBSource]], mapper: Mapper, target: str,
                          project: str | None, batch_size: int, workers: int,
                          progress: Callable[[ProgressEvent], None] | None, bulk: bool | None) -> MigrationReport:
        # Bind first: a store holding another model's vectors refuses before any row or run is written.
        await self.store.bind_embedding_model(self.embedder.model_id)
        main = sources[0]
        kg = sources[1] if len(sources) > 1 else None
        digests = await asyncio.gather(*(s.sha256() for s in sources))
        run_id, resumed = await self._start_run(main, kg, digests, project, batch_size, workers)
        reports = {spec.name: TableReport(table=spec.name, file=spec.file_role, maps_to=spec.family.maps_to)
                   for spec, _ in specs}
        job = _Job(run_id=run_id, target=target, mapper=mapper, batch_size=batch_size, concurrency=workers,
                   progress=progress, reports=reports)
        total_rows = inventory.rows_to_migrate
        use_bulk = bulk if bulk is not None else (total_rows > BULK_LOAD_ROWS or await self.store.migration_ledger.target_empty())
        self._log.info("migration-started", run_id=str(run_id), resumed=resumed, tables=len(specs),
                       rows=total_rows, bulk_load=use_bulk, batch_size=batch_size, concurrency=workers)
        try:
            async with AsyncExitStack() as stack:
                if use_bulk:
                    await stack.enter_async_context(self.store.bulk_loading())
                for spec, source in specs:
                    with span("migrate.table", table=spec.name, file=spec.file_role):
                        await self._migrate_table(job, spec, source)
            await self._final_counts(job, specs)
            await self._finish_run(job, "completed", None)
        except BaseException as exc:
            await asyncio.shield(self._finish_run_quietly(job, specs, exc))
            raise
        return MigrationReport(
            run_id=run_id, status="completed", source_path=str(main.path),
            kg_path=None if kg is None else str(kg.path), project=project, source_file_id=main.file_id,
            kg_file_id=None if kg is None else kg.file_id, dry_run=False, bulk_load=use_bulk, resumed=resumed,
            embedding_model=self.embedder.model_id, tables=list(reports.values()), issues=job.issues,
            issues_omitted=job.issues_omitted, inventory=inventory)

    async def _start_run(self, main: DuckDBSource, kg: DuckDBSource | None, digests: Sequence[str],
                         project: str | None, batch_size: int, workers: int) -> tuple[uuid.UUID, bool]:
        options = {"batch_size": batch_size, "concurrency": workers, "embedding_model": self.embedder.model_id,
                   "pid": os.getpid()}
        return await self.store.migration_ledger.start_run(
            source=(str(main.path), main.file_id, digests[0], main.size()),
            kg=None if kg is None else (str(kg.path), kg.file_id, digests[1], kg.size()),
            project=project, options=options)

    async def _finish_run(self, job: _Job, status: str, error: str | None) -> None:
        counts = {"tables": {name: asdict(report) for name, report in job.reports.items()},
                  "issues": [asdict(issue) for issue in job.issues[:100]], "issues_total":
                  len(job.issues) + job.issues_omitted}
        await self.store.migration_ledger.finish_run(job.run_id, status, error, counts)

    async def _finish_run_quietly(self, job: _Job, specs: list[tuple[TableSpec, DuckDBSource]],
                                  exc: BaseException) -> None:
        try:
            await self._final_counts(job, specs)
        except Exception as counting:  # the counts are a courtesy; the status below matters
            self._log.warning("migration-counts-not-computed", run_id=str(job.run_id), error=type(counting).__name__)
        try:
            detail = str(exc).splitlines()[0][:500] if str(exc) else ""
            await self._finish_run(job, "failed", f"{type(exc).__name__}: {detail}")
        except Exception as inner:  # the database itself may be what failed; the run stays resumable anyway
            self._log.warning("migration-status-not-saved", run_id=str(job.run_id), error=type(inner).__name__)

    # --- one table --------------------------------------------------------------------------------------

    async def _done_keys(self, spec: TableSpec) -> set[tuple[str, str]]:
        """(project, source id) of rows already migrated whose memory still exists."""
        return await self.store.migration_ledger.done_keys(spec.file_id, spec.name)

    async def _checkpoint(self, job: _Job, spec: TableSpec) -> tuple[str | None, int]:
        return await self.store.migration_ledger.checkpoint(job.target, spec.file_id, spec.name)

    async def _migrate_table(self, job: _Job, spec: TableSpec, source: DuckDBSource) -> None:
        report = job.reports[spec.name]
        keys, nulls = await source.keys(spec, with_project=job.mapper.project is None)
        targets: dict[str, str] = {}
        for sid, row_project in keys:
            if sid in targets:
                job.issue(spec.name, sid, "duplicate id in the source: only the first row with this id is migrated")
                job.keyless[spec.name] = job.keyless.get(spec.name, 0) + 1
                continue
            targets[sid] = job.mapper.target_project(row_project)
        if nulls:
            job.issue(spec.name, None, f"{nulls} row(s) have no id and cannot be keyed: they are not migrated")
            job.keyless[spec.name] = job.keyless.get(spec.name, 0) + nulls
        report.errors = job.keyless.get(spec.name, 0)
        done = await self._done_keys(spec)
        todo = sorted(sid for sid, target in targets.items() if (target, sid) not in done)
        checkpoint, rows_done = await self._checkpoint(job, spec)
        report.source_rows = len(keys) + nulls
        report.to_migrate = len(todo)
        report.already_migrated = len(targets) - len(todo)
        report.resumed_from = checkpoint if checkpoint is not None and todo else None
        total = report.source_rows
        state = {"done": report.already_migrated, "added": 0, "errors": report.errors}
        self._emit(job, spec, "start", state, total)
        if todo:
            # A few rows: fetch them by id. Otherwise one sorted scan from the smallest missing id.
            if len(todo) <= 2 * job.batch_size:
                batches = source.fetch_ids(spec, todo, job.batch_size)
            else:
                batches = source.stream(spec, todo, job.batch_size)
            async with aclosing(batches):
                await self._run_batches(job, spec, source, batches, state, total, rows_done)
        self._emit(job, spec, "done", state, total)

    def _emit(self, job: _Job, spec: TableSpec, phase: Literal["start", "batch", "done"], state: dict[str, int],
              total: int) -> None:
        if job.progress is not None:
            job.progress(ProgressEvent(table=spec.name, phase=phase, done=state["done"], total=total,
                                       added=state["added"], errors=state["errors"]))

    async def _run_batches(self, job: _Job, spec: TableSpec, source: DuckDBSource,
                           batches: AsyncGenerator[list[Row]], state: dict[str, int], total: int,
                           rows_done: int) -> None:
        """Batches run concurrently (bounded); the checkpoint advances in source order only."""
        slots = asyncio.Semaphore(job.concurrency)
        finished: dict[int, _Outcome] = {}
        order = {"next": 0, "rows_done": rows_done}
        commit = asyncio.Lock()

        async def work(seq: int, rows: list[Row]) -> None:
            try:
                outcome = await self._process_batch(job, spec, source, rows, seq)
            finally:
                slots.release()
            async with commit:
                finished[seq] = outcome
                while order["next"] in finished:
                    ready = finished.pop(order["next"])
                    order["next"] += 1
                    order["rows_done"] += ready.rows
                    await self._write_checkpoint(job, spec, ready.last_id, order["rows_done"])
                    state["done"] += ready.rows
                    state["added"] += ready.added
                    state["errors"] += ready.errors
                    self._emit(job, spec, "batch", state, total)

        try:
            async with asyncio.TaskGroup() as group:
                seq = 0
                async for rows in batches:
                    await slots.acquire()
                    group.create_task(work(seq, rows))
                    seq += 1
        except BaseExceptionGroup as group_error:
            raise first_error(group_error) from None

    async def _process_batch(self, job: _Job, spec: TableSpec, source: DuckDBSource, rows: list[Row],
                             seq: int) -> _Outcome:
        with span("migrate.batch", table=spec.name, rows=len(rows)):
            ctx = await source.context_for(spec, rows)
            mapped = [job.mapper.map(spec, row, ctx, str(job.run_id)) for row in rows]
            good = [m for m in mapped if m.record is not None]
            records = [m.record for m in good if m.record is not None]
            await self._embed(records)
            result = (await self.store.upsert_many(records, on_conflict="keep_first") if records
                      else UpsertResult(ids=[], inserted=[]))
            if self._fault_hook is not None:
                self._fault_hook(spec.name, seq)
            await self._write_items(job, spec, mapped, good, result)
            errors = 0
            for item in mapped:
                if item.reason is not None:
                    errors += 1
                    job.issue(spec.name, item.source_id, item.reason)
            return _Outcome(rows=len(rows), last_id=str(rows[-1][SOURCE_ID]), added=result.new_count, errors=errors)

    async def _embed(self, records: list[MemoryRecord]) -> None:
        """Embed in place; on an unavailable embedder leave them pending and stop asking for a while."""
        if not records:
            return
        if time.monotonic() < self._embed_down_until:
            return
        try:
            vectors = await self.embedder.embed_documents([r.content for r in records])
        except EmbedderUnavailable as exc:
            self._embed_down_until = time.monotonic() + _EMBED_RETRY_S
            self._log.warning("embedder-unavailable-rows-pending", rows=len(records), error=exc.message[:200])
            return
        except EmbedderError as exc:
            self._log.warning("embedder-error-rows-pending", rows=len(records), error=type(exc).__name__)
            return
        if len(vectors) != len(records):
            self._log.warning("embedder-count-mismatch-rows-pending", rows=len(records), vectors=len(vectors))
            return
        for record, vector in zip(records, vectors, strict=True):
            record.embedding = vector
            record.embedding_model = self.embedder.model_id

    async def _write_items(self, job: _Job, spec: TableSpec, mapped: list[Mapped], good: list[Mapped],
                           result: UpsertResult) -> None:
        payload: list[dict[str, Any]] = []
        for item, memory_id, inserted in zip(good, result.ids, result.inserted, strict=True):
            assert item.record is not None
            payload.append({"project": item.project, "source_id": item.source_id, "memory_id": str(memory_id),
                            "memory_type": item.record.memory_type, "content_hash": item.record.content_hash,
                            "inserted": inserted, "status": "migrated", "reason": None})
        for item in mapped:
            if item.record is None:
                payload.append({"project": item.project, "source_id": item.source_id, "memory_id": None,
                                "memory_type": None, "content_hash": None, "inserted": False, "status": "skipped",
                                "reason": (item.reason or "")[:1000]})
        await self.store.migration_ledger.write_items(job.run_id, spec.file_id, spec.name, payload)

    async def _write_checkpoint(self, job: _Job, spec: TableSpec, last_id: str, rows_done: int) -> None:
        counts = {"tables": {name: asdict(report) for name, report in job.reports.items()}}
        await self.store.migration_ledger.write_checkpoint(job.run_id, job.target, spec.file_id, spec.name, last_id,
                                                           rows_done, counts)

    async def _final_counts(self, job: _Job, specs: list[tuple[TableSpec, DuckDBSource]]) -> None:
        """Exact per-table numbers from migration_items (which survive crashes), so a resumed run is exact."""
        for spec, _ in specs:
            row = await self.store.migration_ledger.table_counts(job.run_id, spec.file_id, spec.name,
                                                                 job.mapper.project)
            report = job.reports[spec.name]
            if row is not None:
                report.added = int(row["added"])
                report.deduplicated = int(row["dedup"])
                report.errors = int(row["errors"]) + job.keyless.get(spec.name, 0)
                report.pending_embeddings = int(row["pending"])
                report.target_rows = int(row["target_rows"])

    # --- validate ---------------------------------------------------------------------------------------

    async def _run_row(self, run_id: uuid.UUID | str) -> asyncpg.Record:
        try:
            parsed = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
        except ValueError:
            raise InvalidInput(f"{str(run_id)[:64]!r} is not a run id (UUID): list runs with "
                               "`oneiric-memory migrate-duckdb --list`") from None
        row = await self.store.migration_ledger.run(parsed)
        if row is None:
            raise InvalidInput(f"no migration run {parsed} in schema {self.store.schema!r}: list runs with "
                               "`oneiric-memory migrate-duckdb --list`", run_id=str(parsed))
        return row

    async def validate(self, run_id: uuid.UUID | str, *, sample: int | None = None,
                       seed: int | None = None) -> ValidationReport:
        """Compare the run's source files, as they are now, with the target.

        Per table: every keyed source row must have an item, every migrated item a memory, and no item may
        lack its source row; then the content hash of every row (``sample=None``) or of a random sample is
        recomputed from the source and compared with the stored memory.
        """
        if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
            raise InvalidInput("sample must be a positive number of rows (or None for all rows)")
        run = await self._run_row(run_id)
        if run["status"] == "rolled_back":
            raise InvalidInput(f"run {run['run_id']} was rolled back: there is nothing to validate")
        main, kg = Path(run["source_path"]), None if run["kg_path"] is None else Path(run["kg_path"])
        mapper = Mapper(project=run["project"], dimension=self.store.dimension,
                         max_content_bytes=self.settings.postgres.max_content_bytes)
        rng = random.Random(seed)
        tables: list[TableValidation] = []
        problems: list[str] = []
        warnings: list[str] = []
        with span("migrate.validate", sample=sample):
            async with self._sources(main, kg, run["source_file_id"], run["kg_file_id"]) as sources:
                _, specs = await self._scan(sources)
                for spec, source in specs:
                    tables.append(await validate_table(self.store.migration_ledger, spec, source, mapper, sample, rng, problems, warnings))
        ok = all(t.ok for t in tables)
        if not tables:
            problems.append("no Session-Buddy table was found in the source files")
            ok = False
        return ValidationReport(run_id=run["run_id"], ok=ok, sample=sample, tables=tables, problems=problems[:200],
                                warnings=warnings[:200])

    # --- rollback ---------------------------------------------------------------------------------------

    async def rollback(self, run_id: uuid.UUID | str) -> RollbackReport:
        """Remove exactly what the run added and mark it ``rolled_back``.

        Deleted: the memories the run inserted (including any inserted by a crashed attempt before its items
        were written). Kept: pre-existing memories the run only mapped to, and memories another run also maps
        to (that run becomes their owner). The run's items and its checkpoints go too, so a later run
        migrates the source again.
        """
        run = await self._run_row(run_id)
        rid: uuid.UUID = run["run_id"]
        previous = str(run["status"])
        if previous == "rolled_back":
            return RollbackReport(rid, previous, previous, 0, 0, 0)
        target = run["project"] or ""
        file_ids = [f for f in (run["source_file_id"], run["kg_file_id"]) if f is not None]
        with span("migrate.rollback"):
            async with self.store.migration_ledger.source_lock([run["source_file_id"]], target):
                deleted, kept, items_deleted = await self.store.migration_ledger.rollback(
                    rid, target=target, file_ids=file_ids, previous_status=previous)
        self._log.info("migration-rolled-back", run_id=str(rid), memories_deleted=deleted, kept_shared=kept,
                       items_deleted=items_deleted)
        return RollbackReport(rid, previous, "rolled_back", deleted, kept, items_deleted)

    # --- listing ----------------------------------------------------------------------------------------

    async def list_runs(self, limit: int = 20) -> list[RunSummary]:
        """The most recent runs, newest first."""
        rows = await self.store.migration_ledger.list_runs(max(1, min(limit, 1000)))
        return [RunSummary(run_id=r["run_id"], status=r["status"], source_path=r["source_path"], kg_path=r["kg_path"],
                           project=r["project"], started_at=r["started_at"], finished_at=r["finished_at"],
                           error=r["error"], counts=r["counts"] if isinstance(r["counts"], dict) else {})
                for r in rows]

