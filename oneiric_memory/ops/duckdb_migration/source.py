"""The source side: Session-Buddy's DuckDB files, each opened read-only on its own worker thread.

Tables are detected (``duckdb_tables()``, ``information_schema``), not assumed: a file may hold the v2 family,
the legacy family or both, and the knowledge graph lives in a second file. DuckDB calls block, so each
file gets one thread; a file Session-Buddy holds open becomes :class:`~oneiric_memory.errors.SourceLocked`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import duckdb

from oneiric_memory.adapters.pgvector.schema import quote_ident
from oneiric_memory.errors import (
    InvalidInput,
    SourceLocked,
)
from oneiric_memory.ops.duckdb_migration.reports import ColumnInfo

__all__ = ["AUXILIARY_TABLES", "JSON_COLUMNS", "LOOKUP_CHUNK", "MIGRATED_TABLES", "SKIPPED_COLUMNS", "SOURCE_ID",
           "TIMESTAMP_COLUMNS", "BatchContext", "DuckDBSource", "Family", "FileRole", "Kind", "Row", "TableSpec",
           "is_vector_or_blob", "open_read_only"]

_T = TypeVar("_T")
Row = dict[str, Any]
SOURCE_ID = "__source_id"
LOOKUP_CHUNK = 1000

Kind = Literal["conversation", "reflection", "entity", "relation"]
FileRole = Literal["reflection", "knowledge_graph"]


@dataclass(frozen=True, slots=True)
class Family:
    kind: Kind
    family: str
    required: tuple[str, ...]
    maps_to: str


MIGRATED_TABLES: dict[str, Family] = {
    "conversations_v2": Family("conversation", "v2", ("id", "content"), "agent"),
    "reflections_v2": Family("reflection", "v2", ("id", "content"), "insight if insight_type is set or tagged insight/om:<id> (0.36), else agent"),
    "conversations": Family("conversation", "legacy", ("id", "content"), "agent"),
    "reflections": Family("reflection", "legacy", ("id", "content"), "insight if insight_type is set or tagged insight/om:<id> (0.36), else agent"),
    "kg_entities": Family("entity", "knowledge_graph", ("id", "name"),
                           "insight: '<name> (<type>)' and its observations"),
    "kg_relationships": Family("relation", "knowledge_graph", ("id", "from_entity", "to_entity", "relation_type"),
                                "insight: '<A> <relation> <B>', entities in metadata"),
}
AUXILIARY_TABLES = {"reflection_tags": "folded into the tags of legacy `reflections` rows"}
JSON_COLUMNS = frozenset({"metadata", "properties"})
SKIPPED_COLUMNS = frozenset({"embedding", "fingerprint", "searchable_content"})
TIMESTAMP_COLUMNS = ("created_at", "timestamp", "updated_at")



@dataclass(slots=True)
class BatchContext:
    entities: dict[str, Row] = field(default_factory=dict)
    tags: dict[str, list[str]] = field(default_factory=dict)




def is_vector_or_blob(column: ColumnInfo) -> bool:
    kind = column.data_type.upper()
    return "BLOB" in kind or (kind.endswith("]") and kind.split("[", 1)[0] in ("FLOAT", "DOUBLE", "REAL"))


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A source table the migration reads: its file, kind and the columns worth keeping."""

    name: str
    family: Family
    file_role: FileRole
    file_id: str
    path: str
    columns: tuple[ColumnInfo, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns)

    @property
    def kind(self) -> Kind:
        return self.family.kind

    def select_list(self) -> str:
        keep = [quote_ident(c.name) for c in self.columns
                if c.name not in SKIPPED_COLUMNS and not is_vector_or_blob(c)]
        return ", ".join([f"CAST({quote_ident('id')} AS VARCHAR) AS {quote_ident(SOURCE_ID)}", *keep])


def open_read_only(path: Path) -> duckdb.DuckDBPyConnection:
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
        self._buffer: list[Row] = []
        self._exhausted = False

    def take(self, n: int) -> list[Row]:
        while len(self._buffer) < n and not self._exhausted:
            chunk = self._cursor.fetchmany(max(n, 512))
            if not chunk:
                self._exhausted = True
                break
            for values in chunk:
                row = dict(zip(self._names, values, strict=True))
                sid = row[SOURCE_ID]
                if sid in self._want:  # a repeated id is taken once (the first row), like the keys
                    self._want.discard(sid)
                    self._buffer.append(row)
            if not self._want:
                self._exhausted = True
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def close(self) -> None:
        self._cursor.close()


