"""Search on a real embedded PostgreSQL 18 + pgvector: filters never under-return, the plan follows selectivity.

One module-scoped corpus of 20,000 clustered 768-d vectors is loaded once (``bulk_loading`` + batched
``upsert_many``: COPY speed, then one HNSW build). Filter columns are independent of the clusters:
``project`` has 10 values (10% of rows each), ``agent_id`` 100 values (1% each). The store under test caps
the exact path at ``exact_search_max_rows = 1000`` rows so that, at this size, 1% filters (200 rows) take the
exact path and 10% filters (2,000 rows) the HNSW path, as they do at 150,000 rows with the defaults (where
the exact-path line is ~6,700 rows). Nothing is mocked; timing is never asserted (latency belongs to
``benchmarks/bench_store.py``).
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import asyncpg
import numpy as np
import numpy.typing as npt
import pytest
import pytest_asyncio

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore, SearchPlan
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.errors import InvalidInput
from oneiric_memory.records import MemoryRecord, SearchFilters, SearchHit
from tests.support import make_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROWS = 20_000
DIM = 768
PROJECTS = 10
AGENTS = 100
LIMIT = 20
EXACT_MAX_ROWS = 1000
WORDS = [f"w{i:03d}" for i in range(300)]


@dataclass
class Corpus:
    store: PgvectorMemoryStore
    vectors: npt.NDArray[np.float32]
    projects: npt.NDArray[np.int64]
    agents: npt.NDArray[np.int64]
    ids: list[uuid.UUID]
    lexical_id: uuid.UUID
    semantic_id: uuid.UUID
    semantic_vector: list[float]
    data_dir: Path

    def row_of(self, memory_id: uuid.UUID) -> int:
        return self._rows[memory_id]

    def __post_init__(self) -> None:
        self._rows = {memory_id: row for row, memory_id in enumerate(self.ids)}

    def exact(self, query: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_], k: int = LIMIT) -> set[int]:
        """Ground truth on the halfvec-rounded vectors, as PostgreSQL stores them."""
        rows = np.flatnonzero(mask)
        base = self.vectors[rows].astype(np.float16).astype(np.float32)
        sims = base @ query / np.linalg.norm(base, axis=1)
        return {int(rows[i]) for i in np.argsort(-sims)[:k]}


def _clustered(rows: int, seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((40, DIM)).astype(np.float32)
    points = centers[rng.integers(0, 40, rows)] + 1.2 * rng.standard_normal((rows, DIM)).astype(np.float32)
    return cast(npt.NDArray[np.float32], (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32))


def _unit(rng: np.random.Generator) -> list[float]:
    v = rng.standard_normal(DIM)
    return [float(x) for x in v / np.linalg.norm(v)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def corpus(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> AsyncIterator[Corpus]:
    # ef_construction 32 halves the HNSW build of the fixture; recall is still well above what is asserted
    settings = make_settings(pg_data_dir, search={"exact_search_max_rows": EXACT_MAX_ROWS},
                             postgres={"hnsw_ef_construction": 32})
    store = PgvectorMemoryStore(settings)
    await store.init()
    try:
        rng = np.random.default_rng(11)
        vectors = _clustered(ROWS, seed=3)
        projects = rng.integers(0, PROJECTS, ROWS)
        agents = rng.integers(0, AGENTS, ROWS)
        words = rng.integers(0, len(WORDS), (ROWS, 8))
        ids: list[uuid.UUID] = []
        async with store.bulk_loading():
            for start in range(0, ROWS, 5000):
                batch = [MemoryRecord(content=f"row {i} " + " ".join(WORDS[w] for w in words[i]),
                                      project=f"p{projects[i]}", agent_id=f"a{agents[i]:02d}",
                                      memory_type="rag", embedding=vectors[i].tolist())
                         for i in range(start, min(ROWS, start + 5000))]
                ids.extend((await store.upsert_many(batch)).ids)
            semantic_vector = _unit(rng)
            special = await store.upsert_many([
                # matches the hybrid query's words only; its vector is unrelated to the query vector
                MemoryRecord(content="quokka migration checklist for the platypus cluster", project="special",
                             embedding=_unit(rng)),
                # matches the hybrid query's vector only; none of its words are in the query
                MemoryRecord(content="nothing in common lexically", project="special", embedding=semantic_vector),
            ])
        async with store.gate.acquire() as connection:
            await connection.execute(f"VACUUM ANALYZE {store.table('memories')}")
        yield Corpus(store=store, vectors=vectors, projects=projects, agents=agents, ids=ids,
                     lexical_id=special.ids[0], semantic_id=special.ids[1], semantic_vector=semantic_vector,
                     data_dir=pg_data_dir)
    finally:
        if store._pool is not None:
            async with store.gate.acquire() as connection:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
        await store.cleanup()


async def _sibling(corpus: Corpus, **search: object) -> PgvectorMemoryStore:
    """Another store on the corpus's schema with different search settings."""
    store = PgvectorMemoryStore(make_settings(corpus.data_dir, schema=corpus.store.schema, search=search))
    await store.init()
    return store


