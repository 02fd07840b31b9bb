"""SQL text for filters and searches. Values are always bind parameters; identifiers are validated settings.

Why the statements look the way they do (measured, see ``docs/benchmarks.md`` and the pgvector reference):

* every branch has its own ``ORDER BY <distance or rank> LIMIT n`` so each can use its own index; a
  combined ``ORDER BY w*a + (1-w)*b`` or a ``WHERE similarity >= x`` would defeat both indexes;
* the ANN branch lets the HNSW index order the rows (``hnsw.iterative_scan = relaxed_order`` keeps it
  scanning until enough filtered rows are found), and the consumer re-sorts the materialized
  candidates on ``distance + 0`` because relaxed order may be slightly out of order;
* the exact branch computes the distance once in a fenced subquery (``OFFSET 0``) and sorts on
  ``distance + 0``, which no index can provide: a complete answer through the B-tree filter indexes;
* hybrid fuses the two materialized branches in one statement (convex fusion of min-max normalised scores by
  default, weighted reciprocal ranks as the alternative);
* the lexical branch gets only the query's own lexemes and their IDF as bind values (the client keeps the
  statistics), and scores every candidate with C-level ``@@`` tests before an exact rescoring of the best few.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from oneiric_memory.records import SearchFilters

__all__ = [
    "BM25_B",
    "Fusion",
    "BM25_K1",
    "LEXEMES_SQL",
    "LEXICAL_SAMPLE_ROWS",
    "LEXICAL_STATS_SQL",
    "MAX_SCORED_LEXEMES",
    "RESCORE_FACTOR",
    "LexicalQuery",
    "LexicalStats",
    "LexicalTerms",
    "Params",
    "VectorPath",
    "avg_lexemes_sql",
    "bm25_branch",
    "capped_count_sql",
    "estimate_sql",
    "filter_clause",
    "filters_well_estimated",
    "hybrid_sql",
    "parse_websearch",
    "scope_clause",
    "text_branch",
    "text_search_sql",
    "tsquery_lexeme",
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
    if f.path_prefix is not None:  # starts_with: a literal prefix, no LIKE wildcards to escape
        parts.append(f"starts_with({alias}.metadata->>'path', {params.add(f.path_prefix, 'text')})")
    if not f.include_expired:
        parts.append(f"({alias}.expires_at IS NULL OR {alias}.expires_at > now())")
    if f.acting_for is not None:
        parts.append(scope_clause(f, params, alias=alias))
    return " AND ".join(parts) if parts else "TRUE"


def scope_clause(filters: SearchFilters, params: Params, *, alias: str = "m") -> str:
    """The read rule, the one place it is written: a caller acting for projects P sees the rows of P, plus the
    rows whose ``shared_with`` holds one of the entries the store resolved for P (``p:<project>`` of P and
    ``g:<group>`` of P's groups). An unresolved scope fails closed: it is a bug, never "everything".
    """
    if filters.shared_targets is None:
        raise ValueError("acting_for was not resolved by the store (shared_targets is None)")
    own = params.add(list(filters.acting_for or ()), "text[]")
    targets = params.add(list(filters.shared_targets), "text[]")
    return f"({alias}.project = ANY({own}) OR {alias}.shared_with && {targets})"


def filters_well_estimated(filters: SearchFilters) -> bool:
    """True when the planner's row estimate can be trusted: one filtered column and no JSON containment.

    Single-column equality and range estimates come from per-column statistics and are close; a
    conjunction assumes independent columns (off by the correlation), and ``metadata @>`` falls back to
    a fixed guess, so those are counted instead of estimated.
    """
    # the scope is an OR across two indexes; a path prefix is a JSON expression with a fixed guess
    if filters.metadata or filters.acting_for is not None or filters.path_prefix is not None:
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


@dataclass(frozen=True, slots=True)
class LexicalQuery:
    """A ``websearch_to_tsquery``-syntax query, split for OR semantics.

    Each positive item (a word, or a ``"quoted phrase"``) is one alternative: a row matches when it has
    any of them and none of the negative items (``-word``, ``-"phrase"``). ``or`` between items is
    accepted and changes nothing (every item is already an alternative). Phrases stay phrases: a row
    matches ``"ice cream"`` only with the two lexemes adjacent.
    """

    positive: tuple[str, ...]
    negative: tuple[str, ...]

    @staticmethod
    def _joined(items: tuple[str, ...]) -> str:
        # "a or b or \"c d\"" is what websearch_to_tsquery reads as  a | b | c <-> d
        return " or ".join(f'"{item}"' if " " in item else item for item in items)

    @property
    def positive_text(self) -> str:
        return self._joined(self.positive)

    @property
    def negative_text(self) -> str:
        return self._joined(self.negative)

    @property
    def words(self) -> str:
        """Every positive word, for the scored lexemes (``to_tsvector`` stems them and drops stop words)."""
        return " ".join(self.positive)


def parse_websearch(text: str) -> LexicalQuery:
    """Split user text the way ``websearch_to_tsquery`` reads it: quotes, a leading ``-``, ``or``.

    Quote characters never reach PostgreSQL inside an item (they only delimit phrases here), so the
    items joined with `` or `` are read back as exactly these alternatives. An unterminated quote runs
    to the end, as in PostgreSQL.
    """
    positive: list[str] = []
    negative: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        negated = text[i] == "-" and i + 1 < n and not text[i + 1].isspace()
        i += negated
        if text[i] == '"':
            end = text.find('"', i + 1)
            end = n if end < 0 else end
            item = " ".join(text[i + 1:end].split())
            i = end + 1
        else:
            end = i
            while end < n and not text[end].isspace() and text[end] != '"':
                end += 1
            item, i = text[i:end], end
            if negated:
                item = item.lstrip("-")  # "--x" is one negation, never a double one
            elif item.lower() == "or" or item == "-":
                continue
        if item:
            (negative if negated else positive).append(item)
    return LexicalQuery(tuple(positive), tuple(negative))


@dataclass(frozen=True, slots=True)
class LexicalStats:
    """Corpus statistics of the stored ``tsv`` column: what BM25 needs beyond the row itself.

    ``most_common_elems`` (from ANALYZE, in ``pg_stats``) holds the (up to ``10 x statistics target``)
    most frequent lexemes with the share of rows containing each; a lexeme not listed is rarer than the
    least frequent one listed and is given half of that share (PostgreSQL's own selectivity estimate
    does the same). ``avg_lexemes`` is the mean ``length(tsv)`` (distinct lexemes) of a sample of about
    :data:`LEXICAL_SAMPLE_ROWS` rows, for BM25's length normalisation. Before the first ANALYZE every
    term counts as equally rare: ranking degrades to saturated term frequency, it does not fail.

    The store reads these once a minute and keeps them here, on the client: a query only needs its own
    lexemes' shares, so no statistics travel with a search (sending the whole list as bind values on
    every query cost ~1-2 ms).
    """

    rows: float = 0.0
    avg_lexemes: float | None = None
    shares: Mapping[str, float] = field(default_factory=dict)
    unseen_share: float = 0.0

    @classmethod
    def from_row(cls, reltuples: float | None, avg_lexemes: float | None, elems: list[str] | None,
                 freqs: list[float] | None) -> LexicalStats:
        rows = max(float(reltuples or 0), 0.0)
        avg = float(avg_lexemes) if avg_lexemes else None
        if not elems or not freqs or len(freqs) < len(elems) + 1:
            return cls(rows=rows, avg_lexemes=avg)
        return cls(rows=rows, avg_lexemes=avg, shares=dict(zip(elems, (float(f) for f in freqs), strict=False)),
                   unseen_share=float(freqs[len(elems)]) / 2)

    def terms(self, lexemes: Sequence[str], budget: int) -> LexicalTerms:
        """The query's lexemes with their IDF, rarest first, and the ones that admit rows (the gate).

        IDF is Lucene's ``ln(1 + (N - df + 0.5) / (df + 0.5))``. The gate takes lexemes rarest first while
        their estimated matches (sum of ``df``) stay within ``budget``, and always the rarest one. At most
        :data:`MAX_SCORED_LEXEMES` (the rarest) are scored, so a pasted page of text stays a bounded
        statement; the gate is one bind value and keeps every lexeme that fits the budget.
        """
        rows = max(self.rows, 1.0)
        dfs = sorted({(rows * self.shares.get(lexeme, self.unseen_share), lexeme) for lexeme in lexemes})
        gate: list[str] = []
        upto = 0.0
        for df, lexeme in dfs:
            upto += df
            if gate and upto > budget:
                break
            gate.append(lexeme)
        scored = dfs[:MAX_SCORED_LEXEMES]
        return LexicalTerms(lexemes=tuple(lexeme for _, lexeme in scored),
                            idfs=tuple(math.log(1 + (rows - min(df, rows) + 0.5) / (df + 0.5)) for df, _ in scored),
                            gate=tuple(gate), gated=len(gate) < len(dfs))


@dataclass(frozen=True, slots=True)
class LexicalTerms:
    """One query's scored lexemes (rarest first) with their IDF, and the lexemes that admit rows.

    ``gated`` is True when the gate leaves some (common) lexemes out, so it must be tested; otherwise any
    row matching the query matches the gate.
    """

    lexemes: tuple[str, ...] = ()
    idfs: tuple[float, ...] = ()
    gate: tuple[str, ...] = ()
    gated: bool = False


MAX_SCORED_LEXEMES = 32
"""Most lexemes of one query that are scored (the rarest); the others still match but add nothing."""

LEXEMES_SQL = "SELECT tsvector_to_array(to_tsvector($1::regconfig, $2::text))"
"""The query's distinct lexemes (stemmed, stop words dropped) per the configured text search config."""

