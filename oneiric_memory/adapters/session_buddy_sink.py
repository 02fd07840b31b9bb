"""Deliver insights to Session-Buddy and search them back (Oneiric ``insight_sink`` / ``session_buddy``).

Session-Buddy keeps its reflections and insights in one DuckDB file, and DuckDB lets only one process
open a file. So there are two ways in, and the sink picks one per batch:

``in_process``
    Writes through Session-Buddy's own ``ReflectionDatabaseAdapterOneiric`` on the configured file.
    Its methods are ``async def`` but block on DuckDB, so every call runs on a dedicated worker thread
    that owns its own event loop (one thread, so calls are serialized and never race on the
    connection). The file is opened for one batch (:meth:`SessionBuddyInsightSink.batch`, or one
    delivery) and closed right after: Session-Buddy's server cannot start while we hold the lock, so
    we never keep it. When another process holds the file, the batch fails at once with
    :class:`~oneiric_memory.errors.InsightSinkError` and the deliveries stay queued.

    Session-Buddy's ``initialize()`` runs ``INSTALL httpfs`` twice; offline each try costs seconds
    while the lock is held. When its shared-connection cache is present (0.23) the sink hands it a
    connection opened with ``enable_external_access=false``, which makes those installs fail at once;
    without the cache it falls back to the adapter's own open.
``mcp``
    Calls the ``store_reflection`` tool of Session-Buddy's MCP server (the process that holds the
    file). 0.23's tool takes no project and returns no id, so the sink returns the handle
    ``om:<insight_id>`` (``quick_search(query=...)`` finds the entry by it) unless the server's answer
    or ``fingerprint_search`` reveal the real id.
``auto`` (default)
    MCP when the server answers within ``timeout_s``, in-process otherwise. A lock error in-process
    triggers one more MCP probe, since a running server is the usual holder.

Idempotency: every entry carries the tags ``insight``, its type, its topics, ``om:<insight_id>`` and
``project:<name>``. Before writing, the sink looks for ``om:<insight_id>`` and, when found, returns that
entry's id and writes nothing, so a crash between delivering and marking the outbox never duplicates.
In-process that is an exact SQL lookup. Over MCP it is ``quick_search`` (exact tag match, but it only
sees reflections) plus ``fingerprint_search`` (sees insights too, best effort on very large files).

Project attribution is ours: ``store_insight`` drops ``projects``, so the project lives in the
``project:<name>`` tag and :meth:`SessionBuddyInsightSink.search_insights` filters on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import duckdb
from mcp_common.health import ComponentHealth, HealthStatus

from oneiric_memory.errors import ConfigurationError, InsightSinkError, InvalidInput
from oneiric_memory.insights import INSIGHT_TYPES, ExtractedInsight
from oneiric_memory.observability import INSTRUMENTS, Stopwatch, get_logger, span
from oneiric_memory.settings import MemorySettings, load_settings

__all__ = [
    "CATEGORY",
    "PROVIDER",
    "BacklogProvider",
    "InsightDelivery",
    "InsightHit",
    "SessionBuddyInsightSink",
    "session_buddy_sink_factory",
]

CATEGORY = "insight_sink"
PROVIDER = "session_buddy"

BacklogProvider = Callable[[], Awaitable[Mapping[str, Any]]]
"""Returns the outbox backlog, e.g. ``{"pending": 3, "failed": 0, "oldest_age_s": 12.5}``.

