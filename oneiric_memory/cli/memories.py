"""Everyday commands on memories: ``remember``, ``get``, ``list``, ``forget``, ``search`` and ``unified-search``."""

from __future__ import annotations

import functools
import inspect
import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from oneiric_memory.cli._runtime import (
    UsageProblem,
    console,
    err_console,
    hits_table,
    invalid,
    open_memory,
    parse_ids,
    print_json,
    run,
    settings,
)

if TYPE_CHECKING:
    from oneiric_memory.records import SearchFilters

__all__ = ["ORDER", "register"]

ORDER = 20
_PANEL = "Memories"
_MODES = ("vector", "text", "hybrid")
_TTL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_NO_SINK: dict[str, Any] = {"session_buddy": {"enabled": False}}
"""For commands that only read PostgreSQL (search, get, list): Session-Buddy is not started."""
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def read_content(content: str) -> str:
    """The argument, or standard input for ``-`` (which must be UTF-8 text)."""
    if content != "-":
        return content
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"standard input is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                      "convert it first, e.g. with `iconv -t UTF-8`", field="content") from None


def parse_metadata(raw: str | None) -> dict[str, Any]:
    """``--metadata``: a JSON object."""
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise invalid(f"--metadata is not JSON: {exc.msg} at character {exc.pos}", field="metadata") from None
    if not isinstance(value, dict):
        raise invalid(f"--metadata must be a JSON object, not {type(value).__name__}", field="metadata")
    return value


def parse_expiry(ttl: str | None, expires_at: str | None) -> datetime | None:
    """``--ttl 30d`` (s, m, h, d, w; plain numbers are seconds) or ``--expires-at`` (ISO 8601 with a zone)."""
    if ttl is not None and expires_at is not None:
        raise invalid("give --ttl or --expires-at, not both", field="expires_at")
    now = datetime.now(UTC)
    if ttl is not None:
        match = _TTL.match(ttl)
        if match is None or float(match.group(1)) <= 0:
            raise invalid(f"--ttl {ttl!r} is not a positive duration like 90s, 30m, 12h, 7d or 2w", field="ttl")
        try:
            return now + timedelta(seconds=float(match.group(1)) * _TTL_UNITS[match.group(2)])
        except OverflowError:
            raise invalid(f"--ttl {ttl!r} is too long", field="ttl") from None
    if expires_at is not None:
        try:
            when = datetime.fromisoformat(expires_at)
        except ValueError:
            raise invalid(f"--expires-at {expires_at!r} is not an ISO 8601 time (e.g. 2027-01-31T12:00:00Z)",
                          field="expires_at") from None
        if when.tzinfo is None:
            raise invalid("--expires-at needs a time zone (e.g. 2027-01-31T12:00:00Z or +02:00)", field="expires_at")
        if when <= now:
            raise invalid(f"--expires-at {expires_at} is in the past", field="expires_at")
        return when
    return None


def parse_metadata_filters(pairs: list[str] | None) -> dict[str, Any] | None:
    """``--meta key=value`` (repeatable); the value is JSON when it parses (``n=3``, ``ok=true``), else text."""
    if not pairs:
        return None
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise invalid(f"--meta {pair!r} is not key=value", field="metadata")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        found[key.strip()] = value
    return found


def build_filters(*, projects: list[str] | None = None, memory_types: list[str] | None = None,
                  agent_id: str | None = None, session_id: str | None = None, workflow_id: str | None = None,
                  repo_id: str | None = None, metadata: list[str] | None = None,
                  path_prefix: str | None = None) -> SearchFilters:
    """Validated :class:`SearchFilters` from the command line (raises ``InvalidInput`` before anything opens)."""
    from oneiric_memory.records import SearchFilters

    filters = SearchFilters(projects=projects or None, memory_types=memory_types or None, agent_id=agent_id,
                            session_id=session_id, workflow_id=workflow_id, repo_id=repo_id,
                            metadata=parse_metadata_filters(metadata), path_prefix=path_prefix)
    filters.validate()
    return filters


