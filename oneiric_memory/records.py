"""Value types shared by the store, the embedders and the coordinator."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from oneiric_memory.errors import InvalidInput

__all__ = [
    "MEMORY_TYPES",
    "MemoryRecord",
    "MemoryType",
    "SearchFilters",
    "SearchHit",
    "SearchMode",
    "StoredMemory",
    "UpsertResult",
    "content_hash",
    "normalize_content",
]

MemoryType = Literal["agent", "rag", "workflow", "insight"]
MEMORY_TYPES: tuple[str, ...] = ("agent", "rag", "workflow", "insight")
SearchMode = Literal["vector", "text", "hybrid"]

_MAX_ID_CHARS = 512
_MAX_METADATA_BYTES = 256_000
_MAX_METADATA_DEPTH = 64


def normalize_content(text: str) -> str:
    """NFC, unified newlines, trimmed: the form that is hashed for dedup."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def content_hash(text: str) -> str:
    """sha256 hex digest of the normalized content."""
    return hashlib.sha256(normalize_content(text).encode("utf-8")).hexdigest()


def _check_text(name: str, value: str | None, *, limit: int, index: int | None) -> None:
    where = f"record {index}: " if index is not None else ""
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidInput(f"{where}{name} must be a string, got {type(value).__name__}", field=name, index=index)
    if "\x00" in value:
        raise InvalidInput(
            f"{where}{name} contains a NUL byte, which PostgreSQL text cannot store; remove it",
            field=name, index=index,
        )
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise InvalidInput(f"{where}{name} is longer than {limit} bytes", field=name, index=index, limit=limit)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{where}{name} holds a lone surrogate and is not valid UTF-8", field=name,
                           index=index) from None


def _check_json_string(value: str, *, where: str, path: str, what: str, index: int | None) -> None:
    """JSONB rejects ``\\u0000`` and unpaired surrogate escapes: refuse them here, not in the database."""
    if "\x00" in value:
        raise InvalidInput(f"{where}{path} {what} a NUL byte; JSONB cannot store it", field=path, index=index)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{where}{path} {what} a lone surrogate and is not valid UTF-8", field=path,
                           index=index) from None