``oldest_age_s`` (seconds since the oldest pending row was queued, or None) is the key the health
report reads; older than ``session_buddy.degraded_backlog_age_s`` means DEGRADED.
"""

TAG_INSIGHT = "insight"
TAG_ID_PREFIX = "om:"
TAG_PROJECT_PREFIX = "project:"
TAG_MEMORY_PREFIX = "om-memory:"
_MARKER_PREFIXES = (TAG_ID_PREFIX, TAG_PROJECT_PREFIX, TAG_MEMORY_PREFIX)

_IMPORT_TIMEOUT_S = 90.0  # one-time import of Session-Buddy (it pulls crackerjack and mcp-common)
_PROBE_TTL_S = 10.0  # how long an MCP probe result decides auto mode
_HEALTH_PROBE_S = 2.0  # upper bound of each probe inside a health check
_HEALTH_BUDGET_S = 4.0  # whole health check; Oneiric's default health timeout is 5 s
_MAX_LIMIT = 1000
_MCP_FIND_LIMIT = 200
_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_ULID_IN_ANSWER_RE = re.compile(r"\bID:\s*([0-9A-HJKMNP-TV-Z]{26})\b")
_TOKEN_RE = re.compile(r"\w{3,}")


# --- value types ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InsightDelivery:
    """One insight to deliver; ``insight_id`` (see :func:`oneiric_memory.insights.insight_id`) is the key."""

    insight_id: str
    content: str
    insight_type: str
    topics: tuple[str, ...]
    project: str
    memory_id: str | None = None

    @classmethod
    def from_extracted(cls, insight: ExtractedInsight, *, project: str, insight_id: str,
                       memory_id: str | None = None) -> InsightDelivery:
        return cls(insight_id=insight_id, content=insight.content, insight_type=insight.insight_type,
                   topics=insight.topics, project=project, memory_id=memory_id)


@dataclass(frozen=True, slots=True)
class InsightHit:
    """An insight found in Session-Buddy. ``score`` is Session-Buddy's similarity, a token-overlap
    fraction, or None for its plain text match; only the rank is comparable across sources."""

    id: str
    content: str
    insight_type: str
    topics: tuple[str, ...]
    project: str | None
    score: float | None
    insight_id: str | None = None


def _validate(delivery: InsightDelivery) -> InsightDelivery:
    if not isinstance(delivery.insight_id, str) or not _ID_RE.fullmatch(delivery.insight_id):
        raise InvalidInput("insight_id must be 1-128 letters, digits or '_.:-'; use oneiric_memory.insights.insight_id",
                           field="insight_id")
    if not isinstance(delivery.content, str) or not delivery.content.strip():
        raise InvalidInput("an insight needs non-empty content", field="content")
    if not isinstance(delivery.project, str) or not delivery.project.strip() or len(delivery.project) > 200:
        raise InvalidInput("an insight needs a project name of 1-200 characters", field="project")
    for name, value in (("content", delivery.content), ("project", delivery.project)):
        if "\x00" in value:
            raise InvalidInput(f"{name} contains a NUL byte; remove it", field=name)
    return delivery


def _tags_for(delivery: InsightDelivery) -> list[str]:
    """``["insight", <type>, *topics, "om:<id>", "project:<name>"(, "om-memory:<id>")]``."""
    kind = delivery.insight_type if delivery.insight_type in INSIGHT_TYPES else "general"
    topics = [t for t in dict.fromkeys(delivery.topics)
              if t and t not in (TAG_INSIGHT, kind) and not t.startswith(_MARKER_PREFIXES)]
    tags = [TAG_INSIGHT, kind, *topics, f"{TAG_ID_PREFIX}{delivery.insight_id}",
            f"{TAG_PROJECT_PREFIX}{delivery.project}"]
    if delivery.memory_id:
        tags.append(f"{TAG_MEMORY_PREFIX}{delivery.memory_id}")
    return tags


def _hit_from(entry_id: Any, content: Any, tags: Iterable[Any] | None, insight_type: Any,
              score: Any) -> InsightHit:
    tag_list = [str(t) for t in (tags or [])]
    project = next((t[len(TAG_PROJECT_PREFIX):] for t in tag_list if t.startswith(TAG_PROJECT_PREFIX)), None)
    our_id = next((t[len(TAG_ID_PREFIX):] for t in tag_list if t.startswith(TAG_ID_PREFIX)), None)
    kind = insight_type if isinstance(insight_type, str) and insight_type in INSIGHT_TYPES else None
    if kind is None and len(tag_list) > 1 and tag_list[0] == TAG_INSIGHT and tag_list[1] in INSIGHT_TYPES:
        kind = tag_list[1]
    kind = kind or "general"
    skip_type = tag_list[1] if len(tag_list) > 1 and tag_list[0] == TAG_INSIGHT else None
    topics = tuple(t for t in dict.fromkeys(tag_list)
                   if t != TAG_INSIGHT and t != skip_type and not t.startswith(_MARKER_PREFIXES))
    return InsightHit(id=str(entry_id), content=str(content or ""), insight_type=kind, topics=topics,
                      project=project, score=float(score) if isinstance(score, int | float) else None,
                      insight_id=our_id)


def _looks_like_insight(tags: Iterable[Any] | None) -> bool:
    return any(str(t) == TAG_INSIGHT or str(t).startswith(TAG_ID_PREFIX) for t in (tags or []))


def _query_tokens(text: str, limit: int = 8) -> list[str]:
    return list(dict.fromkeys(_TOKEN_RE.findall(text.lower())))[:limit]


def _lock_holder(message: str) -> str | None:
    match = re.search(r"Conflicting lock is held in (.+?)(?:\. See also|$)", message)
    return match.group(1) if match else None


def _is_lock_error(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.Error) and "lock" in str(exc).lower()


def _lock_error(path: Path, exc: BaseException) -> InsightSinkError:
    return InsightSinkError(
        f"Session-Buddy holds {path}: deliveries stay queued; they go through MCP mode or once the lock "
        "is released",
        reason="locked", path=str(path), holder=_lock_holder(str(exc)),
    )


# --- the worker thread ------------------------------------------------------------------------


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned future's outcome so asyncio never warns it was not retrieved."""
    if not future.cancelled():
        future.exception()


