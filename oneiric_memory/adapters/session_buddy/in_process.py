"""In-process backend: Session-Buddy's own adapter opened on its DuckDB file for one batch.

Every call runs on the worker thread (:mod:`.worker`). Session-Buddy's API differs by version and is
detected by capability, never by version number:

- 0.23 has ``store_insight``/``search_insights`` (26-character ULID ids, rows with ``insight_type``);
- 0.36 keeps only reflections (``store_reflection(..., project, source_artifact_uri)``, uuid7 hex ids).

Lookups, listing and deletion by our ``om:<insight_id>`` tag are our own SQL on the table Session-Buddy
keeps reflections in (detected, since files vary); neither version can delete a reflection by itself.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from oneiric_memory.adapters.session_buddy.backend import is_lock_error, lock_error, mapped
from oneiric_memory.adapters.session_buddy.tags import (
    TAG_ID_PREFIX,
    TAG_INSIGHT,
    TAG_PROJECT_PREFIX,
    artifact_uri,
    hit_from,
    id_tags,
    insight_ids,
    is_wildcard,
    looks_like_insight,
    query_tokens,
    session_buddy_project,
    tags_for,
)
from oneiric_memory.adapters.session_buddy.worker import LoopThread
from oneiric_memory.errors import InsightSinkError
from oneiric_memory.insights import Insight, InsightHit

__all__ = ["InProcessBackend", "SessionBuddyModule", "has_hnsw_index", "import_session_buddy"]


@dataclass(frozen=True, slots=True)
class SessionBuddyModule:
    """Session-Buddy's adapter module, imported once on the worker thread."""

    module: Any
    adapter_cls: Any
    settings_cls: Any
    default_path: Path | None


async def import_session_buddy(*, find_default_path: bool) -> SessionBuddyModule:
    """Import Session-Buddy's adapter (slow: it pulls crackerjack and mcp-common); runs on the worker."""
    from session_buddy.adapters import reflection_adapter_oneiric as module
    from session_buddy.adapters.settings import ReflectionAdapterSettings

    default_path: Path | None = None
    if find_default_path:
        with contextlib.suppress(Exception):  # Session-Buddy's own data_dir, when it can tell
            default_path = Path(ReflectionAdapterSettings.from_settings().database_path)
    return SessionBuddyModule(module=module, adapter_cls=module.ReflectionDatabaseAdapterOneiric,
                              settings_cls=ReflectionAdapterSettings, default_path=default_path)


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    columns: frozenset[str]

    @property
    def order_column(self) -> str:
        for column in ("created_at", "timestamp"):
            if column in self.columns:
                return column
        return "id"

    def insight_predicate(self) -> str:
        """Rows that are insights: our tag, or (0.23) Session-Buddy's own ``insight_type``."""
        if "insight_type" in self.columns:
            return f"(list_contains(tags, '{TAG_INSIGHT}') OR insight_type IS NOT NULL)"
        return f"list_contains(tags, '{TAG_INSIGHT}')"

    def project_filter(self, projects: frozenset[str]) -> tuple[str, list[Any]]:
        """Our ``project:<name>`` tags, and Session-Buddy's own ``project`` column when the file has one."""
        tagged = [f"{TAG_PROJECT_PREFIX}{p}" for p in sorted(projects)]
        if "project" in self.columns:
            return "(list_has_any(tags, ?::VARCHAR[]) OR list_contains(?::VARCHAR[], project))", [tagged,
                                                                                                  sorted(projects)]
        return "list_has_any(tags, ?::VARCHAR[])", [tagged]


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


def has_hnsw_index(conn: Any) -> bool:
    """Whether the file holds HNSW (vss) indexes, as Session-Buddy's server creates them when vss is available.

    DuckDB refuses to write to a table whose HNSW index it cannot bind, so such a file needs vss loaded.
    """
    try:
        row = conn.execute("SELECT count(*) FROM duckdb_indexes() WHERE upper(sql) LIKE '%USING HNSW%'").fetchone()
    except duckdb.Error:
        return False
    return bool(row and row[0])