def _query(corpus: Corpus, i: int) -> npt.NDArray[np.float32]:
    """A query near row ``i`` (not equal to it), so neighbours are non-trivial."""
    rng = np.random.default_rng(1000 + i)
    q = corpus.vectors[i] + 0.5 * rng.standard_normal(DIM).astype(np.float32) / math.sqrt(DIM)
    return cast(npt.NDArray[np.float32], (q / np.linalg.norm(q)).astype(np.float32))


def _non_increasing(hits: list[SearchHit]) -> bool:
    return all(a.score >= b.score for a, b in itertools.pairwise(hits))


# --- filtered search: never under-return ------------------------------------------------------------------


@pytest.mark.parametrize(("label", "kind"), [("1%", "agent"), ("10%", "project")])
async def test_filtered_search_always_returns_limit_rows(corpus: Corpus, label: str, kind: str) -> None:
    recalls: list[float] = []
    for i in range(12):
        query = _query(corpus, i * 37)
        value = i % (AGENTS if kind == "agent" else PROJECTS)
        if kind == "agent":
            filters, mask = SearchFilters(agent_id=f"a{value:02d}"), corpus.agents == value
        else:
            filters, mask = SearchFilters(projects=[f"p{value}"]), corpus.projects == value
        assert mask.sum() >= LIMIT
        hits = await corpus.store.search(query_embedding=query.tolist(), mode="vector", filters=filters, limit=LIMIT)
        assert len(hits) == LIMIT, label
        rows = [corpus.row_of(hit.id) for hit in hits]
        assert all(mask[row] for row in rows), "a hit violates the filter"
        assert _non_increasing(hits)
        recalls.append(len(set(rows) & corpus.exact(query, mask)) / LIMIT)
        # hybrid with the same filter also fills the page
        hybrid = await corpus.store.search(query_text="w001 w002", query_embedding=query.tolist(), mode="hybrid",
                                           filters=filters, limit=LIMIT)
        assert len(hybrid) == LIMIT and all(mask[corpus.row_of(h.id)] for h in hybrid)
    assert sum(recalls) / len(recalls) >= 0.9, f"{label} filtered recall@20 {recalls}"


async def test_filter_with_fewer_matches_than_limit_returns_them_all(corpus: Corpus) -> None:
    hits = await corpus.store.search(query_embedding=corpus.semantic_vector, mode="vector",
                                     filters=SearchFilters(projects=["special"]), limit=LIMIT)
    assert {hit.id for hit in hits} == {corpus.lexical_id, corpus.semantic_id}


async def test_short_ann_answer_falls_back_to_exact(corpus: Corpus) -> None:
    """Force the ANN path on a 1% filter with a tiny scan budget: the answer must still be complete and exact."""
    store = await _sibling(corpus, exact_search_max_rows=0, max_scan_tuples=50)
    plans: list[SearchPlan] = []

    async def probe(_connection: asyncpg.Connection, plan: SearchPlan) -> None:
        plans.append(plan)

    store.search_probe = probe
    try:
        query = _query(corpus, 5)
        mask = corpus.agents == 7
        hits = await store.search_vector(query.tolist(), filters=SearchFilters(agent_id="a07"), limit=LIMIT)
        assert plans[-1].path == "ann"
        assert len(hits) == LIMIT
        assert {corpus.row_of(h.id) for h in hits} == corpus.exact(query, mask)
    finally:
        await store.cleanup()


