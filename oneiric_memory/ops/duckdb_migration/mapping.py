"""Mapping: one source row becomes a :class:`~oneiric_memory.records.MemoryRecord`, or a reason why it cannot.

Pure (no I/O), shared by the run and the validation: values are made JSON the store accepts (no NUL, no NaN,
string keys), oversized metadata is shrunk to the store's limit, and every memory carries its source key.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Any

from oneiric_memory.adapters.session_buddy.tags import hit_from, looks_like_insight
from oneiric_memory.errors import (
    InvalidInput,
)
from oneiric_memory.ops.duckdb_migration.source import (
    JSON_COLUMNS,
    SOURCE_ID,
    TIMESTAMP_COLUMNS,
    BatchContext,
    Row,
    TableSpec,
)
from oneiric_memory.records import MAX_METADATA_BYTES, MemoryRecord

__all__ = ["MAX_ID_CHARS", "SOURCE_SYSTEM", "Mapped", "Mapper"]

SOURCE_SYSTEM = "session_buddy"
_MAX_RAW_CHARS = 10_000
MAX_ID_CHARS = 512
_RESERVED_SOURCE_KEYS = frozenset({"system", "file_id", "file", "table", "id", "run_id", "sanitized"})




@dataclass(slots=True)
class Mapped:
    source_id: str
    project: str
    record: MemoryRecord | None
    reason: str | None = None


def _aware(value: datetime) -> datetime:
    """DuckDB TIMESTAMP is naive; Session-Buddy writes UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _strip_nul(value: str, flags: set[str]) -> str:
    if "\x00" in value:
        flags.add("nul_bytes")
        return value.replace("\x00", "")
    return value