class _LoopThread:
    """One daemon thread owning an event loop; Session-Buddy's blocking coroutines run there.

    A call that outlives its timeout keeps running (DuckDB cannot be interrupted); its result is
    dropped, or handed to ``cleanup`` so an abandoned open never leaks the file lock.
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def run[T](self, factory: Callable[[], Coroutine[Any, Any, T]], *, bound_s: float, what: str,
                     cleanup: Callable[[T], Coroutine[Any, Any, None]] | None = None) -> T:
        guard = threading.Lock()
        state = {"abandoned": False, "done": False}

        async def guarded() -> T:
            result = await factory()
            with guard:
                if not state["abandoned"]:
                    state["done"] = True
                    return result
            if cleanup is not None:
                with contextlib.suppress(Exception):
                    await cleanup(result)
            return result

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(guarded(), self._loop)
        wrapped = asyncio.wrap_future(future)

        def give_up() -> bool:
            """Mark the call abandoned; True when its result had already been handed over."""
            with guard:
                finished = state["done"]
                state["abandoned"] = not finished
            return finished

        try:
            done, _pending = await asyncio.wait({wrapped}, timeout=bound_s)
        except asyncio.CancelledError:  # our caller gave up (e.g. the relay's own timeout)
            if give_up() and cleanup is not None:
                future.add_done_callback(lambda f: self._cleanup_later(f, cleanup))
            wrapped.add_done_callback(_consume)
            raise
        if done:
            return wrapped.result()
        if give_up():  # it completed in the instant we gave up: use it
            return await wrapped
        wrapped.add_done_callback(_consume)
        raise InsightSinkError(
            f"Session-Buddy did not answer within {bound_s:g}s ({what}); deliveries stay queued and are retried",
            reason="timeout", operation=what,
        )

    def _cleanup_later[T](self, future: concurrent.futures.Future[T],
                          cleanup: Callable[[T], Coroutine[Any, Any, None]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may already be closed at shutdown
            asyncio.run_coroutine_threadsafe(cleanup(future.result()), self._loop)

    def submit[T](self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start a coroutine on the worker loop without waiting for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def stop(self, join_timeout: float) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(join_timeout)


# One worker per process: Session-Buddy shares DuckDB connections between adapters on the same file
# (a module-level cache), so every sink's calls go through the same thread and never interleave.
_WORKER_GUARD = threading.Lock()
_worker: _LoopThread | None = None
_worker_users = 0


def _acquire_worker() -> _LoopThread:
    global _worker, _worker_users
    with _WORKER_GUARD:
        if _worker is None:
            _worker = _LoopThread("oneiric-memory-session-buddy")
        _worker_users += 1
        return _worker


def _release_worker(join_timeout: float) -> None:
    """Drop one user; the last one stops the thread (a stuck call delays that by at most ``join_timeout``)."""
    global _worker, _worker_users
    with _WORKER_GUARD:
        _worker_users = max(0, _worker_users - 1)
        if _worker_users or _worker is None:
            return
        worker, _worker = _worker, None
    worker.stop(join_timeout)


# --- backends ---------------------------------------------------------------------------------


class _Backend(Protocol):
    mode: str

    async def deliver(self, delivery: InsightDelivery) -> tuple[str, bool]: ...

    async def search(self, query: str, fetch: int, projects: frozenset[str] | None) -> list[InsightHit]: ...

    async def close(self) -> None: ...


@dataclass
class _Table:
    name: str
    columns: frozenset[str]

    @property
    def order_column(self) -> str:
        for column in ("created_at", "timestamp"):
            if column in self.columns:
                return column
        return "id"


def _detect_table(conn: Any) -> _Table:
    """Find the table Session-Buddy keeps insights in; files vary, so detect instead of assuming."""
    tables = {str(row[0]) for row in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    for name in ("reflections_v2", "reflections"):
        if name not in tables:
            continue
        columns = frozenset(str(row[0]) for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [name]).fetchall())
        if {"id", "content", "tags"} <= columns:
            return _Table(name, columns)
    raise InsightSinkError(
        "the Session-Buddy database has no reflections table with tags; let Session-Buddy create it "
        "(start it once) or point session_buddy.database_path at its reflection.duckdb",
        reason="schema",
    )


class _InProcessBackend:
    """Session-Buddy's adapter opened on the file for one batch; every call on the worker thread."""

    mode = "in_process"

    def __init__(self, worker: _LoopThread, adapter: Any, table: _Table, *, bound_s: float,
                 enable_embeddings: bool) -> None:
        self._worker = worker
        self._adapter = adapter
        self._table = table
        self._timeout = bound_s
        self._embeddings = enable_embeddings

    @classmethod
    async def open(cls, worker: _LoopThread, sb: SimpleNamespace, path: Path, *, bound_s: float,
                   enable_embeddings: bool) -> _InProcessBackend:
        async def opening() -> tuple[Any, _Table]:
            adapter = await _open_adapter(sb, path, enable_embeddings)
            try:
                return adapter, _detect_table(adapter.conn)
            except BaseException:
                await adapter.aclose()
                raise

        async def abandon(result: tuple[Any, _Table]) -> None:
            await result[0].aclose()

        try:
            adapter, table = await worker.run(opening, bound_s=bound_s, what=f"open {path}", cleanup=abandon)
        except InsightSinkError:
            raise
        except Exception as exc:
            if _is_lock_error(exc):
                raise _lock_error(path, exc) from None
            raise InsightSinkError(f"Session-Buddy could not open {path}: {type(exc).__name__}: {exc}",
                                   reason="open_failed", path=str(path)) from exc
        return cls(worker, adapter, table, bound_s=bound_s, enable_embeddings=enable_embeddings)

    def _find(self, insight_id: str) -> str | None:
        row = self._adapter.conn.execute(
            f"SELECT id FROM {self._table.name} WHERE list_contains(tags, ?) "
            f"ORDER BY {self._table.order_column} LIMIT 1",
            [f"{TAG_ID_PREFIX}{insight_id}"],
        ).fetchone()
        return str(row[0]) if row else None

    async def deliver(self, delivery: InsightDelivery) -> tuple[str, bool]:
        async def delivering() -> tuple[str, bool]:
            existing = self._find(delivery.insight_id)
            if existing is not None:
                return existing, False
            tags = _tags_for(delivery)
            store_insight = getattr(self._adapter, "store_insight", None)
            if callable(store_insight):
                new_id = await store_insight(delivery.content, insight_type=tags[1], topics=tags,
                                             projects=[delivery.project])
            else:  # Session-Buddy 0.36 keeps only reflections
                new_id = await self._adapter.store_reflection(delivery.content, tags=tags, project=delivery.project)
            return str(new_id), True

        return await _mapped(self._worker.run(delivering, bound_s=self._timeout, what="deliver"), "deliver")

    def _token_search(self, query: str, fetch: int, projects: frozenset[str] | None) -> list[InsightHit]:
        """Case-insensitive any-word match, ranked by the share of query words found.

        Session-Buddy's own text search matches the whole query as one case-sensitive substring, which
        misses most multi-word queries when embeddings are off; this complements it.
        """
        tokens = _query_tokens(query)
        if not tokens:
            return []
        table = self._table
        score = " + ".join(["CAST(contains(lower(content), ?) AS INTEGER)"] * len(tokens))
        kind = "insight_type" if "insight_type" in table.columns else "NULL"
        where = f"(list_contains(tags, '{TAG_INSIGHT}')"
        where += " OR insight_type IS NOT NULL)" if "insight_type" in table.columns else ")"
        params: list[Any] = list(tokens)
        if projects is not None:
            where += " AND list_has_any(tags, ?::VARCHAR[])"
            params.append([f"{TAG_PROJECT_PREFIX}{p}" for p in sorted(projects)])
        params.append(fetch)
        rows = self._adapter.conn.execute(
            f"SELECT id, content, tags, kind, s FROM ("
            f"  SELECT id, content, tags, {kind} AS kind, ({score}) AS s, {table.order_column} AS o"
            f"  FROM {table.name} WHERE {where}"
            f") WHERE s > 0 ORDER BY s DESC, o DESC NULLS LAST LIMIT ?",
            params,
        ).fetchall()
        return [_hit_from(r[0], r[1], r[2], r[3], float(r[4]) / len(tokens)) for r in rows]

    async def search(self, query: str, fetch: int, projects: frozenset[str] | None) -> list[InsightHit]:
        async def searching() -> list[InsightHit]:
            hits: list[InsightHit] = []
            search_insights = getattr(self._adapter, "search_insights", None)
            if callable(search_insights):
                for row in await search_insights(query, limit=fetch, use_embeddings=self._embeddings):
                    hits.append(_hit_from(row.get("id"), row.get("content"), row.get("tags"),
                                          row.get("insight_type"), row.get("similarity")))
            for row in await self._adapter.search_reflections(query, limit=fetch, use_embeddings=self._embeddings,
                                                              use_cache=False):
                if _looks_like_insight(row.get("tags")):
                    hits.append(_hit_from(row.get("id"), row.get("content"), row.get("tags"), None,
                                          row.get("similarity")))
            hits.extend(self._token_search(query, fetch, projects))
            return hits

        return await _mapped(self._worker.run(searching, bound_s=self._timeout, what="search"), "search")

    async def close(self) -> None:
        await self._worker.run(self._adapter.aclose, bound_s=self._timeout, what="close")


