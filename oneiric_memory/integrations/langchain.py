"""A LangChain ``VectorStore`` over the memory (extra ``langchain``: ``pip install oneiric-memory[langchain]``).

Texts are written as memories through ``UnifiedMemory.remember_many`` and found through
``UnifiedMemory.search`` (the memory's own embedder, dedup, filters and hybrid search; the ``embedding``
argument LangChain passes to ``from_texts`` is not used). Ids are the memories' UUIDs: a duplicate text answers
with the stored memory's id. ``filter`` is a dict: ``repo_id``, ``path_prefix``, ``project``, ``memory_type`` and
the other label columns filter columns, other keys match metadata by equality. ``as_retriever()`` works as usual.

::

    bridge = MemoryBridge.start(settings)
    store = OneiricVectorStore(bridge, repo_id="docs")
    store.add_texts(["retries back off exponentially"], metadatas=[{"topic": "retries"}])
    docs = store.as_retriever(search_kwargs={"k": 3, "filter": {"topic": "retries"}}).invoke("backoff")
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import InvalidInput
from oneiric_memory.integrations.bridge import MemoryBridge, filters_from_mapping
from oneiric_memory.records import MemoryRecord, SearchFilters, SearchHit

__all__ = ["OneiricVectorStore"]


class OneiricVectorStore(VectorStore):
    """LangChain ``VectorStore`` writing and reading through :class:`UnifiedMemory`."""

    def __init__(self, bridge: MemoryBridge, *, project: str = "default", memory_type: str = "rag",
                 repo_id: str | None = None, mode: str | None = None) -> None:
        if mode not in (None, "vector", "text", "hybrid"):
            raise InvalidInput(f"mode {mode!r} is unknown; use vector, text or hybrid", field="mode")
        self.bridge = bridge
        self.project = project
        self.memory_type = memory_type
        self.repo_id = repo_id
        self.mode = mode

    @property
    def embeddings(self) -> Embeddings | None:
        return None  # the memory embeds with its own model

    # --- writes ---------------------------------------------------------------------------------------

    def _records(self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None,
                 ids: Sequence[str | None] | None) -> list[MemoryRecord]:
        items = list(texts)
        if metadatas is not None and len(metadatas) != len(items):
            raise InvalidInput(f"{len(metadatas)} metadatas for {len(items)} texts", field="metadatas")
        if ids is not None and len(ids) != len(items):
            raise InvalidInput(f"{len(ids)} ids for {len(items)} texts", field="ids")
        records = []
        for index, text in enumerate(items):
            metadata = dict(metadatas[index]) if metadatas is not None else {}
            repo = metadata.pop("repo_id", None) if isinstance(metadata.get("repo_id"), str) else None
            memory_id = None
            if ids is not None and ids[index] is not None:
                try:
                    memory_id = uuid.UUID(str(ids[index]))
                except ValueError:
                    raise InvalidInput(f"id {str(ids[index])[:64]!r} is not a UUID (memory ids are UUIDs)",
                                       field="ids", index=index) from None
            records.append(MemoryRecord(content=text, memory_type=self.memory_type, project=self.project,
                                        repo_id=repo or self.repo_id, source_system="langchain", metadata=metadata,
                                        id=memory_id))
        return records

    def add_texts(self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None, *,
                  ids: Sequence[str | None] | None = None, **kwargs: Any) -> list[str]:
        records = self._records(texts, metadatas, ids)
        return [str(i) for i in self.bridge.call(lambda memory: memory.remember_many(records))]

    async def aadd_texts(self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None, *,
                         ids: Sequence[str | None] | None = None, **kwargs: Any) -> list[str]:
        records = self._records(texts, metadatas, ids)
        return [str(i) for i in await self.bridge.acall(lambda memory: memory.remember_many(records))]

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        ids = [d.id for d in documents] if any(d.id for d in documents) else kwargs.get("ids")
        return self.add_texts([d.page_content for d in documents], [dict(d.metadata) for d in documents], ids=ids)

    async def aadd_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        ids = [d.id for d in documents] if any(d.id for d in documents) else kwargs.get("ids")
        return await self.aadd_texts([d.page_content for d in documents], [dict(d.metadata) for d in documents],
                                     ids=ids)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        if not ids:
            return False
        wanted = list(ids)
        return bool(self.bridge.call(lambda memory: memory.forget(wanted)))

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        if not ids:
            return False
        wanted = list(ids)
        return bool(await self.bridge.acall(lambda memory: memory.forget(wanted)))

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        rows = self.bridge.call(lambda memory: memory.get(list(ids)))
        return [Document(id=str(row.id), page_content=row.content, metadata=dict(row.metadata)) for row in rows]

    # --- reads ----------------------------------------------------------------------------------------

    def _scope(self, filter: dict[str, Any] | None) -> SearchFilters:
        return filters_from_mapping(filter, project=self.project, memory_type=self.memory_type, repo_id=self.repo_id)

    async def _search(self, memory: UnifiedMemory, query: str, k: int, scope: SearchFilters) -> list[SearchHit]:
        return list(await memory.search(query, mode=self.mode, filters=scope, limit=k))  # type: ignore[arg-type]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        scope = self._scope(filter)
        return [_pair(hit) for hit in self.bridge.call(lambda memory: self._search(memory, query, k, scope))]

    async def asimilarity_search_with_score(self, query: str, k: int = 4,
                                            filter: dict[str, Any] | None = None,
                                            **kwargs: Any) -> list[tuple[Document, float]]:
        scope = self._scope(filter)
        return [_pair(hit) for hit in await self.bridge.acall(lambda memory: self._search(memory, query, k, scope))]

    def similarity_search(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                          **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter)]

    async def asimilarity_search(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                                 **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, filter)]

    def _select_relevance_score_fn(self) -> Any:
        return lambda score: score  # scores are similarities already (higher is better)

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict[str, Any]] | None = None, *,
                   ids: list[str] | None = None, **kwargs: Any) -> OneiricVectorStore:
        """``bridge=`` is required; ``embedding`` is not used (the memory embeds with its own model)."""
        bridge = kwargs.pop("bridge", None)
        if not isinstance(bridge, MemoryBridge):
            raise InvalidInput("from_texts needs bridge=MemoryBridge(...)", field="bridge")
        store = cls(bridge, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store


def _pair(hit: SearchHit) -> tuple[Document, float]:
    metadata = {**hit.metadata, "memory_type": hit.memory_type, "project": hit.project}
    if hit.repo_id is not None:
        metadata["repo_id"] = hit.repo_id
    return Document(id=str(hit.id), page_content=hit.content, metadata=metadata), hit.score
