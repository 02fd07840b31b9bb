"""Migrate Session-Buddy's DuckDB data into the PostgreSQL store (``oneiric-memory migrate-duckdb``).

Why it is built this way:

- **Read-only and safe.** Each source file is opened with ``duckdb.connect(path, read_only=True)`` on its own
  worker thread (DuckDB calls block). While Session-Buddy holds the file, DuckDB refuses even a read-only
  open; that becomes :class:`SourceLocked` with what to do. Nothing ever writes to the source.
- **Detected, not assumed.** Tables come from ``duckdb_tables()`` and columns from ``information_schema``;
  a real file may hold the v2 family (``conversations_v2``, ``reflections_v2``), the legacy family
  (``conversations``, ``reflections`` with ``"timestamp"``, ``reflection_tags``) or both. The knowledge
  graph (``kg_entities``, ``kg_relationships``) lives in a second file.
- **Re-embedded.** Session-Buddy's 384-dim vectors live in another space and are never read; the content is
  embedded again with this package's embedder. If the embedder is unavailable the rows are stored pending
  (for backfill) and the run goes on.
- **Idempotent and exact.** ``migration_items`` records every source row under
  ``(project, source_file_id, source_table, source_id)``. The store deduplicates by content, so two
  identical source rows map to one memory, with two items. A rerun diffs the source keys against the
  items and only touches what is missing, skipped before, or whose memory was deleted since.
- **Resumable.** Memories are written first (``upsert_many``), then their items, then the per-table
  checkpoint in source-id order. Each memory carries its source key and run id in ``metadata["source"]``,
  so a crash between the upsert and the items is recognised on resume (the row was *inserted* by this run),
  and rollback finds such rows too. An interrupted run is resumed by the next run on the same source.
- **Exact rollback.** A run removes only the memories it inserted, never pre-existing duplicates; a
  memory another run also maps to is kept and handed over to that run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from datetime import time as dtime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import asyncpg
import duckdb

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.errors import (
    EmbedderError,
    EmbedderUnavailable,
    InvalidInput,
    SourceLocked,
    first_error,
)
from oneiric_memory.observability import get_logger, span
from oneiric_memory.protocols import Embedder
from oneiric_memory.records import MAX_METADATA_BYTES, MemoryRecord, UpsertResult, content_hash
from oneiric_memory.settings import MemorySettings

__all__ = [
    "BULK_LOAD_ROWS",
    "ColumnInfo",
    "DuckDBMigration",
    "Inventory",
    "MigrationReport",
    "ProgressEvent",
    "RollbackReport",
    "RowIssue",
    "RunSummary",
    "TableInventory",
    "TableReport",
    "TableValidation",
    "ValidationReport",
]

BULK_LOAD_ROWS = 50_000
"""Sources larger than this load through ``store.bulk_loading()`` (vector index rebuilt once at the end)."""

_T = TypeVar("_T")
_Row = dict[str, Any]
_SOURCE_ID = "__source_id"
_SYSTEM = "session_buddy"
_MAX_ISSUES = 1000
_MAX_RAW_CHARS = 10_000
_MAX_ID_CHARS = 512
_EMBED_RETRY_S = 30.0
_LOOKUP_CHUNK = 1000
_RESERVED_SOURCE_KEYS = frozenset({"system", "file_id", "file", "table", "id", "run_id", "sanitized"})

_Kind = Literal["conversation", "reflection", "entity", "relation"]
_FileRole = Literal["reflection", "knowledge_graph"]


@dataclass(frozen=True, slots=True)
class _Family:
    kind: _Kind
    family: str
    required: tuple[str, ...]
    maps_to: str


_MIGRATED_TABLES: dict[str, _Family] = {
    "conversations_v2": _Family("conversation", "v2", ("id", "content"), "agent"),
    "reflections_v2": _Family("reflection", "v2", ("id", "content"), "insight if insight_type is set, else agent"),
    "conversations": _Family("conversation", "legacy", ("id", "content"), "agent"),
    "reflections": _Family("reflection", "legacy", ("id", "content"), "insight if insight_type is set, else agent"),
    "kg_entities": _Family("entity", "knowledge_graph", ("id", "name"),
                           "insight: '<name> (<type>)' and its observations"),
    "kg_relationships": _Family("relation", "knowledge_graph", ("id", "from_entity", "to_entity", "relation_type"),
                                "insight: '<A> <relation> <B>', entities in metadata"),
}
_AUXILIARY_TABLES = {"reflection_tags": "folded into the tags of legacy `reflections` rows"}
_JSON_COLUMNS = frozenset({"metadata", "properties"})
_SKIPPED_COLUMNS = frozenset({"embedding", "fingerprint", "searchable_content"})
_TIMESTAMP_COLUMNS = ("created_at", "timestamp", "updated_at")


# --- public value types -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    data_type: str


@dataclass(slots=True)
class TableInventory:
    """One table found in a source file, and what the migration does with it."""

    file: str
    path: str
    name: str
    rows: int
    columns: list[ColumnInfo]
    migrate: bool
    maps_to: str
    split: dict[str, int] = field(default_factory=dict)
    """Rows per target memory_type (``{"insight": 3, "agent": 10}``) for migrated tables."""


@dataclass(slots=True)
class Inventory:
    """What ``--dry-run`` prints: files, tables, rows, columns and the mapping plan."""

    path: str
    size_bytes: int
    kg_path: str | None
    kg_size_bytes: int | None
    families: list[str]
    tables: list[TableInventory]
    notes: list[str] = field(default_factory=list)

    @property
    def rows_to_migrate(self) -> int:
        return sum(table.rows for table in self.tables if table.migrate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """Sent after each committed batch (and at the start and end of each table)."""

    table: str
    phase: Literal["start", "batch", "done"]
    done: int
    total: int
    added: int
    errors: int


@dataclass(frozen=True, slots=True)
class RowIssue:
    """A source row that was not migrated, and why (it is counted and recorded, never fatal)."""

    table: str
    source_id: str | None
    reason: str


@dataclass(slots=True)
class TableReport:
    table: str
    file: str
    maps_to: str
    source_rows: int = 0
    to_migrate: int = 0
    already_migrated: int = 0
    added: int = 0
    deduplicated: int = 0
    errors: int = 0
    pending_embeddings: int = 0
    target_rows: int = 0
    resumed_from: str | None = None


@dataclass(slots=True)
class MigrationReport:
    """The outcome of :meth:`DuckDBMigration.run` (also stored per table in ``migration_runs.counts``)."""

    run_id: uuid.UUID | None
    status: Literal["completed", "failed", "dry_run"]
    source_path: str
    kg_path: str | None
    project: str | None
    source_file_id: str
    kg_file_id: str | None
    dry_run: bool
    bulk_load: bool
    resumed: bool
    embedding_model: str
    tables: list[TableReport]
    issues: list[RowIssue] = field(default_factory=list)
    issues_omitted: int = 0
    elapsed_s: float = 0.0
    inventory: Inventory | None = None

    @property
    def added(self) -> int:
        return sum(t.added for t in self.tables)

    @property
    def skipped(self) -> int:
        """Rows not written by this run because they were migrated before."""
        return sum(t.already_migrated for t in self.tables)

    @property
    def errors(self) -> int:
        return sum(t.errors for t in self.tables)

    @property
    def pending_embeddings(self) -> int:
        return sum(t.pending_embeddings for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run_id"] = None if self.run_id is None else str(self.run_id)
        data.update(added=self.added, skipped=self.skipped, errors=self.errors,
                    pending_embeddings=self.pending_embeddings)
        return data


@dataclass(slots=True)
class TableValidation:
    table: str
    file: str
    source_rows: int = 0
    migrated: int = 0
    skipped: int = 0
    unkeyed: int = 0
    missing: int = 0
    extra: int = 0
    orphaned: int = 0
    hash_checked: int = 0
    hash_mismatches: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.orphaned or self.hash_mismatches)


@dataclass(slots=True)
class ValidationReport:
    """Source vs target per table. ``ok`` is False on any count or content mismatch (the CLI exits 1)."""

    run_id: uuid.UUID
    ok: bool
    sample: int | None
    tables: list[TableValidation]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run_id"] = str(self.run_id)
        for table, item in zip(data["tables"], self.tables, strict=True):
            table["ok"] = item.ok
        return data


@dataclass(frozen=True, slots=True)
class RollbackReport:
    run_id: uuid.UUID
    previous_status: str
    status: str
    memories_deleted: int
    memories_kept_shared: int
    items_deleted: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run_id"] = str(self.run_id)
        return data


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: uuid.UUID
    status: str
    source_path: str
    kg_path: str | None
    project: str | None
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    counts: dict[str, Any]


# --- the source side: one read-only DuckDB file on its own thread ---------------------------------------


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _is_vector_or_blob(column: ColumnInfo) -> bool:
    kind = column.data_type.upper()
    return "BLOB" in kind or (kind.endswith("]") and kind.split("[", 1)[0] in ("FLOAT", "DOUBLE", "REAL"))


@dataclass(frozen=True, slots=True)
class _TableSpec:
    """A source table the migration reads: its file, kind and the columns worth keeping."""

    name: str
    family: _Family
    file_role: _FileRole
    file_id: str
    path: str
    columns: tuple[ColumnInfo, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns)

    @property
    def kind(self) -> _Kind:
        return self.family.kind

    def select_list(self) -> str:
        keep = [_quote(c.name) for c in self.columns
                if c.name not in _SKIPPED_COLUMNS and not _is_vector_or_blob(c)]
        return ", ".join([f"CAST({_quote('id')} AS VARCHAR) AS {_quote(_SOURCE_ID)}", *keep])


def _open_read_only(path: Path) -> duckdb.DuckDBPyConnection:
    locked = (f"Session-Buddy holds {path}: stop Session-Buddy or copy the file and migrate the copy")
    if not path.exists():
        raise InvalidInput(f"{path} does not exist: pass Session-Buddy's reflection.duckdb "
                           "(by default ~/.claude/data/reflection.duckdb)", path=str(path))
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file: pass the path of a DuckDB database file", path=str(path))
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        text = str(exc)
        if "Could not set lock" in text or "Conflicting lock" in text or "different configuration" in text:
            raise SourceLocked(locked, path=str(path)) from None
        if "not a valid DuckDB database" in text:
            raise InvalidInput(f"{path} is not a DuckDB database file: pass Session-Buddy's reflection.duckdb "
                               "or knowledge_graph.duckdb", path=str(path)) from None
        first = text.splitlines()[0] if text else type(exc).__name__
        raise InvalidInput(f"cannot open {path} read-only ({first}): check that it is a DuckDB file written by "
                           f"DuckDB <= {duckdb.__version__}", path=str(path)) from None


class _Stream:
    """A server-side ordered cursor over one table, filtered to the wanted source ids (thread-confined)."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection, want: set[str]) -> None:
        self._cursor = cursor
        self._want = want
        self._names: list[str] = [d[0] for d in (cursor.description or [])]
        self._buffer: list[_Row] = []
        self._exhausted = False

    def take(self, n: int) -> list[_Row]:
        while len(self._buffer) < n and not self._exhausted:
            chunk = self._cursor.fetchmany(max(n, 512))
            if not chunk:
                self._exhausted = True
                break
            for values in chunk:
                row = dict(zip(self._names, values, strict=True))
                sid = row[_SOURCE_ID]
                if sid in self._want:  # a repeated id is taken once (the first row), like the keys
                    self._want.discard(sid)
                    self._buffer.append(row)
            if not self._want:
                self._exhausted = True
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def close(self) -> None:
        self._cursor.close()


