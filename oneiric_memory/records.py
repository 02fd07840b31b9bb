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
    "MAX_METADATA_BYTES",
    "MAX_QUERY_CHARS",
    "MEMORY_TYPES",
    "MemoryRecord",
    "MemoryType",
    "ProjectGroup",
    "RememberResult",
    "SearchFilters",
    "SearchHit",
    "SearchMode",
    "SearchResults",
    "StoredMemory",
    "UpsertResult",
    "check_embedding",
    "check_limit",
    "check_metadata",
    "check_name",
    "check_names",
    "check_query",
    "content_hash",
    "normalize_content",
]

MemoryType = Literal["agent", "rag", "workflow", "insight"]
MEMORY_TYPES: tuple[str, ...] = ("agent", "rag", "workflow", "insight")
SearchMode = Literal["vector", "text", "hybrid"]

_MAX_ID_CHARS = 512
MAX_METADATA_BYTES = 256_000
"""The largest metadata a memory may carry, as JSON (the DuckDB migration shrinks source metadata to fit)."""
_MAX_METADATA_DEPTH = 64
MAX_QUERY_CHARS = 10_000
"""The longest search query, in characters, in every mode (a query is embedded or parsed, never stored)."""
_HALFVEC_MAX = 65504.0  # the largest finite IEEE half-precision value
_HALFVEC_TINY = 2.0 ** -24  # the smallest positive half (subnormal); anything smaller rounds to zero
_VECTOR_MAX = 3.4028234663852886e38  # the largest finite float32


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

    def validate(self, *, dimension: int, max_content_bytes: int, index: int | None = None,
                 vector_type: str = "vector") -> None:
        """Raise :class:`InvalidInput` naming the record and field when anything is wrong."""
        where = f"record {index}: " if index is not None else ""
        if not isinstance(self.content, str):
            raise InvalidInput(f"{where}content must be a string, got {type(self.content).__name__}",
                               field="content", index=index)
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
        if len(encoded) > MAX_METADATA_BYTES:
            raise InvalidInput(f"{where}metadata is larger than {MAX_METADATA_BYTES} bytes", field="metadata",
                               index=index)
        if self.id is not None and not isinstance(self.id, UUID):
            raise InvalidInput(f"{where}id must be a UUID, got {type(self.id).__name__}", field="id", index=index)
        for name in ("expires_at", "created_at"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
                raise InvalidInput(f"{where}{name} must be a timezone-aware datetime", field=name, index=index)
        if self.embedding is not None:
            check_embedding(self.embedding, dimension=dimension, index=index, vector_type=vector_type)


def check_embedding(embedding: Sequence[float], *, dimension: int, index: int | None = None,
                    vector_type: str = "vector") -> None:
    """A vector must have the store's dimension, finite values inside the column type's range, and a direction.

    ``halfvec`` holds values up to 65,504; values under 2^-24 round to zero, so a vector of only tiny values
    would be stored as the zero vector, which has no cosine distance to anything. Messages never echo the values.
    """
    where = f"record {index}: " if index is not None else ""
    try:  # any sized sequence of numbers: lists, tuples, numpy arrays
        size = len(embedding)
        if isinstance(embedding, (str, bytes, Mapping)):
            raise TypeError
    except TypeError:
        raise InvalidInput(f"{where}embedding must be a sequence of floats, got {type(embedding).__name__}",
                           field="embedding", index=index) from None
    if size != dimension:
        raise InvalidInput(
            f"{where}embedding has {size} dimensions, the store expects {dimension}; embed with the configured "
            "model or change postgres.vector_dimension through a migration",
            field="embedding", index=index, got=size, expected=dimension,
        )
    # Fast path (C-level passes, ~20 µs for 768 values): plain floats/ints. An ABC isinstance per value
    # costs ~5 µs, i.e. ~4 ms per 768-d record, which capped bulk loads at a few hundred rows/s.
    if not (set(map(type, embedding)) <= {float, int} and all(map(math.isfinite, embedding))):
        for value in embedding:  # numbers.Real admits numpy scalars (float32 is not a float subclass)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise InvalidInput(f"{where}embedding holds a non-finite or non-numeric value", field="embedding",
                                   index=index)
    halfvec = vector_type == "halfvec"
    largest = max(map(abs, embedding), default=0.0)
    limit = _HALFVEC_MAX if halfvec else _VECTOR_MAX
    if largest > limit:
        raise InvalidInput(f"{where}embedding holds a value beyond ±{limit:g}, the range of {vector_type}; "
                           "normalize the vector", field="embedding", index=index)
    if largest < (_HALFVEC_TINY if halfvec else 1e-37):
        raise InvalidInput(f"{where}embedding is (or rounds to) the zero vector in {vector_type}, which has no "
                           "direction to compare; normalize the vector", field="embedding", index=index)


def check_query(query: object) -> str:
    """One rule for every search mode: a non-blank string of at most :data:`MAX_QUERY_CHARS`, no NUL, valid UTF-8."""
    if not isinstance(query, str):
        raise InvalidInput(f"query must be a string, got {type(query).__name__}", field="query")
    if not query.strip():
        raise InvalidInput("query must be a non-empty string", field="query")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidInput(f"query is longer than {MAX_QUERY_CHARS:,} characters", field="query",
                           limit=MAX_QUERY_CHARS)
    if "\x00" in query:
        raise InvalidInput("query contains a NUL byte; remove it", field="query")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("query holds a lone surrogate and is not valid UTF-8", field="query") from None
    return query