async def test_poorly_estimated_filters_are_counted(corpus: Corpus) -> None:
    """Two columns (the planner multiplies selectivities) are decided by a capped count, not the estimate."""
    plans: list[SearchPlan] = []

    async def probe(_connection: asyncpg.Connection, plan: SearchPlan) -> None:
        plans.append(plan)

    corpus.store.search_probe = probe
    try:
        filters = SearchFilters(projects=["p1", "p2", "p3"], memory_types=["rag"])
        hits = await corpus.store.search_vector(_query(corpus, 9).tolist(), filters=filters, limit=LIMIT)
        assert len(hits) == LIMIT
        assert plans[-1].probe == "count" and plans[-1].path == "ann"
        assert plans[-1].matching_rows_capped == EXACT_MAX_ROWS + 1
        plans.clear()
        await corpus.store.search_vector(_query(corpus, 9).tolist(), filters=SearchFilters(agent_id="a03"))
        selective = plans[-1]
        assert selective.probe == "estimate" and selective.path == "exact"
    finally:
        corpus.store.search_probe = None


# --- the plan follows selectivity, per call ---------------------------------------------------------------


async def test_plan_changes_with_selectivity_on_every_call(corpus: Corpus) -> None:
    query = _query(corpus, 3).tolist()
    # Alternate many times on the same pooled connections: asyncpg's cached prepared statements must not
    # freeze one plan (a generic plan would be chosen after five executions without force_custom_plan).
    for _ in range(7):
        selective, selective_text = await corpus.store.explain_vector_search(
            query, filters=SearchFilters(agent_id="a42"), limit=LIMIT)
        broad, broad_text = await corpus.store.explain_vector_search(
            query, filters=SearchFilters(projects=["p4"]), limit=LIMIT)
        assert selective.path == "exact" and "memories_embedding_hnsw" not in selective_text
        assert "memories_agent_id_idx" in selective_text
        assert broad.path == "ann" and "Index Scan using memories_embedding_hnsw" in broad_text
        assert selective.estimated_rows is not None and selective.estimated_rows < EXACT_MAX_ROWS
        assert broad.estimated_rows is not None and broad.estimated_rows > EXACT_MAX_ROWS
    unfiltered, text = await corpus.store.explain_vector_search(query, limit=LIMIT)
    assert unfiltered.path == "ann" and "Index Scan using memories_embedding_hnsw" in text