def _hand_connection(sb: SessionBuddyModule, path: Path) -> tuple[Any, bool]:
    """Put a quick-to-initialize connection into Session-Buddy's shared-connection cache (worker thread).

    Session-Buddy's ``initialize()`` runs ``INSTALL httpfs`` twice; offline each try costs seconds while
    the lock is held. A connection opened with ``enable_external_access=false`` makes them fail at once.
    Returns ``(cache entry or None, needs_vss)``: release the entry once the adapter took its reference; it is
    None when the cache is absent or already holds this file, or when the file has HNSW indexes (then the
    adapter must open it itself with HNSW enabled, so it loads vss; our restricted connection could not).
    Lock errors propagate.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    cache = getattr(sb.module, "_typed_connection_cache", None)
    entry_cls = getattr(sb.module, "_CachedConnection", None)
    key = str(path.resolve())
    if not isinstance(cache, dict) or entry_cls is None or key in cache:
        return None, False
    if path.exists() and path.stat().st_size == 0:
        path.unlink()  # Session-Buddy does the same: DuckDB refuses an empty file
    try:
        conn = duckdb.connect(str(path), read_only=False,
                              config={"allow_unsigned_extensions": True, "enable_external_access": False})
    except duckdb.Error as exc:
        if is_lock_error(exc):
            raise
        return None, False  # e.g. a stale WAL: Session-Buddy's own open repairs it
    if has_hnsw_index(conn):
        conn.close()
        return None, True
    entry = entry_cls(conn, key)
    cache[key] = entry
    return entry, False


async def _open_adapter(sb: SessionBuddyModule, path: Path, enable_embeddings: bool) -> Any:
    """Open Session-Buddy's adapter on ``path`` (runs on the worker thread, where blocking is fine)."""
    handed, needs_vss = _hand_connection(sb, path)
    adapter = sb.adapter_cls(settings=sb.settings_cls(database_path=path, enable_embeddings=enable_embeddings,
                                                      enable_hnsw_index=needs_vss))
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


def _accepted_keywords(method: Any) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return frozenset()


