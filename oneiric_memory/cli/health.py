"""``health`` and ``backfill``: is every part working, and catch up on embeddings."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from oneiric_memory.cli._runtime import CheckFailed, console, health_table, open_memory, print_json, progress, run

__all__ = ["ORDER", "register"]

ORDER = 30
_PANEL = "Health and operations"


def health(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Aggregated health of every part (exit 7 when unhealthy, including a database that cannot be reached)."""

    async def work() -> Any:
        async with open_memory() as memory:
            return await memory.health()

    response = run(work)
    if as_json:
        print_json(response.to_dict())
    else:
        console.print(health_table(response))
    if str(response.status) == "unhealthy":
        raise CheckFailed("unhealthy")


def backfill() -> None:
    """Embed memories stored while the embedder was down."""

    async def work() -> Any:
        async with open_memory() as memory:
            total = await memory.store.count_pending()
            with progress("embedding pending memories", total) as update:
                return await memory.backfill(progress=update)

    report = run(work)
    console.print(f"embedded {report.embedded}, skipped {report.skipped}, remaining {report.remaining}"
                  + (f" ({report.stopped_reason})" if report.stopped_reason else ""))
    if report.stopped_reason:
        from oneiric_memory.errors import EmbedderUnavailable

        raise EmbedderUnavailable(report.stopped_reason)


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel=_PANEL)(health)
    app.command(rich_help_panel=_PANEL)(backfill)