_FILTER_OPTIONS = (
    inspect.Parameter("project", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[list[str] | None, typer.Option(help="Repeatable.")]),
    inspect.Parameter("memory_type", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[list[str] | None, typer.Option("--type", help="Repeatable.")]),
    inspect.Parameter("agent_id", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option("--agent", "--agent-id")]),
    inspect.Parameter("session_id", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option("--session", "--session-id")]),
    inspect.Parameter("workflow_id", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option("--workflow", "--workflow-id")]),
    inspect.Parameter("repo_id", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option("--repo", "--repo-id")]),
    inspect.Parameter("meta", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[list[str] | None, typer.Option("--meta", metavar="KEY=VALUE",
                                                                          help="Repeatable.")]),
)


def with_filter_options[**P, R](command: Callable[P, R]) -> Callable[..., R]:
    """Give ``command`` the memory filter options (--project, --type, --agent, --session, --workflow, --repo,
    --meta) in place of its ``filters`` parameter, which receives them as one validated :class:`SearchFilters`, or
    None when none was given. One declaration of the options for the commands that select memories by filter."""
    # evaluated annotations (typer reads them): ``filters`` is replaced, so its type need not load (records is lazy)
    signature = inspect.signature(command, eval_str=True, locals={"SearchFilters": Any})
    names = [option.name for option in _FILTER_OPTIONS]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        given = {name: kwargs.pop(name, None) for name in names}
        kwargs["filters"] = build_filters(
            projects=given["project"], memory_types=given["memory_type"], agent_id=given["agent_id"],
            session_id=given["session_id"], workflow_id=given["workflow_id"], repo_id=given["repo_id"],
            metadata=given["meta"]) if any(given.values()) else None
        return command(*args, **kwargs)

    parameters: list[inspect.Parameter] = []
    for parameter in signature.parameters.values():
        if parameter.name == "filters":
            parameters.extend(_FILTER_OPTIONS)
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                              if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD else parameter)
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return wrapper


def check_query(query: str) -> None:
    """The query rules of the API, checked before anything opens."""
    if not query.strip():
        raise invalid("the query is empty", field="query")
    if "\x00" in query:
        raise invalid("the query contains a NUL byte; remove it", field="query")
    if len(query) > 10_000:
        raise invalid("the query is longer than 10,000 characters", field="query")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid("the query is not UTF-8 text (check the terminal's encoding)", field="query") from None


def remember(
    content: Annotated[str, typer.Argument(help="The text to remember ('-' reads standard input).")],
    memory_type: Annotated[str, typer.Option("--type", help="agent | rag | workflow | insight")] = "agent",
    project: Annotated[str, typer.Option(help="Tenant/project.")] = "default",
    agent_id: Annotated[str | None, typer.Option("--agent", "--agent-id")] = None,
    workflow_id: Annotated[str | None, typer.Option("--workflow", "--workflow-id")] = None,
    repo_id: Annotated[str | None, typer.Option("--repo", "--repo-id")] = None,
    session_id: Annotated[str | None, typer.Option("--session", "--session-id")] = None,
    metadata: Annotated[str | None, typer.Option(help="A JSON object.")] = None,
    ttl: Annotated[str | None, typer.Option(help="Forget after this long: 90s, 30m, 12h, 7d, 2w.")] = None,
    expires_at: Annotated[str | None, typer.Option(help="Forget at this ISO 8601 time (with a zone).")] = None,
) -> None:
    """Remember one memory and print its id (insights in it are queued for Session-Buddy)."""
    from oneiric_memory.records import MemoryRecord

    text = read_content(content)
    meta = parse_metadata(metadata)
    expiry = parse_expiry(ttl, expires_at)
    record = MemoryRecord(content=text, memory_type=memory_type, project=project, agent_id=agent_id,
                          workflow_id=workflow_id, repo_id=repo_id, session_id=session_id, metadata=meta,
                          expires_at=expiry)
    configured = settings()
    record.validate(dimension=configured.postgres.vector_dimension,
                    max_content_bytes=configured.postgres.max_content_bytes)

    async def work() -> None:
        async with open_memory() as memory:
            memory_id = (await memory.remember_many([record]))[0]
            if memory.sink is not None:
                await memory.relay.drain()
        console.print(str(memory_id), highlight=False)

    run(work)