class _DuckDBSource:
    """A read-only DuckDB file. Every call runs on one dedicated worker thread, never on the event loop."""

    def __init__(self, path: Path, role: _FileRole, file_id: str) -> None:
        self.path = path
        self.role = role
        self.file_id = file_id
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"duckdb-{role}")
        self._conn: duckdb.DuckDBPyConnection | None = None
        self.columns: dict[str, frozenset[str]] = {}
        """Column names per table, filled by :meth:`tables`."""

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))

    async def open(self) -> None:
        self._conn = await self._call(_open_read_only, self.path)

    async def close(self) -> None:
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=False)

    @property
    def conn(self) -> duckdb.DuckDBPyConnection:
        if self._conn is None:
            raise RuntimeError("source not open")
        return self._conn

    def size(self) -> int:
        return self.path.stat().st_size

    async def sha256(self) -> str:
        def digest() -> str:
            h = hashlib.sha256()
            with self.path.open("rb") as handle:
                for block in iter(partial(handle.read, 1 << 20), b""):
                    h.update(block)
            return h.hexdigest()

        return await self._call(digest)

    # --- metadata ----------------------------------------------------------------------------------

    def _tables_sync(self) -> list[tuple[str, list[ColumnInfo], int]]:
        names = [r[0] for r in self.conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = 'main' AND NOT temporary ORDER BY table_name").fetchall()]
        result: list[tuple[str, list[ColumnInfo], int]] = []
        for name in names:
            columns = [ColumnInfo(str(r[0]), str(r[1])) for r in self.conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = "
                "current_database() AND table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
                [name]).fetchall()]
            row = self.conn.execute(f"SELECT count(*) FROM {_quote(name)}").fetchone()
            result.append((name, columns, int(row[0]) if row else 0))
        return result

    async def tables(self) -> list[tuple[str, list[ColumnInfo], int]]:
        found = await self._call(self._tables_sync)
        self.columns = {name: frozenset(c.name for c in columns) for name, columns, _ in found}
        return found

    def has(self, table: str, *columns: str) -> bool:
        return table in self.columns and all(c in self.columns[table] for c in columns)

    def _count_sync(self, table: str, where: str) -> int:
        row = self.conn.execute(f"SELECT count(*) FROM {_quote(table)} WHERE {where}").fetchone()
        return int(row[0]) if row else 0

    async def count(self, table: str, where: str = "true") -> int:
        return await self._call(self._count_sync, table, where)

    def _keys_sync(self, spec: _TableSpec, with_project: bool) -> tuple[list[tuple[str, str | None]], int]:
        project = _quote("project") if with_project and "project" in spec.names else "NULL"
        rows = self.conn.execute(
            f"SELECT CAST({_quote('id')} AS VARCHAR), CAST({project} AS VARCHAR) FROM {_quote(spec.name)} "
            f"WHERE {_quote('id')} IS NOT NULL").fetchall()
        nulls = self._count_sync(spec.name, f"{_quote('id')} IS NULL")
        return [(str(r[0]), r[1]) for r in rows], nulls

    async def keys(self, spec: _TableSpec, *, with_project: bool) -> tuple[list[tuple[str, str | None]], int]:
        """(source id, project column) of every keyed row, and the number of rows without an id."""
        return await self._call(self._keys_sync, spec, with_project)

    # --- rows --------------------------------------------------------------------------------------

    def _open_stream_sync(self, spec: _TableSpec, lower: str, want: set[str]) -> _Stream:
        cursor = self.conn.cursor()
        cursor.execute(
            f"SELECT {spec.select_list()} FROM {_quote(spec.name)} WHERE CAST({_quote('id')} AS VARCHAR) >= ? "
            f"ORDER BY CAST({_quote('id')} AS VARCHAR)", [lower])
        return _Stream(cursor, want)

    async def stream(self, spec: _TableSpec, want: Iterable[str], batch_size: int) -> AsyncGenerator[list[_Row]]:
        """Batches of the wanted rows in source-id order (one sorted scan)."""
        wanted = set(want)
        if not wanted:
            return
        stream = await self._call(self._open_stream_sync, spec, min(wanted), wanted)
        try:
            while True:
                rows = await self._call(stream.take, batch_size)
                if not rows:
                    break
                yield rows
        finally:
            await self._call(stream.close)

    def _fetch_ids_sync(self, spec: _TableSpec, ids: list[str]) -> list[_Row]:
        cursor = self.conn.execute(
            f"SELECT {spec.select_list()} FROM {_quote(spec.name)} WHERE CAST({_quote('id')} AS VARCHAR) IN "
            f"(SELECT unnest(?::VARCHAR[])) ORDER BY CAST({_quote('id')} AS VARCHAR)", [ids])
        names = [d[0] for d in (cursor.description or [])]
        seen: set[str] = set()
        rows: list[_Row] = []
        for values in cursor.fetchall():
            row = dict(zip(names, values, strict=True))
            if row[_SOURCE_ID] not in seen:
                seen.add(row[_SOURCE_ID])
                rows.append(row)
        return rows

    async def fetch_ids(self, spec: _TableSpec, ids: Sequence[str], batch_size: int) -> AsyncGenerator[list[_Row]]:
        """Batches of the rows with these ids (for small sets: no full scan of the content)."""
        ordered = sorted(set(ids))
        for start in range(0, len(ordered), batch_size):
            rows = await self._call(self._fetch_ids_sync, spec, ordered[start:start + batch_size])
            if rows:
                yield rows

    # --- lookups for mapping -----------------------------------------------------------------------

    def _entities_sync(self, refs: list[str]) -> dict[str, _Row]:
        if not refs:
            return {}
        rows = self.conn.execute(
            "SELECT CAST(id AS VARCHAR), name, entity_type FROM kg_entities WHERE CAST(id AS VARCHAR) IN "
            "(SELECT unnest(?::VARCHAR[])) OR name IN (SELECT unnest(?::VARCHAR[]))", [refs, refs]).fetchall()
        found: dict[str, _Row] = {}
        for entity_id, name, entity_type in rows:
            info = {"id": entity_id, "name": name, "entity_type": entity_type}
            found.setdefault(str(entity_id), info)
            if name is not None:
                found.setdefault(str(name), info)
        return found

    async def entities(self, refs: Iterable[str]) -> dict[str, _Row]:
        """Entities by id (or by name, which older graphs stored in the edge) for relation rows."""
        if not self.has("kg_entities", "id", "name", "entity_type"):
            return {}
        return await self._call(self._entities_sync, sorted({r for r in refs if r}))

    def _tags_sync(self, ids: list[str]) -> dict[str, list[str]]:
        rows = self.conn.execute(
            "SELECT CAST(reflection_id AS VARCHAR), list(tag ORDER BY tag) FROM reflection_tags WHERE "
            "CAST(reflection_id AS VARCHAR) IN (SELECT unnest(?::VARCHAR[])) GROUP BY 1", [ids]).fetchall()
        return {str(r[0]): [str(t) for t in r[1] if t is not None] for r in rows}

    async def legacy_tags(self, ids: Sequence[str]) -> dict[str, list[str]]:
        """Tags of legacy reflections, which the old schema keeps in ``reflection_tags``."""
        if not self.has("reflection_tags", "reflection_id", "tag"):
            return {}
        return await self._call(self._tags_sync, list(ids))

    async def context_for(self, spec: _TableSpec, rows: Sequence[_Row]) -> _BatchContext:
        """What mapping a batch needs besides its rows: entity names for edges, tags for legacy rows."""
        ctx = _BatchContext()
        if spec.kind == "relation":
            ctx.entities = await self.entities(
                str(r.get(end)) for r in rows for end in ("from_entity", "to_entity") if r.get(end) is not None)
        elif spec.kind == "reflection" and spec.family.family == "legacy":
            ctx.tags = await self.legacy_tags([str(r[_SOURCE_ID]) for r in rows])
        return ctx


