"""``ingest PATH --repo-id ID``: bring a repository's RAG chunks in line with its tree (incremental, resumable),
and ``ingestions ID``: the latest runs. Progress bars (files, chunks) go to stderr; the summary to stdout."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from oneiric_memory.cli._runtime import console, err_console, invalid, open_memory, print_json, run

__all__ = ["ORDER", "register"]

ORDER = 25
_PANEL = "Memories"
_NO_SINK: dict[str, Any] = {"session_buddy": {"enabled": False}}
"""Chunks are not insights: ingestion never needs Session-Buddy."""


@contextmanager
def _bars(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:>6}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, disable=not enabled) as bar:
        tasks = {unit: bar.add_task(unit, total=None) for unit in ("files", "chunks")}

        def update(unit: str, done: int, total: int) -> None:
            bar.update(tasks[unit], completed=done, total=total)

        yield update


def _summary(report: dict[str, Any]) -> Table:
    table = Table(title=f"ingest {report['repo_id']}: {report['status']}", title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in report["counts"].items():
        table.add_row(key, str(value))
    for key, value in report["timings"].items():
        table.add_row(key, f"{value:.3f}")
    for error in report["errors"][:20]:
        table.add_row(f"error {error['path']}", error["error"][:120])
    return table


def ingest(
    path: Annotated[Path, typer.Argument(help="The repository's root folder.")],
    repo_id: Annotated[str, typer.Option("--repo-id", "--repo", help="The repository's id (search --repo ID).")],
    project: Annotated[str, typer.Option(help="Tenant/project.")] = "default",
    suffix: Annotated[list[str] | None, typer.Option(
        "--suffix", help="A file type to cover, e.g. .py (repeatable; default: the built-in set).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", help="A .gitignore-style pattern to leave out, e.g. site-packages/ (repeatable).")] = None,
    max_file_bytes: Annotated[int, typer.Option(help="Skip larger files (counted).")] = 1_000_000,
    chunk_chars: Annotated[int, typer.Option(help="Largest chunk, in characters.")] = 2000,
    overlap: Annotated[int, typer.Option(help="Characters repeated between size-cut chunks.")] = 200,
    batch_chunks: Annotated[int, typer.Option(help="Chunks per write transaction.")] = 256,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars on stderr.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Ingest a repository: unchanged files are skipped, changed ones replaced, deleted ones removed, renamed
    ones moved without re-embedding; rerun after an interruption to finish the job."""
    from oneiric_memory.rag import IngestOptions, check_ingest_arguments

    options = IngestOptions(**({"suffixes": [s if s.startswith(".") else f".{s}" for s in suffix]} if suffix else {}),
                            exclude=list(exclude or ()), max_file_bytes=max_file_bytes, max_chars=chunk_chars, overlap=overlap,
                            batch_chunks=batch_chunks)
    check_ingest_arguments(path, repo_id, project, options, None)  # before anything opens

    async def work() -> dict[str, Any]:
        async with open_memory(_NO_SINK) as memory:
            with _bars(not no_progress) as update:
                report = await memory.ingest_repository(path, repo_id, project=project, options=options,
                                                        progress=update)
        return report.as_dict()

    result = run(work)
    if as_json:
        print_json(result)
    else:
        console.print(_summary(result))


def ingestions(
    repo_id: Annotated[str, typer.Argument(help="The repository's id.")],
    project: Annotated[str, typer.Option(help="Tenant/project.")] = "default",
    limit: Annotated[int, typer.Option()] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The latest ingestion runs of a repository: status, counts, timings, errors."""
    from oneiric_memory.rag import check_label

    if not 1 <= limit <= 1000:
        raise invalid(f"--limit {limit} is out of range; use 1 to 1000", field="limit")
    check_label("repo_id", repo_id)
    check_label("project", project)

    async def work() -> list[dict[str, Any]]:
        async with open_memory(_NO_SINK) as memory:
            return await memory.ingestions(repo_id, project=project, limit=limit)

    rows = run(work)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"ingestions of {repo_id}", title_justify="left")
    for column in ("started_at", "status", "files", "chunks", "total_s", "error"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["started_at"]), row["status"], str(row["documents"]), str(row["chunks"]),
                      str(row["timings"].get("total_s", "")), (row["error"] or "")[:80])
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel=_PANEL)(ingest)
    app.command(rich_help_panel=_PANEL)(ingestions)