async def _mapped[T](operation: Awaitable[T], what: str) -> T:
    """Session-Buddy's own exceptions become InsightSinkError, so callers handle one class."""
    try:
        return await operation
    except InsightSinkError:
        raise
    except Exception as exc:
        raise InsightSinkError(f"Session-Buddy failed to {what}: {type(exc).__name__}: {str(exc)[:200]}",
                               reason="session_buddy_error", operation=what) from exc


def _hand_connection(sb: SimpleNamespace, path: Path) -> Any:
    """Put a quick-to-initialize connection into Session-Buddy's shared-connection cache (worker thread).

    Returns the cache entry (release it once the adapter took its reference), or None when the cache
    is absent or already holds this file. Lock errors propagate.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    cache = getattr(sb.module, "_typed_connection_cache", None)
    entry_cls = getattr(sb.module, "_CachedConnection", None)
    key = str(path.resolve())
    if not isinstance(cache, dict) or entry_cls is None or key in cache:
        return None
    if path.exists() and path.stat().st_size == 0:
        path.unlink()  # Session-Buddy does the same: DuckDB refuses an empty file
    try:
        conn = duckdb.connect(str(path), read_only=False,
                              config={"allow_unsigned_extensions": True, "enable_external_access": False})
    except duckdb.Error as exc:
        if _is_lock_error(exc):
            raise
        return None  # e.g. a stale WAL: Session-Buddy's own open repairs it
    entry = entry_cls(conn, key)
    cache[key] = entry
    return entry


async def _open_adapter(sb: SimpleNamespace, path: Path, enable_embeddings: bool) -> Any:
    """Open Session-Buddy's adapter on ``path`` (runs on the worker thread, where blocking is fine)."""
    handed = _hand_connection(sb, path)
    adapter = sb.adapter_cls(settings=sb.settings_cls(database_path=path, enable_embeddings=enable_embeddings,
                                                      enable_hnsw_index=False))
    try:
        await adapter.initialize()
    except BaseException:
        with contextlib.suppress(Exception):
            await adapter.aclose()
        raise
    finally:
        if handed is not None:
            handed.release()  # the adapter holds its own reference now; it closes on aclose()
    return adapter


