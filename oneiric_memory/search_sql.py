"""SQL text for filters and searches. Values are always bind parameters; identifiers are validated settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from oneiric_memory.records import SearchFilters

__all__ = ["Params", "filter_clause"]


@dataclass
class Params:
    """Collects bind values and hands out ``$n`` placeholders."""

    values: list[Any] = field(default_factory=list)

    def add(self, value: Any, cast: str | None = None) -> str:
        self.values.append(value)
        placeholder = f"${len(self.values)}"
        return f"{placeholder}::{cast}" if cast else placeholder


def filter_clause(filters: SearchFilters | None, params: Params, *, alias: str = "m") -> str:
    """``AND``-joined predicates on typed, indexed columns; ``TRUE`` when there are none."""
    parts: list[str] = []
    f = filters or SearchFilters()
    if f.projects:
        parts.append(f"{alias}.project = ANY({params.add(list(f.projects), 'text[]')})")
    if f.memory_types:
        parts.append(f"{alias}.memory_type = ANY({params.add(list(f.memory_types), 'text[]')})")
    for column in ("source_system", "agent_id", "workflow_id", "repo_id", "session_id"):
        value = getattr(f, column)
        if value is not None:
            parts.append(f"{alias}.{column} = {params.add(value, 'text')}")
    if f.created_after is not None:
        parts.append(f"{alias}.created_at >= {params.add(f.created_after, 'timestamptz')}")
    if f.created_before is not None:
        parts.append(f"{alias}.created_at < {params.add(f.created_before, 'timestamptz')}")
    if f.metadata:
        parts.append(f"{alias}.metadata @> {params.add(json.dumps(dict(f.metadata)), 'text')}::jsonb")
    if not f.include_expired:
        parts.append(f"({alias}.expires_at IS NULL OR {alias}.expires_at > now())")
    return " AND ".join(parts) if parts else "TRUE"