# --- mapping: a source row -> a MemoryRecord (pure, shared by run and validate) --------------------------


@dataclass(slots=True)
class _Mapped:
    source_id: str
    project: str
    record: MemoryRecord | None
    reason: str | None = None


@dataclass(slots=True)
class _BatchContext:
    entities: dict[str, _Row] = field(default_factory=dict)
    tags: dict[str, list[str]] = field(default_factory=dict)


def _aware(value: datetime) -> datetime:
    """DuckDB TIMESTAMP is naive; Session-Buddy writes UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _strip_nul(value: str, flags: set[str]) -> str:
    if "\x00" in value:
        flags.add("nul_bytes")
        return value.replace("\x00", "")
    return value


def _jsonable(value: Any, flags: set[str], depth: int = 0) -> Any:
    """Any DuckDB value as JSON the store accepts (no NUL, no NaN, string keys)."""
    if depth > 64:
        flags.add("too_deep")
        return None
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        flags.add("non_finite_number")
        return None
    if isinstance(value, str):
        return _strip_nul(value, flags)
    if isinstance(value, datetime):
        return _aware(value).isoformat()
    if isinstance(value, (date, dtime)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return _jsonable(float(value), flags, depth)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": len(bytes(value))}
    if isinstance(value, Mapping):
        return {_strip_nul(str(k), flags): _jsonable(v, flags, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, flags, depth + 1) for v in value]
    return _strip_nul(str(value), flags)


def _parse_json_column(value: Any, flags: set[str], column: str) -> tuple[Any, str | None]:
    """(parsed value, raw text if it was not valid JSON)."""
    if not isinstance(value, str):
        return _jsonable(value, flags), None
    try:
        return _jsonable(json.loads(value), flags), None
    except (ValueError, RecursionError):
        flags.add(f"invalid_json:{column}")
        return None, _strip_nul(value[:_MAX_RAW_CHARS], flags)


def _shrink_metadata(metadata: dict[str, Any], flags: set[str]) -> dict[str, Any]:
    """Drop the largest source fields until the metadata fits the store's limit."""
    encoded = len(json.dumps(metadata).encode("utf-8"))
    if encoded <= MAX_METADATA_BYTES:
        return metadata
    source: dict[str, Any] = metadata["source"]
    sizes = sorted(((len(json.dumps(v).encode("utf-8")), k) for k, v in source.items()
                    if k not in _RESERVED_SOURCE_KEYS), reverse=True)
    for size, key in sizes:
        source[key] = {"dropped_bytes": size}
        flags.add(f"dropped:{key}")
        encoded = len(json.dumps(metadata).encode("utf-8"))
        if encoded <= MAX_METADATA_BYTES:
            break
    for key in [k for k in metadata if k != "source"]:
        if len(json.dumps(metadata).encode("utf-8")) <= MAX_METADATA_BYTES:
            break
        metadata.pop(key)
    return metadata