class _McpBackend:
    """A client session on Session-Buddy's MCP server for one batch."""

    mode = "mcp"

    def __init__(self, client: Any, url: str, tools: Mapping[str, frozenset[str]], timeout: float) -> None:
        self._client = client
        self._url = url
        self._tools = tools  # tool name -> the argument names it accepts
        self._timeout = timeout

    @classmethod
    async def open(cls, url: str, bound_s: float) -> _McpBackend:
        from fastmcp import Client

        timeout = bound_s
        client: Any = Client(url, timeout=timeout, init_timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                await client.__aenter__()
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await client.__aexit__(None, None, None)
            raise
        except Exception as exc:
            with contextlib.suppress(BaseException):
                await client.__aexit__(None, None, None)
            raise InsightSinkError(
                f"Session-Buddy's MCP server at {url} does not answer ({type(exc).__name__}); start it "
                "(session-buddy) or use in_process mode; deliveries stay queued",
                reason="unreachable", url=url,
            ) from None
        try:
            async with asyncio.timeout(timeout):
                tools = {tool.name: frozenset((tool.inputSchema or {}).get("properties") or ())
                         for tool in await client.list_tools()}
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await client.__aexit__(None, None, None)
            raise
        except Exception as exc:
            with contextlib.suppress(BaseException):
                await client.__aexit__(None, None, None)
            raise InsightSinkError(f"Session-Buddy's MCP server at {url} did not list its tools "
                                   f"({type(exc).__name__}); deliveries stay queued",
                                   reason="unreachable", url=url) from None
        backend = cls(client, url, tools, timeout)
        if "store_reflection" not in tools:
            await backend.close()
            raise InsightSinkError(f"the MCP server at {url} has no store_reflection tool; is it Session-Buddy?",
                                   reason="incompatible", url=url)
        return backend

    async def _call(self, name: str, arguments: dict[str, Any]) -> Any:
        accepted = self._tools.get(name)
        if accepted:  # pass only what this server version accepts
            arguments = {key: value for key, value in arguments.items() if key in accepted}
        try:
            async with asyncio.timeout(self._timeout):
                return await self._client.call_tool(name, arguments, timeout=self._timeout)
        except TimeoutError:
            raise InsightSinkError(f"Session-Buddy's {name} tool did not answer within {self._timeout:g}s; "
                                   "deliveries stay queued and are retried", reason="timeout", tool=name) from None
        except Exception as exc:
            raise InsightSinkError(f"Session-Buddy's {name} tool failed at {self._url}: {type(exc).__name__}: "
                                   f"{str(exc)[:200]}", reason="tool_failed", tool=name) from None

    @staticmethod
    def _text(result: Any) -> str:
        parts = getattr(result, "content", None) or []
        return "\n".join(str(getattr(part, "text", "")) for part in parts)

    @staticmethod
    def _data(result: Any) -> dict[str, Any]:
        for candidate in (getattr(result, "data", None), getattr(result, "structured_content", None)):
            if isinstance(candidate, dict):
                return candidate
        text = _McpBackend._text(result)
        with contextlib.suppress(ValueError):
            decoded = json.loads(text)
            if isinstance(decoded, dict):
                return decoded
        return {}

    async def _fingerprint_rows(self, query: str, limit: int) -> list[dict[str, Any]]:
        """Rows from ``fingerprint_search``; threshold > 1 forces its token-overlap path, which returns tags."""
        result = await self._call("fingerprint_search", {"query": query, "content_type": "reflection",
                                                         "threshold": 1.01, "limit": limit})
        data = self._data(result)
        rows = data.get("reflection_results") or data.get("results") or []
        return [row for row in rows if isinstance(row, dict)]

    async def _find(self, delivery: InsightDelivery) -> str | None:
        tag = f"{TAG_ID_PREFIX}{delivery.insight_id}"
        if "quick_search" in self._tools:
            text = self._text(await self._call("quick_search", {"query": tag, "min_score": 0.0})).lower()
            if "no results" not in text and "found" in text:
                return await self._real_id(delivery, tag) or tag
        return await self._real_id(delivery, tag)

    async def _real_id(self, delivery: InsightDelivery, tag: str) -> str | None:
        if "fingerprint_search" not in self._tools:
            return None
        tokens = sorted(_query_tokens(delivery.content, limit=64), key=len, reverse=True)
        if not tokens:
            return None
        with contextlib.suppress(InsightSinkError):
            for row in await self._fingerprint_rows(tokens[0], _MCP_FIND_LIMIT):
                if tag in [str(t) for t in row.get("tags") or []]:
                    return str(row.get("id"))
        return None

    async def deliver(self, delivery: InsightDelivery) -> tuple[str, bool]:
        existing = await self._find(delivery)
        if existing is not None:
            return existing, False
        answer = self._text(await self._call("store_reflection",
                                             {"content": delivery.content, "tags": _tags_for(delivery)}))
        if "stored successfully" not in answer.lower():
            first_line = answer.strip().splitlines()[0][:160] if answer.strip() else "(empty answer)"
            raise InsightSinkError(f"Session-Buddy at {self._url} did not store the insight: {first_line}",
                                   reason="refused")
        match = _ULID_IN_ANSWER_RE.search(answer)
        if match:
            return match.group(1), True
        tag = f"{TAG_ID_PREFIX}{delivery.insight_id}"
        return await self._real_id(delivery, tag) or tag, True

    async def search(self, query: str, fetch: int, projects: frozenset[str] | None) -> list[InsightHit]:
        if "fingerprint_search" not in self._tools:
            raise InsightSinkError(
                f"Session-Buddy's MCP server at {self._url} offers no structured search tool (fingerprint_search); "
                "insights can be searched in-process while the server is stopped",
                reason="incompatible", url=self._url,
            )
        hits = [_hit_from(row.get("id"), row.get("content"), row.get("tags"), row.get("insight_type"),
                          row.get("similarity"))
                for row in await self._fingerprint_rows(query, fetch) if _looks_like_insight(row.get("tags"))]
        hits.sort(key=lambda hit: hit.score if hit.score is not None else -1.0, reverse=True)
        return hits

    async def close(self) -> None:
        with contextlib.suppress(BaseException):
            async with asyncio.timeout(self._timeout):
                await self._client.__aexit__(None, None, None)


# --- the sink ---------------------------------------------------------------------------------


def _iso(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, UTC).isoformat() if timestamp is not None else None


@dataclass
class _Stats:
    delivered: int = 0
    deduplicated: int = 0
    failed: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None
    last_mode: str | None = None
    lock: str = "unknown"
    lock_holder: str | None = None


class SessionBuddyInsightSink:
    """Delivers insights to Session-Buddy idempotently and searches them back; see the module docstring.

    Use :meth:`batch` to deliver many insights with one open of the file (or one MCP session)::

        async with sink.batch():
            for delivery in rows:
                session_buddy_id = await sink.deliver(delivery)
    """

    category = CATEGORY
    provider = PROVIDER

    def __init__(self, settings: MemorySettings, *, backlog_provider: BacklogProvider | None = None) -> None:
        self.settings = settings
        self._sb = settings.session_buddy
        self._backlog_provider = backlog_provider
        self._log = get_logger("oneiric_memory.insight_sink", provider=PROVIDER)
        self._path = (self._sb.database_path or Path.home() / ".claude" / "data" / "reflection.duckdb").expanduser()
        self._worker: _LoopThread | None = None
        self._import: concurrent.futures.Future[SimpleNamespace] | None = None
        self._sb_module: SimpleNamespace | None = None
        self._importable = False
        self._probe: tuple[float, bool] | None = None
        self._shared: _Backend | None = None
        self._users = 0
        self._idle = asyncio.Condition()
        self._batch_lock = asyncio.Lock()
        self._deliver_lock = asyncio.Lock()
        self._stats = _Stats()
        self._initialized = False
        self._closed = False

    # -- lifecycle --

    @property
    def database_path(self) -> Path:
        """The DuckDB file used in-process (Session-Buddy's default when not configured)."""
        return self._path

    async def init(self) -> None:
        """Check the configuration and start importing Session-Buddy in the background; never opens the file."""
        if self._initialized:
            return
        self._closed = False
        if self._sb.enabled:
            if self._sb.mode in ("mcp", "auto") and not self._sb.mcp_url.startswith(("http://", "https://")):
                raise ConfigurationError(
                    f"session_buddy.mcp_url must be an http(s) URL such as http://localhost:8678/mcp, "
                    f"got {self._sb.mcp_url!r}", key="session_buddy.mcp_url")
            self._importable = importlib.util.find_spec("session_buddy") is not None
            if self._sb.mode == "in_process" and not self._importable:
                raise ConfigurationError(
                    "session_buddy.mode is in_process but the session-buddy package is not installed; "
                    "install it next to oneiric-memory or set session_buddy.mode to mcp",
                    key="session_buddy.mode")
            if self._sb.mode in ("in_process", "auto") and self._importable:
                self._start_import()
            if self._sb.mode == "auto":
                await self._mcp_answers(force=True, bound_s=min(self._sb.timeout_s, _HEALTH_PROBE_S))
        self._initialized = True
        self._log.info("insight-sink-ready", mode=self._sb.mode, enabled=self._sb.enabled)

    async def cleanup(self) -> None:
        """Close whatever is open and stop the worker thread; safe to call twice."""
        self._closed = True
        backend, self._shared = self._shared, None
        if backend is not None:
            with contextlib.suppress(Exception):
                await backend.close()
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.to_thread(_release_worker, self._sb.timeout_s)
        self._import = None
        self._initialized = False

    # -- health --

    async def health(self) -> bool:
        """False only when the sink cannot work with this configuration; a lock or a backlog is DEGRADED."""
        try:
            return (await self.component_health()).status is not HealthStatus.UNHEALTHY
        except Exception:
            return False

    async def component_health(self) -> ComponentHealth:
        """Mode, file or URL, lock state, last delivery error and outbox backlog. Never raises."""
        watch = Stopwatch()
        try:
            async with asyncio.timeout(_HEALTH_BUDGET_S):
                return await self._component_health(watch)
        except Exception as exc:
            return ComponentHealth(name=CATEGORY, status=HealthStatus.DEGRADED, latency_ms=watch.ms,
                                   message=f"health check did not complete ({type(exc).__name__})",
                                   metadata=self._base_metadata())

    def _base_metadata(self) -> dict[str, Any]:
        stats = self._stats
        return {
            "provider": PROVIDER,
            "enabled": self._sb.enabled,
            "mode_configured": self._sb.mode,
            "mode": stats.last_mode,
            "database_path": str(self._path),
            "mcp_url": self._sb.mcp_url,
            "lock": stats.lock,
            "lock_holder": stats.lock_holder,
            "delivered": stats.delivered,
            "deduplicated": stats.deduplicated,
            "failed": stats.failed,
            "last_delivery_at": _iso(stats.last_success_at),
            "last_delivery_error": stats.last_error,
            "last_delivery_error_at": _iso(stats.last_error_at),
        }

    async def _component_health(self, watch: Stopwatch) -> ComponentHealth:
        sb = self._sb
        if not sb.enabled:
            return ComponentHealth(name=CATEGORY, status=HealthStatus.HEALTHY, latency_ms=watch.ms,
                                   message="disabled by settings (session_buddy.enabled=false)",
                                   metadata=self._base_metadata() | {"mode": "disabled"})
        problems: list[tuple[HealthStatus, str]] = []
        probe_timeout = min(sb.timeout_s, _HEALTH_PROBE_S)

        async def probe_mcp() -> bool | None:
            if sb.mode not in ("mcp", "auto"):
                return None
            return await self._mcp_answers(force=True, bound_s=probe_timeout)

        async def probe_file() -> None:
            if sb.mode in ("in_process", "auto"):
                await self._probe_lock(probe_timeout)

        mcp_ok, _ = await asyncio.gather(probe_mcp(), probe_file())
        mode_now: str
        if sb.mode == "mcp":
            mode_now = "mcp"
            if not mcp_ok:
                problems.append((HealthStatus.DEGRADED, f"Session-Buddy's MCP server at {sb.mcp_url} does not "
                                                        "answer; deliveries stay queued"))
        elif sb.mode == "in_process" or not mcp_ok:
            mode_now = "in_process"
            if not self._importable:
                status = HealthStatus.UNHEALTHY if sb.mode == "in_process" else HealthStatus.DEGRADED
                problems.append((status, "session-buddy is not installed and its MCP server does not answer at "
                                         f"{sb.mcp_url}; deliveries stay queued"))
                mode_now = "none"
            elif self._stats.lock == "held_by_other":
                problems.append((HealthStatus.DEGRADED, f"Session-Buddy holds {self._path}: deliveries stay "
                                                        "queued; they go through MCP mode or once the lock is "
                                                        "released"))
        else:
            mode_now = "mcp"
        stats = self._stats
        if stats.last_error is not None and (stats.last_success_at is None
                                             or (stats.last_error_at or 0) > stats.last_success_at):
            problems.append((HealthStatus.DEGRADED, f"last delivery failed: {stats.last_error}"))
        metadata = self._base_metadata() | {"mode": mode_now, "last_mode_used": stats.last_mode,
                                            "mcp_answers": mcp_ok}
        if self._backlog_provider is not None:
            try:
                async with asyncio.timeout(probe_timeout):
                    backlog = dict(await self._backlog_provider())
                metadata["backlog"] = backlog
                age = backlog.get("oldest_age_s")
                if isinstance(age, int | float) and age > sb.degraded_backlog_age_s:
                    problems.append((HealthStatus.DEGRADED,
                                     f"outbox backlog: the oldest pending insight is {age:.0f}s old "
                                     f"(threshold {sb.degraded_backlog_age_s:g}s)"))
            except Exception as exc:
                metadata["backlog_error"] = type(exc).__name__
        status = max((level for level, _ in problems), default=HealthStatus.HEALTHY)
        message = "; ".join(text for _, text in problems) or f"ready ({mode_now})"
        return ComponentHealth(name=CATEGORY, status=status, message=message, latency_ms=watch.ms,
                               metadata=metadata)

    async def _probe_lock(self, bound_s: float) -> None:
        """Record who holds the file: ``free``, ``absent``, ``held_by_us``, ``held_by_other`` or ``unknown``."""
        if isinstance(self._shared, _InProcessBackend):
            self._stats.lock, self._stats.lock_holder = "held_by_us", None
            return
        path = self._path

        def probe() -> tuple[str, str | None]:
            if not path.exists():
                return "absent", None
            try:
                duckdb.connect(str(path), read_only=True).close()
            except duckdb.Error as exc:
                if _is_lock_error(exc):
                    return "held_by_other", _lock_holder(str(exc))
                if "configuration" in str(exc).lower():
                    return "held_in_process", None
                return "unknown", None
            return "free", None

        try:
            async with asyncio.timeout(bound_s):
                self._stats.lock, self._stats.lock_holder = await asyncio.to_thread(probe)
        except Exception:
            self._stats.lock, self._stats.lock_holder = "unknown", None

    # -- mode selection --

    async def _mcp_answers(self, *, force: bool = False, bound_s: float | None = None) -> bool:
        """Whether Session-Buddy's MCP server answers a ping; cached for a few seconds."""
        now = time.monotonic()
        if not force and self._probe is not None and now - self._probe[0] < _PROBE_TTL_S:
            return self._probe[1]
        bound = bound_s if bound_s is not None else self._sb.timeout_s
        try:
            from fastmcp import Client

            async with asyncio.timeout(bound):
                async with Client(self._sb.mcp_url, timeout=bound, init_timeout=bound) as client:
                    await client.ping()
            answered = True
        except Exception:  # refused, timed out, not MCP: all mean "does not answer"
            answered = False
        self._probe = (time.monotonic(), answered)
        return answered

    def _ensure_worker(self) -> _LoopThread:
        if self._worker is None:
            self._worker = _acquire_worker()
        return self._worker

    def _start_import(self) -> None:
        if self._import is not None or self._sb_module is not None:
            return
        worker = self._ensure_worker()
        configured = self._sb.database_path is not None

        async def importing() -> SimpleNamespace:
            from session_buddy.adapters import reflection_adapter_oneiric as module
            from session_buddy.adapters.settings import ReflectionAdapterSettings

            default_path: Path | None = None
            if not configured:
                with contextlib.suppress(Exception):  # Session-Buddy's own data_dir, when it can tell
                    default_path = Path(ReflectionAdapterSettings.from_settings().database_path)
            return SimpleNamespace(module=module, adapter_cls=module.ReflectionDatabaseAdapterOneiric,
                                   settings_cls=ReflectionAdapterSettings, default_path=default_path)

        self._import = worker.submit(importing())

    async def _session_buddy(self) -> SimpleNamespace:
        if self._sb_module is not None:
            return self._sb_module
        if not self._importable:
            raise InsightSinkError("session-buddy is not installed, so in-process delivery is impossible; "
                                   "install it or run Session-Buddy's MCP server", reason="not_installed")
        self._start_import()
        assert self._import is not None
        try:
            async with asyncio.timeout(_IMPORT_TIMEOUT_S):
                module = await asyncio.wrap_future(self._import)
        except TimeoutError:
            raise InsightSinkError(f"importing session-buddy took longer than {_IMPORT_TIMEOUT_S:g}s; "
                                   "deliveries stay queued", reason="timeout") from None
        except Exception as exc:
            self._import = None
            raise InsightSinkError(f"session-buddy cannot be imported ({type(exc).__name__}: {exc}); "
                                   "reinstall it or use MCP mode", reason="not_installed") from exc
        self._sb_module = module
        if module.default_path is not None:
            self._path = module.default_path
        return module

    async def _open_backend(self) -> _Backend:
        sb = self._sb
        mode = sb.mode
        if mode == "auto":
            mode = "mcp" if await self._mcp_answers() else "in_process"
        if mode == "mcp":
            try:
                return await _McpBackend.open(sb.mcp_url, bound_s=sb.timeout_s)
            except InsightSinkError:
                self._probe = (time.monotonic(), False)
                if sb.mode != "auto" or not self._importable:
                    raise
        try:
            sb_module = await self._session_buddy()
            return await _InProcessBackend.open(self._ensure_worker(), sb_module, self._path,
                                                bound_s=sb.timeout_s, enable_embeddings=sb.enable_embeddings)
        except InsightSinkError as exc:
            if exc.details.get("reason") == "locked":
                self._stats.lock, self._stats.lock_holder = "held_by_other", exc.details.get("holder")
                if sb.mode == "auto" and await self._mcp_answers(force=True):
                    return await _McpBackend.open(sb.mcp_url, bound_s=sb.timeout_s)
            raise

    def _require_usable(self) -> None:
        if not self._sb.enabled:
            raise InsightSinkError("the Session-Buddy insight sink is disabled; set session_buddy.enabled=true",
                                   reason="disabled")
        if not self._initialized or self._closed:
            raise InsightSinkError("the insight sink is not initialized; await init() (or use the factory) first",
                                   reason="not_initialized")

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[str]:
        """Open Session-Buddy once (file or MCP session) for several deliveries; yields the mode used.

        Re-entrant: inside an open batch it simply yields. The file is closed on exit so Session-Buddy
        can take its lock again.
        """
        if self._shared is not None:
            yield self._shared.mode
            return
        self._require_usable()
        try:
            async with asyncio.timeout(self._sb.timeout_s + _IMPORT_TIMEOUT_S):
                await self._batch_lock.acquire()
        except TimeoutError:
            raise InsightSinkError("another batch kept the Session-Buddy sink busy; retry later",
                                   reason="busy") from None
        try:
            if self._shared is not None:  # opened by someone else while we waited
                yield self._shared.mode
                return
            try:
                backend = await self._open_backend()
            except InsightSinkError as exc:
                self._note_failure(exc, self._sb.mode)
                raise
            if isinstance(backend, _InProcessBackend):
                self._stats.lock, self._stats.lock_holder = "held_by_us", None
            self._stats.last_mode = backend.mode
            self._shared = backend
            try:
                yield backend.mode
            finally:
                self._shared = None
                async with self._idle:
                    await self._idle.wait_for(lambda: self._users == 0)
                with contextlib.suppress(Exception):
                    await backend.close()
                if isinstance(backend, _InProcessBackend):
                    self._stats.lock = "free"
        finally:
            self._batch_lock.release()

    async def _using_backend[T](self, operation: Callable[[_Backend], Awaitable[T]]) -> T:
        backend = self._shared
        if backend is None:
            async with self.batch():
                return await self._using_backend(operation)
        self._users += 1
        try:
            return await operation(backend)
        finally:
            async with self._idle:
                self._users -= 1
                self._idle.notify_all()

    def _note_failure(self, exc: InsightSinkError, mode: str) -> None:
        if exc.details.get("_noted"):
            return
        exc.details["_noted"] = True
        self._stats.failed += 1
        self._stats.last_error = exc.message
        self._stats.last_error_at = time.time()
        INSTRUMENTS.insights_failed.add(1, {"mode": mode, "reason": str(exc.details.get("reason", "error"))})
        self._log.warning("insight-delivery-failed", mode=mode, reason=exc.details.get("reason"))

    # -- the API --

    async def deliver(self, insight: InsightDelivery) -> str:
        """Store one insight in Session-Buddy; returns its id there. Idempotent by ``insight_id``."""
        _validate(insight)
        self._require_usable()
        with span("insight_sink.deliver", provider=PROVIDER) as current:

            async def delivering(backend: _Backend) -> tuple[str, bool, str]:
                async with self._deliver_lock:  # check-then-write is atomic within this process
                    entry_id, created = await backend.deliver(insight)
                return entry_id, created, backend.mode

            try:
                entry_id, created, mode = await self._using_backend(delivering)
            except InsightSinkError as exc:
                self._note_failure(exc, self._stats.last_mode or self._sb.mode)
                raise
            current.set_attribute("oneiric_memory.insight_sink.mode", mode)
            current.set_attribute("oneiric_memory.insight_sink.created", created)
        stats = self._stats
        stats.last_success_at = time.time()
        stats.last_mode = mode
        if created:
            stats.delivered += 1
        else:
            stats.deduplicated += 1
        INSTRUMENTS.insights_delivered.add(1, {"mode": mode, "outcome": "stored" if created else "existing"})
        self._log.info("insight-delivered", insight_id=insight.insight_id, mode=mode, created=created)
        return entry_id

    async def search_insights(self, query: str, limit: int = 10,
                              projects: Sequence[str] | None = None) -> list[InsightHit]:
        """Insights in Session-Buddy matching ``query`` ('*' = all), optionally only from ``projects``."""
        if not isinstance(query, str):
            raise InvalidInput("query must be a string", field="query")
        if not 1 <= limit <= _MAX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {_MAX_LIMIT}", field="limit")
        if not self._sb.enabled:
            return []
        self._require_usable()
        wanted = frozenset(projects) if projects is not None else None
        if wanted is not None and not wanted:
            return []
        fetch = limit if wanted is None else min(max(limit * 10, 50), _MAX_LIMIT)
        watch = Stopwatch()
        with span("insight_sink.search", provider=PROVIDER, limit=limit):
            raw = await self._using_backend(lambda backend: backend.search(query, fetch, wanted))
        merged: dict[str, InsightHit] = {}  # first occurrence keeps its rank; a later one may bring a score
        for hit in raw:
            if wanted is not None and hit.project not in wanted:
                continue
            known = merged.get(hit.id)
            if known is None:
                merged[hit.id] = hit
            elif known.score is None and hit.score is not None:
                merged[hit.id] = dataclasses.replace(known, score=hit.score)
        hits = list(merged.values())[:limit]
        INSTRUMENTS.search_latency.record(watch.ms, {"source": PROVIDER})
        return hits


async def session_buddy_sink_factory() -> SessionBuddyInsightSink:
    """Zero-argument async factory for Oneiric: loads the settings, builds the sink and awaits ``init()``."""
    sink = SessionBuddyInsightSink(load_settings())
    try:
        await sink.init()
    except BaseException:
        await sink.cleanup()
        raise
    return sink