def check_limit(limit: object, maximum: int, *, name: str = "limit") -> int:
    """An ``int`` (not a bool, not a numeric string) between 1 and ``maximum``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise InvalidInput(f"{name} must be an integer between 1 and {maximum} (search.max_limit), got "
                           f"{repr(limit)[:32]}", field=name)
    return limit


def check_names(name: str, values: object) -> list[str] | None:
    """A list of non-empty strings (``None`` = no restriction). A bare string is refused, never split into
    characters, and an empty list is refused: it names nothing, and must not silently mean "everything"."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, set, frozenset)):
        raise InvalidInput(f"{name} must be a list of strings, not a {type(values).__name__}: wrap a single "
                           f"value as [{name[:-1] if name.endswith('s') else name!s}]", field=name)
    items = list(values)
    if not items:
        raise InvalidInput(f"{name}=[] names nothing; pass None to search every {name[:-1]}, or name at least one",
                           field=name)
    for item in items:
        if not isinstance(item, str) or not item:
            raise InvalidInput(f"{name} must hold non-empty strings, got {repr(item)[:64]}", field=name)
        _check_text(name, item, limit=_MAX_ID_CHARS, index=None)
    return items


def check_name(name: str, value: object) -> str:
    """One non-empty name (a project or a group): a string of at most 512 UTF-8 bytes, no NUL, valid UTF-8.

    Names are only ever bind values, so quotes, ``%``, ``:`` or ``--`` in a name are data, never SQL."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{name} must be a non-empty string, got {repr(value)[:64]}", field=name)
    _check_text(name, value, limit=_MAX_ID_CHARS, index=None)
    return value


def check_metadata(metadata: object, *, field: str = "metadata") -> dict[str, Any]:
    """``None`` → ``{}``; a mapping → a dict copy; anything else (a list, a string) is refused."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInput(f"{field} must be a JSON object (dict), got {type(metadata).__name__}", field=field)
    return dict(metadata)


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
    acting_for: Sequence[str] | None = None
    """The caller acts for these projects: it sees their own memories plus what is shared with them or with
    their groups, nothing else (the store resolves the groups; see ``docs/groups.md``)."""
    shared_targets: Sequence[str] | None = None
    """Set by the store when it resolves ``acting_for`` (the share entries that make a memory readable);
    whatever a caller puts here is replaced."""
    path_prefix: str | None = None
    """Ingested repository chunks whose file path starts with this text, literally (``%`` and ``_`` are not
    wildcards); end it with ``/`` to mean a folder."""

    def is_empty(self) -> bool:
        return not any((self.projects, self.memory_types, self.source_system, self.agent_id, self.workflow_id,
                        self.repo_id, self.session_id, self.created_after, self.created_before, self.metadata,
                        self.acting_for, self.path_prefix))

    def validate(self) -> None:
        for name, values in (("projects", self.projects), ("memory_types", self.memory_types),
                             ("acting_for", self.acting_for), ("shared_targets", self.shared_targets)):
            check_names(name, values)
        if self.memory_types:
            unknown = [t for t in self.memory_types if t not in MEMORY_TYPES]
            if unknown:
                raise InvalidInput(f"unknown memory_type filter {unknown}; use {', '.join(MEMORY_TYPES)}",
                                   field="memory_types")
        for name in ("source_system", "agent_id", "workflow_id", "repo_id", "session_id"):
            _check_text(name, getattr(self, name), limit=_MAX_ID_CHARS, index=None)
        _check_text("path_prefix", self.path_prefix, limit=4096, index=None)
        if self.path_prefix == "":
            raise InvalidInput("path_prefix is empty; pass None to search every path", field="path_prefix")
        if not isinstance(self.include_expired, bool):
            raise InvalidInput("include_expired must be a bool", field="include_expired")
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
    """A row of ``memories`` as ``get`` and ``list_memories`` return it."""

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
    seen_count: int = 1
    """How many times this content was written (1 + the duplicates that answered with this id)."""
    last_seen_at: datetime | None = None
    """When it was last written (``created_at`` until a duplicate arrives)."""
    shared_projects: tuple[str, ...] = ()
    """Projects this memory is shared with (besides its own)."""
    shared_groups: tuple[str, ...] = ()
    """Project groups this memory is shared with."""
    embedding: list[float] | None = None
    """The vector, only when it was asked for (``list_memories(with_embeddings=True)``, for export)."""


@dataclass(frozen=True, slots=True)
class ProjectGroup:
    """A named set of projects: shares to the group reach every member, and a group search ranks across them."""

    name: str
    description: str
    projects: tuple[str, ...]
    created_at: datetime


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


class RememberResult(list[UUID]):
    """The ids of a ``remember_many``, in input order (a plain list of ids to existing callers), plus what
    happened to the batch: ``new`` rows, ``duplicates`` of rows already stored, and ``pending`` rows stored
    without an embedding because the embedder was down or too slow (a backfill embeds them later)."""

    new: int
    duplicates: int
    pending: int

    def __init__(self, ids: Sequence[UUID] = (), *, new: int = 0, duplicates: int = 0, pending: int = 0) -> None:
        super().__init__(ids)
        self.new = new
        self.duplicates = duplicates
        self.pending = pending


class SearchResults(list[SearchHit]):
    """The hits of a ``search`` (a plain list to existing callers), plus the ``mode`` that actually ran.

    When no mode was asked for and the embedder cannot embed the query, the default mode falls back to text:
    ``mode`` is then ``"text"``, ``requested_mode`` the default that could not run and ``note`` says why. A mode
    asked for explicitly is never swapped for another (``search`` raises ``EmbedderUnavailable`` instead).
    """

    mode: str
    requested_mode: str
    note: str | None

    def __init__(self, hits: Sequence[SearchHit] = (), *, mode: str = "text", requested_mode: str | None = None,
                 note: str | None = None) -> None:
        super().__init__(hits)
        self.mode = mode
        self.requested_mode = requested_mode or mode
        self.note = note

    @property
    def fell_back(self) -> bool:
        return self.mode != self.requested_mode
