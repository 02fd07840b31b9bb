"""Retrieval over repositories: walk a tree as git sees it, cut files into structure-aware chunks, and keep
the store's chunks of a repository in line with it incrementally (see :mod:`.ingest`)."""

from oneiric_memory.rag.chunking import Chunk, chunk_file
from oneiric_memory.rag.ingest import (
    IngestOptions,
    IngestReport,
    Progress,
    check_ingest_arguments,
    check_label,
    ingest_repository,
)
from oneiric_memory.rag.walk import DEFAULT_SUFFIXES, LANGUAGES, RepoFile, WalkCounts, walk_repository

__all__ = [
    "DEFAULT_SUFFIXES",
    "LANGUAGES",
    "Chunk",
    "IngestOptions",
    "IngestReport",
    "Progress",
    "RepoFile",
    "WalkCounts",
    "check_ingest_arguments",
    "check_label",
    "chunk_file",
    "ingest_repository",
    "walk_repository",
]
