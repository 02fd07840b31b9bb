"""``db upgrade | downgrade | current | reembed``: the schema's migrations and the embedding model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from oneiric_memory.cli._runtime import UsageProblem, console, open_memory, open_store, progress, run, settings

if TYPE_CHECKING:
    pass

__all__ = ["ORDER", "register"]

ORDER = 50

db_app = typer.Typer(help="Schema migrations (Alembic, shipped inside the package).", no_args_is_help=True)


async def _migrate(revision: str, *, upgrade: bool) -> None:
    """Move the configured schema to ``revision`` and print where it is now."""
    from oneiric_memory.adapters.pgvector import schema_migrator

    configured = settings()
    async with schema_migrator(configured) as migrator:
        move = migrator.upgrade if upgrade else migrator.downgrade
        current = await move(revision)
    console.print(f"schema {configured.postgres.db_schema} at {current or 'base'}")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Upgrade the schema (default: to head)."""
    run(lambda: _migrate(revision, upgrade=True))


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, e.g. 'base' or '-1'.")]) -> None:
    """Downgrade the schema (``base`` removes every table of this package: data is lost)."""
    run(lambda: _migrate(revision, upgrade=False))


@db_app.command("current")
def db_current() -> None:
    """Show the schema's current revision and the package's head."""

    async def work() -> None:
        from oneiric_memory.adapters.pgvector import schema_migrator

        configured = settings()
        async with schema_migrator(configured) as migrator:
            current = await migrator.current()
        console.print(f"schema {configured.postgres.db_schema}: current {current or 'base'}, "
                      f"head {migrator.head_revision()}")

    run(work)


@db_app.command("reembed")
def db_reembed(yes: Annotated[bool, typer.Option("--yes", help="Confirm.")] = False) -> None:
    """Adopt the configured embedder: mark every embedding pending, then run `backfill`."""
    if not yes:
        raise UsageProblem("this marks every stored embedding pending; pass --yes to confirm")

    async def work() -> None:
        from oneiric_memory.adapters.embedders.selection import select_embedder

        store = await open_store()
        try:
            selection = await select_embedder(store.settings)
            note = selection.note
            reset = await store.switch_embedding_model(selection.model_id)
            if selection.embedder is not None:
                await selection.embedder.cleanup()
        finally:
            await store.cleanup()
        console.print(f"{note}\n{reset} embeddings marked pending; running backfill")
        async with open_memory() as memory:
            with progress("re-embedding", reset) as update:
                report = await memory.backfill(progress=update)
        console.print(f"embedded {report.embedded}, remaining {report.remaining}")

    run(work)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db", rich_help_panel="Schema and data")
