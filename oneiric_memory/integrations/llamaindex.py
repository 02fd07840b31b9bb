"""A LlamaIndex vector store over the memory (extra ``llamaindex``: ``pip install oneiric-memory[llamaindex]``).

Nodes are written as memories (``memory_type`` ``rag`` by default) through ``UnifiedMemory.remember_many`` and
read through ``UnifiedMemory.search``, so dedup, filters, pending embeddings and hybrid search all apply. The
memory embeds with its own model: a node's own ``embedding`` is not stored, and ``is_embedding_query`` is false,
so retrievers pass the query text and the memory embeds it (with a query embedding only, the store's vector
search runs on it — it must come from the memory's model). Metadata filters: ``==`` combined with ``and``;
``repo_id`` and ``path_prefix`` are column filters, other keys match node metadata.

::

    bridge = MemoryBridge.start(settings)          # or MemoryBridge(memory) inside your event loop
    store = OneiricVectorStore(bridge=bridge, repo_id="docs")
    index = VectorStoreIndex.from_vector_store(store, embed_model=MockEmbedding(embed_dim=1))
    nodes = index.as_retriever(similarity_top_k=5).retrieve("how do I configure retries?")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.schema import BaseNode, MetadataMode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from pydantic import PrivateAttr

from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import InvalidInput
from oneiric_memory.integrations.bridge import MemoryBridge, filters_from_mapping
from oneiric_memory.records import MemoryRecord, SearchFilters, SearchHit

__all__ = ["OneiricVectorStore"]

_INTERNAL = ("node_id", "ref_doc_id")
_MODES: dict[VectorStoreQueryMode, str | None] = {
    VectorStoreQueryMode.DEFAULT: None, VectorStoreQueryMode.HYBRID: "hybrid",
    VectorStoreQueryMode.SPARSE: "text", VectorStoreQueryMode.TEXT_SEARCH: "text",
}


def _equalities(filters: MetadataFilters | None) -> dict[str, Any]:
    if filters is None:
        return {}
    if filters.condition not in (None, FilterCondition.AND) and len(filters.filters) > 1:
        raise InvalidInput(f"metadata filters combine with 'and' only, not {filters.condition}", field="filters")
    found: dict[str, Any] = {}
    for item in filters.filters:
        if not isinstance(item, MetadataFilter) or item.operator != FilterOperator.EQ:
            raise InvalidInput("metadata filters support key == value only (no nesting or other operators)",
                               field="filters")
        found[item.key] = item.value
    return found


class OneiricVectorStore(BasePydanticVectorStore):
    """LlamaIndex ``BasePydanticVectorStore`` writing and reading through :class:`UnifiedMemory`."""

    stores_text: bool = True
    is_embedding_query: bool = False
    flat_metadata: bool = False
    project: str = "default"
    memory_type: str = "rag"
    repo_id: str | None = None
    _bridge: MemoryBridge = PrivateAttr()

    def __init__(self, *, bridge: MemoryBridge, project: str = "default", memory_type: str = "rag",
                 repo_id: str | None = None, **kwargs: Any) -> None:
        fields: dict[str, Any] = {"project": project, "memory_type": memory_type, "repo_id": repo_id}
        super().__init__(**fields, **kwargs)
        self._bridge = bridge

    @classmethod
    def class_name(cls) -> str:
        return "OneiricVectorStore"

    @property
    def client(self) -> UnifiedMemory:
        return self._bridge.memory

    # --- writes ---------------------------------------------------------------------------------------

    def _records(self, nodes: Sequence[BaseNode]) -> list[MemoryRecord]:
        records = []
        for node in nodes:
            metadata = {**node.metadata, "node_id": node.node_id}
            if node.ref_doc_id is not None:
                metadata["ref_doc_id"] = node.ref_doc_id
            repo = metadata.get("repo_id") if isinstance(metadata.get("repo_id"), str) else self.repo_id
            records.append(MemoryRecord(content=node.get_content(metadata_mode=MetadataMode.NONE),
                                        memory_type=self.memory_type, project=self.project, repo_id=repo,
                                        source_system="llamaindex", metadata=metadata))
        return records

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        records = self._records(nodes)
        self._bridge.call(lambda memory: memory.remember_many(records))
        return [node.node_id for node in nodes]

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        records = self._records(nodes)
        await self._bridge.acall(lambda memory: memory.remember_many(records))
        return [node.node_id for node in nodes]

    def _scope(self, extra: dict[str, Any] | None = None) -> SearchFilters:
        return filters_from_mapping(extra, project=self.project, memory_type=self.memory_type, repo_id=self.repo_id)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        scope = self._scope({"ref_doc_id": ref_doc_id})
        self._bridge.call(lambda memory: memory.forget(filters=scope))

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        scope = self._scope({"ref_doc_id": ref_doc_id})
        await self._bridge.acall(lambda memory: memory.forget(filters=scope))

    def _delete_scopes(self, node_ids: list[str] | None, filters: MetadataFilters | None) -> list[SearchFilters]:
        base = _equalities(filters)
        if node_ids is None:
            return [self._scope(base)]
        return [self._scope({**base, "node_id": node_id}) for node_id in node_ids]

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                     **delete_kwargs: Any) -> None:
        scopes = self._delete_scopes(node_ids, filters)

        async def work(memory: UnifiedMemory) -> None:
            for scope in scopes:
                await memory.forget(filters=scope)

        self._bridge.call(work)

    async def adelete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                            **delete_kwargs: Any) -> None:
        scopes = self._delete_scopes(node_ids, filters)

        async def work(memory: UnifiedMemory) -> None:
            for scope in scopes:
                await memory.forget(filters=scope)

        await self._bridge.acall(work)

    def clear(self) -> None:
        """Forget every memory of this store's project and type (and repository, when one is set)."""
        scope = self._scope()
        self._bridge.call(lambda memory: memory.forget(filters=scope))

    async def aclear(self) -> None:
        scope = self._scope()
        await self._bridge.acall(lambda memory: memory.forget(filters=scope))

    # --- reads ----------------------------------------------------------------------------------------

    def _plan(self, query: VectorStoreQuery) -> tuple[SearchFilters, str | None]:
        if query.mode not in _MODES:
            raise InvalidInput(f"query mode {query.mode.value!r} is not supported; use default, hybrid, sparse or "
                               "text_search", field="mode")
        extra = _equalities(query.filters)
        for name, key in (("doc_ids", "ref_doc_id"), ("node_ids", "node_id")):
            ids = getattr(query, name)
            if ids:
                if len(ids) != 1:
                    raise InvalidInput(f"{name} filters one id at a time", field=name)
                extra[key] = ids[0]
        if not query.query_str and query.query_embedding is None:
            raise InvalidInput("the query has neither text nor an embedding", field="query")
        return self._scope(extra), _MODES[query.mode]

    async def _search(self, memory: UnifiedMemory, query: VectorStoreQuery, scope: SearchFilters,
                      mode: str | None) -> list[SearchHit]:
        limit = query.similarity_top_k
        if query.query_str:
            return list(await memory.search(query.query_str, mode=mode, filters=scope, limit=limit))  # type: ignore[arg-type]
        assert query.query_embedding is not None  # _plan refused a query with neither
        return await memory.store.search_vector(query.query_embedding, filters=scope, limit=limit)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        scope, mode = self._plan(query)
        return _result(self._bridge.call(lambda memory: self._search(memory, query, scope, mode)))

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        scope, mode = self._plan(query)
        return _result(await self._bridge.acall(lambda memory: self._search(memory, query, scope, mode)))


def _node(hit: SearchHit) -> TextNode:
    metadata = {key: value for key, value in hit.metadata.items() if key not in _INTERNAL}
    node = TextNode(id_=str(hit.metadata.get("node_id") or hit.id), text=hit.content, metadata=metadata)
    if isinstance(hit.metadata.get("ref_doc_id"), str):
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=hit.metadata["ref_doc_id"])
    return node


def _result(hits: list[SearchHit]) -> VectorStoreQueryResult:
    nodes = [_node(hit) for hit in hits]
    return VectorStoreQueryResult(nodes=nodes, similarities=[hit.score for hit in hits],
                                  ids=[node.node_id for node in nodes])
