"""SQL text for filters and searches. Values are always bind parameters; identifiers are validated settings.

Why the statements look the way they do (measured, see ``docs/benchmarks.md`` and the pgvector reference):

* every branch has its own ``ORDER BY <distance or rank> LIMIT n`` so each can use its own index; a
  combined ``ORDER BY w*a + (1-w)*b`` or a ``WHERE similarity >= x`` would defeat both indexes;
* the ANN branch lets the HNSW index order the rows (``hnsw.iterative_scan = relaxed_order`` keeps it
  scanning until enough filtered rows are found), and the consumer re-sorts the materialized
  candidates on ``distance + 0`` because relaxed order may be slightly out of order;
* the exact branch computes the distance once in a fenced subquery (``OFFSET 0``) and sorts on
  ``distance + 0``, which no index can provide: a complete answer through the B-tree filter indexes;
* hybrid fuses the two materialized branches with weighted reciprocal-rank fusion in one statement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from oneiric_memory.records import SearchFilters

__all__ = [
    "Params",
    "VectorPath",
    "bm25_branch",
    "capped_count_sql",
    "estimate_sql",
    "filter_clause",
    "filters_well_estimated",
    "hybrid_sql",
    "text_branch",
    "text_search_sql",
    "vector_branch",
    "vector_search_sql",
]

VectorPath = Literal["exact", "ann"]


@dataclass
class Params:
    """Collects bind values and hands out ``$n`` placeholders."""

    values: list[Any] = field(default_factory=list)

    def add(self, value: Any, cast: str | None = None) -> str:
        self.values.append(value)
        placeholder = f"${len(self.values)}"
        return f"{placeholder}::{cast}" if cast else placeholder


def filter_clause(filters: SearchFilters | None, params: Params, *, alias: str = "m") -> str:
    """``AND``-joined predicates on typed, indexed columns; ``TRUE`` when there are none."""
    parts: list[str] = []
    f = filters or SearchFilters()
    if f.projects:
        parts.append(f"{alias}.project = ANY({params.add(list(f.projects), 'text[]')})")
    if f.memory_types:
        parts.append(f"{alias}.memory_type = ANY({params.add(list(f.memory_types), 'text[]')})")
    for column in ("source_system", "agent_id", "workflow_id", "repo_id", "session_id"):
        value = getattr(f, column)
        if value is not None:
            parts.append(f"{alias}.{column} = {params.add(value, 'text')}")
    if f.created_after is not None:
        parts.append(f"{alias}.created_at >= {params.add(f.created_after, 'timestamptz')}")
    if f.created_before is not None:
        parts.append(f"{alias}.created_at < {params.add(f.created_before, 'timestamptz')}")
    if f.metadata:
        parts.append(f"{alias}.metadata @> {params.add(json.dumps(dict(f.metadata)), 'text')}::jsonb")
    if not f.include_expired:
        parts.append(f"({alias}.expires_at IS NULL OR {alias}.expires_at > now())")
    return " AND ".join(parts) if parts else "TRUE"


def filters_well_estimated(filters: SearchFilters) -> bool:
    """True when the planner's row estimate can be trusted: one filtered column and no JSON containment.

    Single-column equality and range estimates come from per-column statistics and are close; a
    conjunction assumes independent columns (off by the correlation), and ``metadata @>`` falls back to
    a fixed guess, so those are counted instead of estimated.
    """
    if filters.metadata:
        return False
    families = sum(1 for present in (
        bool(filters.projects), bool(filters.memory_types), filters.source_system is not None,
        filters.agent_id is not None, filters.workflow_id is not None, filters.repo_id is not None,
        filters.session_id is not None, filters.created_after is not None or filters.created_before is not None,
    ) if present)
    return families <= 1


def estimate_sql(table: str, where: str) -> str:
    """The planner's row estimate for a filter (planning only, nothing is read)."""
    return f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} m WHERE {where}"


def capped_count_sql(table: str, where: str, cap: int) -> str:
    """Rows matching a filter, counted up to ``cap + 1`` (enough to decide, never a full count).

    It omits ``embedding IS NOT NULL`` (and the caller omits the expiry predicate) so a covering B-tree
    can answer with an index-only scan; pending or expired rows only make the count an upper bound, and an
    ANN path that then finds too few rows falls back to the exact one.
    """
    return f"SELECT count(*) FROM (SELECT 1 FROM {table} m WHERE {where} LIMIT {int(cap) + 1}) AS capped"


def vector_branch(params: Params, *, table: str, vector_cast: str, query_embedding: Any,
                  filters: SearchFilters | None, n: int, path: VectorPath) -> str:
    """``(project, id, distance)`` of the ``n`` nearest rows, by the exact or the ANN path."""
    q = params.add(query_embedding, vector_cast)
    where = filter_clause(filters, params)
    limit = params.add(n, "int")
    if path == "exact":
        return (f"SELECT e.project, e.id, e.distance FROM (SELECT m.project, m.id, (m.embedding <=> {q}) AS distance "
                f"FROM {table} m WHERE m.embedding IS NOT NULL AND {where} OFFSET 0) AS e "
                f"ORDER BY e.distance + 0, e.id LIMIT {limit}")
    return (f"SELECT m.project, m.id, (m.embedding <=> {q}) AS distance FROM {table} m "
            f"WHERE m.embedding IS NOT NULL AND {where} ORDER BY m.embedding <=> {q} LIMIT {limit}")