def _hit_dict(hit: Any) -> dict[str, Any]:
    found = {"id": str(hit.id), "score": hit.score, "memory_type": hit.memory_type, "project": hit.project,
             "source": hit.source, "vector_rank": hit.vector_rank, "text_rank": hit.text_rank,
             "agent_id": hit.agent_id, "session_id": hit.session_id, "workflow_id": hit.workflow_id,
             "repo_id": hit.repo_id, "content": hit.content, "metadata": hit.metadata}
    meta = hit.metadata or {}
    if isinstance(meta.get("path"), str):  # an ingested repository chunk: where it is
        found.update(file=meta["path"], symbol=meta.get("symbol"),
                     lines=[meta.get("start_line"), meta.get("end_line")])
    return found


def print_hits(hits: list[Any], as_json: bool, title: str) -> None:
    if as_json:
        print_json([_hit_dict(h) for h in hits])
    else:
        console.print(hits_table(title, hits))


def _check_mode(mode: str | None) -> None:
    if mode is not None and mode not in _MODES:
        raise invalid(f"--mode {mode!r} is unknown; use vector, text or hybrid", field="mode")


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 1000:
        raise invalid(f"--limit {limit} is out of range; use 1 to 1000", field="limit")


def search(
    query: Annotated[str, typer.Argument()],
    mode: Annotated[str | None, typer.Option(help="vector | text | hybrid (default from settings)")] = None,
    memory_type: Annotated[list[str] | None, typer.Option("--type", help="Repeatable.")] = None,
    project: Annotated[list[str] | None, typer.Option(help="Repeatable.")] = None,
    agent_id: Annotated[str | None, typer.Option("--agent", "--agent-id")] = None,
    session_id: Annotated[str | None, typer.Option("--session", "--session-id")] = None,
    workflow_id: Annotated[str | None, typer.Option("--workflow", "--workflow-id")] = None,
    repo_id: Annotated[str | None, typer.Option("--repo", "--repo-id")] = None,
    path_prefix: Annotated[str | None, typer.Option(
        "--path", help="Ingested chunks whose file path starts with this (literal; end with / for a folder).")] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", metavar="KEY=VALUE",
                                                   help="Metadata equals (repeatable; JSON values parse).")] = None,
    min_score: Annotated[float | None, typer.Option(help="Drop hits scoring below this (score of the mode).")] = None,
    limit: Annotated[int, typer.Option()] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Search the PostgreSQL memory."""
    _check_mode(mode)
    _check_limit(limit)
    if min_score is not None and min_score != min_score:
        raise invalid("--min-score must be a number, not NaN", field="min_score")
    check_query(query)
    filters = build_filters(projects=project, memory_types=memory_type, agent_id=agent_id, session_id=session_id,
                            workflow_id=workflow_id, repo_id=repo_id, metadata=meta, path_prefix=path_prefix)

    async def work() -> list[Any]:
        async with open_memory(_NO_SINK) as memory:  # PostgreSQL only: starting Session-Buddy would cost seconds
            return await memory.search(query, mode=mode, filters=filters, limit=limit)  # type: ignore[arg-type]

    hits = run(work)
    note = getattr(hits, "note", None)
    if note:  # the default mode could not run (embedder down) and text search answered instead
        err_console.print(f"note: {note}", highlight=False)
    ran = getattr(hits, "mode", None)
    if min_score is not None:
        hits = [hit for hit in hits if hit.score >= min_score]
    print_hits(hits, as_json, f"search ({ran}): {query!r}" if ran else f"search: {query!r}")


def unified_search(
    query: Annotated[str, typer.Argument()],
    project: Annotated[list[str] | None, typer.Option(help="Repeatable.")] = None,
    limit: Annotated[int, typer.Option()] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Search PostgreSQL and Session-Buddy together, fused by rank."""
    _check_limit(limit)
    check_query(query)
    build_filters(projects=project)

    async def work() -> Any:
        async with open_memory() as memory:
            return await memory.unified_search(query, limit=limit, projects=project)

    result = run(work)
    sources = ", ".join(f"{name}={status.status}" for name, status in result.sources.items())
    print_hits(result.hits, as_json, f"unified search ({sources})")


