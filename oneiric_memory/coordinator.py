"""``UnifiedMemory``: the API Mahavishnu calls (Oneiric category ``memory``, provider ``unified``).

It composes the three adapters through Oneiric's ``LifecycleManager`` (the app's own, or a private one when
no Oneiric app is present) and looks each adapter up per operation, so a hot swap is safe. It adds what no
single adapter can: insight extraction into the outbox, "store now, embed later" when the embedder is down,
background relay/backfill tasks, unified search across PostgreSQL and Session-Buddy, backpressure and an
aggregated ``HealthCheckResponse``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from oneiric_memory.adapters.catalog import ADAPTERS, AdapterContext, AdapterSpec
from oneiric_memory.adapters.embedders.selection import EmbedderSelection
from oneiric_memory.adapters.pgvector import PgvectorMemoryStore, ShareChange, parse_ids
from oneiric_memory.backfill import BackfillReport, backfill
from oneiric_memory.errors import (
    EmbedderError,
    EmbedderUnavailable,
    InvalidInput,
    OneiricMemoryError,
    SchemaMismatch,
    StoreUnavailable,
)
from oneiric_memory.insights import extract_insights
from oneiric_memory.observability import Stopwatch, get_logger, span
from oneiric_memory.outbox import OutboxRelay
from oneiric_memory.protocols import Embedder, InsightSink
from oneiric_memory.rag import (
    IngestOptions,
    IngestReport,
    Progress,
    check_ingest_arguments,
    check_label,
    ingest_repository,
)
from oneiric_memory.records import (
    MEMORY_TYPES,
    MemoryRecord,
    ProjectGroup,
    RememberResult,
    SearchFilters,
    SearchHit,
    SearchMode,
    SearchResults,
    StoredMemory,
    check_embedding,
    check_limit,
    check_metadata,
    check_name,
    check_names,
    check_query,
)
from oneiric_memory.settings import MemorySettings, load_settings
from oneiric_memory.version import __version__

if TYPE_CHECKING:  # mcp_common pulls in fastmcp (seconds per process): imported where a health is built
    from mcp_common.health import ComponentHealth, HealthCheckResponse, HealthStatus

__all__ = ["ShareChange", "SourceStatus", "UnifiedMemory", "UnifiedSearchResult", "unified_memory_factory"]

DOMAIN = "adapter"


@dataclass(slots=True)
class SourceStatus:
    """How one source answered a unified search."""

    status: Literal["ok", "timeout", "error", "disabled"]
    hits: int = 0
    latency_ms: float = 0.0
    error: str | None = None


@dataclass(slots=True)
class UnifiedSearchResult:
    """Fused hits plus a per-source status; ``degraded`` when a source did not answer."""

    hits: list[SearchHit]
    sources: dict[str, SourceStatus] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        return any(source.status in ("timeout", "error") for source in self.sources.values())


class _Components:
    """Builds and finds the adapters through an Oneiric ``LifecycleManager``."""

    def __init__(self, settings: MemorySettings, lifecycle: Any | None) -> None:
        self.settings = settings
        self.owned = lifecycle is None
        self.embedder_note = ""
        self.embedder_selection: EmbedderSelection | None = None
        self.handoff: dict[str, Embedder] = {}
        self.sink_note = ""
        if lifecycle is None:
            from oneiric.core.lifecycle import LifecycleManager, LifecycleSafetyOptions
            from oneiric.core.resolution import Candidate, CandidateSource, Resolver

            resolver = Resolver()
            for category, provider, factory, priority in self._factories():
                resolver.register(Candidate(domain=DOMAIN, key=category, provider=provider, factory=factory,
                                            priority=priority, source=CandidateSource.MANUAL))
            lifecycle = LifecycleManager(resolver, safety=LifecycleSafetyOptions(activation_timeout=120.0,
                                                                                 health_timeout=10.0))
        self.lifecycle = lifecycle

    def _factories(self) -> list[tuple[str, str, Callable[[], Awaitable[Any]], int]]:
        """The catalog's candidates (the one list, shared with the plugin), built with these settings."""
        settings = self.settings

        def factory(spec: AdapterSpec) -> Callable[[], Awaitable[Any]]:
            async def build() -> Any:
                chosen = self.handoff.pop(spec.provider, None) if spec.category == "embedding" else None
                if chosen is not None:  # the instance the embedder selection already initialised
                    return chosen
                return await spec.build(settings, AdapterContext(backlog_provider=self._backlog))

            return build

        return [(spec.category, spec.provider, factory(spec), spec.priority) for spec in ADAPTERS]

    _backlog: Callable[[], Awaitable[dict[str, Any]]] | None = None

    async def start(self) -> None:
        if not self.owned and self.lifecycle.get_instance(DOMAIN, "memory_store") is not None:
            return
        from oneiric.core.lifecycle import LifecycleError

        try:
            await self.lifecycle.activate(DOMAIN, "memory_store", "pgvector")
        except LifecycleError as exc:  # callers handle one hierarchy: surface our own error, or say what failed
            cause = exc.__cause__
            if isinstance(cause, OneiricMemoryError):
                raise cause from None
            raise StoreUnavailable(f"the memory store did not start ({exc}); check the postgres settings "
                                   "and that PostgreSQL is reachable") from exc
        await self._activate_embedder()
        await self.try_activate_sink()

    async def _activate_embedder(self) -> None:
        """Choose through the one selection, then activate that provider in the lifecycle (hot-swappable)."""
        from oneiric.core.lifecycle import LifecycleError

        from oneiric_memory.adapters.embedders.selection import select_embedder

        selection = await select_embedder(self.settings)
        self.embedder_selection = selection
        self.embedder_note = selection.note
        if selection.embedder is not None:
            self.handoff[selection.provider] = selection.embedder
        try:
            await self.lifecycle.activate(DOMAIN, "embedding", selection.provider)
        except LifecycleError as exc:
            cause = exc.__cause__
            if isinstance(cause, OneiricMemoryError):
                raise cause from None
            raise
        finally:
            leftover = self.handoff.pop(selection.provider, None)  # an app's lifecycle built its own
            if leftover is not None:
                await leftover.cleanup()
        selection.embedder = None  # the lifecycle owns the instance now; look it up per operation

    async def try_activate_sink(self) -> bool:
        """Start the Session-Buddy sink if enabled; failure leaves insights queued, never lost."""
        if not self.settings.session_buddy.enabled:
            self.sink_note = "disabled by session_buddy.enabled"
            return False
        if self.sink() is not None:
            return True
        from oneiric.core.lifecycle import LifecycleError

        try:
            await self.lifecycle.activate(DOMAIN, "insight_sink", "session_buddy")
            self.sink_note = "ok"
            return True
        except (LifecycleError, OneiricMemoryError, OSError) as exc:
            cause = exc.__cause__ or exc
            self.sink_note = f"unavailable: {type(cause).__name__}: {str(cause)[:200]}"
            return False

    def store(self) -> PgvectorMemoryStore:
        instance = self.lifecycle.get_instance(DOMAIN, "memory_store")
        if instance is None:
            raise StoreUnavailable("the memory store is not active: UnifiedMemory.open() starts it")
        return instance  # type: ignore[no-any-return]

    def embedder(self) -> Embedder | None:
        return self.lifecycle.get_instance(DOMAIN, "embedding")  # type: ignore[no-any-return]

    def sink(self) -> InsightSink | None:
        instance: InsightSink | None = self.lifecycle.get_instance(DOMAIN, "insight_sink")
        return instance

    async def close(self) -> None:
        if not self.owned:
            return
        for key in ("insight_sink", "embedding", "memory_store"):
            instance = self.lifecycle.get_instance(DOMAIN, key)
            if instance is not None:
                with contextlib.suppress(Exception):
                    await instance.cleanup()
                self.lifecycle._instances.pop((DOMAIN, key), None)


