"""The LangChain vector store against the real langchain-core and the embedded PostgreSQL: add, search with
filters and scores, delete, get_by_ids, sync and async, and ``as_retriever()``."""

from __future__ import annotations

import uuid

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import FakeEmbeddings

from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import InvalidInput
from oneiric_memory.integrations import MemoryBridge
from oneiric_memory.integrations.langchain import OneiricVectorStore
from oneiric_memory.records import SearchFilters
from oneiric_memory.settings import MemorySettings

TEXTS = ["retries back off exponentially with jitter", "the connection pool is bounded at max_connections",
         "insights are delivered to Session-Buddy by the outbox relay"]
METAS = [{"topic": "retries"}, {"topic": "pool"}, {"topic": "insights", "repo_id": "other"}]


async def test_async_add_search_retriever_delete(settings: MemorySettings) -> None:
    async with UnifiedMemory.open(settings, background=False) as memory:
        store = OneiricVectorStore(MemoryBridge(memory), repo_id="docs")
        ids = await store.aadd_texts(TEXTS, METAS)
        assert len(ids) == 3 and all(uuid.UUID(i) for i in ids)
        assert await store.aadd_texts(TEXTS[:1]) == ids[:1]  # dedup answers with the stored id
        assert await memory.store.count(SearchFilters(repo_id="docs")) == 2  # the third went to repo "other"

        docs = await store.asimilarity_search("exponential backoff", k=2)
        assert docs[0].id == ids[0] and docs[0].metadata["topic"] == "retries" and docs[0].metadata["repo_id"] == "docs"
        scored = await store.asimilarity_search_with_score("pool", k=1, filter={"topic": "pool"})
        assert scored[0][0].id == ids[1] and scored[0][1] > 0
        assert ids[2] not in {d.id for d in await store.asimilarity_search("relay", k=3)}  # repo "docs" by default
        other = await store.asimilarity_search("relay", k=3, filter={"repo_id": "other"})
        assert [d.id for d in other] == [ids[2]]

        retriever = store.as_retriever(search_kwargs={"k": 1, "filter": {"topic": "retries"}})
        assert [d.id for d in await retriever.ainvoke("pool retries")] == [ids[0]]

        assert await store.adelete([ids[0]]) is True
        assert await memory.store.count(SearchFilters(repo_id="docs")) == 1
        with pytest.raises(InvalidInput, match="not a UUID"):
            await store.aadd_texts(["x"], ids=["not-a-uuid"])
        with pytest.raises(InvalidInput, match="metadatas"):
            await store.aadd_texts(["x", "y"], [{}])


def test_sync_store_from_texts_and_retriever(settings: MemorySettings) -> None:
    bridge = MemoryBridge.start(settings)
    try:
        given = str(uuid.uuid4())
        store = OneiricVectorStore.from_texts(TEXTS[:2], FakeEmbeddings(size=4), [{"topic": "retries"}, {}],
                                              ids=[given, None], bridge=bridge, repo_id="docs", mode="text")
        assert store.get_by_ids([given])[0].page_content == TEXTS[0]
        added = store.add_documents([Document(page_content=TEXTS[2], metadata={"topic": "insights"})])
        hits = store.as_retriever(search_kwargs={"k": 2}).invoke("outbox relay")
        assert [d.id for d in hits] == added
        assert [d.id for d in store.similarity_search("backoff jitter retries", k=1)] == [given]
        assert store.delete([given]) is True and store.get_by_ids([given]) == []
        with pytest.raises(InvalidInput, match="bridge"):
            OneiricVectorStore.from_texts(["x"], FakeEmbeddings(size=4))
    finally:
        bridge.close()
