"""Ingest a repository into the memory store, incrementally by file content hash.

Phases (each timed): **walk** (list, read and hash the covered files, in a worker thread), **diff** (against
``rag_files``: unchanged files are skipped; a new file whose hash equals a vanished file's is a rename and its
rows are moved, never re-embedded; vanished files are removed), **chunk** (structure-aware, in a worker
thread), then per batch **embed** and **write** (one transaction per batch replaces the batch's files' chunks
and records them in ``rag_files``).

Because each batch commits its files' chunks together with their ``rag_files`` rows, a run killed at any point
leaves every file either fully old or fully new; the rerun skips what was committed and redoes the rest, so
there are no duplicate and no orphan chunks. A killed run's ``rag_ingestions`` row, still ``running``, is
marked ``failed`` ("interrupted") by the next run of the same repository. Runs of one repository are
serialised by a session advisory lock (a second run waits briefly, then fails with ``StoreUnavailable``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oneiric_memory.adapters.pgvector import FileChunks
from oneiric_memory.errors import InvalidInput, StoreUnavailable
from oneiric_memory.observability import get_logger
from oneiric_memory.rag.chunking import chunk_file
from oneiric_memory.rag.walk import DEFAULT_SUFFIXES, RepoFile, WalkCounts, walk_repository
from oneiric_memory.records import MemoryRecord

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector import PgvectorMemoryStore

__all__ = ["IngestOptions", "IngestReport", "Progress", "check_ingest_arguments", "check_label",
           "ingest_lock_key", "ingest_repository"]

Progress = Callable[[str, int, int], None]
"""``progress(unit, done, total)`` with unit ``"files"`` or ``"chunks"``."""

SOURCE_SYSTEM = "oneiric-memory-ingest"
_MAX_ERRORS = 100
_LOCK_WAIT_S = 5.0
"""How long a run waits for another run of the same repository (or a killed one's lock) to go."""


def ingest_lock_key(schema: str, project: str, repo_id: str) -> str:
    """The advisory-lock key one ingestion of ``repo_id`` holds while it runs (fields split by US, 0x1f)."""
    return f"{schema}\x1frag-ingest\x1f{project}\x1f{repo_id}"


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """What a run covers and how it cuts: suffixes, extra ``.gitignore``-style ``exclude`` patterns, the largest
    file read, chunk size and overlap (characters), and how many chunks one write transaction carries."""

    suffixes: Sequence[str] = DEFAULT_SUFFIXES
    exclude: Sequence[str] = ()
    max_file_bytes: int = 1_000_000
    max_chars: int = 2000
    overlap: int = 200
    batch_chunks: int = 256

    def validate(self) -> None:
        if isinstance(self.suffixes, str) or not self.suffixes \
                or not all(isinstance(s, str) and s.startswith(".") and len(s) > 1 for s in self.suffixes):
            raise InvalidInput("suffixes must be a non-empty list like ['.py', '.md']", field="suffixes")
        if isinstance(self.exclude, str) or not all(isinstance(p, str) and "\x00" not in p for p in self.exclude):
            raise InvalidInput("exclude must be a list of .gitignore patterns like ['build/', '*.min.js']",
                               field="exclude")
        for name, low in (("max_file_bytes", 1), ("max_chars", 200), ("batch_chunks", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInput(f"{name} must be an integer of at least {low}", field=name)
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) \
                or not 0 <= self.overlap < self.max_chars // 2:
            raise InvalidInput("overlap must be an integer from 0 to half of max_chars", field="overlap")


@dataclass(slots=True)
class IngestReport:
    """What a run did; the same figures are stored in its ``rag_ingestions`` row."""

    ingestion_id: uuid.UUID
    repo_id: str
    project: str
    root: str
    status: str = "running"
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ingestion_id": str(self.ingestion_id), "repo_id": self.repo_id, "project": self.project,
                "root": self.root, "status": self.status, "counts": dict(self.counts),
                "timings": dict(self.timings), "errors": list(self.errors)}


def _records(file: RepoFile, *, repo_id: str, project: str, options: IngestOptions) -> list[MemoryRecord]:
    chunks = chunk_file(file.text, file.language, max_chars=options.max_chars, overlap=options.overlap)
    return [MemoryRecord(content=chunk.text, memory_type="rag", project=project, repo_id=repo_id,
                         source_system=SOURCE_SYSTEM,
                         metadata={"path": file.path, "language": file.language, "symbol": chunk.symbol,
                                   "kind": chunk.kind, "start_line": chunk.start_line, "end_line": chunk.end_line,
                                   "file_hash": file.file_hash, "chunk": ordinal})
            for ordinal, chunk in enumerate(chunks)]


def check_label(name: str, value: object) -> str:
    """A repository id or project: a non-empty string of at most 512 characters, no NUL, valid UTF-8."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string, got {type(value).__name__}", field=name)
    if "\x00" in value:
        raise InvalidInput(f"{name} contains a NUL byte; remove it", field=name)
    if len(value) > 512:
        raise InvalidInput(f"{name} is longer than 512 characters", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{name} holds a lone surrogate and is not valid UTF-8", field=name) from None
    return value


def check_ingest_arguments(root: object, repo_id: object, project: object, options: object,
                           progress: object) -> Path:
    """Every argument of an ingestion, checked before anything is read or written; returns the resolved root."""
    check_label("repo_id", repo_id)
    check_label("project", project)
    if options is not None:
        if not isinstance(options, IngestOptions):
            raise InvalidInput(f"options must be an IngestOptions, not a {type(options).__name__}", field="options")
        options.validate()
    if progress is not None and not callable(progress):
        raise InvalidInput(f"progress must be a callable or None, not a {type(progress).__name__}", field="progress")
    if not isinstance(root, (str, Path)) or not str(root).strip():
        raise InvalidInput(f"path must be a folder path, not {type(root).__name__}", field="path")
    if "\x00" in str(root):
        raise InvalidInput("path contains a NUL byte", field="path")
    base = Path(root).expanduser()
    try:
        is_dir = base.is_dir()
    except (OSError, ValueError):
        is_dir = False
    if not is_dir:
        raise InvalidInput(f"path {str(base)[:200]!r} is not a folder", field="path")
    return base.resolve()


async def ingest_repository(store: PgvectorMemoryStore, embed: Callable[[list[MemoryRecord]], Awaitable[None]],
                            root: Path | str, repo_id: str, *, project: str = "default",
                            options: IngestOptions | None = None, progress: Progress | None = None) -> IngestReport:
    """Bring the store's chunks of ``repo_id`` in line with the tree at ``root``; see the module docstring.

    ``embed(records)`` fills ``record.embedding`` where it can (records it leaves empty are stored pending and
    embedded later by the backfill).
    """
    base = check_ingest_arguments(root, repo_id, project, options, progress)
    opts = options or IngestOptions()
    log = get_logger("rag.ingest")
    async with store.direct_session(purpose="ingest") as session:
        # One run per repository at a time: a session lock, released by the connection's end even on a kill.
        key = ingest_lock_key(store.schema, project, repo_id)
        deadline = time.monotonic() + _LOCK_WAIT_S
        while not await session.try_lock(key):
            if time.monotonic() >= deadline:
                raise StoreUnavailable(f"another ingestion of repository {repo_id[:100]!r} (project "
                                       f"{project[:100]!r}) is running; retry when it has finished")
            await asyncio.sleep(0.2)
        return await _locked(store, embed, base, repo_id, project, opts, progress, log)


async def _locked(store: PgvectorMemoryStore, embed: Callable[[list[MemoryRecord]], Awaitable[None]], base: Path,
                  repo_id: str, project: str, opts: IngestOptions, progress: Progress | None,
                  log: Any) -> IngestReport:
    report = IngestReport(uuid.uuid4(), repo_id, project, str(base))
    report.ingestion_id = await store.rag.begin(project, repo_id, str(base))
    notify = progress or (lambda _unit, _done, _total: None)
    started = time.perf_counter()
    try:
        await _run(store, embed, base, report, opts, notify)
    except BaseException as exc:
        report.status = "failed"
        report.timings["total_s"] = round(time.perf_counter() - started, 3)
        message = f"{type(exc).__name__}: {exc}"[:2000]
        log.error("ingest-failed", repo_id=repo_id, error=type(exc).__name__)
        try:  # shielded: a cancelled run still records why it stopped
            await asyncio.shield(store.rag.finish(project, report.ingestion_id, status="failed",
                                                  counts=report.counts, timings=report.timings,
                                                  errors=report.errors, error=message))
        except Exception as record_error:  # the original error matters more; the next run marks it interrupted
            log.warning("ingest-failure-not-recorded", error=type(record_error).__name__)
        raise
    report.status = "completed"
    report.timings["total_s"] = round(time.perf_counter() - started, 3)
    await store.rag.finish(project, report.ingestion_id, status="completed", counts=report.counts,
                           timings=report.timings, errors=report.errors, error=None)
    log.info("ingested", repo_id=repo_id, **report.counts)
    return report


async def _run(store: PgvectorMemoryStore, embed: Callable[[list[MemoryRecord]], Awaitable[None]], base: Path,
               report: IngestReport, opts: IngestOptions, notify: Progress) -> None:
    project, repo_id, counts, timings = report.project, report.repo_id, report.counts, report.timings

    clock = time.perf_counter()
    walked = WalkCounts()
    files = await asyncio.to_thread(lambda: list(walk_repository(base, suffixes=opts.suffixes,
                                                                 max_file_bytes=opts.max_file_bytes,
                                                                 exclude=opts.exclude, counts=walked)))
    timings["walk_s"] = round(time.perf_counter() - clock, 3)
    counts.update({"files_seen": len(files), **{k: v for k, v in walked.as_dict().items() if k != "covered"}})

    clock = time.perf_counter()
    indexed = await store.rag.files(project, repo_id)
    seen = {f.path: f for f in files}
    unchanged = {p for p, f in seen.items()
                 if p in indexed and indexed[p].file_hash == f.file_hash and indexed[p].intact}
    vanished = [p for p in indexed if p not in seen]
    by_hash: dict[str, list[str]] = {}
    for path in vanished:
        if indexed[path].intact:
            by_hash.setdefault(indexed[path].file_hash, []).append(path)
    moves: list[tuple[str, str]] = []
    todo: list[RepoFile] = []
    for file in files:
        if file.path in unchanged:
            continue
        if file.path not in indexed and by_hash.get(file.file_hash):
            moves.append((by_hash[file.file_hash].pop(0), file.path))
            continue
        todo.append(file)
    moved_from = {old for old, _ in moves}
    removed = [p for p in vanished if p not in moved_from]
    counts["files_unchanged"] = len(unchanged)
    counts["files_renamed"] = len(moves)
    counts["files_removed"] = len(removed)
    counts["files_added"] = sum(1 for f in todo if f.path not in indexed)
    counts["files_changed"] = len(todo) - counts["files_added"]
    counts["chunks_unchanged"] = sum(indexed[p].chunks for p in unchanged)
    counts["chunks_moved"] = await store.rag.move_files(project, repo_id, moves)
    counts["chunks_removed"] = await store.rag.remove_files(project, repo_id, removed)
    timings["diff_s"] = round(time.perf_counter() - clock, 3)

    clock = time.perf_counter()
    prepared: list[FileChunks] = []
    errors = report.errors

    def chunk_all() -> None:
        for file in todo:
            try:
                records = _records(file, repo_id=repo_id, project=project, options=opts)
                store.validate(records)
            except Exception as exc:  # one bad file is reported and retried next run, never fatal
                counts["files_failed"] = counts.get("files_failed", 0) + 1
                if len(errors) < _MAX_ERRORS:
                    errors.append({"path": file.path, "error": f"{type(exc).__name__}: {exc}"[:500]})
                continue
            prepared.append(FileChunks(file.path, file.file_hash, file.language, file.size, records))

    await asyncio.to_thread(chunk_all)
    timings["chunk_s"] = round(time.perf_counter() - clock, 3)
    total_chunks = sum(len(f.records) for f in prepared)
    counts.setdefault("files_failed", 0)
    counts["chunks_added"] = 0
    counts["chunks_pending"] = 0
    counts["chunks_reused"] = 0
    timings["embed_s"] = timings["write_s"] = 0.0
    notify("files", 0, len(prepared))
    notify("chunks", 0, total_chunks)

    done_files = done_chunks = 0
    for batch in _batches(prepared, opts.batch_chunks):
        records = [r for f in batch for r in f.records]
        clock = time.perf_counter()
        counts["chunks_reused"] += await _reuse_vectors(store, report, [f for f in batch if f.path in indexed])
        await embed(records)
        timings["embed_s"] += time.perf_counter() - clock
        clock = time.perf_counter()
        counts["chunks_removed"] += await store.rag.write_files(project, repo_id, report.ingestion_id, batch)
        timings["write_s"] += time.perf_counter() - clock
        counts["chunks_added"] += len(records)
        counts["chunks_pending"] += sum(1 for r in records if r.embedding is None)
        done_files += len(batch)
        done_chunks += len(records)
        notify("files", done_files, len(prepared))
        notify("chunks", done_chunks, total_chunks)
    timings["embed_s"] = round(timings["embed_s"], 3)
    timings["write_s"] = round(timings["write_s"], 3)
    counts["chunks_total"] = counts["chunks_unchanged"] + counts["chunks_moved"] + counts["chunks_added"]


async def _reuse_vectors(store: PgvectorMemoryStore, report: IngestReport, changed: Sequence[FileChunks]) -> int:
    """Give a changed file's unchanged chunks their stored vectors; returns how many were reused."""
    model = store.embedding_model
    if not changed or model is None:
        return 0
    vectors = await store.rag.reusable_vectors(report.project, report.repo_id, [f.path for f in changed], model)
    reused = 0
    for file in changed:
        for record in file.records:
            vector = vectors.get(record.content_hash)
            if vector is not None:
                record.embedding, record.embedding_model = vector, model
                reused += 1
    return reused


def _batches(files: Sequence[FileChunks], size: int) -> list[list[FileChunks]]:
    """Whole files per batch (a file is never split across transactions), about ``size`` chunks each."""
    batches: list[list[FileChunks]] = []
    current: list[FileChunks] = []
    count = 0
    for file in files:
        if current and count + len(file.records) > size:
            batches.append(current)
            current, count = [], 0
        current.append(file)
        count += len(file.records)
    if current:
        batches.append(current)
    return batches
