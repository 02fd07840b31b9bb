"""Interfaces for the frameworks users already have, as optional extras: a LlamaIndex vector store
(:mod:`.llamaindex`, extra ``llamaindex``) and a LangChain ``VectorStore`` (:mod:`.langchain`, extra
``langchain``). Both write and read through :class:`~oneiric_memory.UnifiedMemory`, so they keep its dedup,
filters, "store now, embed later" and hybrid search. Import the submodule you need; this package imports
neither framework."""

from oneiric_memory.integrations.bridge import MemoryBridge, filters_from_mapping

__all__ = ["MemoryBridge", "filters_from_mapping"]