class UnifiedMemory:
    """Remember, search and forget across PostgreSQL and Session-Buddy. Use :meth:`open`."""

    category = "memory"
    provider = "unified"

    def __init__(self, settings: MemorySettings | None = None, *, lifecycle: Any | None = None) -> None:
        self.settings = settings or load_settings()
        self._components = _Components(self.settings, lifecycle)
        self._components._backlog = self._backlog
        cs = self.settings.coordinator
        self._admission = asyncio.Semaphore(cs.max_in_flight)
        self._in_flight = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._relay = OutboxRelay(self._components.store, self._components.sink, self.settings.session_buddy)
        self._started_at = time.time()
        self._embedder_down_until = 0.0
        self._doctor_cache: tuple[float, ComponentHealth] | None = None
        self._log = get_logger("oneiric_memory.coordinator", domain="adapter", key=self.category,
                               provider=self.provider)

    # --- lifecycle -------------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: MemorySettings | None = None, *, lifecycle: Any | None = None,
                   background: bool = True) -> AsyncIterator[UnifiedMemory]:
        """``async with UnifiedMemory.open(settings) as memory:`` — starts adapters and background tasks."""
        memory = cls(settings, lifecycle=lifecycle)
        await memory.init(background=background)
        try:
            yield memory
        finally:
            await memory.cleanup()

    async def init(self, *, background: bool = True) -> None:
        try:
            await self._components.start()
        except BaseException:
            await self._components.close()
            raise
        if background:
            self._start_background()
        self._log.info("unified-memory-ready", embedder=self.embedder_note)

    def _start_background(self) -> None:
        self._stop.clear()
        if self.settings.session_buddy.enabled and self.settings.session_buddy.relay_enabled:
            self._tasks.append(asyncio.create_task(self._relay_loop(), name="oneiric-memory-outbox"))
        if self.settings.coordinator.backfill_enabled:
            self._tasks.append(asyncio.create_task(self._backfill_loop(), name="oneiric-memory-backfill"))
        if self.settings.maintenance.auto_enabled:
            self._tasks.append(asyncio.create_task(self._maintenance_loop(), name="oneiric-memory-maintenance"))

    async def _relay_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if await self._components.try_activate_sink():
                    report = await self._relay.deliver_due()
                    if report.delivered + report.forgotten and report.delivered + report.forgotten == report.attempted:
                        continue  # more may be due right away
                await self._relay.status()  # refreshes the backlog gauges
            except Exception as exc:  # keep the loop alive; rows stay queued and the next round retries
                self._log.warning("outbox-relay-error", error=type(exc).__name__)
            await self._sleep(self.settings.session_buddy.relay_interval_s)

    async def _backfill_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                await self.backfill()
            await self._sleep(self.settings.coordinator.backfill_interval_s)

    async def _maintenance_loop(self) -> None:
        from oneiric_memory.ops.maintenance import run_periodically

        await run_periodically(self._components.store, self.settings, self._stop)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def cleanup(self) -> None:
        """Stop background tasks, then close the adapters this coordinator started."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self._components.close()

    async def __aenter__(self) -> UnifiedMemory:
        await self.init()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.cleanup()

    @property
    def embedder_note(self) -> str:
        return self._components.embedder_note

    @property
    def store(self) -> PgvectorMemoryStore:
        return self._components.store()

    @property
    def embedder(self) -> Embedder | None:
        return self._components.embedder()

    @property
    def sink(self) -> InsightSink | None:
        return self._components.sink()

    @property
    def relay(self) -> OutboxRelay:
        return self._relay

    @contextlib.asynccontextmanager
    async def _admit(self) -> AsyncIterator[None]:
        """Backpressure: at most ``max_in_flight`` operations; others wait, then fail clearly."""
        timeout = self.settings.coordinator.admission_timeout_s
        try:
            await asyncio.wait_for(self._admission.acquire(), timeout=timeout)
        except TimeoutError:
            raise StoreUnavailable(
                f"memory is saturated: {self.settings.coordinator.max_in_flight} operations in flight for "
                f"{timeout:.1f}s; slow down, or raise coordinator.max_in_flight (or "
                "coordinator.admission_timeout_s)", max_in_flight=self.settings.coordinator.max_in_flight,
                admission_timeout_s=timeout) from None
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            self._admission.release()

    # --- writes ----------------------------------------------------------------------------------

    async def remember(self, content: str, memory_type: str = "agent", *, project: str = "default",
                       source_system: str | None = None, agent_id: str | None = None,
                       workflow_id: str | None = None, repo_id: str | None = None, session_id: str | None = None,
                       metadata: Mapping[str, Any] | None = None, expires_at: datetime | None = None) -> UUID:
        """Store one memory; returns its id (the existing one for a duplicate)."""
        record = MemoryRecord(content=content, memory_type=memory_type, project=project, source_system=source_system,
                              agent_id=agent_id, workflow_id=workflow_id, repo_id=repo_id, session_id=session_id,
                              metadata=check_metadata(metadata), expires_at=expires_at)
        return (await self.remember_many([record]))[0]

    async def remember_many(self, records: Sequence[MemoryRecord | Mapping[str, Any]]) -> RememberResult:
        """Store many memories in one transaction, with their insights queued for Session-Buddy.

        Returns the ids in input order; ``.pending`` counts the rows stored without an embedding (the
        embedder was down or too slow; a backfill embeds them later), ``.new`` / ``.duplicates`` the rest.
        An ``embedding`` supplied in a record is kept, provided it names its ``embedding_model`` and that model
        is the store's (or, on an unbound store, the active embedder's).
        """
        if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
            raise InvalidInput(f"records must be a list of MemoryRecord or mappings, got {type(records).__name__}",
                               field="records")
        built = [_as_record(item, index) for index, item in enumerate(records)]
        async with self._admit():
            store = self._components.store()
            store.validate(built)  # bad input changes nothing, before any embedding work
            supplied_model = self._check_supplied_embeddings(store, built)
            with span("remember", rows=len(built)) as current:
                if supplied_model is not None and store.embedding_model is None:
                    await store.bind_embedding_model(supplied_model)
                await self._embed_records(store, built)
                insights = [[found.keyed(record.project) for found in extract_insights(record.content)]
                            for record in built]
                result = await store.upsert_many(built, insights=insights)
                pending = sum(1 for r in built if r.embedding is None)
                current.set_attribute("new", result.new_count)
                current.set_attribute("pending", pending)
        return RememberResult(result.ids, new=result.new_count, duplicates=result.duplicate_count, pending=pending)

    def _check_supplied_embeddings(self, store: PgvectorMemoryStore, records: list[MemoryRecord]) -> str | None:
        """Caller-supplied vectors are kept only when they are from the store's model; returns that model."""
        embedder = self._components.embedder()
        expected = store.embedding_model or (embedder.model_id if embedder is not None else None)
        model: str | None = None
        for index, record in enumerate(records):
            if record.embedding is None:
                if record.embedding_model is not None:
                    raise InvalidInput(f"record {index}: embedding_model is given without an embedding",
                                       field="embedding_model", index=index)
                continue
            check_embedding(record.embedding, dimension=store.dimension, index=index, vector_type=store.vector_type)
            if not record.embedding_model:
                raise InvalidInput(
                    f"record {index}: a supplied embedding needs its embedding_model (the store holds "
                    f"{expected or 'no model yet'}), so vectors of different models never mix",
                    field="embedding_model", index=index)
            if (expected or model) is not None and record.embedding_model != (expected or model):
                raise InvalidInput(
                    f"record {index}: the embedding is from {record.embedding_model!r} but this store uses "
                    f"{expected or model!r}; embed with that model, or leave embedding unset to embed it here",
                    field="embedding_model", index=index)
            model = record.embedding_model
        return model

    async def _embed_records(self, store: PgvectorMemoryStore, records: list[MemoryRecord]) -> None:
        """Embed the records that have no vector, chunk by chunk, each chunk within ``embed_timeout_s``.

        A chunk is one round of ``embedder.max_concurrency`` requests of ``embedder.batch_size`` texts, so the
        deadline scales with the batch and a large write is never cut short by one fixed bound. When a chunk
        fails or times out, it and the chunks after it stay pending (stored, embedded later by the backfill).
        """
        todo = [record for record in records if record.embedding is None]
        embedder = self._components.embedder()
        if not todo or embedder is None or time.monotonic() < self._embedder_down_until:
            return
        timeout = self.settings.coordinator.embed_timeout_s
        if store.embedding_model != embedder.model_id:  # first use, or a swapped model: meta check
            try:  # SchemaMismatch (another model) propagates: the caller must know
                async with asyncio.timeout(timeout):
                    await store.bind_embedding_model(embedder.model_id)
            except TimeoutError:
                raise StoreUnavailable(f"recording the embedding model took longer than {timeout:g}s; retry later") from None
        size = self.settings.embedder.batch_size * self.settings.embedder.max_concurrency
        for start in range(0, len(todo), size):
            chunk = todo[start:start + size]
            try:
                async with asyncio.timeout(timeout):
                    vectors = await embedder.embed_documents([record.content for record in chunk])
            except (EmbedderError, TimeoutError) as exc:
                # Skip the embedder briefly so a burst of writes does not each wait for the timeout.
                self._embedder_down_until = time.monotonic() + min(5.0, timeout)
                self._log.warning("embedder-down-storing-pending", error=type(exc).__name__,
                                  rows=len(todo) - start, embedded=start)
                return
            except Exception as exc:  # a misbehaving embedder must never cost a write: store it pending
                self._log.error("embedder-failed-storing-pending", error=type(exc).__name__, rows=len(todo) - start)
                return
            if len(vectors) != len(chunk) or any(len(vector) != store.dimension for vector in vectors):
                self._log.error("embedder-answer-unusable-storing-pending", rows=len(chunk), vectors=len(vectors))
                return  # a wrong count or dimension would fail the whole write: keep the rows pending instead
            for record, vector in zip(chunk, vectors, strict=True):
                record.embedding = vector
                record.embedding_model = embedder.model_id

    async def store_agent_conversation(self, agent_id: str, role: str, content: str,
                                       metadata: Mapping[str, Any] | None = None, *, project: str = "default",
                                       session_id: str | None = None) -> UUID:
        _check_label("agent_id", agent_id)
        _check_label("role", role)
        return await self.remember(content, "agent", project=project, agent_id=agent_id, session_id=session_id,
                                   source_system="mahavishnu", metadata={**check_metadata(metadata), "role": role})

    async def store_rag_chunks(self, repo_id: str, chunks: Sequence[str | Mapping[str, Any]], *,
                               project: str = "default") -> RememberResult:
        """Chunks are strings or ``{"content": str, "metadata": dict}`` mappings; a bare string is refused
        (it would be split into one-character chunks)."""
        _check_label("repo_id", repo_id)
        if isinstance(chunks, (str, bytes, Mapping)) or not isinstance(chunks, Sequence):
            raise InvalidInput(f"chunks must be a list of strings or mappings, not a {type(chunks).__name__}",
                               field="chunks")
        records: list[MemoryRecord] = []
        for position, chunk in enumerate(chunks):
            if isinstance(chunk, str):
                records.append(MemoryRecord(content=chunk, memory_type="rag", project=project, repo_id=repo_id,
                                            source_system="mahavishnu", metadata={"chunk": position}))
                continue
            if not isinstance(chunk, Mapping):
                raise InvalidInput(f"chunk {position} must be a string or a mapping, not a {type(chunk).__name__}",
                                   field="chunks", index=position)
            unknown = set(chunk) - {"content", "metadata"}
            if unknown:
                raise InvalidInput(f"chunk {position} has unknown fields {sorted(map(str, unknown))}; use content "
                                   "and metadata", field="chunks", index=position)
            if not isinstance(chunk.get("content"), str):
                raise InvalidInput(f"chunk {position}: content must be a string, got "
                                   f"{type(chunk.get('content')).__name__}", field="content", index=position)
            meta = check_metadata(chunk.get("metadata"), field=f"chunk {position} metadata")
            meta.setdefault("chunk", position)
            records.append(MemoryRecord(content=chunk["content"], memory_type="rag", project=project,
                                        repo_id=repo_id, source_system="mahavishnu", metadata=meta))
        return await self.remember_many(records)

    async def ingest_repository(self, path: str | Path, repo_id: str, *, project: str = "default",
                                options: IngestOptions | None = None,
                                progress: Progress | None = None) -> IngestReport:
        """Ingest (or re-ingest, incrementally) the repository at ``path`` as ``repo_id``'s RAG chunks.

        Unchanged files are skipped, changed files' chunks replaced, deleted files' removed and renamed files'
        moved without re-embedding; a killed run is finished by the next one. See :mod:`oneiric_memory.rag`.
        ``progress(unit, done, total)`` is called with unit ``files`` and ``chunks``.
        """
        check_ingest_arguments(path, repo_id, project, options, progress)  # bad input: nothing opened or written
        async with self._admit():
            store = self._components.store()

            async def embed(records: list[MemoryRecord]) -> None:
                await self._embed_records(store, records)

            with span("ingest_repository", repo_id=str(repo_id)[:64]):
                return await ingest_repository(store, embed, path, repo_id, project=project, options=options,
                                               progress=progress)

    async def ingestions(self, repo_id: str, *, project: str = "default", limit: int = 10) -> list[dict[str, Any]]:
        """The latest ingestion runs of ``repo_id``, newest first (status, counts, timings, errors)."""
        check_label("repo_id", repo_id)
        check_label("project", project)
        check_limit(limit, 1000)
        async with self._admit():
            return await self._components.store().rag.ingestions(project, repo_id, limit)

    async def store_workflow_execution(self, workflow_id: str, summary: str, status: str,
                                       metadata: Mapping[str, Any] | None = None, *,
                                       project: str = "default") -> UUID:
        _check_label("workflow_id", workflow_id)
        _check_label("status", status)
        return await self.remember(summary, "workflow", project=project, workflow_id=workflow_id,
                                   source_system="mahavishnu", metadata={**check_metadata(metadata), "status": status})

    async def forget(self, ids: Sequence[UUID | str] | None = None, *, filters: SearchFilters | None = None) -> int:
        if filters is not None and not isinstance(filters, SearchFilters):
            raise InvalidInput(f"filters must be a SearchFilters, not a {type(filters).__name__}", field="filters")
        """Forget memories and everything derived from them; returns how many memories went.

        Access statistics and outbox rows go with them. Insights already delivered to Session-Buddy are deleted
        there now when it answers; otherwise a tombstone in the outbox (content already erased) is delivered by
        the relay later, and until then ``unified_search`` drops those insights from Session-Buddy's answers.
        """
        if ids is not None:
            _check_ids(ids)
        async with self._admit():
            deleted = await self._components.store().delete(ids, filters=filters)
        if deleted and await self._components.try_activate_sink():
            try:
                await self._relay.deliver_due(tombstones_only=True)
            except Exception as exc:  # the tombstones stay queued; the relay carries them out later
                self._log.warning("forget-sink-deferred", error=type(exc).__name__)
        return deleted

    async def get(self, ids: Sequence[UUID | str], *,
                  acting_for: str | Sequence[str] | None = None) -> list[StoredMemory]:
        """The stored memories with these ids, in input order; unknown ids are left out, and so are those
        ``acting_for`` may not read (see :meth:`search`)."""
        _check_ids(ids)
        scope = _acting_for(acting_for) if acting_for is not None else None
        async with self._admit():
            return await self._components.store().get(ids, acting_for=scope)

    async def project_counts(self, projects: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
        """Live memories per project and type (``{project: {memory_type: n}}``), limited to ``projects``."""
        names = check_names("projects", projects)
        async with self._admit():
            return await self._components.store().count_by_project(names)

    # --- cross-project memory: groups and shares (docs/groups.md) --------------------------------------

    async def create_group(self, name: str, projects: Sequence[str] = (), *, description: str = "",
                           exist_ok: bool = False) -> ProjectGroup:
        """Create a project group (with these projects); ``exist_ok`` adds the projects to an existing one."""
        name = check_name("group", name)
        members = _project_list(projects)
        if not isinstance(exist_ok, bool):
            raise InvalidInput("exist_ok must be a bool", field="exist_ok")
        if not isinstance(description, str) or len(description) > 1000 or "\x00" in description:
            raise InvalidInput("description must be a string of at most 1000 characters without NUL",
                               field="description")
        async with self._admit():
            return await self._components.store().sharing.create_group(name, members, description,
                                                                       exist_ok=exist_ok)

    async def list_groups(self, project: str | None = None) -> list[ProjectGroup]:
        """Every project group, or only those ``project`` belongs to."""
        if project is not None:
            check_name("project", project)
        async with self._admit():
            return await self._components.store().sharing.list_groups(project)

    async def get_group(self, name: str) -> ProjectGroup | None:
        async with self._admit():
            return await self._components.store().sharing.get_group(check_name("group", name))

    async def add_to_group(self, name: str, projects: Sequence[str]) -> ProjectGroup:
        """Add projects to a group (idempotent); what is shared with the group reaches them too."""
        name, members = check_name("group", name), _project_list(projects, required=True)
        async with self._admit():
            return await self._components.store().sharing.add_projects(name, members)

    async def remove_from_group(self, name: str, projects: Sequence[str]) -> ProjectGroup:
        """Remove projects from a group (idempotent); what was shared with the group is withdrawn from them."""
        name, members = check_name("group", name), _project_list(projects, required=True)
        async with self._admit():
            return await self._components.store().sharing.remove_projects(name, members)

    async def delete_group(self, name: str) -> bool:
        """Delete a group and every share to it; False when there was no such group."""
        async with self._admit():
            return await self._components.store().sharing.delete_group(check_name("group", name))

    async def share(self, ids: Sequence[UUID | str], *, projects: Sequence[str] | None = None,
                    groups: Sequence[str] | None = None) -> ShareChange:
        """Share memories (typically insights) with projects and/or groups. Idempotent.

        They become readable by each target (``search(acting_for=...)``, group search), and their insights are
        queued for Session-Buddy once per target project, tagged with that project.
        """
        parsed, targets, circles = self._share_args(ids, projects, groups, required=True)
        async with self._admit():
            change = await self._components.store().sharing.share(parsed, projects=targets, groups=circles,
                                                                  add=True)
        await self._deliver_soon()
        return change

    async def unshare(self, ids: Sequence[UUID | str], *, projects: Sequence[str] | None = None,
                      groups: Sequence[str] | None = None) -> ShareChange:
        """Withdraw shares (all of them when no target is named). Idempotent; the Session-Buddy copies of the
        withdrawn targets are deleted there (now, or by the relay once it can)."""
        parsed, targets, circles = self._share_args(ids, projects, groups, required=False)
        async with self._admit():
            change = await self._components.store().sharing.share(parsed, projects=targets, groups=circles,
                                                                  add=False)
        if change.copies_withdrawn:
            await self._deliver_soon(tombstones_only=True)
        return change

    def _share_args(self, ids: object, projects: object, groups: object, *,
                    required: bool) -> tuple[list[UUID], list[str], list[str]]:
        _check_ids(ids)
        parsed = parse_ids(ids)  # type: ignore[arg-type]
        targets = check_names("projects", projects) or []
        circles = check_names("groups", groups) or []
        if required and not (targets or circles):
            raise InvalidInput("name the projects and/or groups to share with", field="projects")
        return parsed, targets, circles

    async def _deliver_soon(self, *, tombstones_only: bool = False) -> None:
        """Hand new copies (or withdrawals) to Session-Buddy now when it answers; the relay retries otherwise."""
        if not self.settings.session_buddy.enabled or not await self._components.try_activate_sink():
            return
        try:
            await self._relay.deliver_due(tombstones_only=tombstones_only)
        except Exception as exc:  # rows stay queued; the relay carries them out later
            self._log.warning("share-sink-deferred", error=type(exc).__name__)

    async def _scope(self, group: object, acting_for: object) -> list[str] | None:
        """The projects a scoped read acts for (a group's members), or None for an unscoped read."""
        if group is not None and acting_for is not None:
            raise InvalidInput("name either group or acting_for, not both", field="group")
        if acting_for is not None:
            return _acting_for(acting_for)
        if group is None:
            return None
        name = check_name("group", group)
        async with self._admit():
            return await self._components.store().sharing.members(name)

    async def backfill(self, *, progress: Callable[[int, int], None] | None = None) -> BackfillReport:
        if progress is not None and not callable(progress):
            raise InvalidInput(f"progress must be a callable (done, total), not a {type(progress).__name__}",
                               field="progress")
        embedder = self._components.embedder()
        if embedder is None:
            return BackfillReport(stopped_reason="no embedder is active")
        report = await backfill(self._components.store(), embedder,
                                batch_size=self.settings.coordinator.backfill_batch_size, progress=progress)
        if report.embedded and report.stopped_reason is None:
            self._embedder_down_until = 0.0  # the embedder answered again: stop skipping it
        return report

    # --- reads -----------------------------------------------------------------------------------

    async def _query_vector(self, store: PgvectorMemoryStore, query: str) -> tuple[list[float] | None, str]:
        """The query's vector, or ``None`` and the reason it cannot be had now."""
        embedder = self._components.embedder()
        if embedder is None:
            return None, "no embedder is active"
        wait = self._embedder_down_until - time.monotonic()
        if wait > 0:
            return None, f"the embedder failed or timed out recently and is skipped for {wait:.1f}s more"
        if store.embedding_model is not None and store.embedding_model != embedder.model_id:
            raise SchemaMismatch(
                f"this database holds vectors from {store.embedding_model!r} but the active embedder is "
                f"{embedder.model_id!r}: its query vectors would be meaningless here. Switch back to "
                f"{store.embedding_model!r}, or run `oneiric-memory db reembed`",
                stored_model=store.embedding_model, configured_model=embedder.model_id)
        timeout = self.settings.coordinator.embed_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await embedder.embed_query(query), ""
        except (EmbedderError, TimeoutError) as exc:
            self._embedder_down_until = time.monotonic() + min(5.0, timeout)
            what = f"did not answer within {timeout:g}s" if isinstance(exc, TimeoutError) else \
                f"failed ({type(exc).__name__})"
            return None, f"the embedder {what}"

    def _check_search(self, query: object, mode: object, limit: object, memory_types: object, projects: object,
                      filters: object, acting_for: object = None) -> tuple[str, str, int, SearchFilters | None]:
        """The same rules for every mode and for search and unified_search: bad input is the caller's to fix."""
        query = check_query(query)
        requested = self.settings.search.default_mode if mode is None else mode
        if requested not in ("vector", "text", "hybrid"):
            raise InvalidInput(f"mode {requested!r} is unknown; use vector, text or hybrid", field="mode")
        limit = check_limit(self.settings.search.default_limit if limit is None else limit,
                            self.settings.search.max_limit)
        if filters is not None and not isinstance(filters, SearchFilters):
            raise InvalidInput(f"filters must be a SearchFilters, not a {type(filters).__name__}", field="filters")
        effective = _merge_filters(filters, check_names("memory_types", memory_types), check_names("projects", projects))
        if acting_for is not None:
            effective = _merge_filters(effective, None, None)
            effective = effective if effective is not None else SearchFilters()
            effective.acting_for = _acting_for(acting_for)
        if effective is not None:
            effective.validate()
        return query, str(requested), limit, effective

    async def search(self, query: str, *, mode: SearchMode | None = None, memory_types: Sequence[str] | None = None,
                     filters: SearchFilters | None = None, limit: int | None = None,
                     projects: Sequence[str] | None = None, group: str | None = None,
                     acting_for: str | Sequence[str] | None = None) -> SearchResults:
        """Search PostgreSQL; the result is the list of hits, and says which ``mode`` ran.

        ``acting_for`` scopes the search to what those projects may read: their own memories plus what is
        shared with them or their groups. ``group`` searches as the group's projects together, ranked in one
        list; every hit names its (owning) ``project``.

        A mode asked for explicitly runs, or raises :class:`EmbedderUnavailable` when the embedder cannot embed
        the query (it is never silently swapped for another mode). Without ``mode``, the default mode falls back
        to text search while the embedder is down, and the result says so (``mode``, ``note``).
        """
        scope = await self._scope(group, acting_for)
        query, requested, limit, effective = self._check_search(query, mode, limit, memory_types, projects, filters,
                                                                scope)
        if scope == []:  # a group without projects reads nothing
            return SearchResults([], mode=requested, requested_mode=requested)
        async with self._admit():
            store = self._components.store()
            ran, note = requested, None
            vector = None
            if requested in ("vector", "hybrid"):
                vector, reason = await self._query_vector(store, query)
                if vector is None:
                    if mode is not None:
                        raise EmbedderUnavailable(
                            f"{requested} search needs a query embedding, but {reason}; retry later, or search "
                            "with mode='text'", mode=requested, reason=reason)
                    ran, note = "text", f"answered in text mode: {reason}"
            hits = await store.search(query_text=query, query_embedding=vector, mode=ran,  # type: ignore[arg-type]
                                      filters=effective, limit=limit)
        return SearchResults(hits, mode=ran, requested_mode=requested, note=note)

    async def unified_search(self, query: str, *, limit: int = 10, projects: Sequence[str] | None = None,
                             mode: SearchMode | None = None, group: str | None = None,
                             acting_for: str | Sequence[str] | None = None) -> UnifiedSearchResult:
        """PostgreSQL and Session-Buddy concurrently, each with its own timeout, fused by rank (RRF).

        Bad input raises :class:`InvalidInput` before either source is asked: "degraded" is for a failing
        source, never for the caller's mistake. ``group`` and ``acting_for`` scope both sources as in
        :meth:`search` (Session-Buddy holds a copy of each shared insight tagged with each target project).
        """
        scope = await self._scope(group, acting_for)
        query, _, limit, _ = self._check_search(query, mode, limit, None, projects, None, scope)
        if scope == []:
            return UnifiedSearchResult(hits=[])
        timeout = self.settings.search.unified_timeout_s
        sources: dict[str, SourceStatus] = {}

        async def timed(name: str, work: Awaitable[list[SearchHit]]) -> list[SearchHit]:
            watch = Stopwatch()
            try:
                async with asyncio.timeout(timeout):
                    hits = await work
            except TimeoutError:
                sources[name] = SourceStatus("timeout", latency_ms=watch.ms, error=f"no answer within {timeout}s")
                return []
            except InvalidInput:
                raise  # the caller's mistake is never a degraded source
            except Exception as exc:
                sources[name] = SourceStatus("error", latency_ms=watch.ms, error=f"{type(exc).__name__}: {exc}"[:300])
                return []
            sources[name] = SourceStatus("ok", hits=len(hits), latency_ms=round(watch.ms, 3))
            return hits

        with span("unified_search", limit=limit) as current:
            pg_work = timed("postgres", self.search(query, mode=mode, limit=limit, projects=projects,
                                                    acting_for=scope))
            sink = self._components.sink()
            if sink is None:
                sources["session_buddy"] = SourceStatus(
                    "disabled" if not self.settings.session_buddy.enabled else "error",
                    error=self._components.sink_note or None)
                sb_hits: list[SearchHit] = []
                pg_hits = await pg_work
            else:
                sb_projects = scope if scope is not None else projects
                pg_hits, sb_hits = await asyncio.gather(
                    pg_work, timed("session_buddy", self._insight_hits(sink, query, limit, sb_projects)))
                if scope is not None:  # Session-Buddy may answer other projects' rows: keep the scope's own
                    readable = set(scope) if projects is None else set(scope) & set(projects)
                    sb_hits = [hit for hit in sb_hits if hit.project in readable]
            fused = _rrf([pg_hits, sb_hits], k=self.settings.search.rrf_k)[:limit]
            current.set_attribute("hits", len(fused))
        return UnifiedSearchResult(hits=fused, sources=sources)

    async def _insight_hits(self, sink: InsightSink, query: str, limit: int,
                            projects: Sequence[str] | None) -> list[SearchHit]:
        found = await sink.search_insights(query, limit=limit, projects=projects)
        # insights of forgotten memories whose deletion has not reached Session-Buddy yet are never shown
        forgotten = await self._components.store().outbox.tombstoned(
            [item.insight_id for item in found if item.insight_id])
        hits: list[SearchHit] = []
        for item in found:
            if item.insight_id in forgotten:
                continue
            try:
                hit_id = UUID(str(item.id))
            except ValueError:
                import uuid as _uuid

                hit_id = _uuid.uuid5(_uuid.NAMESPACE_URL, f"session-buddy:{item.id}")
            hits.append(SearchHit(id=hit_id, content=item.content, memory_type="insight",
                                  project=item.project or "default",
                                  metadata={"session_buddy_id": str(item.id), "insight_id": item.insight_id,
                                            "insight_type": item.insight_type, "topics": list(item.topics)},
                                  score=float(item.score or 0.0), source="session_buddy"))
        return hits

    # --- health ----------------------------------------------------------------------------------

    async def _backlog(self) -> dict[str, Any]:
        status = await self._relay.status()
        # The sink's health reads ``oldest_age_s`` (see session_buddy.BacklogProvider).
        return {**status.as_dict(), "oldest_age_s": status.oldest_pending_age_s}

    async def component_healths(self) -> list[ComponentHealth]:
        """Every part's health, checked concurrently, each within ``coordinator.health_timeout_s``.

        The bound keeps the aggregate inside Oneiric's health-probe timeout; a part that does not answer in
        time is reported (UNHEALTHY for the store, DEGRADED for the optional parts) instead of stalling.
        """
        from mcp_common.health import ComponentHealth, HealthStatus
        timeout = self.settings.coordinator.health_timeout_s
        checks: list[tuple[str, HealthStatus, Awaitable[ComponentHealth]]] = [
            ("memory_store", HealthStatus.UNHEALTHY, self._store_health()),
            ("embedding", HealthStatus.DEGRADED, self._embedder_health()),
            ("insight_sink", HealthStatus.DEGRADED, self._sink_health()),
            ("pipeline", HealthStatus.DEGRADED, self._pipeline_health()),
            ("operations", HealthStatus.DEGRADED, self._operations_health()),
        ]

        async def bounded(name: str, worst: HealthStatus, check: Awaitable[ComponentHealth]) -> ComponentHealth:
            watch = Stopwatch()
            try:
                async with asyncio.timeout(timeout):
                    return await check
            except TimeoutError:
                return ComponentHealth(name=name, status=worst, latency_ms=round(watch.ms, 3),
                                       message=f"no health answer within {timeout:.1f}s")
            except Exception as exc:
                return ComponentHealth(name=name, status=worst, latency_ms=round(watch.ms, 3),
                                       message=f"health check failed: {type(exc).__name__}: {exc}"[:300])

        return list(await asyncio.gather(*(bounded(name, worst, check) for name, worst, check in checks)))

    async def _store_health(self) -> ComponentHealth:
        return await self._components.store().component_health()

    async def _embedder_health(self) -> ComponentHealth:
        from mcp_common.health import ComponentHealth, HealthStatus
        embedder = self._components.embedder()
        if embedder is None:
            return ComponentHealth(name="embedding", status=HealthStatus.DEGRADED,
                                   message="no embedder: memories are stored pending")
        try:
            health = await embedder.component_health()
        except Exception as exc:
            health = ComponentHealth(name="embedding", status=HealthStatus.UNHEALTHY,
                                     message=f"health check failed: {type(exc).__name__}")
        health.metadata["note"] = self.embedder_note
        selection = self._components.embedder_selection
        if selection is not None:
            health.metadata["selection"] = selection.as_dict()
        if "hashing" in embedder.model_id and self.settings.embedder.provider == "auto":
            health = ComponentHealth(name=health.name, status=max(health.status, HealthStatus.DEGRADED),
                                     message=self.embedder_note, latency_ms=health.latency_ms,
                                     metadata=health.metadata)
        if health.status == HealthStatus.UNHEALTHY:  # writes are kept pending and text search answers
            health = ComponentHealth(name=health.name, status=HealthStatus.DEGRADED,
                                     message=f"{health.message}; memories are stored pending and search "
                                             "falls back to text until it is back",
                                     latency_ms=health.latency_ms, metadata=health.metadata)
        return health

    async def _sink_health(self) -> ComponentHealth:
        from mcp_common.health import ComponentHealth, HealthStatus
        sink = self._components.sink()
        if not self.settings.session_buddy.enabled:
            return ComponentHealth(name="insight_sink", status=HealthStatus.HEALTHY, message="disabled")
        if sink is None:
            return ComponentHealth(name="insight_sink", status=HealthStatus.DEGRADED,
                                   message=f"Session-Buddy {self._components.sink_note}; insights stay queued")
        health: ComponentHealth = await sink.component_health()
        if health.status == HealthStatus.UNHEALTHY:  # an optional part degrades, never fails, the whole
            health = ComponentHealth(name=health.name, status=HealthStatus.DEGRADED, message=health.message,
                                     latency_ms=health.latency_ms, metadata=health.metadata)
        return health

    async def _pipeline_health(self) -> ComponentHealth:
        from mcp_common.health import ComponentHealth, HealthStatus
        pending = await self._components.store().count_pending()
        backlog = await self._relay.status()
        degraded = pending or (backlog.oldest_pending_age_s or 0) > self.settings.session_buddy.degraded_backlog_age_s
        return ComponentHealth(
            name="pipeline", status=HealthStatus.DEGRADED if degraded else HealthStatus.HEALTHY,
            message=f"{pending} embeddings pending, {backlog.pending} insights queued",
            metadata={"pending_embeddings": pending, "in_flight": self._in_flight, **backlog.as_dict()})

    async def _operations_health(self) -> ComponentHealth:
        """`doctor` findings (bloat, invalid indexes, TOASTed vectors, pool saturation, canary) as a part.

        The doctor's statistics queries are cached for ``maintenance.health_cache_s`` so dashboards polling
        health do not add load; the recall canary runs in `doctor`/`maintain auto`, not here.
        """
        from mcp_common.health import ComponentHealth, HealthStatus

        from oneiric_memory.ops.monitoring import Monitor

        now = time.monotonic()
        cached = self._doctor_cache
        if cached is not None and now - cached[0] < self.settings.maintenance.health_cache_s:
            return cached[1]
        try:
            report = await Monitor(self._components.store()).doctor(canary=False)
            health = report.component_health(name="operations")
        except Exception as exc:
            health = ComponentHealth(name="operations", status=HealthStatus.DEGRADED,
                                     message=f"monitoring unavailable: {type(exc).__name__}")
        self._doctor_cache = (now, health)
        return health

    async def health(self) -> HealthCheckResponse:
        """Aggregated health of every part (worst status wins; optional parts only degrade)."""
        from mcp_common.health import HealthCheckResponse
        return HealthCheckResponse.create(components=await self.component_healths(), version=__version__,
                                          start_time=self._started_at,
                                          metadata={"package": "oneiric-memory", "embedder": self.embedder_note})

    async def component_health(self) -> ComponentHealth:
        from mcp_common.health import ComponentHealth
        response = await self.health()
        return ComponentHealth(name="memory", status=response.status, message=f"{len(response.components)} parts",
                               metadata={c.name: c.to_dict() for c in response.components})

    async def is_healthy(self) -> bool:
        """Oneiric's liveness probe: only the store is required."""
        try:
            return await self._components.store().health()
        except Exception:
            return False


def _as_record(item: MemoryRecord | Mapping[str, Any], index: int) -> MemoryRecord:
    if isinstance(item, MemoryRecord):
        return item
    if not isinstance(item, Mapping):
        raise InvalidInput(f"record {index} must be a MemoryRecord or a mapping", index=index)
    unknown = set(item) - set(MemoryRecord.__dataclass_fields__)
    if unknown:
        raise InvalidInput(f"record {index} has unknown fields {sorted(map(str, unknown))}", index=index)
    if "metadata" in item:
        item = {**item, "metadata": check_metadata(item["metadata"], field=f"record {index}: metadata")}
    try:
        return MemoryRecord(**dict(item))
    except TypeError as exc:
        raise InvalidInput(f"record {index}: {exc}", index=index) from None


def _merge_filters(filters: SearchFilters | None, memory_types: Sequence[str] | None,
                   projects: Sequence[str] | None) -> SearchFilters | None:
    if memory_types is None and projects is None:
        return filters
    merged = SearchFilters(**{name: getattr(filters, name) for name in SearchFilters.__dataclass_fields__}) \
        if filters is not None else SearchFilters()
    if memory_types is not None:
        unknown = [t for t in memory_types if t not in MEMORY_TYPES]
        if unknown:
            raise InvalidInput(f"unknown memory types {unknown}; use {', '.join(MEMORY_TYPES)}")
        merged.memory_types = list(memory_types)
    if projects is not None:
        merged.projects = list(projects)
    return merged


def _acting_for(value: object) -> list[str]:
    """One project name or a list of them (never empty)."""
    if isinstance(value, str):
        return [check_name("acting_for", value)]
    names = check_names("acting_for", value)
    assert names is not None
    return list(dict.fromkeys(names))


def _project_list(projects: object, *, required: bool = False) -> list[str]:
    if not required and (projects is None or (isinstance(projects, (list, tuple)) and not projects)):
        return []
    names = check_names("projects", projects)
    return list(dict.fromkeys(names or ()))


def _rrf(rankings: Sequence[Sequence[SearchHit]], *, k: int) -> list[SearchHit]:
    """Reciprocal-rank fusion: scores from different embedding spaces are not comparable, ranks are."""
    scores: dict[tuple[str, UUID], float] = {}
    first: dict[tuple[str, UUID], SearchHit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            key = (hit.source, hit.id)
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
            first.setdefault(key, hit)
    fused = []
    for key, score in sorted(scores.items(), key=lambda item: -item[1]):
        hit = first[key]
        fused.append(SearchHit(**{**{name: getattr(hit, name) for name in SearchHit.__dataclass_fields__},
                                  "score": score}))
    return fused


async def unified_memory_factory(settings: MemorySettings | None = None) -> UnifiedMemory:
    """The one way to build the coordinator: from ``settings`` (loaded from the layers when None, as Oneiric's
    zero-argument factories do), adapters started, background tasks running."""
    memory = UnifiedMemory(settings if settings is not None else load_settings())
    await memory.init()
    return memory


def _check_ids(ids: object) -> None:
    """Memory ids come as a list; a bare string or number is refused (a string would be split)."""
    if isinstance(ids, (str, bytes, Mapping)) or not isinstance(ids, Sequence):
        raise InvalidInput(f"ids must be a list of memory ids, not a {type(ids).__name__}", field="ids")


def _check_label(name: str, value: object) -> None:
    """Required short labels of the convenience writers (ids, role, status): a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string, got {type(value).__name__}", field=name)
