"""Hostile input through every public entry point and every field, and in every stored text field.

The table (``API_CASES``): each row attacks one field of one ``UnifiedMemory`` entry point with one value; the
call must raise ``InvalidInput`` with a message that names the problem, and change nothing (memories, outbox,
access statistics and the bound model are compared before and after). The CLI's rows live in
``test_hostile_input_cli.py`` with the same row type.

The store-level tests below: every value is either stored verbatim (read back equal through ``get`` and found
by text search) or rejected with ``InvalidInput``; the schema's tables are intact afterwards.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import InvalidInput
from oneiric_memory.rag import IngestOptions
from oneiric_memory.records import MemoryRecord, SearchFilters
from tests.coordinator_fixtures import conversation, drop_schema, outbox_rows
from tests.foundation_fixtures import unit_vector
from tests.hostile_table import HostileCase, case_id
from tests.support import make_settings

pytestmark = pytest.mark.asyncio

# --- the table: every public entry point of UnifiedMemory, every field ------------------------------------

NOW = datetime.now(UTC)
DIM = 768
_NUL, _SURROGATE, _TOO_LONG_ID = "a\x00b", "half \ud83d pair", "i" * 513
_BAD_TEXT = ((_NUL, "NUL"), (_SURROGATE, "surrogate"), (123, "must be a string"))
_BAD_ID = (*_BAD_TEXT, (_TOO_LONG_ID, "longer than 512 bytes"))
_BAD_METADATA = (([1, 2], "metadata must be a JSON object"), ("x", "metadata must be a JSON object"),
                 ({1: "a"}, "non-string key"), ({"k": float("nan")}, "not valid JSON"),
                 ({"k": object()}, "not JSON"), ({"k": "a\x00"}, "NUL"), ({"\ud800": 1}, "surrogate"),
                 ({"blob": "b" * 300_000}, "larger than"))
_BAD_LIMIT = ((0, "limit must be an integer between 1 and"), (-1, "between 1 and"), (10**9, "between 1 and"),
              ("5", "between 1 and"), (5.0, "between 1 and"), (True, "between 1 and"))
_BAD_QUERY = (("", "non-empty"), ("   ", "non-empty"), ("a\x00b", "NUL"), ("\ud800 x", "surrogate"),
              ("x" * 10_000_001, "longer than 10,000 characters"), ("x" * 10_001, "longer than 10,000"),
              (None, "query must be a string"), (123, "query must be a string"), (b"bytes", "must be a string"))
_BAD_PROJECTS = (("default", "projects must be a list of strings"), ([], r"projects=\[\] names nothing"),
                 ([""], "non-empty strings"), ([1], "non-empty strings"), (["a\x00"], "NUL"),
                 ({"p": 1}, "list of strings"), (5, "list of strings"))
_BAD_TYPES = (("agent", "memory_types must be a list of strings"), ([], r"memory_types=\[\] names nothing"),
              (["nope"], "unknown memory"), ([None], "non-empty strings"))
_BAD_MODE = (("bogus", "mode 'bogus' is unknown"), (1, "is unknown"), ("", "is unknown"))
_BAD_EMBEDDING = (("abc", "embedding must be a sequence"), ([0.1] * 3, "has 3 dimensions"),
                  ([1e10] * DIM, "beyond ±65504"), ([70000.0] + [0.0] * (DIM - 1), "beyond ±65504"),
                  ([1e-8] * DIM, "zero vector"), ([0.0] * DIM, "zero vector"),
                  ([float("nan")] * DIM, "non-finite"), (["x"] * DIM, "non-numeric"), (5, "must be a sequence"))
_BAD_NAME = (("", "non-empty string"), (_NUL, "NUL"), (_SURROGATE, "surrogate"), (123, "non-empty string"),
             (_TOO_LONG_ID, "longer than 512"))
_BAD_GROUP = (*_BAD_NAME[:4], (["g"], "non-empty string"), ("no-such-group", "no project group"))
_BAD_ACTING = (("", "non-empty"), (_NUL, "NUL"), ([], "names nothing"), (5, "list of strings"),
               ([""], "non-empty strings"))
_BAD_WHEN = ((datetime(2030, 1, 1), "timezone-aware"), ("2030-01-01", "timezone-aware"), (1, "timezone-aware"))


def _rows(entry: str, field: str, values: tuple[tuple[object, str], ...]) -> list[HostileCase]:
    return [HostileCase(entry, field, value, match) for value, match in values]


def _record_rows(entry: str) -> list[HostileCase]:
    """Every field of a record, through ``remember_many`` (``entry`` says as a mapping or a MemoryRecord)."""
    rows = [*_rows(entry, "content", ((None, "must be a string"), ("", "content is empty"), ("  \n ", "empty"),
                                      (_NUL, "NUL"), (_SURROGATE, "surrogate"), (42, "must be a string"),
                                      ("x" * 1_000_001, "longer than 1000000 bytes"))),
            *_rows(entry, "memory_type", (("agnet", "memory_type 'agnet' is unknown"), (None, "unknown"),
                                          ("", "unknown"))),
            *_rows(entry, "project", (("", "project must be a non-empty string"), (None, "non-empty string"),
                                      (123, "non-empty string"), *_BAD_ID[:2], _BAD_ID[3])),
            *_rows(entry, "metadata", _BAD_METADATA),
            *_rows(entry, "embedding", _BAD_EMBEDDING),
            *_rows(entry, "embedding_model", ((_NUL, "NUL"), ("other-model", "without an embedding"))),
            *_rows(entry, "expires_at", _BAD_WHEN), *_rows(entry, "created_at", _BAD_WHEN),
            *_rows(entry, "id", (("not-a-uuid", "id must be a UUID"), (5, "id must be a UUID")))]
    for name in ("source_system", "agent_id", "workflow_id", "repo_id", "session_id"):
        rows += _rows(entry, name, _BAD_ID)
    return rows


API_CASES: list[HostileCase] = [
    # remember(content, memory_type, *, project, source_system, agent_id, workflow_id, repo_id, session_id,
    #          metadata, expires_at)
    *_rows("remember", "content", ((None, "must be a string"), ("", "empty"), (_NUL, "NUL"),
                                   (_SURROGATE, "surrogate"), (["a", "b"], "must be a string"))),
    *_rows("remember", "memory_type", (("agnet", "unknown"), (None, "unknown"))),
    *_rows("remember", "project", (("", "non-empty"), (123, "non-empty string"), *_BAD_ID[:2], _BAD_ID[3])),
    *[case for name in ("source_system", "agent_id", "workflow_id", "repo_id", "session_id")
      for case in _rows("remember", name, _BAD_ID)],
    *_rows("remember", "metadata", _BAD_METADATA),
    *_rows("remember", "expires_at", _BAD_WHEN),
    # remember_many(records): the argument itself, then every field of a record (mapping and MemoryRecord)
    *_rows("remember_many", "records", ((None, "records must be a list"), ("abc", "records must be a list"),
                                        ({"content": "x"}, "records must be a list"), (5, "records must be a list"),
                                        ([1], "must be a MemoryRecord or a mapping"),
                                        ([None], "must be a MemoryRecord or a mapping"),
                                        ([{"content": "x", "colour": "red"}], "unknown fields"),
                                        ([{"content": "x", "metadata": [1, 2]}], "metadata must be a JSON object"),
                                        ([{"memory_type": "agent"}], "content"))),
    *_record_rows("remember_many[mapping]"),
    *_record_rows("remember_many[MemoryRecord]"),
    HostileCase("remember_many[MemoryRecord]", "embedding+model", ([0.1] * DIM, None), "needs its embedding_model"),
    HostileCase("remember_many[MemoryRecord]", "embedding+model", ([0.1] * DIM, "other-model"),
                "differs from the store's"),
    # search(query, *, mode, memory_types, filters, limit, projects)
    *_rows("search", "query", _BAD_QUERY),
    *_rows("search", "mode", _BAD_MODE),
    *_rows("search", "limit", _BAD_LIMIT),
    *_rows("search", "projects", _BAD_PROJECTS),
    *_rows("search", "memory_types", _BAD_TYPES),
    *_rows("search", "filters", (("x", "filters must be a SearchFilters"),
                                 ({"projects": ["a"]}, "filters must be a SearchFilters"))),
    # every field of SearchFilters, through search(filters=...)
    *_rows("search[filters]", "projects", _BAD_PROJECTS),
    *_rows("search[filters]", "memory_types", _BAD_TYPES),
    *[case for name in ("source_system", "agent_id", "workflow_id", "repo_id", "session_id")
      for case in _rows("search[filters]", name, _BAD_ID)],
    *_rows("search[filters]", "created_after", _BAD_WHEN), *_rows("search[filters]", "created_before", _BAD_WHEN),
    *_rows("search[filters]", "metadata", ((["k"], "metadata filter must be a JSON object"),
                                           ({"k": float("nan")}, "not valid JSON"), ({"k": "\ud800"}, "surrogate"),
                                           ({"k": "a\x00"}, "NUL"))),
    *_rows("search[filters]", "include_expired", (("yes", "include_expired must be a bool"),)),
    *_rows("search[filters]", "acting_for", (("p", "acting_for must be a list"), ([], "names nothing"),
                                             ([_NUL], "NUL"))),
    *_rows("search[filters]", "shared_targets", (("p:x", "shared_targets must be a list"), ([1], "non-empty"))),
    # cross-project reads: a group's projects, or the projects a caller acts for
    *_rows("search", "group", _BAD_GROUP), *_rows("unified_search", "group", _BAD_GROUP),
    *_rows("search", "acting_for", _BAD_ACTING), *_rows("unified_search", "acting_for", _BAD_ACTING),
    *_rows("search[filters]", "path_prefix", (("", "path_prefix is empty"), (_NUL, "NUL"), (5, "must be a string"),
                                              ("\ud800", "surrogate"), ("x" * 5000, "longer than"))),
    # ingest_repository(path, repo_id, *, project, options, progress) and ingestions(repo_id, *, project, limit)
    *_rows("ingest_repository", "path", ((None, "path must be a folder path"), ("/no/such/dir", "is not a folder"),
                                         (__file__, "is not a folder"), ("a\x00b", "NUL"), ("", "folder path"))),
    *_rows("ingest_repository", "repo_id", (("", "repo_id must be a non-empty string"), (None, "non-empty"),
                                            (_NUL, "NUL"), (_TOO_LONG_ID, "longer than 512"),
                                            (_SURROGATE, "surrogate"))),
    *_rows("ingest_repository", "project", (("", "non-empty"), (_NUL, "NUL"), (_SURROGATE, "surrogate"))),
    *_rows("ingest_repository", "options", (("x", "options must be an IngestOptions"),
                                            (IngestOptions(suffixes=".py"), "suffixes must be"),
                                            (IngestOptions(suffixes=["py"]), "suffixes must be"),
                                            (IngestOptions(exclude="build/"), "exclude must be"),
                                            (IngestOptions(max_chars=5), "max_chars must be"),
                                            (IngestOptions(overlap=-1), "overlap must be"),
                                            (IngestOptions(max_file_bytes=True), "max_file_bytes must be"),
                                            (IngestOptions(batch_chunks=0), "batch_chunks must be"))),
    *_rows("ingest_repository", "progress", (("x", "progress must be a callable"),)),
    *_rows("ingestions", "repo_id", (("", "repo_id must be a non-empty string"), (_NUL, "NUL"))),
    *_rows("ingestions", "project", (("", "non-empty"), (_SURROGATE, "surrogate"))),
    *_rows("ingestions", "limit", _BAD_LIMIT),
    # unified_search(query, *, limit, projects, mode): the caller's mistake is never a "degraded" answer
    *_rows("unified_search", "query", _BAD_QUERY),
    *_rows("unified_search", "limit", _BAD_LIMIT),
    *_rows("unified_search", "projects", _BAD_PROJECTS),
    *_rows("unified_search", "mode", _BAD_MODE),
    # the convenience writers
    *_rows("store_agent_conversation", "agent_id", (("", "agent_id must be a non-empty string"),
                                                    (None, "non-empty string"), (_NUL, "NUL"))),
    *_rows("store_agent_conversation", "role", ((None, "role must be a non-empty string"), ("", "non-empty"),
                                                (7, "non-empty string"), (_NUL, "NUL"))),
    *_rows("store_agent_conversation", "content", ((None, "must be a string"), ("", "empty"), (_NUL, "NUL"))),
    *_rows("store_agent_conversation", "metadata", _BAD_METADATA[:3]),
    *_rows("store_agent_conversation", "project", (("", "non-empty"), (_NUL, "NUL"))),
    *_rows("store_agent_conversation", "session_id", _BAD_ID),
    *_rows("store_rag_chunks", "repo_id", (("", "repo_id must be a non-empty string"), (None, "non-empty"),
                                           (_NUL, "NUL"), (_TOO_LONG_ID, "longer than 512"))),
    *_rows("store_rag_chunks", "chunks", (("abc", "chunks must be a list"), (None, "chunks must be a list"),
                                          ({"content": "x"}, "chunks must be a list"),
                                          ([None], "chunk 0 must be a string or a mapping"),
                                          ([{"content": None}], "chunk 0: content must be a string"),
                                          ([{"content": 5}], "content must be a string"),
                                          ([{"text": "x"}], "unknown fields"),
                                          (["fine", {"content": "x", "metadata": [1]}], "chunk 1 metadata must be"),
                                          ([""], "content is empty"), ([_NUL], "NUL"))),
    *_rows("store_rag_chunks", "project", (("", "non-empty"), (_SURROGATE, "surrogate"))),
    *_rows("store_workflow_execution", "workflow_id", (("", "workflow_id must be a non-empty string"),
                                                       (None, "non-empty"), (_NUL, "NUL"))),
    *_rows("store_workflow_execution", "summary", ((None, "must be a string"), ("", "empty"), (_NUL, "NUL"))),
    *_rows("store_workflow_execution", "status", ((None, "status must be a non-empty string"), ("", "non-empty"),
                                                  (_NUL, "NUL"))),
    *_rows("store_workflow_execution", "metadata", _BAD_METADATA[:3]),
    *_rows("store_workflow_execution", "project", (("", "non-empty"),)),
    # get(ids), project_counts(projects)
    *_rows("get", "ids", (("abc", "ids must be a list"), (["not-a-uuid"], "not a memory id"),
                          ([None], "not a memory id"), (123, "ids must be a list"), (None, "ids must be a list"))),
    *_rows("get", "acting_for", _BAD_ACTING),
    *_rows("project_counts", "projects", _BAD_PROJECTS),
    # groups and shares
    *_rows("create_group", "name", _BAD_NAME),
    *_rows("create_group", "projects", tuple(row for row in _BAD_PROJECTS if row[0] != [])),
    *_rows("create_group", "description", ((5, "description must be"), (_NUL, "description"),
                                           ("d" * 1001, "at most 1000"))),
    *_rows("create_group", "exist_ok", (("yes", "exist_ok must be a bool"),)),
    *_rows("list_groups", "project", _BAD_NAME[:4]),
    *_rows("get_group", "name", _BAD_NAME),
    *_rows("delete_group", "name", _BAD_NAME),
    *[case for entry in ("add_to_group", "remove_from_group")
      for case in (*_rows(entry, "name", _BAD_NAME), *_rows(entry, "projects", _BAD_PROJECTS))],
    *[case for entry in ("share", "unshare")
      for case in (*_rows(entry, "ids", (("abc", "ids must be a list"), (["not-a-uuid"], "not a memory id"))),
                   *_rows(entry, "projects", _BAD_PROJECTS),
                   *_rows(entry, "groups", tuple((v, m.replace("projects", "groups")) for v, m in _BAD_PROJECTS)))],
    HostileCase("share", "groups", ["no-such-group"], "no project group"),
    *_rows("backfill", "progress", (("x", "progress must be a callable"), (5, "progress must be a callable"))),
    # forget(ids, *, filters)
    *_rows("forget", "ids", (("abc", "ids must be a list"), (["not-a-uuid"], "not a memory id"),
                             ([None], "not a memory id"), (123, "ids must be a list"),
                             ({"id": 1}, "ids must be a list"), ("'; DROP TABLE memories; --", "ids must be a list"))),
    *_rows("forget", "filters", ((SearchFilters(), "refusing to delete with an empty filter"),
                                 ("x", "filters must be a SearchFilters"),
                                 (SearchFilters(projects=[]), r"projects=\[\] names nothing"),
                                 (SearchFilters(projects="default"), "list of strings"),
                                 (None, "needs ids or a filter"))),
]

_RECORD = {"content": "a fine memory", "memory_type": "agent", "project": "hostile"}


def _record_call(case: HostileCase, as_mapping: bool, model: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = dict(_RECORD)
    if case.field == "embedding+model":
        fields["embedding"], fields["embedding_model"] = case.value  # type: ignore[misc]
    else:
        fields[case.field] = case.value
        if case.field == "embedding":
            fields["embedding_model"] = model  # the store's own: only the vector is wrong
    return {"records": [dict(_RECORD, content="a fine first record"),
                        fields if as_mapping else MemoryRecord(**fields)]}


_BASE: dict[str, dict[str, Any]] = {
    "remember": {"content": "a fine memory", "memory_type": "agent", "project": "hostile"},
    "search": {"query": "fine memory"},
    "unified_search": {"query": "fine memory"},
    "store_agent_conversation": {"agent_id": "a1", "role": "user", "content": "a fine turn"},
    "store_rag_chunks": {"repo_id": "r1", "chunks": ["a fine chunk"]},
    "ingest_repository": {"path": str(Path(__file__).parent / "rag"), "repo_id": "r1"},
    "ingestions": {"repo_id": "r1"},
    "store_workflow_execution": {"workflow_id": "w1", "summary": "a fine run", "status": "completed"},
    "forget": {"ids": None},
    "get": {"ids": ["8f8b3c3e-7a52-4d0e-9f3b-0d7f0c1c5a11"]},
    "project_counts": {},
    "create_group": {"name": "hostile-group", "projects": ["a"]},
    "list_groups": {},
    "get_group": {},
    "delete_group": {},
    "add_to_group": {"name": "no-such-group", "projects": ["a"]},
    "remove_from_group": {"name": "no-such-group", "projects": ["a"]},
    "share": {"ids": ["8f8b3c3e-7a52-4d0e-9f3b-0d7f0c1c5a11"], "projects": ["a"]},
    "unshare": {"ids": ["8f8b3c3e-7a52-4d0e-9f3b-0d7f0c1c5a11"]},
    "backfill": {},
}


def _call(memory: UnifiedMemory, case: HostileCase) -> Awaitable[Any]:
    if case.entry.startswith("remember_many"):
        arguments = ({"records": case.value} if case.field == "records"
                     else _record_call(case, "mapping" in case.entry, memory.store.embedding_model))
        return memory.remember_many(**arguments)
    if case.entry == "search[filters]":
        return memory.search("fine memory", filters=SearchFilters(**{case.field: case.value}))
    arguments = {**_BASE[case.entry], case.field: case.value}
    method: Callable[..., Awaitable[Any]] = getattr(memory, case.entry)
    return method(**arguments)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hostile_memory(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> AsyncIterator[UnifiedMemory]:
    """One UnifiedMemory for the whole table (hashing embedder), holding a memory, an insight and an access."""
    settings = make_settings(pg_data_dir)
    async with UnifiedMemory.open(settings, background=False) as memory:
        try:
            first = await memory.remember(conversation("seed", "Seed rows prove that a rejected call deletes nothing."),
                                          project="hostile")
            await memory.store.touch([first])
            yield memory
        finally:
            await drop_schema(memory.store)


async def _snapshot(memory: UnifiedMemory) -> tuple[Any, ...]:
    store = memory.store
    seeded = await store.search(query_text="seed", mode="text", limit=10)
    return (await store.count(), await outbox_rows(store), store.embedding_model,
            [await store.access_stats(hit.id) for hit in seeded])


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", API_CASES, ids=case_id)
async def test_every_entry_point_rejects_hostile_input_and_changes_nothing(
        hostile_memory: UnifiedMemory, case: HostileCase) -> None:
    before = await _snapshot(hostile_memory)
    with pytest.raises(InvalidInput, match=case.match) as info:
        await _call(hostile_memory, case)
    assert len(str(info.value)) < 400  # one clear sentence: never an echo of a 10 MB query or a vector
    assert await _snapshot(hostile_memory) == before
    assert hostile_memory._in_flight == 0


async def test_the_table_covers_every_field_of_every_entry_point() -> None:
    import inspect

    covered = {(case.entry, case.field) for case in API_CASES}
    # every public coroutine of UnifiedMemory that takes input is an entry point of the table
    no_input = {"init", "cleanup", "health", "component_health", "component_healths", "is_healthy"}
    entries = [name for name, member in inspect.getmembers(UnifiedMemory, inspect.iscoroutinefunction)
               if not name.startswith("_") and name not in no_input]
    assert {"remember", "remember_many", "search", "unified_search", "forget"} <= set(entries)
    for entry in entries:
        parameters = set(inspect.signature(getattr(UnifiedMemory, entry)).parameters) - {"self"}
        assert {name for name in parameters if (entry, name) not in covered} == set(), entry
    for variant in ("remember_many[mapping]", "remember_many[MemoryRecord]"):
        assert set(MemoryRecord.__dataclass_fields__) <= {field for entry, field in covered if entry == variant}
    assert set(SearchFilters.__dataclass_fields__) <= {field for entry, field in covered if entry == "search[filters]"}


# --- store level: hostile values stored verbatim or rejected -----------------------------------------------

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


async def test_vectors_outside_the_halfvec_range_are_refused_without_an_echo(store: PgvectorMemoryStore) -> None:
    assert store.vector_type == "halfvec"
    for bad, expected in (([1e10] * 768, "beyond ±65504"), ([70000.0] + [0.0] * 767, "beyond ±65504"),
                          ([1e-8] * 768, "zero vector"), ([0.0] * 768, "zero vector")):
        with pytest.raises(InvalidInput, match=expected) as info:
            await store.upsert_many([MemoryRecord(content="out of range", embedding=bad)])
        assert "1e+10" not in str(info.value) and len(str(info.value)) < 300
        with pytest.raises(InvalidInput, match=expected) as info:
            await store.search_vector(bad, limit=3)
        assert "1e+10" not in str(info.value) and len(str(info.value)) < 300
    fine = [65504.0] + [0.0] * 767  # the edges of the range are fine
    assert (await store.upsert_many([MemoryRecord(content="at the edge", embedding=fine)])).inserted == [True]
    await _assert_tables_intact(store, 1)
