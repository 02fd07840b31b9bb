"""The lexical branch: OR semantics with BM25 ranking in plain PostgreSQL, websearch syntax kept, bounded work.

Real embedded PostgreSQL; the rows carry no embeddings (text search needs none). ANALYZE is run where
the test depends on corpus statistics (IDF), as autovacuum would in production.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.adapters.pgvector.search_sql import (
    MAX_SCORED_LEXEMES,
    LexicalStats,
    Params,
    parse_websearch,
    text_branch,
    tsquery_lexeme,
)
from oneiric_memory.records import MemoryRecord, SearchFilters
from tests.support import make_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

TURNS = [
    "Caroline: I went to a LGBTQ support group yesterday and it was so powerful.",
    "Melanie: We painted a sunset at the lake with the kids.",
    "Caroline: The transgender stories at the support group were inspiring.",
    "Melanie: I am running a charity race for mental health next month.",
    "Caroline: Thanks, Mel! I am researching adoption agencies.",
    "Melanie: The kids loved the ice cream at the beach.",
    "Caroline: Ice and cream do not belong in my painting.",
]
FILLER = 60  # rows sharing the common words "hello" and "today", so IDF has something to tell apart


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lexical(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> AsyncIterator[
        tuple[PgvectorMemoryStore, dict[str, uuid.UUID]]]:
    store = PgvectorMemoryStore(make_settings(pg_data_dir))
    await store.init()
    try:
        texts = TURNS + [f"Hello today, note {i} about the weather today" for i in range(FILLER)] + [
            "Hello today: the zeppelin landed",  # one rare word among common ones
        ]
        result = await store.upsert_many([MemoryRecord(content=t, project="conv") for t in texts])
        async with store.gate.acquire() as connection:
            await connection.execute(f"ANALYZE {store.table('memories')}")
        yield store, dict(zip(texts, result.ids, strict=True))
    finally:
        if store._pool is not None:
            async with store.gate.acquire() as connection:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
        await store.cleanup()


async def _ids(store: PgvectorMemoryStore, text: str, limit: int = 10) -> list[uuid.UUID]:
    return [h.id for h in await store.search_text(text, limit=limit, filters=SearchFilters(projects=["conv"]))]


async def test_partial_matches_are_found(lexical: tuple[PgvectorMemoryStore, dict[str, uuid.UUID]]) -> None:
    store, ids = lexical
    # "go" never meets "went" and "when"/"did" are stop words: AND semantics found nothing here
    hits = await _ids(store, "When did Caroline go to the LGBTQ support group?")
    assert hits[0] == ids[TURNS[0]]  # rarest terms (lgbtq, support, group) in one turn rank it first
    assert ids[TURNS[2]] in hits  # shares only "support group" and the speaker: still found
    assert ids[TURNS[1]] not in hits  # shares no term at all


async def test_bm25_weights_rare_terms_above_common_ones(
        lexical: tuple[PgvectorMemoryStore, dict[str, uuid.UUID]]) -> None:
    store, ids = lexical
    hits = await store.search_text("hello today zeppelin", limit=5, filters=SearchFilters(projects=["conv"]))
    # every filler row matches "hello today" (twice "today"), only one matches the rare "zeppelin"
    assert hits[0].id == ids["Hello today: the zeppelin landed"]
    assert hits[0].score > 2 * hits[1].score  # IDF: the rare word outweighs both common ones together
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))


async def test_negation_excludes_and_phrase_requires_adjacency(
        lexical: tuple[PgvectorMemoryStore, dict[str, uuid.UUID]]) -> None:
    store, ids = lexical
    hits = await _ids(store, "support group -transgender")
    assert ids[TURNS[0]] in hits and ids[TURNS[2]] not in hits
    hits = await _ids(store, 'caroline -"support group"')
    assert ids[TURNS[4]] in hits and ids[TURNS[0]] not in hits and ids[TURNS[2]] not in hits
    assert await _ids(store, "support --group") == []  # one negation, not a double one
    phrase = await _ids(store, '"ice cream"')
    assert phrase == [ids[TURNS[5]]]  # "Ice and cream" has both words, not as the phrase
    both = await _ids(store, "ice cream")
    assert set(both) == {ids[TURNS[5]], ids[TURNS[6]]}
    # OR as the user writes it changes nothing: every item is already an alternative
    assert set(await _ids(store, "adoption OR charity")) == {ids[TURNS[4]], ids[TURNS[3]]}
    assert await _ids(store, "-caroline") == []  # nothing positive to rank by: no rows, no error


async def test_hostile_query_is_bound_never_spliced(lexical: tuple[PgvectorMemoryStore, dict[str, uuid.UUID]]) -> None:
    store, ids = lexical
    hostile = "support'); DROP TABLE memories; -- \\' \"group $1 -\"x'' ::regclass"
    params = Params()
    terms = LexicalStats().terms(["support", "drop", "x'');--", "back\\slash"], 100)
    sql = text_branch(params, table=store.table("memories"), text_config="english", query=parse_websearch(hostile),
                      terms=terms, avg_lexemes=None, filters=None, n=5, candidates=100)
    assert "DROP" not in sql and "regclass\"" not in sql and "slash" not in sql
    assert set(re.findall(r"'[^']*'", sql)) <= {"'A'", "'{a}'"}  # the builder's own literals only
    assert any(isinstance(v, str) and "DROP or TABLE or memories;" in v for v in params.values)  # bound, as items
    assert "'x'''');--'" in params.values  # a hostile lexeme travels bound, as one quoted tsquery operand
    hits = await _ids(store, hostile)
    assert ids[TURNS[0]] in hits  # "support" still matches
    assert await store.count(SearchFilters(projects=["conv"])) == len(TURNS) + FILLER + 1


@pytest.mark.parametrize("lexeme", ["plain", "it's", "back\\slash", "two words", "a:b & !c | d <-> e", "''", "\\'",
                                    "ünï"])
async def test_lexemes_are_quoted_as_exactly_one_tsquery_operand(
        lexical: tuple[PgvectorMemoryStore, dict[str, uuid.UUID]], lexeme: str) -> None:
    store, _ = lexical
    async with store.gate.acquire() as connection:
        row = await connection.fetchrow(
            "SELECT array_to_tsvector(ARRAY[$1::text]) @@ $2::tsquery AS hit, numnode($2::tsquery) AS nodes, "
            "$2::tsquery::text = array_to_tsvector(ARRAY[$1::text])::text AS same", lexeme, tsquery_lexeme(lexeme))
    assert row["hit"] and row["nodes"] == 1 and row["same"]  # one operand, the very lexeme, whatever it holds


async def test_repeated_terms_rank_higher_exact_term_frequency(pg_server: EmbeddedConnectInfo,
                                                               pg_data_dir: Path) -> None:
    store = PgvectorMemoryStore(make_settings(pg_data_dir))
    await store.init()
    try:
        once, twice = "narwhal blue swims", "narwhal narwhal blue swims"  # same distinct-lexeme length (3)
        result = await store.upsert_many([MemoryRecord(content=t) for t in (once, twice)] + [
            MemoryRecord(content=f"filler row {i} about nothing") for i in range(30)])
        async with store.gate.acquire() as connection:
            await connection.execute(f"ANALYZE {store.table('memories')}")
        hits = await store.search_text("narwhal", limit=5)
        assert [h.id for h in hits] == [result.ids[1], result.ids[0]]  # tf 2 above tf 1, same length
        assert hits[0].score > hits[1].score
    finally:
        async with store.gate.acquire() as connection:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
        await store.cleanup()


async def test_websearch_syntax_is_split_like_postgresql() -> None:
    q = parse_websearch('a "b  c" -d -"e f" or OR g --h - "unterminated x')
    assert q.positive == ("a", "b c", "g", "unterminated x")
    assert q.negative == ("d", "e f", "h")
    assert q.positive_text == 'a or "b c" or g or "unterminated x"'
    assert q.negative_text == 'd or "e f" or h'
    assert parse_websearch('-" "or"') == parse_websearch("") == parse_websearch("or OR -")


async def test_common_words_are_bounded_but_rare_terms_still_admit(pg_server: EmbeddedConnectInfo,
                                                                   pg_data_dir: Path) -> None:
    store = PgvectorMemoryStore(make_settings(pg_data_dir, search={"lexical_candidates": 10}))
    await store.init()
    try:
        texts = [f"common words everywhere {i}" for i in range(200)] + ["common words and one narwhal"]
        result = await store.upsert_many([MemoryRecord(content=t) for t in texts])
        async with store.gate.acquire() as connection:
            await connection.execute(f"ANALYZE {store.table('memories')}")
        hits = await store.search_text("common narwhal", limit=50)
        assert hits[0].id == result.ids[-1]  # admitted through its rare term, though 201 rows match "common"
        assert len(hits) == 1  # the rare term alone admits rows once it exists
        assert len(await store.search_text("common words", limit=50)) == 10  # all-common: at most the bound
    finally:
        async with store.gate.acquire() as connection:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
        await store.cleanup()


async def test_terms_are_rarest_first_gated_by_the_budget_and_capped() -> None:
    stats = LexicalStats.from_row(1000, 10.0, ["common", "mid", "rare"], [0.5, 0.1, 0.01, 0.002])
    terms = stats.terms(["common", "rare", "unseen", "mid"], budget=200)
    assert terms.lexemes == ("unseen", "rare", "mid", "common")  # unseen = half the least listed share
    assert list(terms.idfs) == sorted(terms.idfs, reverse=True)
    assert terms.gate == ("unseen", "rare", "mid") and terms.gated  # 1 + 10 + 100 rows fit in 200, 500 does not
    assert stats.terms(["common"], budget=1).gate == ("common",)  # the rarest always admits, whatever the budget
    assert not stats.terms(["rare", "mid"], budget=200).gated  # the gate holds every lexeme: no test needed
    many = [f"w{i}" for i in range(MAX_SCORED_LEXEMES + 5)]
    capped = stats.terms([*many, "common"], budget=10**6)
    assert len(capped.lexemes) == MAX_SCORED_LEXEMES and "common" not in capped.lexemes  # scoring is bounded
    assert len(capped.gate) == len(many) + 1 and not capped.gated  # the gate is not
    assert LexicalStats().terms(["a", "b"], budget=10).lexemes == ("a", "b")  # no ANALYZE yet: equally rare


async def test_a_long_query_is_bounded_and_still_finds_rows(lexical: tuple[PgvectorMemoryStore, dict[str, uuid.UUID]]) -> None:
    store, ids = lexical
    words = " ".join(f"filler{i}" for i in range(MAX_SCORED_LEXEMES + 8))
    hits = await _ids(store, f"{words} hello today zeppelin", limit=100)
    # more lexemes than are scored: the 32 rarest (here the fillers, which match nothing) are scored, and the
    # rows of the others are still admitted through the gate (unscored, at 0), so the query finds them
    assert ids["Hello today: the zeppelin landed"] in hits and len(hits) == FILLER + 1