async def test_min_score_keeps_the_index_and_only_trims(corpus: Corpus) -> None:
    query = _query(corpus, 11).tolist()
    plan, text = await corpus.store.explain_vector_search(query, limit=LIMIT, min_score=0.5)
    assert plan.path == "ann" and "Index Scan using memories_embedding_hnsw" in text
    assert "Seq Scan" not in text
    full = await corpus.store.search_vector(query, limit=LIMIT)
    threshold = full[len(full) // 2].score
    trimmed = await corpus.store.search_vector(query, limit=LIMIT, min_score=threshold)
    assert [h.id for h in trimmed] == [h.id for h in full if h.score >= threshold]
    assert 0 < len(trimmed) < len(full)


async def test_ef_search_is_at_least_limit_and_overridable(corpus: Corpus) -> None:
    seen: list[dict[str, str]] = []

    async def probe(connection: asyncpg.Connection, _plan: SearchPlan) -> None:
        row = await connection.fetchrow(
            "SELECT current_setting('hnsw.ef_search') AS ef, current_setting('plan_cache_mode') AS pcm, "
            "current_setting('hnsw.iterative_scan') AS scan, current_setting('jit') AS jit")
        assert row is not None
        seen.append(dict(row))

    query = _query(corpus, 2).tolist()
    corpus.store.search_probe = probe
    try:
        await corpus.store.search_vector(query, limit=10)
        await corpus.store.search_vector(query, limit=250)
        await corpus.store.search_vector(query, limit=10, ef_search=300)
        await corpus.store.search_vector(query, limit=50, ef_search=7)
        await corpus.store.search_hybrid("w001", query, limit=5, ef_search=3)
    finally:
        corpus.store.search_probe = None
    assert [s["ef"] for s in seen] == ["200", "250", "300", "50", "80"]  # 80 = hybrid vector-branch candidates
    assert {s["pcm"] for s in seen} == {"force_custom_plan"}
    assert {s["scan"] for s in seen} == {"relaxed_order"} and {s["jit"] for s in seen} == {"off"}
    async with corpus.store.gate.acquire() as connection:  # SET LOCAL: nothing leaks into the pool
        assert await connection.fetchval("SELECT current_setting('hnsw.ef_search')") == "40"
        assert await connection.fetchval("SELECT current_setting('plan_cache_mode')") == "auto"
    for bad in (0, 1001, True, 2.5):
        with pytest.raises(InvalidInput):
            await corpus.store.search_vector(query, ef_search=bad)  # type: ignore[arg-type]


# --- hybrid -----------------------------------------------------------------------------------------------


async def test_hybrid_surfaces_lexical_only_and_semantic_only_documents(corpus: Corpus) -> None:
    hits = await corpus.store.search_hybrid("quokka migration", corpus.semantic_vector, limit=10)
    by_id = {hit.id: hit for hit in hits}
    assert corpus.lexical_id in by_id and corpus.semantic_id in by_id
    lexical, semantic = by_id[corpus.lexical_id], by_id[corpus.semantic_id]
    assert lexical.text_rank == 1 and lexical.vector_rank is None and lexical.text_score is not None
    assert semantic.vector_rank == 1 and semantic.text_rank is None
    assert semantic.vector_similarity == pytest.approx(1.0, abs=1e-2)
    # convex fusion (the default): each branch's best candidate normalises to 1, then carries its branch's weight
    ss = corpus.store.settings.search
    assert lexical.score == pytest.approx(ss.text_weight) and semantic.score == pytest.approx(ss.vector_weight)
    assert all(0.0 <= hit.score <= 2.0 for hit in hits)
    rrf = await _sibling(corpus, exact_search_max_rows=EXACT_MAX_ROWS, fusion="rrf")
    try:
        k = rrf.settings.search.rrf_k
        for hit in await rrf.search_hybrid("quokka migration", corpus.semantic_vector, limit=10):
            expected = sum(w / (k + r) for w, r in ((ss.vector_weight, hit.vector_rank),
                                                    (ss.text_weight, hit.text_rank)) if r is not None)
            assert hit.score == pytest.approx(expected)  # the weighted RRF of the returned ranks
    finally:
        await rrf.cleanup()
    # neither single-branch mode finds both
    vector_ids = {h.id for h in await corpus.store.search_vector(corpus.semantic_vector, limit=10)}
    text_ids = {h.id for h in await corpus.store.search_text("quokka migration", limit=10)}
    assert corpus.lexical_id not in vector_ids and corpus.semantic_id not in text_ids


async def test_fusion_weights_change_the_order(corpus: Corpus) -> None:
    async def top(vector_weight: float, text_weight: float) -> uuid.UUID:
        hits = await corpus.store.search_hybrid("quokka migration", corpus.semantic_vector, limit=5,
                                                vector_weight=vector_weight, text_weight=text_weight)
        return hits[0].id

    assert await top(1.0, 0.5) == corpus.semantic_id
    assert await top(0.5, 1.0) == corpus.lexical_id
    assert await top(1.0, 0.0) == corpus.semantic_id
    assert await top(0.0, 1.0) == corpus.lexical_id
    # equal weights tie (each is the best of its branch, normalised to 1); the vector rank breaks the tie
    assert await top(1.0, 1.0) == corpus.semantic_id
    for bad in ({"vector_weight": -1.0}, {"text_weight": float("nan")}, {"rrf_k": 0}):
        with pytest.raises(InvalidInput):
            await corpus.store.search_hybrid("quokka", corpus.semantic_vector, **bad)


@pytest.mark.parametrize("mode", ["vector", "text", "hybrid"])
async def test_scores_are_non_increasing(corpus: Corpus, mode: str) -> None:
    for i in range(4):
        query = _query(corpus, 100 + i).tolist()
        text = WORDS[i]
        for filters in (None, SearchFilters(projects=["p2"]), SearchFilters(agent_id="a05")):
            hits = await corpus.store.search(query_text=text, query_embedding=None if mode == "text" else query,
                                             mode=mode, filters=filters, limit=30)  # type: ignore[arg-type]
            assert hits, (mode, filters)
            assert _non_increasing(hits), [h.score for h in hits]
            if mode == "vector":
                assert [h.vector_rank for h in hits] == list(range(1, len(hits) + 1))
            if mode == "text":
                assert [h.text_rank for h in hits] == list(range(1, len(hits) + 1))
                assert all(h.score > 0 for h in hits)  # BM25: a sum of positive IDF-weighted terms


# --- hostile query text -----------------------------------------------------------------------------------

HOSTILE = [
    "'", "''", '"', "\"unbalanced", "a'; DROP TABLE memories; --", "-- comment", "/* c */", "\\", "\\\\'",
    "w001 OR w002", "-w001 w002", '"w001 w002"', "OR", "-", "AND NOT", "!!!", "&|!():*", "<->", "w001:*",
    "😀 🚀 emoji only", "w001 😀", "   ", "", "\t\n", "ünïcödé ß", "a" * 5000, "%_%", "$1", "::regclass",
    "websearch_to_tsquery('english', 'x')", "\u200b", "NULL", "\x01\x02",
]


@pytest.mark.parametrize("mode", ["text", "hybrid"])
async def test_hostile_query_text_never_errors(corpus: Corpus, mode: str) -> None:
    query = corpus.semantic_vector
    for text in HOSTILE:
        hits = await corpus.store.search(query_text=text, query_embedding=query if mode == "hybrid" else None,
                                         mode=mode, limit=5,  # type: ignore[arg-type]
                                         filters=SearchFilters(agent_id="a'; --", metadata={"k": "\\'\""}))
        assert hits == []  # the filter matches nothing, whatever the text
        hits = await corpus.store.search(query_text=text, query_embedding=query if mode == "hybrid" else None,
                                         mode=mode, limit=5)  # type: ignore[arg-type]
        assert _non_increasing(hits)
    # websearch operators keep their meaning: OR, "phrase", -negation
    assert [h.id for h in await corpus.store.search_text("quokka OR zzzzz")] == [corpus.lexical_id]
    assert [h.id for h in await corpus.store.search_text('"quokka migration"')] == [corpus.lexical_id]
    assert await corpus.store.search_text('"migration quokka"') == []
    assert await corpus.store.search_text("quokka -platypus") == []
    for bad in ("nul\x00byte", "lone \ud800 surrogate", "x" * 10_001):
        with pytest.raises(InvalidInput):
            await corpus.store.search(query_text=bad, query_embedding=query if mode == "hybrid" else None,
                                      mode=mode)  # type: ignore[arg-type]


# --- the optional BM25 branch -----------------------------------------------------------------------------


async def test_a_failing_bm25_branch_falls_back_to_tsvector(corpus: Corpus) -> None:
    """pg_textsearch/pg_search cannot be installed here; what is tested is the guard around them.

    We pretend pg_textsearch and an index exist: the branch's SQL fails (no ``to_bm25query``), inside a
    savepoint, and the store answers with its plain-PostgreSQL BM25 branch and stops using the extension.
    """
    store = await _sibling(corpus, exact_search_max_rows=EXACT_MAX_ROWS)
    try:
        expected = [h.id for h in await store.search_text("quokka migration", limit=5)]
        store.bm25_extension = "pg_textsearch"
        store.searcher._bm25_index = f"{store.schema}.memories_bm25"
        store.searcher._bm25_checked = True
        hits = await store.search_text("quokka migration", limit=5)
        assert [h.id for h in hits] == expected == [corpus.lexical_id]
        assert store.searcher._bm25_index is None
        hybrid = await store.search_hybrid("quokka migration", corpus.semantic_vector, limit=5)
        assert {corpus.lexical_id, corpus.semantic_id} <= {h.id for h in hybrid}
    finally:
        await store.cleanup()