def memory_dict(memory: Any) -> dict[str, Any]:
    """A stored memory as JSON-ready fields (``get --json``, ``list --json``)."""
    return {"id": str(memory.id), "project": memory.project, "memory_type": memory.memory_type,
            "content": memory.content, "metadata": memory.metadata, "source_system": memory.source_system,
            "agent_id": memory.agent_id, "workflow_id": memory.workflow_id, "repo_id": memory.repo_id,
            "session_id": memory.session_id, "embedding_model": memory.embedding_model,
            "embedding_pending": memory.embedding_pending, "created_at": memory.created_at.isoformat(),
            "updated_at": memory.updated_at.isoformat(),
            "expires_at": memory.expires_at.isoformat() if memory.expires_at else None}


def get(
    ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Memory ids (as search and list show them).")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show memories by id, in full (exit 1 when one is not found)."""
    wanted = parse_ids(ids)

    async def work() -> list[Any]:
        async with open_memory(_NO_SINK) as memory:
            return list(await memory.store.get(wanted))

    found = run(work)
    if as_json:
        print_json([memory_dict(m) for m in found])
    else:
        for memory in found:
            table = Table(title=f"memory {memory.id}", title_justify="left", show_header=False)
            table.add_column("field", style="bold")
            table.add_column("value", overflow="fold")
            for key, value in memory_dict(memory).items():
                if key != "id" and value not in (None, {}):
                    table.add_row(key, json.dumps(value, ensure_ascii=False) if key == "metadata" else str(value))
            console.print(table)
    missing = sorted(set(wanted) - {str(m.id) for m in found})
    if missing:
        from oneiric_memory.errors import OneiricMemoryError

        raise OneiricMemoryError(f"no memory with id {', '.join(missing)}")


@with_filter_options
def list_command(
    filters: SearchFilters | None = None,
    include_expired: Annotated[bool, typer.Option("--include-expired")] = False,
    limit: Annotated[int, typer.Option(help="Rows per page (1 to 10000).")] = 20,
    cursor: Annotated[str | None, typer.Option(help="Continue after the page that printed this cursor.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List memories, oldest first, a page at a time (the next page's --cursor is printed on stderr)."""
    if not 1 <= limit <= 10_000:
        raise invalid(f"--limit {limit} is out of range; use 1 to 10000", field="limit")
    filters = filters or build_filters()
    filters.include_expired = include_expired

    async def work() -> Any:
        from oneiric_memory.adapters.pgvector import list_memories

        async with open_memory(_NO_SINK) as memory:
            return await list_memories(memory.store, filters=filters, limit=limit, after=cursor)

    page = run(work)
    if as_json:
        print_json({"memories": [memory_dict(m) for m in page.memories], "next_cursor": page.next_cursor})
        return
    table = Table(title=f"{len(page.memories)} memories", title_justify="left")
    for name in ("id", "created", "type", "project", "content"):
        table.add_column(name, no_wrap=name in ("id", "created"), overflow="fold")
    for memory in page.memories:
        text = " ".join(memory.content.split())
        table.add_row(str(memory.id), memory.created_at.strftime("%Y-%m-%d %H:%M:%S"), memory.memory_type,
                      memory.project, text[:120] + ("…" if len(text) > 120 else ""))
    console.print(table)
    if page.next_cursor:
        err_console.print(f"more: --cursor {page.next_cursor}", highlight=False)


@with_filter_options
def forget(
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID...]", help="Memory ids to forget.")] = None,
    filters: SearchFilters | None = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm forgetting by filter.")] = False,
) -> None:
    """Forget memories by id, or every memory a filter matches (with --yes); prints how many."""
    if ids and filters is not None:
        raise UsageProblem("give ids or filters, not both")
    if not ids and filters is None:
        raise UsageProblem("give the ids to forget, or a filter such as --project (with --yes)")
    wanted = parse_ids(ids) if ids else None
    if filters is not None and not yes:
        raise UsageProblem("forgetting by filter deletes every memory it matches; pass --yes to confirm")

    async def work() -> int:
        async with open_memory() as memory:
            return await memory.forget(wanted, filters=filters)

    console.print(f"forgot {run(work)} memories", highlight=False)


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel=_PANEL)(remember)
    app.command(rich_help_panel=_PANEL)(get)
    app.command("list", rich_help_panel=_PANEL)(list_command)
    app.command(rich_help_panel=_PANEL)(forget)
    app.command(rich_help_panel=_PANEL)(search)
    app.command("unified-search", rich_help_panel=_PANEL)(unified_search)
