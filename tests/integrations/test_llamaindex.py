"""The LlamaIndex vector store against the real llama-index-core and the embedded PostgreSQL: add, query with
metadata filters, delete, clear, sync and async, and a real ``VectorStoreIndex`` retriever on top."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import InvalidInput
from oneiric_memory.integrations import MemoryBridge
from oneiric_memory.integrations.llamaindex import OneiricVectorStore
from oneiric_memory.records import SearchFilters
from oneiric_memory.settings import MemorySettings


def _nodes() -> list[TextNode]:
    texts = [("retries back off exponentially with jitter", "retries", "doc-a"),
             ("the connection pool is bounded at max_connections", "pool", "doc-a"),
             ("insights are delivered to Session-Buddy by the outbox relay", "insights", "doc-b")]
    nodes = []
    for text, topic, doc in texts:
        node = TextNode(text=text, metadata={"topic": topic})
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=doc)
        nodes.append(node)
    return nodes


def _topic(topic: str) -> MetadataFilters:
    return MetadataFilters(filters=[MetadataFilter(key="topic", value=topic)])


async def test_async_add_query_filter_delete(settings: MemorySettings) -> None:
    async with UnifiedMemory.open(settings, background=False) as memory:
        store = OneiricVectorStore(bridge=MemoryBridge(memory), repo_id="docs")
        nodes = _nodes()
        assert await store.async_add(nodes) == [n.node_id for n in nodes]
        assert await store.async_add(nodes[:1]) == [nodes[0].node_id]  # dedup: still one row
        assert await memory.store.count(SearchFilters(repo_id="docs")) == 3

        found = await store.aquery(VectorStoreQuery(query_str="exponential backoff retries", similarity_top_k=3))
        assert found.ids is not None and found.ids[0] == nodes[0].node_id
        assert found.nodes is not None and found.nodes[0].ref_doc_id == "doc-a"
        assert found.nodes[0].metadata["topic"] == "retries" and "node_id" not in found.nodes[0].metadata

        filtered = await store.aquery(VectorStoreQuery(query_str="retries pool relay", similarity_top_k=3,
                                                       filters=_topic("pool")))
        assert filtered.ids == [nodes[1].node_id]
        text_only = await store.aquery(VectorStoreQuery(query_str="relay", mode=VectorStoreQueryMode.TEXT_SEARCH))
        assert text_only.ids == [nodes[2].node_id]
        # a real index and retriever on top (the mock embed model is never asked: the memory embeds the query)
        index = VectorStoreIndex.from_vector_store(store, embed_model=MockEmbedding(embed_dim=8))
        retrieved = await index.as_retriever(similarity_top_k=1).aretrieve("outbox relay delivery")
        assert [r.node.node_id for r in retrieved] == [nodes[2].node_id]

        await store.adelete("doc-a")
        assert await memory.store.count(SearchFilters(repo_id="docs")) == 1
        await store.adelete_nodes([nodes[2].node_id])
        assert await memory.store.count(SearchFilters(repo_id="docs")) == 0

        with pytest.raises(InvalidInput, match="key == value"):
            await store.aquery(VectorStoreQuery(query_str="x", filters=MetadataFilters(filters=[
                MetadataFilter(key="n", value=1, operator=FilterOperator.GT)])))
        with pytest.raises(InvalidInput, match="not supported"):
            await store.aquery(VectorStoreQuery(query_str="x", mode=VectorStoreQueryMode.MMR))
        with pytest.raises(RuntimeError, match="async method"):  # a sync call on the memory's loop would deadlock
            store.query(VectorStoreQuery(query_str="x"))


def test_sync_use_through_a_private_loop(settings: MemorySettings) -> None:
    bridge = MemoryBridge.start(settings)
    try:
        store = OneiricVectorStore(bridge=bridge, repo_id="docs")
        nodes = _nodes()
        store.add(nodes)
        index = VectorStoreIndex.from_vector_store(store, embed_model=MockEmbedding(embed_dim=8))
        hits = index.as_retriever(similarity_top_k=2, filters=_topic("insights")).retrieve("who delivers insights?")
        assert [h.node.node_id for h in hits] == [nodes[2].node_id]
        vector = bridge.call(lambda memory: memory.embedder.embed_query("connection pool"))  # type: ignore[union-attr]
        by_vector = store.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=1))
        assert by_vector.ids == [nodes[1].node_id]
        store.delete("doc-b")
        assert {n.node_id for n in store.query(VectorStoreQuery(query_str="insights relay pool retries",
                                                                similarity_top_k=5)).nodes or []} == \
            {nodes[0].node_id, nodes[1].node_id}
        store.clear()
        assert bridge.call(lambda memory: memory.store.count(SearchFilters(repo_id="docs"))) == 0
    finally:
        bridge.close()


async def test_async_calls_from_another_loop_hop_to_the_memory_loop(settings: MemorySettings) -> None:
    bridge = await asyncio.to_thread(MemoryBridge.start, settings)
    try:
        store = OneiricVectorStore(bridge=bridge, repo_id="docs")
        await store.async_add(_nodes())
        found = await store.aquery(VectorStoreQuery(query_str="connection pool", similarity_top_k=1))
        assert found.nodes is not None and "pool" in found.nodes[0].get_content()
    finally:
        await asyncio.to_thread(bridge.close)