LEXICAL_STATS_SQL = (
    "SELECT c.reltuples::float8 AS reltuples, s.most_common_elems::text::text[] AS elems, "
    "s.most_common_elem_freqs::float8[] AS freqs "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = 'tsv' "
    "WHERE n.nspname = $1 AND c.relname = 'memories'")
"""One row: the ANALYZE statistics :class:`LexicalStats` reads (``$1`` = the store's schema)."""

LEXICAL_SAMPLE_ROWS = 2000
"""About how many rows the average document length is measured on."""


def avg_lexemes_sql(table: str) -> str:
    """Mean distinct lexemes per row over a block sample of ``$1`` percent of the table."""
    return f"SELECT avg(length(m.tsv))::float8 FROM {table} m TABLESAMPLE SYSTEM ($1::float8)"


def tsquery_lexeme(lexeme: str) -> str:
    """A lexeme as a quoted ``tsquery`` operand (the value is then bound, never spliced into SQL).

    Inside quotes ``tsquery`` input reads ``''`` as a quote and ``\\`` as an escape, so both are doubled.
    """
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


BM25_K1 = 1.2
"""Term-frequency saturation (the usual 1.2; conversation turns and chunks rarely repeat a term)."""
BM25_B = 0.75
"""Length normalisation (the usual 0.75)."""
RESCORE_FACTOR = 2
"""Rows rescored with exact term frequencies: this many times the rows the branch returns."""