class DuckDBSource:
    """A read-only DuckDB file. Every call runs on one dedicated worker thread, never on the event loop."""

    def __init__(self, path: Path, role: FileRole, file_id: str) -> None:
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
        self._conn = await self._call(open_read_only, self.path)

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
            row = self.conn.execute(f"SELECT count(*) FROM {quote_ident(name)}").fetchone()
            result.append((name, columns, int(row[0]) if row else 0))
        return result

    async def tables(self) -> list[tuple[str, list[ColumnInfo], int]]:
        found = await self._call(self._tables_sync)
        self.columns = {name: frozenset(c.name for c in columns) for name, columns, _ in found}
        return found

    def has(self, table: str, *columns: str) -> bool:
        return table in self.columns and all(c in self.columns[table] for c in columns)

    def _count_sync(self, table: str, where: str) -> int:
        row = self.conn.execute(f"SELECT count(*) FROM {quote_ident(table)} WHERE {where}").fetchone()
        return int(row[0]) if row else 0

    async def count(self, table: str, where: str = "true") -> int:
        return await self._call(self._count_sync, table, where)

    def _keys_sync(self, spec: TableSpec, with_project: bool) -> tuple[list[tuple[str, str | None]], int]:
        project = quote_ident("project") if with_project and "project" in spec.names else "NULL"
        rows = self.conn.execute(
            f"SELECT CAST({quote_ident('id')} AS VARCHAR), CAST({project} AS VARCHAR) FROM {quote_ident(spec.name)} "
            f"WHERE {quote_ident('id')} IS NOT NULL").fetchall()
        nulls = self._count_sync(spec.name, f"{quote_ident('id')} IS NULL")
        return [(str(r[0]), r[1]) for r in rows], nulls

    async def keys(self, spec: TableSpec, *, with_project: bool) -> tuple[list[tuple[str, str | None]], int]:
        """(source id, project column) of every keyed row, and the number of rows without an id."""
        return await self._call(self._keys_sync, spec, with_project)

    # --- rows --------------------------------------------------------------------------------------

    def _open_stream_sync(self, spec: TableSpec, lower: str, want: set[str]) -> _Stream:
        cursor = self.conn.cursor()
        cursor.execute(
            f"SELECT {spec.select_list()} FROM {quote_ident(spec.name)} WHERE CAST({quote_ident('id')} AS VARCHAR) >= ? "
            f"ORDER BY CAST({quote_ident('id')} AS VARCHAR)", [lower])
        return _Stream(cursor, want)

    async def stream(self, spec: TableSpec, want: Iterable[str], batch_size: int) -> AsyncGenerator[list[Row]]:
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

    def _fetch_ids_sync(self, spec: TableSpec, ids: list[str]) -> list[Row]:
        cursor = self.conn.execute(
            f"SELECT {spec.select_list()} FROM {quote_ident(spec.name)} WHERE CAST({quote_ident('id')} AS VARCHAR) IN "
            f"(SELECT unnest(?::VARCHAR[])) ORDER BY CAST({quote_ident('id')} AS VARCHAR)", [ids])
        names = [d[0] for d in (cursor.description or [])]
        seen: set[str] = set()
        rows: list[Row] = []
        for values in cursor.fetchall():
            row = dict(zip(names, values, strict=True))
            if row[SOURCE_ID] not in seen:
                seen.add(row[SOURCE_ID])
                rows.append(row)
        return rows

    async def fetch_ids(self, spec: TableSpec, ids: Sequence[str], batch_size: int) -> AsyncGenerator[list[Row]]:
        """Batches of the rows with these ids (for small sets: no full scan of the content)."""
        ordered = sorted(set(ids))
        for start in range(0, len(ordered), batch_size):
            rows = await self._call(self._fetch_ids_sync, spec, ordered[start:start + batch_size])
            if rows:
                yield rows

    # --- lookups for mapping -----------------------------------------------------------------------

    def _entities_sync(self, refs: list[str]) -> dict[str, Row]:
        if not refs:
            return {}
        rows = self.conn.execute(
            "SELECT CAST(id AS VARCHAR), name, entity_type FROM kg_entities WHERE CAST(id AS VARCHAR) IN "
            "(SELECT unnest(?::VARCHAR[])) OR name IN (SELECT unnest(?::VARCHAR[]))", [refs, refs]).fetchall()
        found: dict[str, Row] = {}
        for entity_id, name, entity_type in rows:
            info = {"id": entity_id, "name": name, "entity_type": entity_type}
            found.setdefault(str(entity_id), info)
            if name is not None:
                found.setdefault(str(name), info)
        return found

    async def entities(self, refs: Iterable[str]) -> dict[str, Row]:
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

    async def context_for(self, spec: TableSpec, rows: Sequence[Row]) -> BatchContext:
        """What mapping a batch needs besides its rows: entity names for edges, tags for legacy rows."""
        ctx = BatchContext()
        if spec.kind == "relation":
            ctx.entities = await self.entities(
                str(r.get(end)) for r in rows for end in ("from_entity", "to_entity") if r.get(end) is not None)
        elif spec.kind == "reflection" and spec.family.family == "legacy":
            ctx.tags = await self.legacy_tags([str(r[SOURCE_ID]) for r in rows])
        return ctx


