"""Staging rows (the pure half of a write): dedup inside a batch, per conflict mode; no database."""

from __future__ import annotations

import json
import uuid

from oneiric_memory.adapters.pgvector.writes import STAGING_COLUMNS, conflict_clause, staging_rows
from oneiric_memory.records import MemoryRecord, content_hash


def column(row: tuple[object, ...], name: str) -> object:
    return row[STAGING_COLUMNS.index(name)]


def test_one_row_per_dedup_key_and_first_of_maps_every_record_to_its_row() -> None:
    records = [MemoryRecord(content="a"), MemoryRecord(content="b"), MemoryRecord(content=" a "),
               MemoryRecord(content="a", project="other")]
    rows, first_of = staging_rows(records)
    assert first_of == [0, 1, 0, 3]  # " a " normalizes to "a": same key as record 0
    assert [column(r, "ord") for r in rows] == [0, 1, 3]
    assert column(rows[0], "content_hash") == content_hash("a")
    assert isinstance(column(rows[0], "id"), uuid.UUID)


def test_keep_first_only_fills_a_pending_embedding_while_refresh_merges_and_replaces() -> None:
    first = MemoryRecord(content="a", metadata={"x": 1})
    later = MemoryRecord(content="a", metadata={"y": 2}, embedding=[1.0, 2.0], embedding_model="m")
    rows, _ = staging_rows([first, later], mode="keep_first")
    assert column(rows[0], "embedding") == [1.0, 2.0] and json.loads(str(column(rows[0], "metadata"))) == {"x": 1}
    rows, _ = staging_rows([first, later], mode="refresh")
    assert json.loads(str(column(rows[0], "metadata"))) == {"x": 1, "y": 2}


def test_an_embedding_without_a_model_takes_the_store_model_and_no_embedding_has_none() -> None:
    rows, _ = staging_rows([MemoryRecord(content="a", embedding=[1.0]), MemoryRecord(content="b")],
                           store_model="bound-model")
    assert column(rows[0], "embedding_model") == "bound-model"
    assert column(rows[1], "embedding_model") is None and column(rows[1], "embedding") is None


def test_conflict_actions_differ_by_mode() -> None:
    assert "metadata = m.metadata || EXCLUDED.metadata" in conflict_clause("refresh")
    assert "WHEN m.embedding IS NULL AND EXCLUDED.embedding IS NOT NULL" in conflict_clause("keep_first")
    assert all("seen_count = m.seen_count + EXCLUDED.seen_count" in conflict_clause(m) for m in ("refresh", "keep_first"))