def text_branch(params: Params, *, table: str, text_config: str, query: LexicalQuery, terms: LexicalTerms,
                avg_lexemes: float | None, filters: SearchFilters | None, n: int, candidates: int) -> str:
    """``(project, id, rank)`` of the ``n`` best BM25 matches under OR semantics, in plain PostgreSQL.

    * *Match*: any positive item (word or phrase) and no negative item, on the GIN index of ``tsv``.
    * *Score*: ``sum idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))`` over the query's
      lexemes (``terms``: stemmed, stop words dropped, per the configured text search config, with IDF
      from :class:`LexicalStats`); ``dl`` = ``length(tsv)``.
    * *Bound*: rows are admitted only through the gate (the query's rarest lexemes, see
      :meth:`LexicalStats.terms`), and at most ``candidates`` rows are considered. A row matching only
      very common words scores little anyway; a query made only of very common words considers an
      arbitrary ``candidates`` of its matches.
    * *Cost*: every candidate gets the score with ``tf = 1`` from one ``@@`` test per lexeme (C functions
      only, ~1 us a row); only the best ``RESCORE_FACTOR x n`` are rescored with their real term
      frequencies (``unnest`` of the tsvector filtered to the query's lexemes, a per-row subquery costing
      several times more). A repeated term can only raise a row's score, by at most ``1 + k1`` per term.
    """
    if not query.positive or not terms.lexemes:
        # nothing positive to rank by (only negations, or only stop words): no rows, same columns
        return f"SELECT m.project, m.id, 0::float8 AS rank FROM {table} m WHERE FALSE"
    config = params.add(text_config, "regconfig")
    positive = params.add(query.positive_text, "text")
    not_negative = (f" AND NOT (m.tsv @@ websearch_to_tsquery({config}, {params.add(query.negative_text, 'text')}))"
                    if query.negative else "")
    gate = ""
    if terms.gated:
        gate_query = " | ".join(tsquery_lexeme(lexeme) for lexeme in terms.gate)
        gate = f" AND m.tsv @@ {params.add(gate_query, 'tsquery')}"
    k1, b = params.add(BM25_K1, "float8"), params.add(BM25_B, "float8")
    avgdl = params.add(avg_lexemes, "float8")
    lexemes = params.add(list(terms.lexemes), "text[]")
    idfs = params.add(list(terms.idfs), "float8[]")
    matched = " + ".join(f"CASE WHEN c.s @@ {params.add(tsquery_lexeme(lexeme), 'tsquery')} "
                         f"THEN {params.add(idf, 'float8')} ELSE 0 END"
                         for lexeme, idf in zip(terms.lexemes, terms.idfs, strict=True))
    where = filter_clause(filters, params)
    cap = params.add(candidates, "int")
    rescore = params.add(RESCORE_FACTOR * n, "int")
    norm = f"coalesce({k1} * (1 - {b} + {b} * length(p.s) / {avgdl}), {k1})"
    return (
        # candidates through the GIN index; each row's tsvector is read (detoasted: with a 768-d vector in the
        # row it usually lives in the TOAST table) exactly once, into s with the query's lexemes labelled A
        f"WITH p AS MATERIALIZED (SELECT c.project, c.id, c.s FROM (SELECT m.project, m.id, "
        f"setweight(m.tsv, 'A', {lexemes}) AS s FROM {table} m "
        f"WHERE m.tsv @@ websearch_to_tsquery({config}, {positive}){not_negative}{gate} AND {where} LIMIT {cap}) AS c "
        # each with its BM25 score at tf = 1 (the length factor included), the best kept
        f"ORDER BY ({matched}) / (1 + coalesce({k1} * (1 - {b} + {b} * length(c.s) / {avgdl}), {k1})) DESC, c.id "
        f"LIMIT {rescore}) "
        # the best of them rescored with their real term frequencies
        f"SELECT p.project, p.id, coalesce((SELECT sum(({idfs})[array_position({lexemes}, x.lexeme)] * x.tf * "
        f"({k1} + 1) / (x.tf + {norm})) FROM (SELECT u.lexeme, coalesce(array_length(u.positions, 1), 1) AS tf "
        f"FROM unnest(ts_filter(p.s, '{{a}}')) AS u) AS x), 0)::float8 AS rank "
        f"FROM p ORDER BY rank DESC, p.id LIMIT {params.add(n, 'int')}")


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