def _short_text(value: Any, flags: set[str]) -> str | None:
    if not isinstance(value, str):
        return None
    value = _strip_nul(value, flags).strip()
    return value if value and len(value) <= _MAX_ID_CHARS else None


class _Mapper:
    """Turns one source row into a MemoryRecord, or a reason why it cannot be stored."""

    def __init__(self, *, project: str | None, dimension: int, max_content_bytes: int) -> None:
        self.project = project
        self.dimension = dimension
        self.max_content_bytes = max_content_bytes

    def target_project(self, row_project: Any) -> str:
        if self.project is not None:
            return self.project
        if isinstance(row_project, str):
            cleaned = row_project.replace("\x00", "").strip()
            if cleaned:
                return cleaned
        return "default"

    @staticmethod
    def _content(spec: _TableSpec, row: _Row, ctx: _BatchContext, flags: set[str]) -> tuple[Any, str]:
        """(content, memory_type) before sanitising."""
        if spec.kind == "conversation":
            return row.get("content"), "agent"
        if spec.kind == "reflection":
            insight_type = row.get("insight_type")
            is_insight = isinstance(insight_type, str) and insight_type.strip() != ""
            return row.get("content"), "insight" if is_insight else "agent"
        if spec.kind == "entity":
            name, kind = row.get("name"), row.get("entity_type")
            if not isinstance(name, str) or not name.strip():
                return None, "insight"
            head = f"{name} ({kind})" if isinstance(kind, str) and kind.strip() else name
            observations = [str(o) for o in (row.get("observations") or []) if o is not None and str(o).strip()]
            return "\n".join([head, *(f"- {o}" for o in observations)]), "insight"
        from_info = ctx.entities.get(str(row.get("from_entity")))
        to_info = ctx.entities.get(str(row.get("to_entity")))
        a = str(from_info["name"]) if from_info and from_info.get("name") else str(row.get("from_entity"))
        b = str(to_info["name"]) if to_info and to_info.get("name") else str(row.get("to_entity"))
        relation = str(row.get("relation_type") or "related_to").replace("_", " ").strip()
        if from_info is None or to_info is None:
            flags.add("dangling_entity")
        return f"{a} {relation} {b}", "insight"

    def map(self, spec: _TableSpec, row: _Row, ctx: _BatchContext, run_id: str | None) -> _Mapped:
        source_id = str(row[_SOURCE_ID])
        project = self.target_project(row.get("project"))
        flags: set[str] = set()
        raw, memory_type = self._content(spec, row, ctx, flags)
        if raw is None:
            return _Mapped(source_id, project, None, "content is NULL")
        content = _strip_nul(str(raw), flags)
        if not content.strip():
            return _Mapped(source_id, project, None, "content is empty")
        size = len(content.encode("utf-8", "surrogatepass"))
        if size > self.max_content_bytes:
            return _Mapped(source_id, project, None,
                           f"content is {size} bytes, over postgres.max_content_bytes={self.max_content_bytes}: "
                           "raise it and run again to migrate this row")
        record = MemoryRecord(
            content=content, memory_type=memory_type, project=project, source_system=_SYSTEM,
            session_id=_short_text(row.get("session_id"), flags),
            created_at=next((_aware(row[c]) for c in _TIMESTAMP_COLUMNS if isinstance(row.get(c), datetime)), None),
            metadata=self._metadata(spec, row, ctx, run_id, source_id, memory_type, flags))
        try:
            record.validate(dimension=self.dimension, max_content_bytes=self.max_content_bytes)
        except InvalidInput as exc:
            return _Mapped(source_id, project, None, exc.message)
        return _Mapped(source_id, project, record)

    @staticmethod
    def _metadata(spec: _TableSpec, row: _Row, ctx: _BatchContext, run_id: str | None, source_id: str,
                  memory_type: str, flags: set[str]) -> dict[str, Any]:
        source: dict[str, Any] = {"system": _SYSTEM, "file": spec.file_role, "file_id": spec.file_id,
                                  "table": spec.name, "id": source_id}
        if run_id is not None:
            source["run_id"] = run_id
        for column, value in row.items():
            if column in (_SOURCE_ID, "id") or (column == "content" and spec.kind in ("conversation", "reflection")):
                continue
            key = f"column_{column}" if column in _RESERVED_SOURCE_KEYS else column
            if column in _JSON_COLUMNS:
                parsed, raw = _parse_json_column(value, flags, column)
                source[key] = parsed
                if raw is not None:
                    source[f"{key}_raw"] = raw
            else:
                source[key] = _jsonable(value, flags)
        metadata: dict[str, Any] = {"source": source}
        tags = row.get("tags")
        tag_list = [t for t in _jsonable(tags, flags) if isinstance(t, str)] if isinstance(tags, list) else []
        tag_list += [t for t in ctx.tags.get(source_id, []) if t not in tag_list]
        if ctx.tags.get(source_id):
            source["reflection_tags"] = ctx.tags[source_id]
        if tag_list:
            metadata["tags"] = tag_list
        if memory_type == "insight" and isinstance(row.get("insight_type"), str):
            metadata["insight_type"] = _strip_nul(row["insight_type"], flags)
        if spec.kind == "relation":
            metadata["relation"] = _jsonable(row.get("relation_type"), flags)
            metadata["entities"] = [
                _jsonable(ctx.entities.get(str(row.get(end))) or {"id": row.get(end), "name": None}, flags)
                for end in ("from_entity", "to_entity")]
        elif spec.kind == "entity":
            metadata["entity"] = {"name": _jsonable(row.get("name"), flags),
                                  "entity_type": _jsonable(row.get("entity_type"), flags)}
        metadata = _shrink_metadata(metadata, flags)
        if flags:
            source["sanitized"] = sorted(flags)
        return metadata


# --- the migration ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Job:
    run_id: uuid.UUID
    target: str
    mapper: _Mapper
    batch_size: int
    concurrency: int
    progress: Callable[[ProgressEvent], None] | None
    reports: dict[str, TableReport]
    issues: list[RowIssue] = field(default_factory=list)
    issues_omitted: int = 0
    keyless: dict[str, int] = field(default_factory=dict)
    """Rows per table that cannot be keyed (no id, or a duplicate id): counted as errors, never recorded."""

    def issue(self, table: str, source_id: str | None, reason: str) -> None:
        if len(self.issues) < _MAX_ISSUES:
            self.issues.append(RowIssue(table, source_id, reason))
        else:
            self.issues_omitted += 1


@dataclass(slots=True)
class _Outcome:
    rows: int
    last_id: str
    added: int
    errors: int


