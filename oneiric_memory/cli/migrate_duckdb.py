"""``oneiric-memory migrate-duckdb``: move Session-Buddy's DuckDB data into PostgreSQL, validate, roll back.

Exit codes follow ``EXIT_CODES``: a validation mismatch exits ``check_failed`` (7), a locked source ``error`` (1),
bad input 5, contradictory options 2. DuckDB and the migration engine are imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from oneiric_memory.cli._runtime import CheckFailed, UsageProblem, console, err_console, open_store, print_json, run

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from oneiric_memory.ops.duckdb_migration import (
        DuckDBMigration,
        Inventory,
        MigrationReport,
        ProgressEvent,
        RunSummary,
        ValidationReport,
    )
    from oneiric_memory.protocols import Embedder

__all__ = ["ORDER", "inventory_table", "register", "report_table", "validation_table"]

ORDER = 70


def inventory_table(inventory: Inventory, *, all_tables: bool = False) -> Table:
    """The files, tables, rows and mapping plan (``--dry-run``)."""
    size = f"{inventory.size_bytes / 1e6:.1f} MB"
    title = f"{inventory.path} ({size})"
    if inventory.kg_path is not None and inventory.kg_size_bytes is not None:
        title += f" + {inventory.kg_path} ({inventory.kg_size_bytes / 1e6:.1f} MB)"
    table = Table(title=title, title_justify="left")
    for name, justify in (("file", "left"), ("table", "left"), ("rows", "right"), ("columns", "left"),
                          ("maps to", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for item in inventory.tables:
        if not (item.migrate or all_tables or item.rows or item.name in ("reflection_tags",)):
            continue
        split = ", ".join(f"{k}: {v}" for k, v in item.split.items()) if item.migrate else ""
        maps_to = f"{item.maps_to} ({split})" if split else item.maps_to
        columns = ", ".join(c.name for c in item.columns)
        table.add_row(item.file, f"[bold]{item.name}[/]" if item.migrate else item.name, str(item.rows),
                      columns, maps_to)
    return table


def report_table(report: MigrationReport) -> Table:
    """Per-table outcome of a run (or of a dry run)."""
    title = ("dry run: nothing written" if report.dry_run else
             f"run {report.run_id} {report.status}{' (resumed)' if report.resumed else ''}"
             f"{' (bulk load)' if report.bulk_load else ''} in {report.elapsed_s:.1f}s")
    table = Table(title=title, title_justify="left")
    columns = ["table", "source rows", "to migrate", "already", "added", "deduplicated", "errors", "pending",
               "target rows"]
    for name in columns:
        table.add_column(name, justify="left" if name == "table" else "right")
    for t in report.tables:
        table.add_row(t.table, str(t.source_rows), str(t.to_migrate), str(t.already_migrated), str(t.added),
                      str(t.deduplicated), f"[red]{t.errors}[/]" if t.errors else "0",
                      f"[yellow]{t.pending_embeddings}[/]" if t.pending_embeddings else "0", str(t.target_rows))
    return table


def validation_table(report: ValidationReport) -> Table:
    """Source vs target per table; red rows are mismatches."""
    scope = "all rows" if report.sample is None else f"a sample of {report.sample} rows per table"
    table = Table(title=f"validation of run {report.run_id} (content hashes: {scope}): "
                        f"{'[green]OK[/]' if report.ok else '[red]MISMATCH[/]'}", title_justify="left")
    for name in ("table", "source rows", "migrated", "skipped", "missing", "extra", "orphaned", "hashes checked",
                 "hash mismatches", "ok"):
        table.add_column(name, justify="left" if name in ("table", "ok") else "right")
    for t in report.tables:
        table.add_row(t.table, str(t.source_rows), str(t.migrated), str(t.skipped), str(t.missing), str(t.extra),
                      str(t.orphaned), str(t.hash_checked), str(t.hash_mismatches),
                      "[green]yes[/]" if t.ok else "[red]no[/]")
    return table


def _runs_table(runs: list[RunSummary]) -> Table:
    table = Table(title="migration runs (newest first)", title_justify="left")
    for name in ("run id", "status", "started", "source", "project", "added", "errors"):
        table.add_column(name, overflow="fold")
    for summary in runs:
        tables = summary.counts.get("tables", {}) if isinstance(summary.counts, dict) else {}
        added = sum(int(t.get("added", 0)) for t in tables.values() if isinstance(t, dict))
        errors = sum(int(t.get("errors", 0)) for t in tables.values() if isinstance(t, dict))
        table.add_row(str(summary.run_id), summary.status, summary.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                      summary.source_path, summary.project or "(per row)", str(added), str(errors))
    return table


class _Bars:
    """One rich progress bar per table, fed by :class:`ProgressEvent`."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, event: ProgressEvent) -> None:
        task = self._tasks.get(event.table)
        if task is None:
            task = self._progress.add_task(event.table, total=event.total)
            self._tasks[event.table] = task
        errors = f" [red]{event.errors} errors[/]" if event.errors else ""
        self._progress.update(task, completed=event.done, total=event.total,
                              description=f"{event.table} (+{event.added}){errors}")


