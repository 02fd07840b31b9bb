"""The Session-Buddy insight sink (Oneiric ``insight_sink`` / ``session_buddy``): the adapter and its factory.

Session-Buddy keeps its reflections and insights in one DuckDB file, and DuckDB lets only one process
open a file. So there are two ways in (:mod:`.in_process`, :mod:`.mcp_backend`), and the sink picks one
per batch:

``in_process``
    Session-Buddy's own adapter on the configured file, on a private worker thread (:mod:`.worker`). The
    file is opened for one batch (:meth:`SessionBuddyInsightSink.batch`, or one call) and closed right
    after: Session-Buddy's server cannot start while we hold the lock, so we never keep it. When another
    process holds the file, the batch fails at once with :class:`~oneiric_memory.errors.InsightSinkError`
    and the deliveries stay queued.
``mcp``
    The tools of Session-Buddy's MCP server (the process that holds the file).
``auto`` (default)
    MCP when the server answers within ``timeout_s``, in-process otherwise. A lock error in-process
    triggers one more MCP probe, since a running server is the usual holder. Deletions always go
    in-process (no Session-Buddy version has an MCP tool that deletes).

Idempotency: every entry carries our tags (:mod:`.tags`), ``om:<insight_id>`` among them. Before writing,
the sink looks for that tag and, when found, returns that entry's id and writes nothing, so a crash
between delivering and marking the outbox never duplicates. Project attribution is ours too: the
``project:<name>`` tag (and Session-Buddy 0.36's ``project`` column when the name fits its pattern).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from oneiric_memory.adapters.session_buddy.backend import Backend, is_lock_error, lock_holder
from oneiric_memory.adapters.session_buddy.in_process import (
    InProcessBackend,
    SessionBuddyModule,
    import_session_buddy,
)
from oneiric_memory.adapters.session_buddy.mcp_backend import McpBackend, mcp_answers
from oneiric_memory.adapters.session_buddy.worker import LoopThread, acquire_worker, release_worker
from oneiric_memory.errors import ConfigurationError, InsightSinkError, InvalidInput
from oneiric_memory.insights import Insight, InsightHit
from oneiric_memory.observability import INSTRUMENTS, Stopwatch, get_logger, span
from oneiric_memory.records import check_limit, check_names, check_query
from oneiric_memory.settings import MemorySettings, load_settings

if TYPE_CHECKING:  # mcp_common pulls in fastmcp (seconds per process): imported where a health is built
    from mcp_common.health import ComponentHealth, HealthStatus

__all__ = [
    "CATEGORY",
    "PROVIDER",
    "BacklogProvider",
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

_IMPORT_TIMEOUT_S = 90.0  # one-time import of Session-Buddy (it pulls crackerjack and mcp-common)
_PROBE_TTL_S = 10.0  # how long an MCP probe result decides auto mode
_HEALTH_PROBE_S = 2.0  # upper bound of each probe inside a health check
_HEALTH_BUDGET_S = 4.0  # whole health check; Oneiric's default health timeout is 5 s
_MAX_LIMIT = 1000
_MAX_DELETE = 10_000
_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def _validate(insight: Insight) -> Insight:
    if not isinstance(insight.insight_id, str) or not _ID_RE.fullmatch(insight.insight_id):
        raise InvalidInput("insight_id must be 1-128 letters, digits or '_.:-'; use oneiric_memory.insights.insight_id",
                           field="insight_id")
    if not isinstance(insight.content, str) or not insight.content.strip():
        raise InvalidInput("an insight needs non-empty content", field="content")
    if not isinstance(insight.project, str) or not insight.project.strip() or len(insight.project) > 200:
        raise InvalidInput("an insight needs a project name of 1-200 characters", field="project")
    if not isinstance(insight.insight_type, str) or not isinstance(insight.topics, tuple | list) or not all(
            isinstance(topic, str) for topic in insight.topics):
        raise InvalidInput("insight_type must be a string and topics a tuple of strings", field="topics")
    for name, value in (("content", insight.content), ("project", insight.project)):
        if "\x00" in value:
            raise InvalidInput(f"{name} contains a NUL byte; remove it", field=name)
    return insight


def _warm_imports(*, mcp: bool) -> None:
    importlib.import_module("mcp_common.health")
    if mcp:
        importlib.import_module("fastmcp")


def _validate_ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
        raise InvalidInput("ids must be a list of insight ids, not a single string", field="ids")
    if len(ids) > _MAX_DELETE:
        raise InvalidInput(f"delete at most {_MAX_DELETE} insights per call", field="ids")
    for value in ids:
        if not isinstance(value, str) or not _ID_RE.fullmatch(value):
            raise InvalidInput("each id must be 1-128 letters, digits or '_.:-' (an insight id or a "
                               "Session-Buddy id)", field="ids")
    return list(dict.fromkeys(ids))


def _iso(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, UTC).isoformat() if timestamp is not None else None


@dataclass
class _Stats:
    delivered: int = 0
    deduplicated: int = 0
    deleted: int = 0
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
        self._worker: LoopThread | None = None
        self._import: concurrent.futures.Future[SessionBuddyModule] | None = None
        self._sb_module: SessionBuddyModule | None = None
        self._importable = False
        self._probe: tuple[float, bool] | None = None
        self._shared: Backend | None = None
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
        # mcp_common.health (for every health report) and fastmcp (for the MCP probe) take seconds to import:
        # import them on a thread now, not on the event loop inside the first health check, whose budget
        # (Oneiric's 5 s) the import alone can exceed on a busy machine.
        await asyncio.to_thread(_warm_imports, mcp=self._sb.enabled and self._sb.mode in ("mcp", "auto"))
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
        if self._import is not None:
            self._import.cancel()  # not started yet: the import coroutine is never even created
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.to_thread(release_worker, self._sb.timeout_s)
        self._import = None
        self._initialized = False

    # -- health --

    async def health(self) -> bool:
        """False only when the sink cannot work with this configuration; a lock or a backlog is DEGRADED."""
        from mcp_common.health import HealthStatus
        try:
            return (await self.component_health()).status is not HealthStatus.UNHEALTHY
        except Exception:
            return False

    async def component_health(self) -> ComponentHealth:
        """Mode, file or URL, lock state, last delivery error and outbox backlog. Never raises."""
        from mcp_common.health import ComponentHealth, HealthStatus
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
            "deleted": stats.deleted,
            "failed": stats.failed,
            "last_delivery_at": _iso(stats.last_success_at),
            "last_delivery_error": stats.last_error,
            "last_delivery_error_at": _iso(stats.last_error_at),
        }

    async def _component_health(self, watch: Stopwatch) -> ComponentHealth:
        from mcp_common.health import ComponentHealth, HealthStatus
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
        if isinstance(self._shared, InProcessBackend):
            self._stats.lock, self._stats.lock_holder = "held_by_us", None
            return
        path = self._path

        def probe() -> tuple[str, str | None]:
            if not path.exists():
                return "absent", None
            try:
                duckdb.connect(str(path), read_only=True).close()
            except duckdb.Error as exc:
                if is_lock_error(exc):
                    return "held_by_other", lock_holder(str(exc))
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
        """Whether Session-Buddy's MCP server answers (``list_tools``, not ``ping``); cached for a few seconds."""
        now = time.monotonic()
        if not force and self._probe is not None and now - self._probe[0] < _PROBE_TTL_S:
            return self._probe[1]
        answered = await mcp_answers(self._sb.mcp_url, bound_s if bound_s is not None else self._sb.timeout_s)
        self._probe = (time.monotonic(), answered)
        return answered

    def _ensure_worker(self) -> LoopThread:
        if self._worker is None:
            self._worker = acquire_worker()
        return self._worker

    def _start_import(self) -> None:
        if self._import is not None or self._sb_module is not None:
            return
        find_default_path = self._sb.database_path is None
        self._import = self._ensure_worker().submit(
            lambda: import_session_buddy(find_default_path=find_default_path))

    async def _session_buddy(self) -> SessionBuddyModule:
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

    async def _open_backend(self, *, for_delete: bool = False) -> Backend:
        """MCP or in-process per the mode. ``for_delete`` goes in-process whenever it can: no MCP tool deletes."""
        sb = self._sb
        mode = sb.mode
        if mode == "auto":
            if for_delete and self._importable:
                mode = "in_process"
            else:
                mode = "mcp" if await self._mcp_answers() else "in_process"
        if mode == "mcp":
            try:
                return await McpBackend.open(sb.mcp_url, bound_s=sb.timeout_s)
            except InsightSinkError:
                self._probe = (time.monotonic(), False)
                if sb.mode != "auto" or not self._importable:
                    raise
        try:
            sb_module = await self._session_buddy()
            return await InProcessBackend.open(self._ensure_worker(), sb_module, self._path,
                                                bound_s=sb.timeout_s, enable_embeddings=sb.enable_embeddings)
        except InsightSinkError as exc:
            if exc.details.get("reason") == "locked":
                self._stats.lock, self._stats.lock_holder = "held_by_other", exc.details.get("holder")
                if sb.mode == "auto" and not for_delete and await self._mcp_answers(force=True):
                    return await McpBackend.open(sb.mcp_url, bound_s=sb.timeout_s)
            raise

    def _require_usable(self) -> None:
        if not self._sb.enabled:
            raise InsightSinkError("the Session-Buddy insight sink is disabled; set session_buddy.enabled=true",
                                   reason="disabled")
        if not self._initialized or self._closed:
            raise InsightSinkError("the insight sink is not initialized; await init() (or use the factory) first",
                                   reason="not_initialized")

    def batch(self) -> contextlib.AbstractAsyncContextManager[str]:
        """Open Session-Buddy once (file or MCP session) for several deliveries; yields the mode used.

        Re-entrant: inside an open batch it simply yields. The file is closed on exit so Session-Buddy
        can take its lock again.
        """
        return self._batch(for_delete=False)

    @contextlib.asynccontextmanager
    async def _batch(self, *, for_delete: bool) -> AsyncIterator[str]:
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
                backend = await self._open_backend(for_delete=for_delete)
            except InsightSinkError as exc:
                if not for_delete:
                    self._note_failure(exc, self._sb.mode)
                raise
            if isinstance(backend, InProcessBackend):
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
                if isinstance(backend, InProcessBackend):
                    self._stats.lock = "free"
        finally:
            self._batch_lock.release()

    async def _using_backend[T](self, operation: Callable[[Backend], Awaitable[T]], *,
                                for_delete: bool = False) -> T:
        backend = self._shared
        if backend is None:
            async with self._batch(for_delete=for_delete):
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

    async def deliver(self, insight: Insight) -> str:
        """Store one insight in Session-Buddy; returns its id there. Idempotent by ``insight_id``."""
        _validate(insight)
        self._require_usable()
        with span("insight_sink.deliver", provider=PROVIDER) as current:

            async def delivering(backend: Backend) -> tuple[str, bool, str]:
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
        check_query(query)  # the same rules as the store's search (records.py)
        check_limit(limit, _MAX_LIMIT)
        names = check_names("projects", projects)
        wanted = frozenset(names) if names is not None else None
        if not self._sb.enabled:
            return []
        self._require_usable()
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


    async def delete_insights(self, ids: Sequence[str]) -> int:
        """Delete delivered insights from Session-Buddy; returns how many rows went. Idempotent.

        ``ids`` are our insight ids (the outbox key), or what :meth:`deliver` returned (a Session-Buddy id,
        or the handle ``om:<insight_id>``). Only insight rows are ever deleted; unknown ids are ignored.
        Raises :class:`InsightSinkError` when Session-Buddy cannot be changed now (its server holds the file,
        a timeout, or ``mcp`` mode: no Session-Buddy version has an MCP tool that deletes); keep the
        deletion queued and call again later.
        """
        keys = _validate_ids(ids)
        self._require_usable()
        if not keys:
            return 0
        with span("insight_sink.delete", provider=PROVIDER, count=len(keys)) as current:

            async def deleting(backend: Backend) -> tuple[int, str]:
                async with self._deliver_lock:  # never between a delivery's check and its write
                    return await backend.delete(keys), backend.mode

            try:
                deleted, mode = await self._using_backend(deleting, for_delete=True)
            except InsightSinkError as exc:
                self._log.warning("insight-delete-failed", reason=exc.details.get("reason"), count=len(keys))
                raise
            current.set_attribute("oneiric_memory.insight_sink.deleted", deleted)
        self._stats.deleted += deleted
        self._log.info("insights-deleted", requested=len(keys), deleted=deleted, mode=mode)
        return deleted


async def session_buddy_sink_factory(settings: MemorySettings | None = None, *,
                                     backlog_provider: BacklogProvider | None = None) -> SessionBuddyInsightSink:
    """The one way to build the sink: from ``settings`` (loaded from the environment when None, as Oneiric's
    zero-argument factories do), initialized."""
    sink = SessionBuddyInsightSink(settings if settings is not None else load_settings(),
                                   backlog_provider=backlog_provider)
    try:
        await sink.init()
    except BaseException:
        await sink.cleanup()
        raise
    return sink
