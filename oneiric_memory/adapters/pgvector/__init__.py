"""The PostgreSQL + pgvector memory store: the only code that issues SQL against this package's tables.

Import the store and its factory from here; the modules inside are its named parts.
"""

from oneiric_memory.adapters.pgvector.bootstrap import schema_migrator
from oneiric_memory.adapters.pgvector.indexes import ivfflat_lists_for
from oneiric_memory.adapters.pgvector.listing import MemoryPage, list_memories
from oneiric_memory.adapters.pgvector.planner import SearchPlan
from oneiric_memory.adapters.pgvector.rag_index import FileChunks, IndexedFile, RagIndex, chunk_key
from oneiric_memory.adapters.pgvector.sharing import ShareChange
from oneiric_memory.adapters.pgvector.store import (
    PendingMemory,
    PgvectorMemoryStore,
    parse_ids,
    pgvector_store_factory,
)

__all__ = [
    "FileChunks",
    "IndexedFile",
    "MemoryPage",
    "PendingMemory",
    "PgvectorMemoryStore",
    "RagIndex",
    "SearchPlan",
    "chunk_key",
    "ShareChange",
    "ivfflat_lists_for",
    "list_memories",
    "parse_ids",
    "pgvector_store_factory",
    "schema_migrator",
]
