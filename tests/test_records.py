"""Records validation, pure: bad input is an InvalidInput naming the field, before anything touches a database."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from oneiric_memory.errors import InvalidInput
from oneiric_memory.records import MAX_METADATA_BYTES, MemoryRecord, SearchFilters, check_embedding, content_hash


def test_content_hash_is_the_hash_of_the_normalized_text() -> None:
    assert content_hash("a\r\nb ") == content_hash("a\nb")
    assert content_hash("e\u0301") == content_hash("\u00e9")  # NFC
    assert content_hash("a") != content_hash("b")


@pytest.mark.parametrize(("record", "field"), [
    (MemoryRecord(content="x\x00y"), "content"),
    (MemoryRecord(content=""), "content"),
    (MemoryRecord(content="x", memory_type="bogus"), "memory_type"),
    (MemoryRecord(content="x", metadata={"bad": {1, 2}}), "metadata"),
    (MemoryRecord(content="x", metadata={"n": math.nan}), "metadata"),
    (MemoryRecord(content="x", metadata={"k": "v" * MAX_METADATA_BYTES}), "metadata"),
    (MemoryRecord(content="x", expires_at=datetime(2030, 1, 1)), "expires_at"),  # naive
    (MemoryRecord(content="x", embedding=[0.1, 0.2]), "embedding"),  # wrong dimension
    (MemoryRecord(content="x", embedding=[math.inf, 0.0, 0.0]), "embedding"),
])
def test_a_bad_record_is_refused_with_its_field(record: MemoryRecord, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        record.validate(dimension=3, max_content_bytes=1000, index=4)
    assert field in str(caught.value) or caught.value.details.get("field") == field


def test_a_good_record_passes() -> None:
    MemoryRecord(content="x", metadata={"a": [1, "b", None]}, embedding=[0.1, 0.2, 0.3],
                 expires_at=datetime(2030, 1, 1, tzinfo=UTC)).validate(dimension=3, max_content_bytes=1000)


def test_oversized_content_is_measured_in_utf8_bytes() -> None:
    with pytest.raises(InvalidInput):
        MemoryRecord(content="é" * 501).validate(dimension=3, max_content_bytes=1000)
    MemoryRecord(content="é" * 500).validate(dimension=3, max_content_bytes=1000)


def test_check_embedding_refuses_wrong_dimension_and_non_finite_values() -> None:
    check_embedding([0.0, 1.0], dimension=2)
    for bad in ([0.0], [0.0, math.nan], ["a", "b"]):
        with pytest.raises(InvalidInput):
            check_embedding(bad, dimension=2)  # type: ignore[arg-type]


def test_filters_know_when_they_are_empty() -> None:
    assert SearchFilters().is_empty()
    assert not SearchFilters(projects=["p"]).is_empty()
