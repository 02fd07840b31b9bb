"""``oneiric-memory``: the command line (typer + rich).

Errors print one clear line and exit with a code scripts can rely on (see ``EXIT_CODES``); ``--debug``
shows the traceback. Long work shows a progress bar.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from oneiric_memory.errors import (
    ConfigurationError,
    EmbedderUnavailable,
    InvalidInput,
    OneiricMemoryError,
    SchemaMismatch,
    StoreUnavailable,
)

__all__ = ["EXIT_CODES", "app", "main"]

T = TypeVar("T")

EXIT_CODES: dict[str, int] = {
    "ok": 0, "error": 1, "usage": 2, "configuration": 3, "unavailable": 4, "invalid_input": 5,
    "schema_mismatch": 6, "check_failed": 7,
}

app = typer.Typer(name="oneiric-memory", help="One reliable, fast memory for Mahavishnu (PostgreSQL + pgvector).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
db_app = typer.Typer(help="Schema migrations (Alembic, shipped inside the package).", no_args_is_help=True)
outbox_app = typer.Typer(help="The Session-Buddy insight outbox.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(outbox_app, name="outbox")

console = Console()
err_console = Console(stderr=True)
_state: dict[str, Any] = {"debug": False, "root": None}


class CheckFailed(Exception):
    """A command ran but its check failed (validation mismatch, unhealthy doctor)."""


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    settings_root: Annotated[Path | None, typer.Option(
        "--settings-root", help="Folder holding settings/ (default: the working directory).")] = None,
) -> None:
    _state["debug"] = debug
    _state["root"] = settings_root
    from oneiric_memory.observability import configure_logging

    configure_logging(level="DEBUG" if debug else os.environ.get("ONEIRIC_MEMORY_LOG_LEVEL", "WARNING"))


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, ConfigurationError):
        return EXIT_CODES["configuration"]
    if isinstance(exc, (StoreUnavailable, EmbedderUnavailable)):
        return EXIT_CODES["unavailable"]
    if isinstance(exc, InvalidInput):
        return EXIT_CODES["invalid_input"]
    if isinstance(exc, SchemaMismatch):
        return EXIT_CODES["schema_mismatch"]
    if isinstance(exc, CheckFailed):
        return EXIT_CODES["check_failed"]
    return EXIT_CODES["error"]


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run async work; turn errors into one line and an exit code."""
    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except (OneiricMemoryError, CheckFailed) as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(_exit_code(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {str(exc)[:300]} "
                          "(run with --debug for the traceback)", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_CODES["error"]) from None


def _settings(overrides: dict[str, Any] | None = None) -> Any:
    from oneiric_memory.settings import load_settings

    return load_settings(overrides, root=_state["root"])


@contextmanager
def _progress(description: str, total: int | None) -> Iterator[Callable[[int, int], None]]:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=total)

        def update(done: int, total_now: int) -> None:
            progress.update(task, completed=done, total=total_now)

        yield update


def _hits_table(title: str, hits: list[Any]) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("ranks v/t", justify="center")
    table.add_column("type")
    table.add_column("source")
    table.add_column("content", overflow="fold", max_width=80)
    for position, hit in enumerate(hits, start=1):
        ranks = f"{hit.vector_rank or '-'}/{hit.text_rank or '-'}"
        text = " ".join(hit.content.split())
        table.add_row(str(position), f"{hit.score:.4f}", ranks, hit.memory_type, hit.source,
                      text[:160] + ("…" if len(text) > 160 else ""))
    return table


def _health_table(response: Any) -> Table:
    table = Table(title=f"health: {response.status}", title_justify="left")
    table.add_column("component")
    table.add_column("status")
    table.add_column("latency ms", justify="right")
    table.add_column("message", overflow="fold", max_width=90)
    colors = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}
    for component in response.components:
        color = colors.get(str(component.status), "white")
        latency = f"{component.latency_ms:.1f}" if component.latency_ms is not None else ""
        table.add_row(component.name, f"[{color}]{component.status}[/]", latency, component.message or "")
    return table


