"""The tools an agent calls. Argument names follow the Python API (``content``, ``project``, ``query``, ``limit``,
``ids``, ``id``); each docstring is the tool's description, written for the agent that reads it.

Every tool resolves its projects through :class:`~oneiric_memory.mcp.scope.ProjectScope` first and filters what
comes back by the same projects, so neither arguments nor a source that ignores projects (Session-Buddy) can
widen the scope. On an unpinned server ``project`` is a required argument in the schema.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastmcp import FastMCP
from pydantic import BaseModel, Field

from oneiric_memory.errors import InvalidInput
from oneiric_memory.mcp.failures import tool_errors
from oneiric_memory.mcp.results import (
    ForgetResult,
    HealthPart,
    HealthResult,
    MemoryHit,
    MemoryItem,
    ProjectCount,
    ProjectsResult,
    RememberResult,
    SearchResult,
    SourceReport,
    StatsResult,
    UnifiedSearchResult,
)
from oneiric_memory.mcp.scope import ProjectScope
from oneiric_memory.mcp.state import MemoryState
from oneiric_memory.records import SearchFilters
from oneiric_memory.version import __version__

__all__ = ["FULL_OUTPUT_SCHEMAS", "TOOL_NAMES", "register_tools", "shallow_output_schema"]

TOOL_NAMES = ("remember", "search", "unified_search", "get", "forget", "list_projects", "stats", "health")

MemoryTypeName = Literal["agent", "rag", "workflow", "insight"]
ModeName = Literal["vector", "text", "hybrid"]
_MAX_TTL_S = 100 * 365 * 24 * 3600
_MAX_IDS = 1000

ProjectArg = Annotated[str | None, Field(
    description="the project (tenant) to use; optional only on a server pinned to exactly one project")]
ProjectsArg = Annotated[str | list[str] | None, Field(
    description="the project, or list of projects, to read; on a pinned server it defaults to the pin and "
                "must stay inside it")]
IdArg = Annotated[str | None, Field(description="an agent, session, workflow or repository id to tag or filter by")]
LimitArg = Annotated[int | None, Field(ge=1, le=1000, description="how many hits to return (default 10, at most "
                                                                  "search.max_limit)")]


def register_tools(mcp: FastMCP, state: MemoryState, scope: ProjectScope) -> None:
    """Add every tool to ``mcp``; on an unpinned server ``project`` becomes required in each schema."""
    def allowed(projects: list[str]) -> Callable[[str], bool]:
        wanted = set(projects)
        return wanted.__contains__

    async def remember(
        content: Annotated[str, Field(description="the text to remember (plain text or markdown)")],
        project: ProjectArg = None,
        memory_type: Annotated[MemoryTypeName, Field(
            description="agent (conversation), rag (document chunk), workflow (execution summary) or insight")
        ] = "agent",
        agent_id: IdArg = None,
        session_id: IdArg = None,
        workflow_id: IdArg = None,
        repo_id: IdArg = None,
        metadata: Annotated[dict[str, Any] | None, Field(description="a JSON object stored with the memory")] = None,
        ttl_seconds: Annotated[int | None, Field(ge=1, le=_MAX_TTL_S,
                                                 description="forget automatically after this many seconds")] = None,
    ) -> RememberResult:
        """Store a memory and return its id. Storing the same content again in the same project and type returns
        the existing id instead of a duplicate. Use it for facts, decisions and results worth finding later;
        `★ Insight` blocks in the content are also delivered to Session-Buddy."""
        target = scope.writable(project)
        memory = await state.ready()
        expires_at = datetime.now(UTC) + timedelta(seconds=ttl_seconds) if ttl_seconds is not None else None
        memory_id = await memory.remember(content, memory_type, project=target, agent_id=agent_id,
                                          session_id=session_id, workflow_id=workflow_id, repo_id=repo_id,
                                          metadata=metadata, expires_at=expires_at, source_system="mcp")
        return RememberResult(id=str(memory_id), project=target)

    async def search(
        query: Annotated[str, Field(description="what to look for, in natural language or keywords")],
        project: ProjectsArg = None,
        mode: Annotated[ModeName | None, Field(
            description="hybrid (default: meaning + keywords), vector (meaning) or text (exact words)")] = None,
        limit: LimitArg = None,
        min_score: Annotated[float | None, Field(
            description="drop hits scoring below this (scores are comparable only within one mode)")] = None,
        memory_types: Annotated[list[MemoryTypeName] | None, Field(description="only these memory types")] = None,
        agent_id: IdArg = None,
        session_id: IdArg = None,
        workflow_id: IdArg = None,
        repo_id: IdArg = None,
        metadata: Annotated[dict[str, Any] | None, Field(
            description="only memories whose metadata contains this JSON object")] = None,
        created_after: Annotated[datetime | None, Field(description="ISO 8601 with a time zone")] = None,
        created_before: Annotated[datetime | None, Field(description="ISO 8601 with a time zone")] = None,
    ) -> SearchResult:
        """Search the stored memories of a project, best match first. Use it before answering from memory or
        re-doing work; narrow it with memory_types, agent/session/workflow/repo ids, metadata or dates."""
        projects = scope.readable(project)
        memory = await state.ready()
        # the store's read rule: the projects' own memories plus what is shared with them or their groups
        filters = SearchFilters(acting_for=projects, memory_types=memory_types, agent_id=agent_id,
                                session_id=session_id, workflow_id=workflow_id, repo_id=repo_id,
                                metadata=metadata, created_after=created_after, created_before=created_before)
        # No mode named: the default may answer in text mode while the embedder is down (the result says so);
        # a mode named explicitly runs or fails with a retryable EmbedderUnavailable.
        hits = await memory.search(query, mode=mode, filters=filters, limit=limit)
        found = [MemoryHit.of(h) for h in hits if min_score is None or h.score >= min_score]
        return SearchResult(hits=found, count=len(found), mode=hits.mode, note=hits.note, projects=projects)

    async def unified_search(
        query: Annotated[str, Field(description="what to look for")],
        project: ProjectsArg = None,
        limit: LimitArg = None,
        mode: Annotated[ModeName | None, Field(description="the PostgreSQL side's mode (default hybrid)")] = None,
    ) -> UnifiedSearchResult:
        """Search the project's memories and Session-Buddy's insights together, fused by rank. A slow or
        unavailable source makes the answer `degraded` (see `sources`) instead of failing it."""
        projects = scope.readable(project)
        memory = await state.ready()
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput("query must be a non-empty string", field="query")
        result = await memory.unified_search(query, limit=limit or memory.settings.search.default_limit,
                                             acting_for=projects, mode=mode)
        keep = allowed(projects)  # Session-Buddy ignores projects: its hits must carry one of ours
        found = [MemoryHit.of(h) for h in result.hits if h.source == "postgres" or keep(h.project)]
        sources = {name: SourceReport(status=s.status, hits=s.hits, latency_ms=s.latency_ms, error=s.error)
                   for name, s in result.sources.items()}
        return UnifiedSearchResult(hits=found, count=len(found), degraded=result.degraded, sources=sources,
                                   projects=projects)

    async def get(
        id: Annotated[str, Field(description="the memory id (a UUID) from remember or search")],
        project: ProjectsArg = None,
    ) -> MemoryItem:
        """Read one memory in full by its id (one of the project's own, or one shared with it)."""
        projects = scope.readable(project)
        memory = await state.ready()
        for item in await memory.get([id], acting_for=projects):
            return MemoryItem.of(item)
        raise InvalidInput(f"no memory with id {id[:64]!r} in {', '.join(repr(p) for p in projects)}", field="id")

    async def forget(
        ids: Annotated[list[str], Field(min_length=1, max_length=_MAX_IDS,
                                        description="the ids (UUIDs) of the memories to delete")],
        project: ProjectsArg = None,
    ) -> ForgetResult:
        """Delete memories by id, for good, and return how many were removed. Ids of other projects are not
        touched (they count as not found)."""
        projects = scope.readable(project)
        memory = await state.ready()
        keep = allowed(projects)
        # A memory's project never changes, so checking it first and deleting by id is race-free.
        mine = [item.id for item in await memory.get(ids) if keep(item.project)]
        removed = await memory.forget(mine) if mine else 0
        return ForgetResult(removed=removed, requested=len(set(ids)))

    async def list_projects() -> ProjectsResult:
        """List the projects this server can use, with how many live memories each holds."""
        memory = await state.ready()
        counts = await memory.project_counts(list(scope.pinned) if scope.is_pinned else None)
        names = list(scope.pinned) if scope.is_pinned else sorted(counts)
        return ProjectsResult(projects=[_count(name, counts.get(name, {})) for name in names],
                              pinned=scope.is_pinned)

    async def stats(project: ProjectsArg = None) -> StatsResult:
        """Count the live memories of the project(s), per memory type."""
        projects = scope.readable(project)
        memory = await state.ready()
        counts = await memory.project_counts(projects)
        rows = [_count(name, counts.get(name, {})) for name in projects]
        return StatsResult(total=sum(row.memories for row in rows), projects=rows)

    async def health() -> HealthResult:
        """Report whether the memory works: healthy, degraded (usable, something optional is off) or unhealthy,
        with one line per part. Never fails; call it when other tools return retryable errors."""
        if not state.started:
            try:
                await state.ready()
            except Exception:
                return HealthResult(status="unhealthy", version=__version__, scope=scope.describe(),
                                    components=[HealthPart(name="memory_store", status="unhealthy",
                                                           message=state.last_error or "not started")])
        response = await state.memory.health()
        parts = [HealthPart(name=c.name, status=str(c.status), message=c.message) for c in response.components]
        return HealthResult(status=str(response.status), version=__version__,  # type: ignore[arg-type]
                            components=parts, scope=scope.describe())

    annotations: dict[str, dict[str, Any]] = {
        "remember": {"readOnlyHint": False, "destructiveHint": False, "idempotentHint": True},
        "forget": {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True},
    }
    for fn in (remember, search, unified_search, get, forget, list_projects, stats, health):
        hints = annotations.get(fn.__name__, {"readOnlyHint": True})
        wrapped = tool_errors(fn)
        if not scope.is_pinned:
            _require_project(wrapped)
        extra: dict[str, Any] = {}
        if not FULL_OUTPUT_SCHEMAS:
            extra["output_schema"] = shallow_output_schema(inspect.signature(fn, eval_str=True).return_annotation)
        mcp.tool(wrapped, name=fn.__name__, annotations={"title": fn.__name__.replace("_", " "), **hints}, **extra)


def _sdk_caches_validators() -> bool:
    """The MCP SDK 2.x compiles each output schema once; 1.x re-checks the schema against the JSON Schema
    metaschema on every call, on both the server and the client side."""
    from importlib.metadata import version

    try:
        return int(version("mcp").split(".")[0]) >= 2
    except (ValueError, LookupError):
        return False


FULL_OUTPUT_SCHEMAS = _sdk_caches_validators()
"""Full nested output schemas on MCP SDK 2.x; on 1.x a shallow one (top-level fields, their JSON types and
descriptions), because 1.x's per-call schema check made each call ~3x slower (docs/benchmarks.md)."""


def shallow_output_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's top-level properties with their JSON type and description only: cheap to validate."""
    full = model.model_json_schema()
    properties: dict[str, Any] = {}
    for name, spec in full.get("properties", {}).items():
        kept = {key: spec[key] for key in ("type", "description", "title") if key in spec}
        if kept.get("type") == "array":
            kept["items"] = {}
        properties[name] = kept
    return {"type": "object", "properties": properties, "required": list(full.get("required", []))}


def _count(project: str, by_type: dict[str, int]) -> ProjectCount:
    return ProjectCount(project=project, memories=sum(by_type.values()), by_type=dict(by_type))


def _require_project(fn: Callable[..., Awaitable[Any]]) -> None:
    """Make ``project`` a required parameter in the signature FastMCP turns into the JSON schema."""
    signature = inspect.signature(fn)
    if "project" not in signature.parameters:
        return
    parameters = [p.replace(default=inspect.Parameter.empty) if p.name == "project" else p
                  for p in signature.parameters.values()]
    # Required parameters must come first in a signature: move it right after the first (content/query/id).
    project = next(p for p in parameters if p.name == "project")
    rest = [p for p in parameters if p.name != "project"]
    required = [p for p in rest if p.default is inspect.Parameter.empty]
    optional = [p for p in rest if p.default is not inspect.Parameter.empty]
    fn.__signature__ = signature.replace(parameters=[*required, project, *optional])  # type: ignore[attr-defined]
