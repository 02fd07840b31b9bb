"""Search execution for :class:`~oneiric_memory.adapters.pgvector.store.PgvectorMemoryStore`.

One search = one read-only transaction on one pooled connection:
  1. ``BEGIN READ ONLY`` + ``set_config(..., true)`` for every knob in one round trip (transaction-local,
     PgBouncer-safe), including ``plan_cache_mode = force_custom_plan`` so asyncpg's cached prepared statements
     are re-planned with each call's values: a cached generic plan would freeze the HNSW-vs-B-tree choice;
  2. for a filtered vector/hybrid search, the path is chosen here (``plan_vector_search``): the planner's row
     estimate first (planning only), a capped count only in the grey zone around the exact-path line;
  3. one statement; an ANN answer with fewer than ``limit`` rows is redone on the exact path.

The SQL text comes from the pure :mod:`.search_sql`, the path decision from the pure :mod:`.planner`; this
module runs them. The store owns one :class:`SearchExecutor` and delegates its public search methods to it,
so the store module keeps connections, writes and reads, and search tuning happens here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import asyncpg

from oneiric_memory.adapters.pgvector.connection import is_transient, run_with_retries
from oneiric_memory.adapters.pgvector.planner import (
    SearchPlan,
    check_search_knobs,
    decide_by_count,
    decide_by_estimate,
    ef_search_for,
    exact_cap,
    filtered_ef,
    plan_rows,
    search_knobs,
)
from oneiric_memory.adapters.pgvector.schema import quote_literal
from oneiric_memory.adapters.pgvector.search_sql import (
    LEXEMES_SQL,
    LEXICAL_SAMPLE_ROWS,
    LEXICAL_STATS_SQL,
    LexicalStats,
    LexicalTerms,
    Params,
    avg_lexemes_sql,
    bm25_branch,
    capped_count_sql,
    estimate_sql,
    filter_clause,
    filters_well_estimated,
    hybrid_sql,
    parse_websearch,
    text_branch,
    text_search_sql,
    vector_branch,
    vector_search_sql,
)
from oneiric_memory.errors import InvalidInput
from oneiric_memory.observability import INSTRUMENTS, Stopwatch, span
from oneiric_memory.records import SearchFilters, SearchHit, SearchMode, check_embedding
from oneiric_memory.settings import MemorySettings

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector.store import PgvectorMemoryStore

__all__ = ["SearchExecutor"]

_HIT_COLUMNS = ("m.id, m.project, m.memory_type, m.content, m.metadata, m.agent_id, m.workflow_id, m.repo_id, "
                "m.session_id, m.source_system, m.created_at")


@dataclass(frozen=True, slots=True)
class Candidates:
    """Rows each branch hands to hybrid fusion (``search.vector_candidates`` / ``text_candidates``)."""

    vector: int
    text: int


class SearchExecutor:
    """Runs the store's vector, text and hybrid searches; holds the search-side caches (BM25 index detection,
    the lexical statistics, the table's row estimate), one per store."""

    def __init__(self, store: PgvectorMemoryStore, log: Any) -> None:
        self._store = store
        self._log = log
        self._bm25_index: str | None = None
        self._bm25_checked = False
        self._rows_estimate: float | None = None
        self._rows_estimate_at: float | None = None
        self._lexical_stats: LexicalStats | None = None
        self._lexical_stats_at = 0.0

    @property
    def settings(self) -> MemorySettings:
        return self._store.settings

    async def search_vector(self, query_embedding: Sequence[float], *, filters: SearchFilters | None = None,
                            limit: int | None = None, ef_search: int | None = None,
                            min_score: float | None = None) -> list[SearchHit]:
        return await self.search(query_embedding=query_embedding, mode="vector", filters=filters, limit=limit,
                                 ef_search=ef_search, min_score=min_score)

    async def search_text(self, query_text: str, *, filters: SearchFilters | None = None,
                          limit: int | None = None, min_score: float | None = None) -> list[SearchHit]:
        return await self.search(query_text=query_text, mode="text", filters=filters, limit=limit,
                                 min_score=min_score)

    async def search_hybrid(self, query_text: str, query_embedding: Sequence[float], *,
                            filters: SearchFilters | None = None, limit: int | None = None,
                            ef_search: int | None = None, vector_weight: float | None = None,
                            text_weight: float | None = None, rrf_k: int | None = None,
                            min_score: float | None = None) -> list[SearchHit]:
        return await self.search(query_text=query_text, query_embedding=query_embedding, mode="hybrid",
                                 filters=filters, limit=limit, ef_search=ef_search, vector_weight=vector_weight,
                                 text_weight=text_weight, rrf_k=rrf_k, min_score=min_score)

    async def search(
        self,
        *,
        query_text: str | None = None,
        query_embedding: Sequence[float] | None = None,
        mode: SearchMode | None = None,
        filters: SearchFilters | None = None,
        limit: int | None = None,
        ef_search: int | None = None,
        vector_weight: float | None = None,
        text_weight: float | None = None,
        rrf_k: int | None = None,
        min_score: float | None = None,
    ) -> list[SearchHit]:
        """Vector, text or hybrid search; every hit's ``score`` is non-increasing down the list.

        Scores per mode: vector = cosine similarity, text = BM25 over the query's lexemes with OR semantics
        (plain PostgreSQL, or a BM25 extension when one serves the lexical branch), hybrid = the fused score
        (``search.fusion``: convex in [0, w_v + w_t], or weighted RRF); hybrid hits also carry both branch
        ranks. ``min_score`` drops hits below the threshold *after* ranking, so it never
        changes the plan (a ``WHERE similarity >= x`` would disable the vector index).
        ``ef_search`` overrides ``search.ef_search`` for this call; it is raised to at least ``limit`` (and
        to the branch size in hybrid mode), and a filtered HNSW search raises it up to 2x towards
        ``limit / selectivity``. A filtered search never returns fewer than ``limit`` rows when at least
        ``limit`` rows match (see :meth:`plan_vector_search`).
        """
        ss = self.settings.search
        mode = mode or ss.default_mode
        limit = ss.default_limit if limit is None else limit
        vw = ss.vector_weight if vector_weight is None else vector_weight
        tw = ss.text_weight if text_weight is None else text_weight
        k = ss.rrf_k if rrf_k is None else rrf_k
        self._check_search_args(mode, query_text, query_embedding, limit, filters)
        check_search_knobs(ef_search=ef_search, vector_weight=vw, text_weight=tw, rrf_k=k, min_score=min_score)
        watch = Stopwatch()
        with span("store.search", mode=mode, limit=limit, filtered=not (filters is None or filters.is_empty())) as sp:
            hits, plan = await run_with_retries(self.settings.postgres, f"{mode} search", lambda: self._search(
                mode=mode, query_text=query_text, query_embedding=query_embedding, filters=filters, limit=limit,
                ef_search=ef_search, vector_weight=float(vw), text_weight=float(tw), rrf_k=int(k)))
            if min_score is not None:
                hits = [hit for hit in hits if hit.score >= min_score]
            sp.set_attribute("hits", len(hits))
            if plan is not None:
                sp.set_attribute("path", plan.path)
                sp.set_attribute("ef_search", plan.ef_search)
                sp.set_attribute("probe", plan.probe)
                if plan.matching_rows_capped is not None:
                    sp.set_attribute("matching_rows_capped", plan.matching_rows_capped)
        INSTRUMENTS.search_latency.record(watch.ms, {"mode": mode, "path": plan.path if plan else "text"})
        return hits

    def _check_search_args(self, mode: str, query_text: str | None, query_embedding: Sequence[float] | None,
                           limit: int, filters: SearchFilters | None) -> None:
        if mode not in ("vector", "text", "hybrid"):
            raise InvalidInput(f"mode {mode!r} is unknown; use vector, text or hybrid")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= self.settings.search.max_limit:
            raise InvalidInput(f"limit must be between 1 and {self.settings.search.max_limit}")
        if mode in ("vector", "hybrid"):
            if query_embedding is None:
                raise InvalidInput(f"{mode} search needs query_embedding")
            check_embedding(query_embedding, dimension=self._store.dimension, vector_type=self._store.vector_type)
        if mode in ("text", "hybrid"):
            if query_text is None or not isinstance(query_text, str):
                raise InvalidInput(f"{mode} search needs query_text")
            if "\x00" in query_text:
                raise InvalidInput("query_text contains a NUL byte; remove it")
            if len(query_text) > 10_000:
                raise InvalidInput("query_text is longer than 10,000 characters")
            try:
                query_text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput("query_text holds a lone surrogate and is not valid UTF-8") from None
        if filters is not None:
            if not isinstance(filters, SearchFilters):
                raise InvalidInput(f"filters must be a SearchFilters, not {type(filters).__name__}")
            filters.validate()

    @asynccontextmanager
    async def _search_transaction(self, ef_search: int) -> AsyncIterator[asyncpg.Connection]:
        """A read-only transaction with every knob set, opened in ONE round trip, committed on exit.

        ``BEGIN READ ONLY`` and all ``set_config(name, value, is_local => true)`` calls travel as a single
        simple-query message (the values are integers and enum settings, rendered as quoted literals): one
        round trip less per search than BEGIN followed by a SET statement.
        """
        gate = self._store.read_gate
        async with gate.acquire() as connection:
            knobs = ", ".join(f"set_config({quote_literal(name)}, {quote_literal(value)}, true)"
                              for name, value in search_knobs(self.settings, ef_search))
            try:
                await connection.execute(f"BEGIN READ ONLY; SELECT {knobs}")
                yield connection
            except BaseException:
                if not connection.is_closed() and connection.is_in_transaction():
                    with contextlib.suppress(Exception):
                        await connection.execute("ROLLBACK")
                raise
            await connection.execute("COMMIT")

    def _ef_search(self, ef_search: int | None, limit: int, candidates: int) -> int:
        return ef_search_for(ef_search if ef_search is not None else self.settings.search.ef_search, limit,
                             candidates)

    async def plan_vector_search(self, connection: asyncpg.Connection, filters: SearchFilters | None,
                                 ef_search: int, *, limit: int | None = None) -> SearchPlan:
        """Pick the exact path when the filter matches few rows, otherwise the ANN path (per call).

        *Where the line is.* The exact path costs ~2 µs of CPU per matching row; an HNSW iterative scan
        costs roughly ``limit / selectivity`` candidates at ~15 µs each and loses recall as the selectivity
        drops (measured at 150k rows, docs/benchmarks.md). They cross at ``sqrt(15 * limit * table_rows)``
        matching rows (6.7k at 150k rows and limit 20, 17k at 1M), bounded by
        ``search.exact_search_max_rows``.

        *What it costs to know.* The planner's estimate (planning only, ~0.3 ms) decides outright when it is
        more than 2x away from the line and the filter is one well-estimated column; in the grey zone, or
        for filters the planner estimates poorly (several columns, metadata), a count capped at the line
        + 1 (an index-only scan, ~1-2 ms) decides. A wrong call is slower, never wrong: the exact path is
        complete, and an ANN answer that comes back short is redone exactly.

        *Filtered ANN recall.* ``ef_search`` is raised towards ``limit / selectivity`` (at most 2x), so the
        first HNSW pass already holds about ``limit`` matching rows.
        """
        if filters is None or filters.is_empty():
            return SearchPlan(path="ann", matching_rows_capped=None, ef_search=ef_search, probe="none")
        limit = limit or self.settings.search.default_limit
        memories = self._store.table("memories")
        params = Params()
        where = filter_clause(filters, params)
        estimate = plan_rows(await connection.fetchval(estimate_sql(memories, where), *params.values))
        table_rows = await self._table_rows(connection)
        cap = self.exact_cap(limit, table_rows)
        boosted = filtered_ef(ef_search, limit, estimate, table_rows)
        decided = decide_by_estimate(estimate=estimate, cap=cap, precise=filters_well_estimated(filters),
                                     ef_search=ef_search, boosted_ef=boosted)
        if decided is not None:
            return decided
        # the count ignores expiry: an upper bound, but one a covering B-tree answers by an index-only scan
        count_params = Params()
        count_where = filter_clause(replace(filters, include_expired=True), count_params)
        count = int(await connection.fetchval(capped_count_sql(memories, count_where, cap), *count_params.values))
        return decide_by_count(count=count, cap=cap, ef_search=ef_search, boosted_ef=boosted, estimate=estimate)

    def exact_cap(self, limit: int, table_rows: float | None) -> int:
        """Most matching rows the exact path takes for this store's settings (see :func:`.planner.exact_cap`)."""
        return exact_cap(self.settings.search.exact_search_max_rows, limit, table_rows)

    async def _table_rows(self, connection: asyncpg.Connection) -> float | None:
        """``reltuples`` of ``memories`` (ANALYZE's estimate), cached for a minute; None before any ANALYZE."""
        now = time.monotonic()
        if self._rows_estimate_at is not None and now - self._rows_estimate_at < _ROWS_ESTIMATE_TTL_S:
            return self._rows_estimate
        value = await connection.fetchval("SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)",
                                          self._store.table("memories"))
        self._rows_estimate = float(value) if value is not None and float(value) > 0 else None
        self._rows_estimate_at = now
        return self._rows_estimate

    def _vector_branch(self, params: Params, query_embedding: Sequence[float], filters: SearchFilters | None,
                       n: int, path: str) -> str:
        return vector_branch(params, table=self._store.table("memories"), vector_cast=self._store.vector_sql_type,
                             query_embedding=list(query_embedding), filters=filters, n=n,
                             path="exact" if path == "exact" else "ann")

    def _text_branch(self, params: Params, query_text: str, terms: LexicalTerms | None, filters: SearchFilters | None,
                     n: int) -> str:
        """The BM25 extension's branch when ``terms`` is None (an index serves it), else the plain-PostgreSQL one."""
        if terms is None:
            assert self._bm25_index is not None and self._store.bm25_extension is not None
            return bm25_branch(params, table=self._store.table("memories"), extension=self._store.bm25_extension,
                               index=self._bm25_index, query_text=query_text, filters=filters, n=n)
        return text_branch(params, table=self._store.table("memories"),
                           text_config=self.settings.postgres.text_search_config, query=parse_websearch(query_text),
                           terms=terms, avg_lexemes=(self._lexical_stats or LexicalStats()).avg_lexemes,
                           filters=filters, n=n, candidates=self.settings.search.lexical_candidates)

    async def _lexical_terms(self, connection: asyncpg.Connection, query_text: str) -> LexicalTerms:
        """The query's lexemes with their IDF: one small round trip, as PostgreSQL stems them per the config.

        Only these lexemes' statistics then travel with the search statement (a handful of bind values),
        not the whole statistics list.
        """
        await self._refresh_lexical_stats(connection)
        query = parse_websearch(query_text)
        if not query.positive:
            return LexicalTerms()
        lexemes = await connection.fetchval(LEXEMES_SQL, self.settings.postgres.text_search_config, query.words)
        return (self._lexical_stats or LexicalStats()).terms(list(lexemes or ()),
                                                             self.settings.search.lexical_candidates)

    async def _refresh_lexical_stats(self, connection: asyncpg.Connection) -> None:
        """Re-read the ``tsv`` column's ANALYZE statistics (IDF, average length) at most once a minute.

        Autovacuum's ANALYZE keeps them current as the table grows; reading ``pg_stats`` costs about a
        millisecond, so it is cached rather than joined into every statement.
        """
        now = time.monotonic()
        if self._lexical_stats is not None and now - self._lexical_stats_at < _LEXICAL_STATS_TTL_S:
            return
        row = await connection.fetchrow(LEXICAL_STATS_SQL, self.settings.postgres.db_schema)
        if row is None:
            self._lexical_stats = LexicalStats()
        else:
            rows = max(float(row["reltuples"] or 0), 0.0)
            percent = 100.0 if rows <= LEXICAL_SAMPLE_ROWS else 100.0 * LEXICAL_SAMPLE_ROWS / rows
            avg = await connection.fetchval(avg_lexemes_sql(self._store.table("memories")), percent)
            self._lexical_stats = LexicalStats.from_row(rows, avg, row["elems"], row["freqs"])
        self._lexical_stats_at = now

    async def _detect_bm25_index(self, connection: asyncpg.Connection) -> None:
        """Once per store: use a BM25 index on ``memories`` when pg_textsearch/pg_search is installed."""
        if self._bm25_checked:
            return
        self._bm25_checked = True
        if self._store.bm25_extension is None:
            return
        self._bm25_index = await connection.fetchval(
            "SELECT format('%I.%I', n.nspname, ic.relname) FROM pg_index i "
            "JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam "
            "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = 'memories' AND am.amname = 'bm25' AND i.indisvalid LIMIT 1",
            self._store.schema)
        self._log.info("bm25-lexical-branch", extension=self._store.bm25_extension, index=self._bm25_index,
                       used=self._bm25_index is not None)

    async def _search(self, *, mode: str, query_text: str | None, query_embedding: Sequence[float] | None,
                      filters: SearchFilters | None, limit: int, ef_search: int | None, vector_weight: float,
                      text_weight: float, rrf_k: int) -> tuple[list[SearchHit], SearchPlan | None]:
        ss = self.settings.search
        candidates = Candidates(vector=max(ss.vector_candidates, limit), text=max(ss.text_candidates, limit))
        vector_rows = candidates.vector if mode == "hybrid" else limit  # what the vector side must return
        ef = self._ef_search(ef_search, limit, vector_rows)
        async with self._search_transaction(ef) as connection:
            filters = await self._store.scoped(connection, filters)  # the read rule of acting_for (docs/groups.md)
            if mode in ("text", "hybrid"):
                await self._detect_bm25_index(connection)
            if mode == "text":
                assert query_text is not None
                if self._store.search_probe is not None:
                    await self._store.search_probe(connection, SearchPlan(path="none", matching_rows_capped=None,
                                                                   ef_search=ef))
                rows = await self._lexical_rows(connection, query_text, lambda params, terms: text_search_sql(
                    table=self._store.table("memories"), hit_columns=_HIT_COLUMNS,
                    branch=self._text_branch(params, query_text, terms, filters, limit)))
                return [_hit(r, score=float(r["rank"]), text_rank=int(r["text_rank"]), text_score=float(r["rank"]))
                        for r in rows], None
            assert query_embedding is not None
            plan = await self.plan_vector_search(connection, filters, ef, limit=vector_rows)
            if plan.ef_search != ef and self.settings.postgres.index_type == "hnsw":
                await _set_local(connection, [("hnsw.ef_search", str(plan.ef_search))])
            if self._store.search_probe is not None:
                await self._store.search_probe(connection, plan)
            if mode == "vector":
                rows = await self._vector_rows(connection, query_embedding, filters, limit, plan.path)
                if len(rows) < limit and plan.path == "ann" and not (filters is None or filters.is_empty()):
                    # never under-return: iterative scanning stopped (max_scan_tuples) before enough rows
                    # matched the filter, so redo it exactly (complete by construction)
                    plan = replace(plan, path="exact", fallback=True)
                    if self._store.search_probe is not None:
                        await self._store.search_probe(connection, plan)
                    rows = await self._vector_rows(connection, query_embedding, filters, limit, "exact")
                return [_hit(r, score=1.0 - float(r["distance"]), vector_rank=int(r["vector_rank"]),
                             vector_similarity=1.0 - float(r["distance"])) for r in rows], plan
            assert query_text is not None
            rows = await self._hybrid_rows(connection, query_text, query_embedding, filters, limit, candidates,
                                           plan.path, vector_weight, text_weight, rrf_k)
            if len(rows) < limit and plan.path == "ann" and not (filters is None or filters.is_empty()):
                vector_found = sum(1 for r in rows if r["vector_rank"] is not None)
                if vector_found < min(limit, candidates.vector):
                    plan = replace(plan, path="exact", fallback=True)
                    if self._store.search_probe is not None:
                        await self._store.search_probe(connection, plan)
                    rows = await self._hybrid_rows(connection, query_text, query_embedding, filters, limit,
                                                   candidates, "exact", vector_weight, text_weight, rrf_k)
            return [_hit(r, score=float(r["fused"]), vector_rank=r["vector_rank"], text_rank=r["text_rank"],
                         vector_similarity=None if r["distance"] is None else 1.0 - float(r["distance"]),
                         text_score=None if r["rank"] is None else float(r["rank"])) for r in rows], plan

    async def _hybrid_rows(self, connection: asyncpg.Connection, query_text: str, query_embedding: Sequence[float],
                           filters: SearchFilters | None, limit: int, candidates: Candidates, path: str,
                           vector_weight: float, text_weight: float, rrf_k: int) -> list[asyncpg.Record]:
        def build(params: Params, terms: LexicalTerms | None) -> str:
            vector_sql = self._vector_branch(params, query_embedding, filters, candidates.vector, path)
            text_sql = self._text_branch(params, query_text, terms, filters, candidates.text)
            return hybrid_sql(params, table=self._store.table("memories"), hit_columns=_HIT_COLUMNS,
                              vector_sql=vector_sql,
                              text_sql=text_sql, rrf_k=rrf_k, vector_weight=vector_weight,
                              fusion=self.settings.search.fusion,
                              text_weight=text_weight, limit=limit)

        return await self._lexical_rows(connection, query_text, build)

    async def _lexical_rows(self, connection: asyncpg.Connection, query_text: str,
                            build: Callable[[Params, LexicalTerms | None], str]) -> list[asyncpg.Record]:
        """Run a statement with a lexical branch; if a BM25 branch fails, fall back to tsvector for good.

        The BM25 extensions' SQL differs between versions and cannot be tested here, so a failure of that
        branch (inside a savepoint) is logged once and the store continues with its plain-PostgreSQL BM25.
        """
        if self._bm25_index is None:
            params = Params()
            sql = build(params, await self._lexical_terms(connection, query_text))
            return list(await connection.fetch(sql, *params.values))
        await connection.execute("SAVEPOINT om_bm25")  # the outer read-only transaction survives a failure
        try:
            params = Params()
            sql = build(params, None)
            return list(await connection.fetch(sql, *params.values))
        except asyncpg.PostgresError as exc:
            if is_transient(exc):
                raise
            await connection.execute("ROLLBACK TO SAVEPOINT om_bm25")
            self._log.warning("bm25-branch-failed-using-tsvector", extension=self._store.bm25_extension,
                              index=self._bm25_index, error=type(exc).__name__, sqlstate=exc.sqlstate)
            self._bm25_index = None
            params = Params()
            sql = build(params, await self._lexical_terms(connection, query_text))
            return list(await connection.fetch(sql, *params.values))

    async def _vector_rows(self, connection: asyncpg.Connection, query_embedding: Sequence[float],
                           filters: SearchFilters | None, limit: int, path: str) -> list[asyncpg.Record]:
        params = Params()
        sql = vector_search_sql(table=self._store.table("memories"), hit_columns=_HIT_COLUMNS,
                                branch=self._vector_branch(params, query_embedding, filters, limit, path))
        return list(await connection.fetch(sql, *params.values))

    async def explain_vector_search(self, query_embedding: Sequence[float], *, filters: SearchFilters | None = None,
                                    limit: int = 10, min_score: float | None = None,
                                    ef_search: int | None = None) -> tuple[SearchPlan, str]:
        """The path ``search(mode="vector")`` would take and PostgreSQL's plan for its statement.

        Same transaction set-up, knobs and statement as the search itself. ``min_score`` is accepted to show
        that a threshold leaves the plan alone: it is applied to the ranked rows, outside the statement.
        """
        self._check_search_args("vector", None, query_embedding, limit, filters)
        check_search_knobs(ef_search=ef_search, min_score=min_score)
        ef = self._ef_search(ef_search, limit, limit)
        async with self._search_transaction(ef) as connection:
            filters = await self._store.scoped(connection, filters)
            plan = await self.plan_vector_search(connection, filters, ef, limit=limit)
            if plan.ef_search != ef and self.settings.postgres.index_type == "hnsw":
                await _set_local(connection, [("hnsw.ef_search", str(plan.ef_search))])
            params = Params()
            sql = vector_search_sql(table=self._store.table("memories"), hit_columns=_HIT_COLUMNS,
                                    branch=self._vector_branch(params, query_embedding, filters, limit, plan.path))
            rows = await connection.fetch(f"EXPLAIN (COSTS OFF) {sql}", *params.values)
        return plan, "\n".join(r[0] for r in rows)


_LEXICAL_STATS_TTL_S = 60.0  # how long the tsv column's ANALYZE statistics are reused
_ROWS_ESTIMATE_TTL_S = 60.0


async def _set_local(connection: asyncpg.Connection, knobs: Sequence[tuple[str, str]]) -> None:
    """Transaction-local settings in one round trip (``SET`` takes no bind parameters; set_config does)."""
    await connection.execute(
        "SELECT set_config(k.name, k.value, true) FROM unnest($1::text[], $2::text[]) AS k(name, value)",
        [name for name, _ in knobs], [value for _, value in knobs])


def _hit(row: asyncpg.Record, *, score: float, vector_rank: int | None = None, text_rank: int | None = None,
         vector_similarity: float | None = None, text_score: float | None = None) -> SearchHit:
    return SearchHit(
        id=row["id"], content=row["content"], memory_type=row["memory_type"], project=row["project"],
        metadata=row["metadata"], score=score, vector_rank=vector_rank, text_rank=text_rank,
        vector_similarity=vector_similarity, text_score=text_score, agent_id=row["agent_id"],
        workflow_id=row["workflow_id"], repo_id=row["repo_id"], session_id=row["session_id"],
        source_system=row["source_system"], created_at=row["created_at"])