class DuckDBMigration:
    """Inventory, run, validate and roll back migrations of Session-Buddy DuckDB files into ``store``.

    ``embedder`` follows the :class:`~oneiric_memory.protocols.Embedder` protocol; its ``model_id`` is bound
    to the store before anything is written.
    """

    def __init__(self, store: PgvectorMemoryStore, embedder: Embedder, settings: MemorySettings | None = None,
                 *, fault_hook: Callable[[str, int], None] | None = None) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings or store.settings
        # Test-only fault injection: called after a batch's memories are committed and before its items
        # are written (the worst moment for a crash); raising there simulates one.
        self._fault_hook = fault_hook
        self._embed_down_until = 0.0
        self._log = get_logger("oneiric_memory.migrate", component="duckdb_migration")

    # --- small helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _file_ids(path: Path, kg_path: Path | None, source_id: str | None) -> tuple[str, str | None]:
        main = source_id or str(path.resolve())
        if kg_path is None:
            return main, None
        return main, (f"{source_id}#knowledge_graph" if source_id else str(kg_path.resolve()))

    @asynccontextmanager
    async def _sources(self, path: Path, kg_path: Path | None, main_id: str,
                       kg_id: str | None) -> AsyncIterator[list[_DuckDBSource]]:
        """Open the reflection file and the optional knowledge-graph file read-only; always close them."""
        sources = [_DuckDBSource(path, "reflection", main_id)]
        if kg_path is not None:
            if kg_path.resolve() == path.resolve():
                raise InvalidInput("--knowledge-graph names the same file as PATH: pass knowledge_graph.duckdb")
            sources.append(_DuckDBSource(kg_path, "knowledge_graph", kg_id or str(kg_path.resolve())))
        try:
            for source in sources:
                await source.open()
            yield sources
        finally:
            for source in sources:
                await source.close()

    async def _scan(self, sources: Sequence[_DuckDBSource]) -> tuple[Inventory, list[tuple[_TableSpec,
                                                                                           _DuckDBSource]]]:
        tables: list[TableInventory] = []
        specs: list[tuple[_TableSpec, _DuckDBSource]] = []
        families: set[str] = set()
        notes: list[str] = []
        claimed: set[str] = set()
        for source in sources:
            for name, columns, rows in await source.tables():
                family = _MIGRATED_TABLES.get(name)
                missing = [c for c in family.required if c not in {col.name for col in columns}] if family else []
                migrate = family is not None and not missing and name not in claimed
                if family is None:
                    maps_to = _AUXILIARY_TABLES.get(name, "not migrated (Session-Buddy's operational data)")
                elif missing:
                    maps_to = f"not migrated: no {', '.join(missing)} column"
                    notes.append(f"{source.path}: {name} lacks {', '.join(missing)}; it is skipped")
                elif name in claimed:
                    maps_to = "not migrated: the same table was found in the other file first"
                else:
                    maps_to = family.maps_to
                inventory = TableInventory(file=source.role, path=str(source.path), name=name, rows=rows,
                                           columns=columns, migrate=migrate, maps_to=maps_to)
                if migrate and family is not None:
                    claimed.add(name)
                    families.add(family.family)
                    spec = _TableSpec(name, family, source.role, source.file_id, str(source.path), tuple(columns))
                    specs.append((spec, source))
                    inventory.split = await self._split(spec, source, rows)
                tables.append(inventory)
        main = sources[0]
        kg = sources[1] if len(sources) > 1 else None
        if kg is None and (main.path.parent / "knowledge_graph.duckdb").exists() and "kg_entities" not in claimed:
            notes.append(f"{main.path.parent / 'knowledge_graph.duckdb'} exists: pass --knowledge-graph to "
                         "migrate the knowledge graph too")
        if not specs:
            notes.append("no Session-Buddy table was found: nothing to migrate")
        order = list(_MIGRATED_TABLES)
        specs.sort(key=lambda item: order.index(item[0].name))
        inventory_result = Inventory(
            path=str(main.path), size_bytes=main.size(), kg_path=None if kg is None else str(kg.path),
            kg_size_bytes=None if kg is None else kg.size(),
            families=sorted(families), tables=tables, notes=notes)
        return inventory_result, specs

    @staticmethod
    async def _split(spec: _TableSpec, source: _DuckDBSource, rows: int) -> dict[str, int]:
        """Rows per target memory_type: reflections split on ``insight_type``."""
        if spec.kind == "reflection" and "insight_type" in spec.names:
            insights = await source.count(spec.name, "insight_type IS NOT NULL AND trim(insight_type) <> ''")
            return {"insight": insights, "agent": rows - insights}
        return {"insight" if spec.kind in ("entity", "relation") else "agent": rows}

    # --- inventory ---------------------------------------------------------------------------------------

    async def inventory(self, path: str | Path, kg_path: str | Path | None = None) -> Inventory:
        """Tables, rows, columns, file sizes and the mapping plan; opens the files read-only."""
        with span("migrate.inventory"):
            main, kg = Path(path), None if kg_path is None else Path(kg_path)
            async with self._sources(main, kg, *self._file_ids(main, kg, None)) as sources:
                inventory, _ = await self._scan(sources)
        return inventory

    # --- run ---------------------------------------------------------------------------------------------

    async def run(
        self,
        path: str | Path,
        kg_path: str | Path | None = None,
        *,
        project: str | None = None,
        batch_size: int = 256,
        concurrency: int | None = None,
        progress: Callable[[ProgressEvent], None] | None = None,
        dry_run: bool = False,
        bulk: bool | None = None,
        source_id: str | None = None,
    ) -> MigrationReport:
        """Migrate (or, with ``dry_run``, plan) one Session-Buddy file and its optional knowledge graph.

        An interrupted earlier run on the same source (status running or failed) is resumed under its run id.
        ``bulk=None`` picks the bulk-load path when the target is empty or the source has more than
        :data:`BULK_LOAD_ROWS` rows. ``source_id`` names the source for idempotency (default: its absolute
        path); give the same id when you migrate a fresh copy of the same file.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 10_000:
            raise InvalidInput("batch_size must be between 1 and 10,000")
        if project is not None and (not isinstance(project, str) or not project.strip() or "\x00" in project
                                    or len(project) > _MAX_ID_CHARS):
            raise InvalidInput("project must be a non-empty string without NUL bytes, at most 512 characters")
        main_path, kg = Path(path), None if kg_path is None else Path(kg_path)
        pg = self.settings.postgres
        workers = concurrency or max(1, min(self.settings.embedder.max_concurrency, pg.max_connections - 1, 4))
        mapper = _Mapper(project=project, dimension=self.store.dimension, max_content_bytes=pg.max_content_bytes)
        started = time.perf_counter()
        with span("migrate", dry_run=dry_run, batch_size=batch_size, project_override=project is not None) as sp:
            async with self._sources(main_path, kg, *self._file_ids(main_path, kg, source_id)) as sources:
                inventory, specs = await self._scan(sources)
                main_id, kg_id = sources[0].file_id, (sources[1].file_id if len(sources) > 1 else None)
                target = project or ""
                if dry_run:
                    report = await self._dry_run(inventory, specs, mapper, main_id, kg_id, project)
                    report.elapsed_s = time.perf_counter() - started
                    return report
                async with self.store.migration_ledger.source_lock([main_id], target):
                    report = await self._run_locked(
                        sources, inventory, specs, mapper, target, project, batch_size, workers, progress, bulk)
            report.elapsed_s = time.perf_counter() - started
            sp.set_attribute("rows_added", report.added)
            sp.set_attribute("rows_errors", report.errors)
        self._log.info("migration-finished", run_id=str(report.run_id), added=report.added, errors=report.errors,
                       skipped=report.skipped, pending=report.pending_embeddings, elapsed_s=round(report.elapsed_s, 2))
        return report

    async def _dry_run(self, inventory: Inventory, specs: list[tuple[_TableSpec, _DuckDBSource]], mapper: _Mapper,
                       main_id: str, kg_id: str | None, project: str | None) -> MigrationReport:
        """What a run would do: per table, the rows still to migrate. Reads only; writes nothing."""
        tables: list[TableReport] = []
        for spec, source in specs:
            keys, nulls = await source.keys(spec, with_project=mapper.project is None)
            done = await self._done_keys(spec)
            todo = {sid for sid, p in keys if (mapper.target_project(p), sid) not in done}
            tables.append(TableReport(table=spec.name, file=spec.file_role, maps_to=spec.family.maps_to,
                                      source_rows=len(keys) + nulls, to_migrate=len(todo),
                                      already_migrated=len({sid for sid, _ in keys}) - len(todo),
                                      target_rows=len(done)))
        return MigrationReport(
            run_id=None, status="dry_run", source_path=inventory.path, kg_path=inventory.kg_path, project=project,
            source_file_id=main_id, kg_file_id=kg_id, dry_run=True, bulk_load=False, resumed=False,
            embedding_model=self.embedder.model_id, tables=tables, inventory=inventory)

    async def _run_locked(self, sources: list[_DuckDBSource], inventory: Inventory,
                          specs: list[tuple[_TableSpec, _DuckDBSource]], mapper: _Mapper, target: str,
                          project: str | None, batch_size: int, workers: int,
                          progress: Callable[[ProgressEvent], None] | None, bulk: bool | None) -> MigrationReport:
        # Bind first: a store holding another model's vectors refuses before any row or run is written.
        await self.store.bind_embedding_model(self.embedder.model_id)
        main = sources[0]
        kg = sources[1] if len(sources) > 1 else None
        digests = await asyncio.gather(*(s.sha256() for s in sources))
        run_id, resumed = await self._start_run(main, kg, digests, project, batch_size, workers)
        reports = {spec.name: TableReport(table=spec.name, file=spec.file_role, maps_to=spec.family.maps_to)
                   for spec, _ in specs}
        job = _Job(run_id=run_id, target=target, mapper=mapper, batch_size=batch_size, concurrency=workers,
                   progress=progress, reports=reports)
        total_rows = inventory.rows_to_migrate
        use_bulk = bulk if bulk is not None else (total_rows > BULK_LOAD_ROWS or await self.store.migration_ledger.target_empty())
        self._log.info("migration-started", run_id=str(run_id), resumed=resumed, tables=len(specs),
                       rows=total_rows, bulk_load=use_bulk, batch_size=batch_size, concurrency=workers)
        try:
            async with AsyncExitStack() as stack:
                if use_bulk:
                    await stack.enter_async_context(self.store.bulk_loading())
                for spec, source in specs:
                    with span("migrate.table", table=spec.name, file=spec.file_role):
                        await self._migrate_table(job, spec, source)
            await self._final_counts(job, specs)
            await self._finish_run(job, "completed", None)
        except BaseException as exc:
            await asyncio.shield(self._finish_run_quietly(job, specs, exc))
            raise
        return MigrationReport(
            run_id=run_id, status="completed", source_path=str(main.path),
            kg_path=None if kg is None else str(kg.path), project=project, source_file_id=main.file_id,
            kg_file_id=None if kg is None else kg.file_id, dry_run=False, bulk_load=use_bulk, resumed=resumed,
            embedding_model=self.embedder.model_id, tables=list(reports.values()), issues=job.issues,
            issues_omitted=job.issues_omitted, inventory=inventory)

    async def _start_run(self, main: _DuckDBSource, kg: _DuckDBSource | None, digests: Sequence[str],
                         project: str | None, batch_size: int, workers: int) -> tuple[uuid.UUID, bool]:
        options = {"batch_size": batch_size, "concurrency": workers, "embedding_model": self.embedder.model_id,
                   "pid": os.getpid()}
        return await self.store.migration_ledger.start_run(
            source=(str(main.path), main.file_id, digests[0], main.size()),
            kg=None if kg is None else (str(kg.path), kg.file_id, digests[1], kg.size()),
            project=project, options=options)

    async def _finish_run(self, job: _Job, status: str, error: str | None) -> None:
        counts = {"tables": {name: asdict(report) for name, report in job.reports.items()},
                  "issues": [asdict(issue) for issue in job.issues[:100]], "issues_total":
                  len(job.issues) + job.issues_omitted}
        await self.store.migration_ledger.finish_run(job.run_id, status, error, counts)

    async def _finish_run_quietly(self, job: _Job, specs: list[tuple[_TableSpec, _DuckDBSource]],
                                  exc: BaseException) -> None:
        try:
            await self._final_counts(job, specs)
        except Exception as counting:  # the counts are a courtesy; the status below matters
            self._log.warning("migration-counts-not-computed", run_id=str(job.run_id), error=type(counting).__name__)
        try:
            detail = str(exc).splitlines()[0][:500] if str(exc) else ""
            await self._finish_run(job, "failed", f"{type(exc).__name__}: {detail}")
        except Exception as inner:  # the database itself may be what failed; the run stays resumable anyway
            self._log.warning("migration-status-not-saved", run_id=str(job.run_id), error=type(inner).__name__)

    # --- one table --------------------------------------------------------------------------------------

    async def _done_keys(self, spec: _TableSpec) -> set[tuple[str, str]]:
        """(project, source id) of rows already migrated whose memory still exists."""
        return await self.store.migration_ledger.done_keys(spec.file_id, spec.name)

    async def _checkpoint(self, job: _Job, spec: _TableSpec) -> tuple[str | None, int]:
        return await self.store.migration_ledger.checkpoint(job.target, spec.file_id, spec.name)

    async def _migrate_table(self, job: _Job, spec: _TableSpec, source: _DuckDBSource) -> None:
        report = job.reports[spec.name]
        keys, nulls = await source.keys(spec, with_project=job.mapper.project is None)
        targets: dict[str, str] = {}
        for sid, row_project in keys:
            if sid in targets:
                job.issue(spec.name, sid, "duplicate id in the source: only the first row with this id is migrated")
                job.keyless[spec.name] = job.keyless.get(spec.name, 0) + 1
                continue
            targets[sid] = job.mapper.target_project(row_project)
        if nulls:
            job.issue(spec.name, None, f"{nulls} row(s) have no id and cannot be keyed: they are not migrated")
            job.keyless[spec.name] = job.keyless.get(spec.name, 0) + nulls
        report.errors = job.keyless.get(spec.name, 0)
        done = await self._done_keys(spec)
        todo = sorted(sid for sid, target in targets.items() if (target, sid) not in done)
        checkpoint, rows_done = await self._checkpoint(job, spec)
        report.source_rows = len(keys) + nulls
        report.to_migrate = len(todo)
        report.already_migrated = len(targets) - len(todo)
        report.resumed_from = checkpoint if checkpoint is not None and todo else None
        total = report.source_rows
        state = {"done": report.already_migrated, "added": 0, "errors": report.errors}
        self._emit(job, spec, "start", state, total)
        if todo:
            # A few rows: fetch them by id. Otherwise one sorted scan from the smallest missing id.
            if len(todo) <= 2 * job.batch_size:
                batches = source.fetch_ids(spec, todo, job.batch_size)
            else:
                batches = source.stream(spec, todo, job.batch_size)
            async with aclosing(batches):
                await self._run_batches(job, spec, source, batches, state, total, rows_done)
        self._emit(job, spec, "done", state, total)

    def _emit(self, job: _Job, spec: _TableSpec, phase: Literal["start", "batch", "done"], state: dict[str, int],
              total: int) -> None:
        if job.progress is not None:
            job.progress(ProgressEvent(table=spec.name, phase=phase, done=state["done"], total=total,
                                       added=state["added"], errors=state["errors"]))

    async def _run_batches(self, job: _Job, spec: _TableSpec, source: _DuckDBSource,
                           batches: AsyncGenerator[list[_Row]], state: dict[str, int], total: int,
                           rows_done: int) -> None:
        """Batches run concurrently (bounded); the checkpoint advances in source order only."""
        slots = asyncio.Semaphore(job.concurrency)
        finished: dict[int, _Outcome] = {}
        order = {"next": 0, "rows_done": rows_done}
        commit = asyncio.Lock()

        async def work(seq: int, rows: list[_Row]) -> None:
            try:
                outcome = await self._process_batch(job, spec, source, rows, seq)
            finally:
                slots.release()
            async with commit:
                finished[seq] = outcome
                while order["next"] in finished:
                    ready = finished.pop(order["next"])
                    order["next"] += 1
                    order["rows_done"] += ready.rows
                    await self._write_checkpoint(job, spec, ready.last_id, order["rows_done"])
                    state["done"] += ready.rows
                    state["added"] += ready.added
                    state["errors"] += ready.errors
                    self._emit(job, spec, "batch", state, total)

        try:
            async with asyncio.TaskGroup() as group:
                seq = 0
                async for rows in batches:
                    await slots.acquire()
                    group.create_task(work(seq, rows))
                    seq += 1
        except BaseExceptionGroup as group_error:
            raise first_error(group_error) from None

    async def _process_batch(self, job: _Job, spec: _TableSpec, source: _DuckDBSource, rows: list[_Row],
                             seq: int) -> _Outcome:
        with span("migrate.batch", table=spec.name, rows=len(rows)):
            ctx = await source.context_for(spec, rows)
            mapped = [job.mapper.map(spec, row, ctx, str(job.run_id)) for row in rows]
            good = [m for m in mapped if m.record is not None]
            records = [m.record for m in good if m.record is not None]
            await self._embed(records)
            result = (await self.store.upsert_many(records, on_conflict="keep_first") if records
                      else UpsertResult(ids=[], inserted=[]))
            if self._fault_hook is not None:
                self._fault_hook(spec.name, seq)
            await self._write_items(job, spec, mapped, good, result)
            errors = 0
            for item in mapped:
                if item.reason is not None:
                    errors += 1
                    job.issue(spec.name, item.source_id, item.reason)
            return _Outcome(rows=len(rows), last_id=str(rows[-1][_SOURCE_ID]), added=result.new_count, errors=errors)

    async def _embed(self, records: list[MemoryRecord]) -> None:
        """Embed in place; on an unavailable embedder leave them pending and stop asking for a while."""
        if not records:
            return
        if time.monotonic() < self._embed_down_until:
            return
        try:
            vectors = await self.embedder.embed_documents([r.content for r in records])
        except EmbedderUnavailable as exc:
            self._embed_down_until = time.monotonic() + _EMBED_RETRY_S
            self._log.warning("embedder-unavailable-rows-pending", rows=len(records), error=exc.message[:200])
            return
        except EmbedderError as exc:
            self._log.warning("embedder-error-rows-pending", rows=len(records), error=type(exc).__name__)
            return
        if len(vectors) != len(records):
            self._log.warning("embedder-count-mismatch-rows-pending", rows=len(records), vectors=len(vectors))
            return
        for record, vector in zip(records, vectors, strict=True):
            record.embedding = vector
            record.embedding_model = self.embedder.model_id

    async def _write_items(self, job: _Job, spec: _TableSpec, mapped: list[_Mapped], good: list[_Mapped],
                           result: UpsertResult) -> None:
        payload: list[dict[str, Any]] = []
        for item, memory_id, inserted in zip(good, result.ids, result.inserted, strict=True):
            assert item.record is not None
            payload.append({"project": item.project, "source_id": item.source_id, "memory_id": str(memory_id),
                            "memory_type": item.record.memory_type, "content_hash": item.record.content_hash,
                            "inserted": inserted, "status": "migrated", "reason": None})
        for item in mapped:
            if item.record is None:
                payload.append({"project": item.project, "source_id": item.source_id, "memory_id": None,
                                "memory_type": None, "content_hash": None, "inserted": False, "status": "skipped",
                                "reason": (item.reason or "")[:1000]})
        await self.store.migration_ledger.write_items(job.run_id, spec.file_id, spec.name, payload)

    async def _write_checkpoint(self, job: _Job, spec: _TableSpec, last_id: str, rows_done: int) -> None:
        counts = {"tables": {name: asdict(report) for name, report in job.reports.items()}}
        await self.store.migration_ledger.write_checkpoint(job.run_id, job.target, spec.file_id, spec.name, last_id,
                                                           rows_done, counts)

    async def _final_counts(self, job: _Job, specs: list[tuple[_TableSpec, _DuckDBSource]]) -> None:
        """Exact per-table numbers from migration_items (which survive crashes), so a resumed run is exact."""
        for spec, _ in specs:
            row = await self.store.migration_ledger.table_counts(job.run_id, spec.file_id, spec.name,
                                                                 job.mapper.project)
            report = job.reports[spec.name]
            if row is not None:
                report.added = int(row["added"])
                report.deduplicated = int(row["dedup"])
                report.errors = int(row["errors"]) + job.keyless.get(spec.name, 0)
                report.pending_embeddings = int(row["pending"])
                report.target_rows = int(row["target_rows"])

    # --- validate ---------------------------------------------------------------------------------------

    async def _run_row(self, run_id: uuid.UUID | str) -> asyncpg.Record:
        try:
            parsed = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
        except ValueError:
            raise InvalidInput(f"{str(run_id)[:64]!r} is not a run id (UUID): list runs with "
                               "`oneiric-memory migrate-duckdb --list`") from None
        row = await self.store.migration_ledger.run(parsed)
        if row is None:
            raise InvalidInput(f"no migration run {parsed} in schema {self.store.schema!r}: list runs with "
                               "`oneiric-memory migrate-duckdb --list`", run_id=str(parsed))
        return row

    async def validate(self, run_id: uuid.UUID | str, *, sample: int | None = None,
                       seed: int | None = None) -> ValidationReport:
        """Compare the run's source files, as they are now, with the target.

        Per table: every keyed source row must have an item, every migrated item a memory, and no item may
        lack its source row; then the content hash of every row (``sample=None``) or of a random sample is
        recomputed from the source and compared with the stored memory.
        """
        if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
            raise InvalidInput("sample must be a positive number of rows (or None for all rows)")
        run = await self._run_row(run_id)
        if run["status"] == "rolled_back":
            raise InvalidInput(f"run {run['run_id']} was rolled back: there is nothing to validate")
        main, kg = Path(run["source_path"]), None if run["kg_path"] is None else Path(run["kg_path"])
        mapper = _Mapper(project=run["project"], dimension=self.store.dimension,
                         max_content_bytes=self.settings.postgres.max_content_bytes)
        rng = random.Random(seed)
        tables: list[TableValidation] = []
        problems: list[str] = []
        warnings: list[str] = []
        with span("migrate.validate", sample=sample):
            async with self._sources(main, kg, run["source_file_id"], run["kg_file_id"]) as sources:
                _, specs = await self._scan(sources)
                for spec, source in specs:
                    tables.append(await self._validate_table(spec, source, mapper, sample, rng, problems, warnings))
        ok = all(t.ok for t in tables)
        if not tables:
            problems.append("no Session-Buddy table was found in the source files")
            ok = False
        return ValidationReport(run_id=run["run_id"], ok=ok, sample=sample, tables=tables, problems=problems[:200],
                                warnings=warnings[:200])

    async def _validate_table(self, spec: _TableSpec, source: _DuckDBSource, mapper: _Mapper, sample: int | None,
                              rng: random.Random, problems: list[str], warnings: list[str]) -> TableValidation:
        result = TableValidation(table=spec.name, file=spec.file_role)
        keys, nulls = await source.keys(spec, with_project=mapper.project is None)
        expected: dict[str, str] = {}
        for sid, row_project in keys:
            expected.setdefault(sid, mapper.target_project(row_project))
        result.source_rows = len(keys) + nulls
        result.unkeyed = nulls + (len(keys) - len(expected))
        if result.unkeyed:
            warnings.append(f"{spec.name}: {result.unkeyed} source row(s) have no id or a duplicate id")
        rows = await self.store.migration_ledger.table_items(spec.file_id, spec.name)
        items = {(r["project"], r["source_id"]): r for r in rows}
        for sid, project in expected.items():
            item = items.get((project, sid))
            if item is None:
                result.missing += 1
                if result.missing <= 20:
                    problems.append(f"{spec.name}: source row {sid} has not been migrated")
            elif item["status"] == "skipped":
                result.skipped += 1
                if result.skipped <= 20:
                    warnings.append(f"{spec.name}: source row {sid} was skipped: {item['reason']}")
            elif not item["present"]:
                result.orphaned += 1
                if result.orphaned <= 20:
                    problems.append(f"{spec.name}: memory {item['memory_id']} of source row {sid} is missing")
            else:
                result.migrated += 1
        for (project, sid), item in items.items():
            if item["run_project"] == mapper.project and expected.get(sid) != project:
                result.extra += 1
                if result.extra <= 20:
                    problems.append(f"{spec.name}: target holds source row {sid}, which is no longer in the source")
        checkable = sorted(sid for sid, project in expected.items()
                           if (item := items.get((project, sid))) is not None and item["status"] == "migrated"
                           and item["present"])
        if sample is not None and sample < len(checkable):
            checkable = sorted(rng.sample(checkable, sample))
        if checkable:
            await self._check_hashes(spec, source, mapper, checkable, expected, items, result, problems)
        return result

    async def _check_hashes(self, spec: _TableSpec, source: _DuckDBSource, mapper: _Mapper, ids: list[str],
                            expected: Mapping[str, str], items: Mapping[tuple[str, str], asyncpg.Record],
                            result: TableValidation, problems: list[str]) -> None:
        batches = (source.stream(spec, ids, _LOOKUP_CHUNK) if len(ids) > 2 * _LOOKUP_CHUNK
                   else source.fetch_ids(spec, ids, _LOOKUP_CHUNK))
        async with aclosing(batches):
            async for rows in batches:
                await self._check_batch(spec, source, mapper, rows, expected, items, result, problems)

    async def _check_batch(self, spec: _TableSpec, source: _DuckDBSource, mapper: _Mapper, rows: list[_Row],
                           expected: Mapping[str, str], items: Mapping[tuple[str, str], asyncpg.Record],
                           result: TableValidation, problems: list[str]) -> None:
        ctx = await source.context_for(spec, rows)
        wanted: list[tuple[str, _Mapped, asyncpg.Record]] = []
        for row in rows:
            mapped = mapper.map(spec, row, ctx, None)
            item = items[(expected[mapped.source_id], mapped.source_id)]
            wanted.append((mapped.source_id, mapped, item))
        stored = await self.store.migration_ledger.stored_contents([(w[2]["project"], w[2]["memory_id"])
                                                                     for w in wanted])
        by_key = {(r["project"], r["id"]): r for r in stored}
        for sid, mapped, item in wanted:
            result.hash_checked += 1
            memory = by_key.get((item["project"], item["memory_id"]))
            reason: str | None = None
            if mapped.record is None:
                reason = f"the source row no longer maps to a memory ({mapped.reason})"
            elif memory is None:
                reason = "its memory disappeared during validation"
            elif content_hash(memory["content"]) != mapped.record.content_hash:
                reason = "the stored content differs from the source"
            elif memory["memory_type"] != mapped.record.memory_type:
                reason = f"memory_type is {memory['memory_type']}, expected {mapped.record.memory_type}"
            if reason is not None:
                result.hash_mismatches += 1
                if result.hash_mismatches <= 20:
                    problems.append(f"{spec.name}: source row {sid}: {reason}")

    # --- rollback ---------------------------------------------------------------------------------------

    async def rollback(self, run_id: uuid.UUID | str) -> RollbackReport:
        """Remove exactly what the run added and mark it ``rolled_back``.

        Deleted: the memories the run inserted (including any inserted by a crashed attempt before its items
        were written). Kept: pre-existing memories the run only mapped to, and memories another run also maps
        to (that run becomes their owner). The run's items and its checkpoints go too, so a later run
        migrates the source again.
        """
        run = await self._run_row(run_id)
        rid: uuid.UUID = run["run_id"]
        previous = str(run["status"])
        if previous == "rolled_back":
            return RollbackReport(rid, previous, previous, 0, 0, 0)
        target = run["project"] or ""
        file_ids = [f for f in (run["source_file_id"], run["kg_file_id"]) if f is not None]
        with span("migrate.rollback"):
            async with self.store.migration_ledger.source_lock([run["source_file_id"]], target):
                deleted, kept, items_deleted = await self.store.migration_ledger.rollback(
                    rid, target=target, file_ids=file_ids, previous_status=previous)
        self._log.info("migration-rolled-back", run_id=str(rid), memories_deleted=deleted, kept_shared=kept,
                       items_deleted=items_deleted)
        return RollbackReport(rid, previous, "rolled_back", deleted, kept, items_deleted)

    # --- listing ----------------------------------------------------------------------------------------

    async def list_runs(self, limit: int = 20) -> list[RunSummary]:
        """The most recent runs, newest first."""
        rows = await self.store.migration_ledger.list_runs(max(1, min(limit, 1000)))
        return [RunSummary(run_id=r["run_id"], status=r["status"], source_path=r["source_path"], kg_path=r["kg_path"],
                           project=r["project"], started_at=r["started_at"], finished_at=r["finished_at"],
                           error=r["error"], counts=r["counts"] if isinstance(r["counts"], dict) else {})
                for r in rows]
