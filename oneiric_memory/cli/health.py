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

    async def work() -> dict[str, Any]:
        from oneiric_memory.errors import StoreError

        try:
            async with open_memory() as memory:
                return dict((await memory.health()).to_dict())
        except StoreError as exc:  # the store cannot start: that is the health answer, not a crash
            return _store_down(exc)

    response = run(work)
    if as_json:
        print_json(response)
    else:
        console.print(health_table(response))
    if str(response["status"]) == "unhealthy":
        broken = [c for c in response["components"] if str(c["status"]) == "unhealthy"]
        raise CheckFailed("unhealthy: " + "; ".join(f"{c['name']}: {c.get('message') or 'unhealthy'}"
                                                    for c in broken))


def _store_down(exc: Exception) -> dict[str, Any]:
    """The health document when the store could not even be opened (same shape as ``to_dict()``)."""
    from datetime import UTC, datetime

    from oneiric_memory.version import __version__

    return {"status": "unhealthy", "timestamp": datetime.now(UTC).isoformat(), "version": __version__,
            "components": [{"name": "memory_store", "status": "unhealthy", "message": str(exc), "latency_ms": None,
                            "metadata": {"error": type(exc).__name__, **getattr(exc, "details", {})}}],
            "metadata": {"package": "oneiric-memory"}}


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
