"""Hostile input in every text field, in metadata keys and values, and in search filters.

Every value is either stored verbatim (read back equal through ``get`` and found by text search) or rejected
with ``InvalidInput``; the schema's tables are intact afterwards.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.errors import InvalidInput
from oneiric_memory.records import MemoryRecord, SearchFilters
from tests.foundation_fixtures import unit_vector

pytestmark = pytest.mark.asyncio

TEXT_FIELDS = ("project", "source_system", "agent_id", "workflow_id", "repo_id", "session_id", "embedding_model")
TABLES = ("memories", "embedding_meta", "memory_access", "insight_outbox", "rag_ingestions", "alembic_version")

HOSTILE: list[str] = [
    "'",
    '"',
    "''",
    "'; DROP TABLE memories; --",
    "'); DROP TABLE memories; --",
    "Robert'); DROP TABLE students;--",
    '"; DROP SCHEMA public CASCADE; --',
    "; SELECT pg_sleep(30);",
    "-- just a comment",
    "/* unterminated comment",
    "\\",
    "\\\\server\\share",
    "\\x00 spelled out, not a NUL",
    "back\\'slash quote",
    "E'\\x41'",
    "$1",
    "$1::text; $2",
    "$$ dollar $tag$ quoting $$",
    "%s %d %(name)s {0} {name}",
    "%%",
    "\U0001f9e0\U0001f4a5 \U0001f469\u200d\U0001f469\u200d\U0001f467 flags \U0001f1fa\U0001f1e6",
    "\u202eright-to-left override\u202c and \u200fRLM\u200e",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u05e2\u05d1\u05e8\u05d9\u05ea",
    "zero\u200bwidth\ufeffbom",
    "line\u2028separator\u2029paragraph",
    "tab\there\nnewline\rcarriage",
    "\x01\x02\x1b[31m control characters \x7f",
    "e\u0301\u0301\u0301 combining",
    "{\"json\": [1, 2, {\"nested\": null}]}",
    "<script>alert(1)</script>",
    "null",
    "NULL",
    " leading and trailing spaces ",
]


def _record(index: int, value: str) -> MemoryRecord:
    fields: dict[str, Any] = {name: value for name in TEXT_FIELDS}
    fields["project"] = value if value.strip() else f"p{index}"
    return MemoryRecord(content=f"hostile sample {index}: {value}", embedding=unit_vector(index), metadata={
        value: value, "nested": {value: [value, 1, 2.5, None, True]}, "list": [value]}, **fields)


async def _assert_tables_intact(store: PgvectorMemoryStore, expected_rows: int) -> None:
    async with store.gate.acquire() as connection:
        for table in TABLES:
            assert await connection.fetchval("SELECT to_regclass($1)", f'"{store.schema}".{table}') is not None, table
        assert await connection.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'vector'") == 1
    assert await store.count() == expected_rows


async def test_hostile_values_in_every_field_are_stored_verbatim(store: PgvectorMemoryStore) -> None:
    records = [_record(index, value) for index, value in enumerate(HOSTILE)]
    result = await store.upsert_many(records)
    assert result.inserted == [True] * len(HOSTILE)
    stored = await store.get(result.ids)
    assert len(stored) == len(HOSTILE)
    for record, memory in zip(records, stored, strict=True):
        assert memory.content == record.content
        for name in TEXT_FIELDS:
            assert getattr(memory, name) == getattr(record, name), name
        assert memory.metadata == record.metadata
    await _assert_tables_intact(store, len(HOSTILE))
    # the same batch again is recognised as duplicates: the hash and the unique key see the same values
    again = await store.upsert_many(records)
    assert again.ids == result.ids and not any(again.inserted)


async def test_hostile_values_work_as_search_filters(store: PgvectorMemoryStore) -> None:
    records = [_record(index, value) for index, value in enumerate(HOSTILE)]
    result = await store.upsert_many(records)
    for index, value in enumerate(HOSTILE):
        filters = SearchFilters(projects=[records[index].project], agent_id=value, workflow_id=value, repo_id=value,
                                session_id=value, source_system=value, metadata={value: value})
        assert await store.count(filters) == 1, value
        hits = await store.search_vector(unit_vector(index), filters=filters, limit=5)
        assert [hit.id for hit in hits] == [result.ids[index]], value
        hits = await store.search_hybrid(f"hostile sample {value}", unit_vector(index), filters=filters, limit=5)
        assert [hit.id for hit in hits] == [result.ids[index]], value
    await _assert_tables_intact(store, len(HOSTILE))


async def test_hostile_text_queries_never_raise_and_find_verbatim_content(store: PgvectorMemoryStore) -> None:
    injection = "'); DROP TABLE memories; --"
    result = await store.upsert_many([MemoryRecord(content=f"quoted payload {injection} lives here"),
                                      MemoryRecord(content="an unrelated note about kangaroos")])
    hits = await store.search_text("DROP TABLE memories")
    assert [hit.id for hit in hits] == [result.ids[0]]
    assert hits[0].content == f"quoted payload {injection} lives here"
    for query in [*HOSTILE, '"unbalanced', "-", "!!&&||", "or", "a -b -c", "((((", "'''", "\\\\", "*:*"]:
        await store.search_text(query)  # websearch_to_tsquery accepts any text
    await _assert_tables_intact(store, 2)


async def test_one_megabyte_content_roundtrips_and_larger_is_refused(store: PgvectorMemoryStore) -> None:
    limit = store.settings.postgres.max_content_bytes
    assert limit == 1_000_000
    words = " ".join(secrets.token_hex(8) for _ in range(limit // 17 + 1))
    content = ("needle " + words)[:limit]
    assert len(content.encode()) == limit
    result = await store.upsert_many([MemoryRecord(content=content, embedding=unit_vector(1))])
    assert (await store.get(result.ids))[0].content == content
    assert [hit.id for hit in await store.search_text("needle")] == result.ids
    with pytest.raises(InvalidInput, match="longer than 1000000 bytes"):
        await store.upsert_many([MemoryRecord(content=content + "x")])
    # the limit counts UTF-8 bytes, not characters
    with pytest.raises(InvalidInput, match="longer than 1000000 bytes"):
        await store.upsert_many([MemoryRecord(content="\u00e9" * (limit // 2 + 1))])
    await _assert_tables_intact(store, 1)


async def test_nul_bytes_and_lone_surrogates_are_rejected_in_every_field(store: PgvectorMemoryStore) -> None:
    for field in ("content", *TEXT_FIELDS):
        for bad, expected in (("before\x00after", "NUL byte"), ("half \ud83d pair", "surrogate")):
            fields: dict[str, Any] = {"content": "fine content", "embedding": unit_vector(1), field: bad}
            with pytest.raises(InvalidInput, match=expected) as info:
                await store.upsert_many([MemoryRecord(content="ok", embedding=unit_vector(2)),
                                         MemoryRecord(**fields)])
            assert info.value.details["field"] == field
            assert info.value.details["index"] == 1
    await _assert_tables_intact(store, 0)


async def test_oversized_ids_and_metadata_are_rejected(store: PgvectorMemoryStore) -> None:
    with pytest.raises(InvalidInput, match="agent_id is longer than 512 bytes"):
        await store.upsert_many([MemoryRecord(content="x", agent_id="a" * 513)])
    with pytest.raises(InvalidInput, match="metadata is larger than"):
        await store.upsert_many([MemoryRecord(content="x", metadata={"blob": "b" * 300_000})])
    long_key = "k" * 10_000
    stored = await store.upsert_many([MemoryRecord(content="long key", metadata={long_key: long_key})])
    assert (await store.get(stored.ids))[0].metadata == {long_key: long_key}
    await _assert_tables_intact(store, 1)


async def test_hostile_filters_and_ids_are_rejected_or_harmless(store: PgvectorMemoryStore) -> None:
    await store.upsert_many([MemoryRecord(content="a harmless row", embedding=unit_vector(1))])
    for bad_filter, expected in (
            (SearchFilters(agent_id="a\x00b"), "NUL"),
            (SearchFilters(projects=["ok", "p\x00"]), "NUL"),
            (SearchFilters(projects="'; DROP TABLE memories; --"), "list of strings"),
            (SearchFilters(memory_types=["agent'; --"]), "unknown memory_type"),
            (SearchFilters(metadata={"k": float("nan")}), "not valid JSON"),
            (SearchFilters(metadata={"k": "\ud800"}), "surrogate"),
    ):
        with pytest.raises(InvalidInput, match=expected):
            await store.count(bad_filter)
        with pytest.raises(InvalidInput, match=expected):
            await store.search_vector(unit_vector(1), filters=bad_filter)
    for bad_id in ("'; DROP TABLE memories; --", "1 OR 1=1", "\x00"):
        with pytest.raises(InvalidInput, match="not a memory id"):
            await store.get([bad_id])
        with pytest.raises(InvalidInput, match="not a memory id"):
            await store.delete([bad_id])
    with pytest.raises(InvalidInput, match="NUL"):
        await store.search_text("nul\x00query")
    assert await store.delete(filters=SearchFilters(projects=["'; DROP TABLE memories; --"])) == 0
    await _assert_tables_intact(store, 1)