async def _migration_embedder(settings: Any, store: Any) -> tuple[Embedder, str]:
    """The embedder for a migration.

    Unlike plain ``auto`` selection, a store already bound to an Ollama model keeps that model even when
    Ollama is down (rows are stored pending for backfill): falling back to the hashing embedder would be
    refused by the store anyway.
    """
    from oneiric_memory.adapters.embedders.hashing import HashingEmbedder
    from oneiric_memory.adapters.embedders.ollama import OllamaEmbedder
    from oneiric_memory.adapters.embedders.selection import select_embedder
    from oneiric_memory.errors import EmbedderUnavailable

    provider = settings.embedder.provider
    bound = store.embedding_model or ""
    if provider == "auto" and bound.startswith("hashing:"):
        hashing = HashingEmbedder(settings)
        await hashing.init()
        return hashing, f"using the hashing embedder, which this store is bound to ({bound})"
    if provider == "ollama" or (provider == "auto" and bound.startswith("ollama:")):
        ollama = OllamaEmbedder(settings)
        try:
            await ollama.init()
        except EmbedderUnavailable as exc:
            return ollama, (f"Ollama is unavailable ({exc.message.rstrip('.')}): rows are stored with their "
                            "embedding pending; run `oneiric-memory backfill` once Ollama is up")
        return ollama, f"using Ollama model {ollama.model} ({ollama.dimension} dims)"
    selection = await select_embedder(settings)
    assert selection.embedder is not None  # select_embedder hands over an initialised embedder
    return selection.embedder, selection.note