# --- demo -------------------------------------------------------------------------------------------


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Keep the demo data (schema oneiric_memory_demo) afterwards.")] = True,
) -> None:
    """Run the main job on the embedded default: load a sample corpus, remember conversations, search, health."""

    async def work() -> None:
        from oneiric_memory.coordinator import UnifiedMemory
        from oneiric_memory.demo import DEMO_CONVERSATIONS, DEMO_QUERIES, demo_corpus

        base = _settings()
        overrides: dict[str, Any] = {"postgres": {"db_schema": "oneiric_memory_demo"},
                                     "coordinator": {"backfill_enabled": False},
                                     "session_buddy": {"relay_enabled": False}}
        if base.session_buddy.database_path is None:  # never write demo insights into the user's real store
            overrides["session_buddy"]["database_path"] = str(base.cache_dir / "demo" / "reflection.duckdb")
            (base.cache_dir / "demo").mkdir(parents=True, exist_ok=True)
        settings = _settings(overrides)
        where = "embedded PostgreSQL in " + str(settings.embedded_data_dir) if settings.postgres.embedded \
            else "the configured PostgreSQL"
        console.print(f"[bold]oneiric-memory demo[/] on {where} (schema {settings.postgres.db_schema})")
        with console.status("starting the store, the embedder and the insight sink…"):
            memory = UnifiedMemory(settings)
            await memory.init(background=False)
        try:
            console.print(f"embedder: {memory.embedder_note}")
            corpus = demo_corpus()
            ids = []
            with _progress("remembering the sample corpus", len(corpus)) as update:
                for start in range(0, len(corpus), 16):
                    ids += await memory.remember_many(corpus[start:start + 16])
                    update(min(start + 16, len(corpus)), len(corpus))
            for agent, text in DEMO_CONVERSATIONS:
                ids.append(await memory.store_agent_conversation(agent, "assistant", text, project="demo"))
            console.print(f"stored {len(ids)} memories ({len(set(ids))} distinct; re-runs deduplicate)")
            if memory.sink is not None:
                report = await memory.relay.drain()
                console.print(f"insights delivered to Session-Buddy: {report.delivered}"
                              + (f", failed attempts: {report.failed_attempts}" if report.failed_attempts else ""))
            else:
                console.print("Session-Buddy is not available: insights stay queued in the outbox")
            for query in DEMO_QUERIES[:3]:
                hits = await memory.search(query, limit=3, projects=["demo"])
                console.print(_hits_table(f"search: {query!r}", hits))
            unified = await memory.unified_search(DEMO_QUERIES[0], limit=4, projects=["demo"])
            sources = ", ".join(f"{name}={status.status}" for name, status in unified.sources.items())
            console.print(_hits_table(f"unified search ({sources})", unified.hits))
            console.print(_health_table(await memory.health()))
            if not keep:
                await memory.forget(filters=_filters(projects=["demo"]))
        finally:
            await memory.cleanup()

    run(work)


def _filters(**kwargs: Any) -> Any:
    from oneiric_memory.records import SearchFilters

    return SearchFilters(**kwargs)


# --- everyday commands --------------------------------------------------------------------------------


@app.command()
def remember(
    content: Annotated[str, typer.Argument(help="The text to remember ('-' reads standard input).")],
    memory_type: Annotated[str, typer.Option("--type", help="agent | rag | workflow | insight")] = "agent",
    project: Annotated[str, typer.Option(help="Tenant/project.")] = "default",
    agent_id: Annotated[str | None, typer.Option()] = None,
    workflow_id: Annotated[str | None, typer.Option()] = None,
    repo_id: Annotated[str | None, typer.Option()] = None,
    session_id: Annotated[str | None, typer.Option()] = None,
    metadata: Annotated[str | None, typer.Option(help="A JSON object.")] = None,
) -> None:
    """Remember one memory (insights in it are queued for Session-Buddy)."""
    text = sys.stdin.read() if content == "-" else content
    try:
        meta = json.loads(metadata) if metadata else {}
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--metadata is not JSON: {exc.msg}") from None
    if not isinstance(meta, dict):
        raise typer.BadParameter("--metadata must be a JSON object")

    async def work() -> None:
        from oneiric_memory.coordinator import UnifiedMemory

        async with UnifiedMemory.open(_settings(), background=False) as memory:
            memory_id = await memory.remember(text, memory_type, project=project, agent_id=agent_id,
                                              workflow_id=workflow_id, repo_id=repo_id, session_id=session_id,
                                              metadata=meta)
            if memory.sink is not None:
                await memory.relay.drain()
        console.print(str(memory_id))

    run(work)