Fusion = Literal["convex", "rrf"]


def hybrid_sql(params: Params, *, table: str, hit_columns: str, vector_sql: str, text_sql: str, rrf_k: float,
               vector_weight: float, text_weight: float, limit: int, fusion: Fusion = "convex") -> str:
    """The two materialized branches fused in one statement; a row missing from a branch scores 0 there.

    * ``convex``: ``w_v * norm(similarity) + w_t * norm(bm25)``, each branch's scores min-max normalised
      over its own candidates (a branch whose candidates all score alike gives each 1). Measured on
      LoCoMo and the stdlib set it beats RRF at every ``k`` (docs/benchmarks.md): it keeps how much
      better the best lexical match is than the next, which ranks throw away.
    * ``rrf``: weighted reciprocal-rank fusion ``w_v / (k + rank_v) + w_t / (k + rank_t)``.
    """
    order = "f.fused DESC, f.vector_rank NULLS LAST, f.text_rank NULLS LAST, f.id"
    vw = params.add(float(vector_weight), "float8")
    tw = params.add(float(text_weight), "float8")
    if fusion == "rrf":
        k = params.add(float(rrf_k), "float8")
        fused = f"coalesce({vw} / ({k} + vr.r), 0) + coalesce({tw} / ({k} + tr.r), 0)"
        vn = tn = ""
    else:
        fused = f"coalesce({vw} * vr.n, 0) + coalesce({tw} * tr.n, 0)"
        vn = (", coalesce((max(distance + 0) OVER () - distance) / nullif(max(distance + 0) OVER () "
              "- min(distance + 0) OVER (), 0), 1) AS n")
        tn = ", coalesce((rank - min(rank) OVER ()) / nullif(max(rank) OVER () - min(rank) OVER (), 0), 1) AS n"
    return (
        f"WITH v AS MATERIALIZED ({vector_sql}), t AS MATERIALIZED ({text_sql}), "
        f"vr AS (SELECT project, id, distance, row_number() OVER (ORDER BY distance + 0, id) AS r{vn} FROM v), "
        f"tr AS (SELECT project, id, rank, row_number() OVER (ORDER BY rank DESC, id) AS r{tn} FROM t), "
        "f AS (SELECT coalesce(vr.project, tr.project) AS project, coalesce(vr.id, tr.id) AS id, "
        "vr.r AS vector_rank, tr.r AS text_rank, vr.distance, tr.rank, "
        f"{fused} AS fused "
        "FROM vr FULL OUTER JOIN tr ON vr.project = tr.project AND vr.id = tr.id), "
        # the best rows are chosen before the join, so only they are fetched from memories (not every candidate)
        f"b AS (SELECT * FROM f ORDER BY {order} LIMIT {params.add(limit, 'int')}) "
        f"SELECT {hit_columns}, f.vector_rank, f.text_rank, f.distance, f.rank, f.fused "
        f"FROM b AS f JOIN {table} m ON m.project = f.project AND m.id = f.id ORDER BY {order}")