def text_branch(params: Params, *, table: str, text_config: str, query_text: str,
                filters: SearchFilters | None, n: int) -> str:
    """``(project, id, rank)`` of the ``n`` best full-text matches (GIN on the stored tsvector).

    ``websearch_to_tsquery`` never raises on user input; ``ts_rank_cd(..., 32)`` maps the rank into [0, 1).
    """
    config = params.add(text_config, "regconfig")
    query = params.add(query_text, "text")
    where = filter_clause(filters, params)
    return (f"SELECT m.project, m.id, ts_rank_cd(m.tsv, q.query, 32)::float8 AS rank FROM {table} m, "
            f"websearch_to_tsquery({config}, {query}) AS q(query) WHERE m.tsv @@ q.query AND {where} "
            f"ORDER BY rank DESC, m.id LIMIT {params.add(n, 'int')}")


def bm25_branch(params: Params, *, table: str, extension: str, index: str, query_text: str,
                filters: SearchFilters | None, n: int) -> str:
    """``(project, id, rank)`` from a BM25 index (higher is better). UNTESTED here: neither extension installs.

    * ``pg_textsearch`` (``CREATE INDEX ... USING bm25 (content) WITH (text_config='english')``): ``<@>``
      returns the negative BM25 score and the index orders by it; non-matching rows score 0 and are dropped.
    * ``pg_search`` >= 0.20 (``CREATE INDEX ... USING bm25 (id, content) WITH (key_field='id')``): ``|||``
      matches any term, ``pdb.score(id)`` is the BM25 score.
    """
    query = params.add(query_text, "text")
    where = filter_clause(filters, params)
    limit = params.add(n, "int")
    if extension == "pg_textsearch":
        bm25q = f"to_bm25query({query}, {params.add(index, 'text')})"
        return (f"SELECT b.project, b.id, (-b.score)::float8 AS rank FROM (SELECT m.project, m.id, "
                f"(m.content <@> {bm25q}) AS score FROM {table} m WHERE {where} "
                f"ORDER BY m.content <@> {bm25q} LIMIT {limit}) AS b WHERE b.score < 0")
    if extension == "pg_search":
        return (f"SELECT m.project, m.id, pdb.score(m.id)::float8 AS rank FROM {table} m "
                f"WHERE m.content ||| {query} AND {where} ORDER BY pdb.score(m.id) DESC, m.id LIMIT {limit}")
    raise ValueError(f"unknown BM25 extension {extension!r}")


def vector_search_sql(*, table: str, hit_columns: str, branch: str) -> str:
    """Vector mode: the materialized branch, re-sorted (relaxed order), joined to the rows."""
    return (f"WITH v AS MATERIALIZED ({branch}) SELECT {hit_columns}, v.distance, "
            "row_number() OVER (ORDER BY v.distance + 0, v.id) AS vector_rank "
            f"FROM v JOIN {table} m ON m.project = v.project AND m.id = v.id ORDER BY v.distance + 0, v.id")


def text_search_sql(*, table: str, hit_columns: str, branch: str) -> str:
    """Text mode: the materialized lexical branch joined to the rows, best first."""
    return (f"WITH t AS MATERIALIZED ({branch}) SELECT {hit_columns}, t.rank, "
            "row_number() OVER (ORDER BY t.rank DESC, t.id) AS text_rank "
            f"FROM t JOIN {table} m ON m.project = t.project AND m.id = t.id ORDER BY t.rank DESC, t.id")


def hybrid_sql(params: Params, *, table: str, hit_columns: str, vector_sql: str, text_sql: str, rrf_k: float,
               vector_weight: float, text_weight: float, limit: int) -> str:
    """Weighted RRF: ``w_v / (k + rank_v) + w_t / (k + rank_t)``; a row missing from a branch scores 0 there."""
    k = params.add(float(rrf_k), "float8")
    vw = params.add(float(vector_weight), "float8")
    tw = params.add(float(text_weight), "float8")
    return (
        f"WITH v AS MATERIALIZED ({vector_sql}), t AS MATERIALIZED ({text_sql}), "
        "vr AS (SELECT project, id, distance, row_number() OVER (ORDER BY distance + 0, id) AS r FROM v), "
        "tr AS (SELECT project, id, rank, row_number() OVER (ORDER BY rank DESC, id) AS r FROM t), "
        "f AS (SELECT coalesce(vr.project, tr.project) AS project, coalesce(vr.id, tr.id) AS id, "
        "vr.r AS vector_rank, tr.r AS text_rank, vr.distance, tr.rank, "
        f"coalesce({vw} / ({k} + vr.r), 0) + coalesce({tw} / ({k} + tr.r), 0) AS fused "
        "FROM vr FULL OUTER JOIN tr ON vr.project = tr.project AND vr.id = tr.id) "
        f"SELECT {hit_columns}, f.vector_rank, f.text_rank, f.distance, f.rank, f.fused "
        f"FROM f JOIN {table} m ON m.project = f.project AND m.id = f.id "
        "ORDER BY f.fused DESC, f.vector_rank NULLS LAST, f.text_rank NULLS LAST, m.id "
        f"LIMIT {params.add(limit, 'int')}")
