"""``oneiric-memory demo``: the main job on the embedded default, nothing to configure."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from oneiric_memory.cli._runtime import console, health_table, hits_table, progress, run, settings

__all__ = ["ORDER", "demo", "register"]

ORDER = 10


def demo(
    keep: Annotated[bool, typer.Option(help="Keep the demo data (schema oneiric_memory_demo) afterwards.")] = True,
) -> None:
    """Run the main job on the embedded default: load a sample corpus, remember conversations, search, health."""

    async def work() -> None:
        from oneiric_memory.coordinator import UnifiedMemory
        from oneiric_memory.demo import DEMO_CONVERSATIONS, DEMO_QUERIES, demo_corpus
        from oneiric_memory.records import SearchFilters

        base = settings()
        overrides: dict[str, Any] = {"postgres": {"db_schema": "oneiric_memory_demo"},
                                     "coordinator": {"backfill_enabled": False},
                                     "session_buddy": {"relay_enabled": False}}
        if base.session_buddy.database_path is None:  # never write demo insights into the user's real store
            overrides["session_buddy"]["database_path"] = str(base.cache_dir / "demo" / "reflection.duckdb")
            (base.cache_dir / "demo").mkdir(parents=True, exist_ok=True)
        configured = settings(overrides)
        where = "embedded PostgreSQL in " + str(configured.embedded_data_dir) if configured.postgres.embedded \
            else "the configured PostgreSQL"
        console.print(f"[bold]oneiric-memory demo[/] on {where} (schema {configured.postgres.db_schema})")
        with console.status("starting the store, the embedder and the insight sink…"):
            memory = UnifiedMemory(configured)
            await memory.init(background=False)
        try:
            console.print(f"embedder: {memory.embedder_note}")
            corpus = demo_corpus()
            ids: list[Any] = []
            with progress("remembering the sample corpus", len(corpus)) as update:
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
                console.print(hits_table(f"search: {query!r}", hits))
            unified = await memory.unified_search(DEMO_QUERIES[0], limit=4, projects=["demo"])
            sources = ", ".join(f"{name}={status.status}" for name, status in unified.sources.items())
            console.print(hits_table(f"unified search ({sources})", unified.hits))
            console.print(health_table((await memory.health()).to_dict()))
            if not keep:
                await memory.forget(filters=SearchFilters(projects=["demo"]))
        finally:
            await memory.cleanup()

    run(work)


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Start here")(demo)