@app.command()
def search(
    query: Annotated[str, typer.Argument()],
    mode: Annotated[str | None, typer.Option(help="vector | text | hybrid (default from settings)")] = None,
    memory_type: Annotated[list[str] | None, typer.Option("--type")] = None,
    project: Annotated[list[str] | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Search the PostgreSQL memory."""

    async def work() -> None:
        from oneiric_memory.coordinator import UnifiedMemory

        async with UnifiedMemory.open(_settings(), background=False) as memory:
            hits = await memory.search(query, mode=mode, memory_types=memory_type, projects=project,  # type: ignore[arg-type]
                                       limit=limit)
        _print_hits(hits, as_json, f"search: {query!r}")

    run(work)


def _print_hits(hits: list[Any], as_json: bool, title: str) -> None:
    if as_json:
        console.print_json(data=[{"id": str(h.id), "score": h.score, "memory_type": h.memory_type,
                                  "project": h.project, "source": h.source, "vector_rank": h.vector_rank,
                                  "text_rank": h.text_rank, "content": h.content, "metadata": h.metadata}
                                 for h in hits])
    else:
        console.print(_hits_table(title, hits))


@app.command("unified-search")
def unified_search(
    query: Annotated[str, typer.Argument()],
    project: Annotated[list[str] | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Search PostgreSQL and Session-Buddy together, fused by rank."""

    async def work() -> None:
        from oneiric_memory.coordinator import UnifiedMemory

        async with UnifiedMemory.open(_settings(), background=False) as memory:
            result = await memory.unified_search(query, limit=limit, projects=project)
        sources = ", ".join(f"{name}={status.status}" for name, status in result.sources.items())
        _print_hits(result.hits, as_json, f"unified search ({sources})")

    run(work)


@app.command()
def health(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Aggregated health of every part (exit 7 when unhealthy)."""

    async def work() -> None:
        from oneiric_memory.coordinator import UnifiedMemory

        async with UnifiedMemory.open(_settings(), background=False) as memory:
            response = await memory.health()
        if as_json:
            console.print_json(data=response.to_dict())
        else:
            console.print(_health_table(response))
        if str(response.status) == "unhealthy":
            raise CheckFailed("unhealthy")

    run(work)


@app.command()
def backfill() -> None:
    """Embed memories stored while the embedder was down."""

    async def work() -> None:
        from oneiric_memory.coordinator import UnifiedMemory

        async with UnifiedMemory.open(_settings(), background=False) as memory:
            total = await memory.store.count_pending()
            with _progress("embedding pending memories", total) as update:
                report = await memory.backfill(progress=update)
        console.print(f"embedded {report.embedded}, skipped {report.skipped}, remaining {report.remaining}"
                      + (f" ({report.stopped_reason})" if report.stopped_reason else ""))
        if report.stopped_reason:
            raise EmbedderUnavailable(report.stopped_reason)

    run(work)


# --- db -----------------------------------------------------------------------------------------------


async def _open_store(overrides: dict[str, Any] | None = None, *, migrate: bool = True) -> Any:
    from oneiric_memory.adapters.pgvector_store import PgvectorMemoryStore

    settings = _settings(overrides)
    if not migrate:
        settings.postgres.auto_migrate = False
    store = PgvectorMemoryStore(settings)
    await store.init()
    return store


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Upgrade the schema (default: to head)."""

    async def work() -> None:
        from oneiric_memory.adapters.pgvector_store import PgvectorMemoryStore
        from oneiric_memory.migrator import Migrator

        store = PgvectorMemoryStore(_settings({"postgres": {"auto_migrate": False}}))
        params = await _bootstrap(store)
        try:
            current = await Migrator(params, store.settings.postgres).upgrade(revision)
        finally:
            await store.cleanup()
        console.print(f"schema {store.schema} at {current}")

    run(work)


async def _bootstrap(store: Any) -> Any:
    """Connection parameters with the server started and pgvector present, without migrating."""
    from oneiric_memory.database import connect_once, ensure_vector_extension

    params = await store._resolve_params()
    connection = await connect_once(params, store.settings.postgres)
    try:
        await ensure_vector_extension(connection, create=store.settings.postgres.create_extension, schema=store.schema)
    finally:
        await connection.close()
    return params


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, e.g. 'base' or '-1'.")]) -> None:
    """Downgrade the schema (``base`` removes every table of this package: data is lost)."""

    async def work() -> None:
        from oneiric_memory.adapters.pgvector_store import PgvectorMemoryStore
        from oneiric_memory.migrator import Migrator

        store = PgvectorMemoryStore(_settings({"postgres": {"auto_migrate": False}}))
        params = await _bootstrap(store)
        try:
            current = await Migrator(params, store.settings.postgres).downgrade(revision)
        finally:
            await store.cleanup()
        console.print(f"schema {store.schema} at {current or 'base'}")

    run(work)


@db_app.command("current")
def db_current() -> None:
    """Show the schema's current revision and the package's head."""

    async def work() -> None:
        from oneiric_memory.adapters.pgvector_store import PgvectorMemoryStore
        from oneiric_memory.migrator import Migrator

        store = PgvectorMemoryStore(_settings({"postgres": {"auto_migrate": False}}))
        params = await _bootstrap(store)
        try:
            migrator = Migrator(params, store.settings.postgres)
            current = await migrator.current()
            console.print(f"schema {store.schema}: current {current or 'base'}, head {migrator.head_revision()}")
        finally:
            await store.cleanup()

    run(work)


@db_app.command("reembed")
def db_reembed(yes: Annotated[bool, typer.Option("--yes", help="Confirm.")] = False) -> None:
    """Adopt the configured embedder: mark every embedding pending, then run `backfill`."""
    if not yes:
        raise typer.BadParameter("this marks every stored embedding pending; pass --yes to confirm")

    async def work() -> None:
        from oneiric_memory.coordinator import UnifiedMemory

        settings = _settings()
        store = await _open_store()
        try:
            from oneiric_memory.embedder_selection import select_embedder

            embedder, note = await select_embedder(settings)
            reset = await store.switch_embedding_model(embedder.model_id)
            await embedder.cleanup()
        finally:
            await store.cleanup()
        console.print(f"{note}\n{reset} embeddings marked pending; running backfill")
        async with UnifiedMemory.open(settings, background=False) as memory:
            with _progress("re-embedding", reset) as update:
                report = await memory.backfill(progress=update)
        console.print(f"embedded {report.embedded}, remaining {report.remaining}")

    run(work)


# --- outbox -------------------------------------------------------------------------------------------


@outbox_app.command("status")
def outbox_status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Pending, due, failed and delivered counts, and the oldest pending age."""

    async def work() -> None:
        from oneiric_memory.outbox import OutboxRelay

        store = await _open_store()
        try:
            status = await OutboxRelay(lambda: store, lambda: None, store.settings.session_buddy).status()
        finally:
            await store.cleanup()
        if as_json:
            console.print_json(data=status.as_dict())
            return
        table = Table(title="insight outbox", title_justify="left")
        for key in ("pending", "due", "failed", "delivered", "oldest_pending_age_s", "last_error"):
            table.add_column(key)
        values = status.as_dict()
        table.add_row(*[str(values[key]) if values[key] is not None else "" for key in values])
        console.print(table)

    run(work)


@outbox_app.command("deliver")
def outbox_deliver(retry_failed: Annotated[bool, typer.Option(help="Requeue failed rows first.")] = False) -> None:
    """Deliver every due insight to Session-Buddy now."""

    async def work() -> None:
        from oneiric_memory.coordinator import UnifiedMemory

        async with UnifiedMemory.open(_settings({"coordinator": {"backfill_enabled": False},
                                                 "session_buddy": {"relay_enabled": False}}),
                                      background=False) as memory:
            if memory.sink is None:
                raise StoreUnavailable("Session-Buddy is not available; insights stay queued")
            if retry_failed:
                await memory.relay.retry_failed()
            before = await memory.relay.status()
            with _progress("delivering insights", before.due) as update:
                report = await memory.relay.drain()
                update(report.delivered, before.due)
        console.print(f"delivered {report.delivered}, failed attempts {report.failed_attempts}")
        if report.failed_attempts:
            raise CheckFailed(report.errors[-1])

    run(work)


def main() -> None:
    """Console-script entry point."""
    _register_optional_commands()
    app()


def _register_optional_commands() -> None:
    """Mount command groups whose modules are optional at import time."""
    for module_name in ("oneiric_memory.cli_ops", "oneiric_memory.cli_migrate"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ImportError:
            continue
        module.register(app)