class InProcessBackend:
    """Session-Buddy's adapter opened on the file for one batch; every call on the worker thread."""

    mode = "in_process"

    def __init__(self, worker: LoopThread, adapter: Any, table: _Table, *, bound_s: float,
                 enable_embeddings: bool) -> None:
        self._worker = worker
        self._adapter = adapter
        self._table = table
        self._timeout = bound_s
        self._embeddings = enable_embeddings

    @classmethod
    async def open(cls, worker: LoopThread, sb: SessionBuddyModule, path: Path, *, bound_s: float,
                   enable_embeddings: bool) -> InProcessBackend:
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
            if is_lock_error(exc):
                raise lock_error(path, exc) from None
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

    async def _store(self, insight: Insight) -> str:
        tags = tags_for(insight)
        store_insight = getattr(self._adapter, "store_insight", None)
        if callable(store_insight):  # Session-Buddy before 0.36: a real insight row (insight_type)
            return str(await store_insight(insight.content, insight_type=tags[1], topics=tags,
                                           projects=[insight.project]))
        # Session-Buddy 0.36 keeps only reflections; pass what this version's store_reflection accepts.
        store_reflection = self._adapter.store_reflection
        accepted = _accepted_keywords(store_reflection)
        extra: dict[str, Any] = {}
        project = session_buddy_project(insight.project)
        if project is not None and "project" in accepted:
            extra["project"] = project
        uri = artifact_uri(insight)
        if uri is not None and "source_artifact_uri" in accepted:
            extra["source_artifact_uri"] = uri
        return str(await store_reflection(insight.content, tags=tags, **extra))

    async def deliver(self, insight: Insight) -> tuple[str, bool]:
        async def delivering() -> tuple[str, bool]:
            existing = self._find(insight.insight_id)
            if existing is not None:
                return existing, False
            return await self._store(insight), True

        return await mapped(self._worker.run(delivering, bound_s=self._timeout, what="deliver"), "deliver")

    def _select(self, score: str, where: str, params: list[Any], fetch: int, *,
                projects: frozenset[str] | None) -> list[Any]:
        table = self._table
        kind = "insight_type" if "insight_type" in table.columns else "NULL"
        project = "project" if "project" in table.columns else "NULL"
        where = f"{table.insight_predicate()} AND {where}"
        params = list(params)
        if projects is not None:
            clause, values = table.project_filter(projects)
            where += f" AND {clause}"
            params += values
        return list(self._adapter.conn.execute(
            f"SELECT id, content, tags, kind, s, p FROM ("
            f"  SELECT id, content, tags, {kind} AS kind, {project} AS p, ({score}) AS s,"
            f"         {table.order_column} AS o"
            f"  FROM {table.name} WHERE {where}"
            f") WHERE s > 0 ORDER BY s DESC, o DESC NULLS LAST LIMIT ?",
            [*params, fetch],
        ).fetchall())

    def _token_search(self, query: str, fetch: int, projects: frozenset[str] | None) -> list[InsightHit]:
        """Case-insensitive any-word match, ranked by the share of query words found.

        Session-Buddy 0.23's own text search matches the whole query as one case-sensitive substring,
        which misses most multi-word queries when embeddings are off; this complements it.
        """
        tokens = query_tokens(query)
        if not tokens:
            return []
        score = " + ".join(["CAST(contains(lower(content), ?) AS INTEGER)"] * len(tokens))
        rows = self._select(score, "TRUE", list(tokens), fetch, projects=projects)
        return [hit_from(r[0], r[1], r[2], r[3], float(r[4]) / len(tokens), r[5]) for r in rows]

    def _listing(self, fetch: int, projects: frozenset[str] | None) -> list[InsightHit]:
        """Every insight, newest first (the wildcard, whatever Session-Buddy's version can list)."""
        rows = self._select("1", "TRUE", [], fetch, projects=projects)
        return [hit_from(r[0], r[1], r[2], r[3], None, r[5]) for r in rows]

    async def search(self, query: str, fetch: int, projects: frozenset[str] | None) -> list[InsightHit]:
        async def searching() -> list[InsightHit]:
            hits: list[InsightHit] = []
            search_insights = getattr(self._adapter, "search_insights", None)
            if callable(search_insights):  # Session-Buddy before 0.36 ('*' lists everything there too)
                for row in await search_insights(query, limit=fetch, use_embeddings=self._embeddings):
                    hits.append(hit_from(row.get("id"), row.get("content"), row.get("tags"),
                                         row.get("insight_type"), row.get("similarity"), row.get("project")))
            if is_wildcard(query):
                hits.extend(self._listing(fetch, projects))
                return hits
            for row in await self._adapter.search_reflections(query, limit=fetch, use_embeddings=self._embeddings,
                                                              use_cache=False):
                if looks_like_insight(row.get("tags")):
                    hits.append(hit_from(row.get("id"), row.get("content"), row.get("tags"), None,
                                         row.get("similarity"), row.get("project")))
            hits.extend(self._token_search(query, fetch, projects))
            return hits

        return await mapped(self._worker.run(searching, bound_s=self._timeout, what="search"), "search")

    async def delete(self, ids: Sequence[str]) -> int:
        """Delete insight rows by our id (the ``om:`` tag) or by Session-Buddy's id; never a non-insight."""
        keys = insight_ids(ids)
        if not keys:
            return 0
        table = self._table

        async def deleting() -> int:
            rows = self._adapter.conn.execute(
                f"DELETE FROM {table.name} WHERE list_has_any(tags, ?::VARCHAR[]) "
                f"OR (list_contains(?::VARCHAR[], id) AND {table.insight_predicate()}) RETURNING id",
                [id_tags(keys), keys],
            ).fetchall()
            return len(rows)

        return await mapped(self._worker.run(deleting, bound_s=self._timeout, what="delete"), "delete")

    async def close(self) -> None:
        await self._worker.run(self._adapter.aclose, bound_s=self._timeout, what="close")