def _check_json(value: Any, *, index: int | None, path: str = "metadata", depth: int = 0) -> None:
    where = f"record {index}: " if index is not None else ""
    if depth > _MAX_METADATA_DEPTH:  # also stops self-referencing containers before a RecursionError
        raise InvalidInput(f"{where}{path} nests deeper than {_MAX_METADATA_DEPTH} levels (or refers to itself)",
                           field="metadata", index=index)
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, str):
            _check_json_string(value, where=where, path=path, what="contains", index=index)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{where}{path} is {value}, which is not valid JSON", field=path, index=index)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(f"{where}{path} has a non-string key {repr(key)[:64]}; JSON keys are strings",
                                   field=path, index=index)
            _check_json_string(key, where=where, path=path, what="has a key with", index=index)
            _check_json(item, index=index, path=f"{path}.{key[:64]}", depth=depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            _check_json(item, index=index, path=f"{path}[{position}]", depth=depth + 1)
        return
    raise InvalidInput(f"{where}{path} holds a {type(value).__name__}, which is not JSON", field=path, index=index)


@dataclass(slots=True)
class MemoryRecord:
    """One memory to store. ``embedding=None`` means "pending": stored now, embedded later."""

    content: str
    memory_type: str = "agent"
    project: str = "default"
    source_system: str | None = None
    agent_id: str | None = None
    workflow_id: str | None = None
    repo_id: str | None = None
    session_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    embedding: Sequence[float] | None = None
    embedding_model: str | None = None
    expires_at: datetime | None = None
    created_at: datetime | None = None
    id: UUID | None = None
    """Kept when given (``import`` restores exported ids); a duplicate still answers with the stored id."""

    @property
    def content_hash(self) -> str:
        return content_hash(self.content)

    def validate(self, *, dimension: int, max_content_bytes: int, index: int | None = None) -> None:
        """Raise :class:`InvalidInput` naming the record and field when anything is wrong."""
        where = f"record {index}: " if index is not None else ""
        _check_text("content", self.content, limit=max_content_bytes, index=index)
        if not isinstance(self.content, str) or not normalize_content(self.content):
            raise InvalidInput(f"{where}content is empty", field="content", index=index)
        if self.memory_type not in MEMORY_TYPES:
            raise InvalidInput(
                f"{where}memory_type {self.memory_type!r} is unknown; use one of {', '.join(MEMORY_TYPES)}",
                field="memory_type", index=index,
            )
        if not isinstance(self.project, str) or not self.project:
            raise InvalidInput(f"{where}project must be a non-empty string", field="project", index=index)
        for name in ("project", "source_system", "agent_id", "workflow_id", "repo_id", "session_id",
                     "embedding_model"):
            _check_text(name, getattr(self, name), limit=_MAX_ID_CHARS, index=index)
        if not isinstance(self.metadata, Mapping):
            raise InvalidInput(f"{where}metadata must be a JSON object (dict), got {type(self.metadata).__name__}",
                               field="metadata", index=index)
        _check_json(self.metadata, index=index)
        try:
            encoded = json.dumps(self.metadata, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{where}metadata is not JSON: {exc}", field="metadata", index=index) from None
        if len(encoded) > _MAX_METADATA_BYTES:
            raise InvalidInput(f"{where}metadata is larger than {_MAX_METADATA_BYTES} bytes", field="metadata",
                               index=index)
        if self.id is not None and not isinstance(self.id, UUID):
            raise InvalidInput(f"{where}id must be a UUID, got {type(self.id).__name__}", field="id", index=index)
        for name in ("expires_at", "created_at"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
                raise InvalidInput(f"{where}{name} must be a timezone-aware datetime", field=name, index=index)
        if self.embedding is not None:
            check_embedding(self.embedding, dimension=dimension, index=index)


def check_embedding(embedding: Sequence[float], *, dimension: int, index: int | None = None) -> None:
    """A vector must have the store's dimension and finite values."""
    where = f"record {index}: " if index is not None else ""
    try:
        size = len(embedding)
    except TypeError:
        raise InvalidInput(f"{where}embedding must be a sequence of floats", field="embedding", index=index) from None
    if size != dimension:
        raise InvalidInput(
            f"{where}embedding has {size} dimensions, the store expects {dimension}; embed with the configured "
            "model or change postgres.vector_dimension through a migration",
            field="embedding", index=index, got=size, expected=dimension,
        )
    # Fast path (C-level passes, ~20 µs for 768 values): plain floats/ints. An ABC isinstance per value
    # costs ~5 µs, i.e. ~4 ms per 768-d record, which capped bulk loads at a few hundred rows/s.
    if set(map(type, embedding)) <= {float, int} and all(map(math.isfinite, embedding)):
        return
    for value in embedding:  # numbers.Real admits numpy scalars (float32 is not a float subclass)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise InvalidInput(f"{where}embedding holds a non-finite or non-numeric value", field="embedding",
                               index=index)


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """Ids in input order, and which inputs were new rows or duplicates of an existing row."""

    ids: list[UUID]
    inserted: list[bool]

    @property
    def new_count(self) -> int:
        return sum(self.inserted)

    @property
    def duplicate_count(self) -> int:
        return len(self.inserted) - self.new_count


@dataclass(slots=True)
class SearchFilters:
    """Filters applied as SQL predicates on typed, indexed columns (never JSON paths of input)."""

    projects: Sequence[str] | None = None
    memory_types: Sequence[str] | None = None
    source_system: str | None = None
    agent_id: str | None = None
    workflow_id: str | None = None
    repo_id: str | None = None
    session_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    metadata: Mapping[str, Any] | None = None
    include_expired: bool = False

    def is_empty(self) -> bool:
        return not any((self.projects, self.memory_types, self.source_system, self.agent_id, self.workflow_id,
                        self.repo_id, self.session_id, self.created_after, self.created_before, self.metadata))

    def validate(self) -> None:
        if self.memory_types:
            unknown = [t for t in self.memory_types if t not in MEMORY_TYPES]
            if unknown:
                raise InvalidInput(f"unknown memory_type filter {unknown}; use {', '.join(MEMORY_TYPES)}",
                                   field="memory_types")
        for name in ("source_system", "agent_id", "workflow_id", "repo_id", "session_id"):
            _check_text(name, getattr(self, name), limit=_MAX_ID_CHARS, index=None)
        for name, values in (("projects", self.projects), ("memory_types", self.memory_types)):
            if values is not None:
                if isinstance(values, str):
                    raise InvalidInput(f"{name} must be a list of strings, not a string", field=name)
                for value in values:
                    _check_text(name, value, limit=_MAX_ID_CHARS, index=None)
        if self.metadata is not None:
            if not isinstance(self.metadata, Mapping):
                raise InvalidInput("metadata filter must be a JSON object", field="metadata")
            _check_json(self.metadata, index=None, path="metadata filter")
        for name in ("created_after", "created_before"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
                raise InvalidInput(f"{name} must be a timezone-aware datetime", field=name)


@dataclass(slots=True)
class StoredMemory:
    """A row of ``memories`` as returned by ``get``."""

    id: UUID
    project: str
    memory_type: str
    content: str
    content_hash: str
    metadata: dict[str, Any]
    source_system: str | None
    agent_id: str | None
    workflow_id: str | None
    repo_id: str | None
    session_id: str | None
    embedding_model: str | None
    embedding_pending: bool
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None


@dataclass(slots=True)
class SearchHit:
    """One search result. ``score`` is a similarity: higher is better, comparable within one mode."""

    id: UUID
    content: str
    memory_type: str
    project: str
    metadata: dict[str, Any]
    score: float
    vector_rank: int | None = None
    text_rank: int | None = None
    vector_similarity: float | None = None
    text_score: float | None = None
    agent_id: str | None = None
    workflow_id: str | None = None
    repo_id: str | None = None
    session_id: str | None = None
    source_system: str | None = None
    created_at: datetime | None = None
    source: str = "postgres"