def _jsonable(value: Any, flags: set[str], depth: int = 0) -> Any:
    """Any DuckDB value as JSON the store accepts (no NUL, no NaN, string keys)."""
    if depth > 64:
        flags.add("too_deep")
        return None
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        flags.add("non_finite_number")
        return None
    if isinstance(value, str):
        return _strip_nul(value, flags)
    if isinstance(value, datetime):
        return _aware(value).isoformat()
    if isinstance(value, (date, dtime)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return _jsonable(float(value), flags, depth)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": len(bytes(value))}
    if isinstance(value, Mapping):
        return {_strip_nul(str(k), flags): _jsonable(v, flags, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, flags, depth + 1) for v in value]
    return _strip_nul(str(value), flags)


def _parse_json_column(value: Any, flags: set[str], column: str) -> tuple[Any, str | None]:
    """(parsed value, raw text if it was not valid JSON)."""
    if not isinstance(value, str):
        return _jsonable(value, flags), None
    try:
        return _jsonable(json.loads(value), flags), None
    except (ValueError, RecursionError):
        flags.add(f"invalid_json:{column}")
        return None, _strip_nul(value[:_MAX_RAW_CHARS], flags)


def _shrink_metadata(metadata: dict[str, Any], flags: set[str]) -> dict[str, Any]:
    """Drop the largest source fields until the metadata fits the store's limit."""
    encoded = len(json.dumps(metadata).encode("utf-8"))
    if encoded <= MAX_METADATA_BYTES:
        return metadata
    source: dict[str, Any] = metadata["source"]
    sizes = sorted(((len(json.dumps(v).encode("utf-8")), k) for k, v in source.items()
                    if k not in _RESERVED_SOURCE_KEYS), reverse=True)
    for size, key in sizes:
        source[key] = {"dropped_bytes": size}
        flags.add(f"dropped:{key}")
        encoded = len(json.dumps(metadata).encode("utf-8"))
        if encoded <= MAX_METADATA_BYTES:
            break
    for key in [k for k in metadata if k != "source"]:
        if len(json.dumps(metadata).encode("utf-8")) <= MAX_METADATA_BYTES:
            break
        metadata.pop(key)
    return metadata


def _tagged_insight(row: Row) -> tuple[str, list[str]] | None:
    """(insight type, topics) of a reflection our sink wrote to Session-Buddy 0.36, else None.

    0.36 has no ``insight_type`` column: the sink writes an insight as a reflection tagged
    ``["insight", <type>, *topics, "om:<id>", ...]``; the tag codec reads it back (markers are not topics).
    A row with a non-blank ``insight_type`` (0.23) is classified by that column instead.
    """
    insight_type = row.get("insight_type")
    if isinstance(insight_type, str) and insight_type.strip():
        return None
    tags = row.get("tags")
    if not isinstance(tags, list) or not looks_like_insight(tags):
        return None
    hit = hit_from(row.get(SOURCE_ID), "", [t for t in tags if isinstance(t, str)], None, None)
    return hit.insight_type, list(hit.topics)


def _short_text(value: Any, flags: set[str]) -> str | None:
    if not isinstance(value, str):
        return None
    value = _strip_nul(value, flags).strip()
    return value if value and len(value) <= MAX_ID_CHARS else None


class Mapper:
    """Turns one source row into a MemoryRecord, or a reason why it cannot be stored."""

    def __init__(self, *, project: str | None, dimension: int, max_content_bytes: int) -> None:
        self.project = project
        self.dimension = dimension
        self.max_content_bytes = max_content_bytes

    def target_project(self, row_project: Any) -> str:
        if self.project is not None:
            return self.project
        if isinstance(row_project, str):
            cleaned = row_project.replace("\x00", "").strip()
            if cleaned:
                return cleaned
        return "default"

    @staticmethod
    def _content(spec: TableSpec, row: Row, ctx: BatchContext, flags: set[str]) -> tuple[Any, str]:
        """(content, memory_type) before sanitising."""
        if spec.kind == "conversation":
            return row.get("content"), "agent"
        if spec.kind == "reflection":
            insight_type = row.get("insight_type")
            is_insight = (isinstance(insight_type, str) and insight_type.strip() != "") or _tagged_insight(row) is not None
            return row.get("content"), "insight" if is_insight else "agent"
        if spec.kind == "entity":
            name, kind = row.get("name"), row.get("entity_type")
            if not isinstance(name, str) or not name.strip():
                return None, "insight"
            head = f"{name} ({kind})" if isinstance(kind, str) and kind.strip() else name
            observations = [str(o) for o in (row.get("observations") or []) if o is not None and str(o).strip()]
            return "\n".join([head, *(f"- {o}" for o in observations)]), "insight"
        from_info = ctx.entities.get(str(row.get("from_entity")))
        to_info = ctx.entities.get(str(row.get("to_entity")))
        a = str(from_info["name"]) if from_info and from_info.get("name") else str(row.get("from_entity"))
        b = str(to_info["name"]) if to_info and to_info.get("name") else str(row.get("to_entity"))
        relation = str(row.get("relation_type") or "related_to").replace("_", " ").strip()
        if from_info is None or to_info is None:
            flags.add("dangling_entity")
        return f"{a} {relation} {b}", "insight"

    def map(self, spec: TableSpec, row: Row, ctx: BatchContext, run_id: str | None) -> Mapped:
        source_id = str(row[SOURCE_ID])
        project = self.target_project(row.get("project"))
        flags: set[str] = set()
        raw, memory_type = self._content(spec, row, ctx, flags)
        if raw is None:
            return Mapped(source_id, project, None, "content is NULL")
        content = _strip_nul(str(raw), flags)
        if not content.strip():
            return Mapped(source_id, project, None, "content is empty")
        size = len(content.encode("utf-8", "surrogatepass"))
        if size > self.max_content_bytes:
            return Mapped(source_id, project, None,
                           f"content is {size} bytes, over postgres.max_content_bytes={self.max_content_bytes}: "
                           "raise it and run again to migrate this row")
        record = MemoryRecord(
            content=content, memory_type=memory_type, project=project, source_system=SOURCE_SYSTEM,
            session_id=_short_text(row.get("session_id") or row.get("source_session_id"), flags),
            created_at=next((_aware(row[c]) for c in TIMESTAMP_COLUMNS if isinstance(row.get(c), datetime)), None),
            metadata=self._metadata(spec, row, ctx, run_id, source_id, memory_type, flags))
        try:
            record.validate(dimension=self.dimension, max_content_bytes=self.max_content_bytes)
        except InvalidInput as exc:
            return Mapped(source_id, project, None, exc.message)
        return Mapped(source_id, project, record)

    @staticmethod
    def _metadata(spec: TableSpec, row: Row, ctx: BatchContext, run_id: str | None, source_id: str,
                  memory_type: str, flags: set[str]) -> dict[str, Any]:
        source: dict[str, Any] = {"system": SOURCE_SYSTEM, "file": spec.file_role, "file_id": spec.file_id,
                                  "table": spec.name, "id": source_id}
        if run_id is not None:
            source["run_id"] = run_id
        for column, value in row.items():
            if column in (SOURCE_ID, "id") or (column == "content" and spec.kind in ("conversation", "reflection")):
                continue
            key = f"column_{column}" if column in _RESERVED_SOURCE_KEYS else column
            if column in JSON_COLUMNS:
                parsed, raw = _parse_json_column(value, flags, column)
                source[key] = parsed
                if raw is not None:
                    source[f"{key}_raw"] = raw
            else:
                source[key] = _jsonable(value, flags)
        metadata: dict[str, Any] = {"source": source}
        tags = row.get("tags")
        tag_list = [t for t in _jsonable(tags, flags) if isinstance(t, str)] if isinstance(tags, list) else []
        tag_list += [t for t in ctx.tags.get(source_id, []) if t not in tag_list]
        if ctx.tags.get(source_id):
            source["reflection_tags"] = ctx.tags[source_id]
        if tag_list:
            metadata["tags"] = tag_list
        if memory_type == "insight" and isinstance(row.get("insight_type"), str):
            metadata["insight_type"] = _strip_nul(row["insight_type"], flags)
        elif memory_type == "insight" and spec.kind == "reflection" and (tagged := _tagged_insight(row)) is not None:
            metadata["insight_type"] = tagged[0]
            topics = [_strip_nul(t, flags) for t in tagged[1]]
            if topics:
                metadata["tags"] = topics
            else:
                metadata.pop("tags", None)
        if spec.kind == "relation":
            metadata["relation"] = _jsonable(row.get("relation_type"), flags)
            metadata["entities"] = [
                _jsonable(ctx.entities.get(str(row.get(end))) or {"id": row.get(end), "name": None}, flags)
                for end in ("from_entity", "to_entity")]
        elif spec.kind == "entity":
            metadata["entity"] = {"name": _jsonable(row.get("name"), flags),
                                  "entity_type": _jsonable(row.get("entity_type"), flags)}
        metadata = _shrink_metadata(metadata, flags)
        if flags:
            source["sanitized"] = sorted(flags)
        return metadata


