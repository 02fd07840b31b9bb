from __future__ import annotations

import pytest

from oneiric_memory.adapters.pgvector_store import PgvectorMemoryStore
from oneiric_memory.records import MemoryRecord, SearchFilters

pytestmark = pytest.mark.asyncio


def vec(seed: int, dim: int = 768) -> list[float]:
    import random

    rng = random.Random(seed)
    v = [rng.gauss(0, 1) for _ in range(dim)]
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v]


async def test_roundtrip(store: PgvectorMemoryStore) -> None:
    res = await store.upsert_many([
        MemoryRecord(content="hello world about postgres", embedding=vec(1), metadata={"a": 1}),
        MemoryRecord(content="hello world about postgres", embedding=vec(1)),
        MemoryRecord(content="another thing entirely", embedding=None),
    ])
    assert res.inserted == [True, False, True]
    assert res.ids[0] == res.ids[1]
    hits = await store.search(query_embedding=vec(1), mode="vector", limit=5)
    assert hits[0].id == res.ids[0]
    assert hits[0].score == pytest.approx(1.0, abs=1e-2)
    hits = await store.search(query_text="postgres", query_embedding=vec(1), mode="hybrid", limit=5)
    assert hits[0].id == res.ids[0]
    assert hits[0].vector_rank == 1 and hits[0].text_rank == 1
    hits = await store.search(query_text="thing", mode="text", limit=5)
    assert hits[0].id == res.ids[2]
    assert await store.count() == 2
    got = await store.get([res.ids[0]])
    assert got[0].metadata == {"a": 1}
    assert await store.count_pending() == 1
    assert await store.delete(filters=SearchFilters(projects=["default"])) == 2