def register(app: typer.Typer) -> None:
    """Mount ``migrate-duckdb`` on the main CLI app."""

    @app.command("migrate-duckdb", rich_help_panel="Schema and data")
    def migrate_duckdb(
        path: Annotated[Path | None, typer.Argument(
            help="Session-Buddy's reflection.duckdb (required for a run; Session-Buddy keeps it in "
                 "~/.claude/data/reflection.duckdb).", show_default=False)] = None,
        knowledge_graph: Annotated[Path | None, typer.Option(
            "--knowledge-graph", help="Session-Buddy's knowledge_graph.duckdb, migrated in the same run.")] = None,
        project: Annotated[str | None, typer.Option(
            help="Put every row in this project (default: each row keeps its own project, else 'default').")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the inventory and plan; write nothing.")] = False,
        batch_size: Annotated[int, typer.Option(help="Rows per batch (embedded and written together).")] = 256,
        concurrency: Annotated[int | None, typer.Option(help="Batches in flight (default: from the settings).")] = None,
        source_id: Annotated[str | None, typer.Option(
            help="Stable name of the source for idempotency (default: its absolute path); reuse it when you "
                 "migrate a fresh copy of the same file.")] = None,
        rollback: Annotated[str | None, typer.Option(
            "--rollback", metavar="RUN_ID", help="Remove exactly what this run added.")] = None,
        validate: Annotated[str | None, typer.Option(
            "--validate", metavar="RUN_ID", help="Compare this run's source with the target; exit 7 on mismatch.")]
        = None,
        no_validate: Annotated[bool, typer.Option("--no-validate", help="Skip the validation after a run.")] = False,
        sample: Annotated[int | None, typer.Option(
            help="Check content hashes of N random rows per table (default: all rows).")] = None,
        list_runs: Annotated[bool, typer.Option("--list", help="List recent migration runs.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    ) -> None:
        """Migrate Session-Buddy's DuckDB data into PostgreSQL (read-only on the source, idempotent, resumable)."""
        actions = sum(bool(x) for x in (rollback, validate, list_runs))
        if actions > 1 or (actions and path is not None):
            raise UsageProblem("give PATH, --rollback, --validate or --list (one of them)")
        if sample is not None and sample < 1:
            raise UsageProblem("--sample must be a positive number of rows")
        if not actions and path is None:
            raise UsageProblem("give the PATH of reflection.duckdb (or --rollback/--validate/--list)")
        if project is not None:
            from oneiric_memory.records import SearchFilters

            SearchFilters(projects=[project]).validate()  # a hostile --project fails before anything opens

        def emit(data: dict[str, Any]) -> None:
            print_json(data)

        async def work() -> None:
            from oneiric_memory.ops.duckdb_migration import DuckDBMigration

            store = await open_store()
            try:
                embedder, sentence = await _migration_embedder(store.settings, store)
                try:
                    migration = DuckDBMigration(store, embedder, store.settings)
                    await _dispatch(migration, sentence)
                finally:
                    await embedder.cleanup()
            finally:
                await store.cleanup()

        async def _dispatch(migration: DuckDBMigration, sentence: str) -> None:
            if list_runs:
                runs = await migration.list_runs()
                if as_json:
                    emit({"runs": [_run_dict(r) for r in runs]})
                else:
                    console.print(_runs_table(runs))
                return
            if rollback is not None:
                result = await migration.rollback(rollback)
                if as_json:
                    emit(result.to_dict())
                else:
                    console.print(f"run {result.run_id} rolled back (was {result.previous_status}): "
                                      f"{result.memories_deleted} memories deleted, {result.memories_kept_shared} kept "
                                      f"(another run maps to them), {result.items_deleted} items removed")
                return
            if validate is not None:
                await _validate(migration, validate)
                return
            assert path is not None
            if not as_json:
                err_console.print(sentence, highlight=False)
            if dry_run:
                report = await migration.run(path, knowledge_graph, project=project, batch_size=batch_size,
                                             dry_run=True, source_id=source_id)
                if as_json:
                    emit(report.to_dict())
                else:
                    assert report.inventory is not None
                    console.print(inventory_table(report.inventory))
                    for note in report.inventory.notes:
                        console.print(f"note: {note}", highlight=False)
                    console.print(report_table(report))
                return
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=err_console, disable=as_json) as bars:
                report = await migration.run(path, knowledge_graph, project=project, batch_size=batch_size,
                                             concurrency=concurrency, progress=_Bars(bars), source_id=source_id)
            if as_json:
                emit(report.to_dict())
            else:
                console.print(report_table(report))
                for issue in report.issues[:20]:
                    console.print(f"[red]skipped[/] {issue.table} {issue.source_id or '-'}: {issue.reason}",
                                      highlight=False)
                if len(report.issues) + report.issues_omitted > 20:
                    console.print(f"... {len(report.issues) + report.issues_omitted - 20} more row issues "
                                      f"(stored with run {report.run_id})")
                if report.pending_embeddings:
                    console.print(f"[yellow]{report.pending_embeddings} memories wait for their embedding[/]: "
                                      "run `oneiric-memory backfill` when the embedder is up")
                console.print(f"roll back with: oneiric-memory migrate-duckdb --rollback {report.run_id}",
                                  highlight=False)
            if not no_validate and report.run_id is not None:
                await _validate(migration, str(report.run_id))

        async def _validate(migration: DuckDBMigration, run_id: str) -> None:
            result = await migration.validate(run_id, sample=sample)
            if as_json:
                emit(result.to_dict())
            else:
                console.print(validation_table(result))
                for line in result.problems[:20]:
                    console.print(f"[red]problem[/] {line}", highlight=False)
                for line in result.warnings[:20]:
                    console.print(f"[yellow]warning[/] {line}", highlight=False)
            if not result.ok:
                raise CheckFailed(f"validation of run {result.run_id} found mismatches: "
                                      f"{len(result.problems)} problem(s)")

        run(work)


def _run_dict(run: RunSummary) -> dict[str, Any]:
    return {"run_id": str(run.run_id), "status": run.status, "source_path": run.source_path, "kg_path": run.kg_path,
            "project": run.project, "started_at": run.started_at.isoformat(),
            "finished_at": None if run.finished_at is None else run.finished_at.isoformat(), "error": run.error,
            "counts": run.counts}
