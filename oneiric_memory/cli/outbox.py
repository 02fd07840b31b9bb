"""``outbox status | deliver``: the Session-Buddy insight outbox."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from oneiric_memory.cli._runtime import CheckFailed, console, open_memory, open_store, print_json, progress, run

__all__ = ["ORDER", "register"]

ORDER = 60

outbox_app = typer.Typer(help="The Session-Buddy insight outbox.", no_args_is_help=True)


@outbox_app.command("status")
def outbox_status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Pending, due, failed and delivered counts, and the oldest pending age."""

    async def work() -> dict[str, Any]:
        from oneiric_memory.outbox import OutboxRelay

        store = await open_store()
        try:
            status = await OutboxRelay(lambda: store, lambda: None, store.settings.session_buddy).status()
        finally:
            await store.cleanup()
        return dict(status.as_dict())

    values = run(work)
    if as_json:
        print_json(values)
        return
    table = Table(title="insight outbox", title_justify="left")
    for key in values:
        table.add_column(key)
    table.add_row(*[str(value) if value is not None else "" for value in values.values()])
    console.print(table)


@outbox_app.command("deliver")
def outbox_deliver(retry_failed: Annotated[bool, typer.Option(help="Requeue failed rows first.")] = False) -> None:
    """Deliver every due insight to Session-Buddy now."""

    async def work() -> Any:
        from oneiric_memory.errors import StoreUnavailable

        async with open_memory({"coordinator": {"backfill_enabled": False},
                                "session_buddy": {"relay_enabled": False}}) as memory:
            if memory.sink is None:
                raise StoreUnavailable("Session-Buddy is not available; insights stay queued")
            if retry_failed:
                await memory.relay.retry_failed()
            before = await memory.relay.status()
            with progress("delivering insights", before.due) as update:
                report = await memory.relay.drain()
                update(report.delivered, before.due)
            return report

    report = run(work)
    console.print(f"delivered {report.delivered}, failed attempts {report.failed_attempts}")
    if report.failed_attempts:
        raise CheckFailed(report.errors[-1])


def register(app: typer.Typer) -> None:
    app.add_typer(outbox_app, name="outbox", rich_help_panel="Health and operations")
