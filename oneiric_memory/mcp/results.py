"""The structured results the tools return (their JSON schemas are the tools' output schemas).

Plain pydantic models: FastMCP turns them into ``outputSchema`` and ``structuredContent`` in every version
this package supports. Memory content and metadata come back as stored; timestamps are ISO 8601 (UTC).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from oneiric_memory.records import SearchHit, StoredMemory

__all__ = [
    "ForgetResult",
    "HealthPart",
    "HealthResult",
    "MemoryHit",
    "MemoryItem",
    "ProjectCount",
    "ProjectsResult",
    "RememberResult",
    "SearchResult",
    "SourceReport",
    "StatsResult",
    "UnifiedSearchResult",
]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class RememberResult(BaseModel):
    id: str = Field(description="the memory's id (the existing one when the same content was stored before)")
    project: str


class MemoryHit(BaseModel):
    id: str
    content: str
    project: str
    memory_type: str
    score: float = Field(description="higher is better; comparable only within one search mode")
    source: str = Field(description="postgres, or session_buddy for insights found there")
    metadata: dict[str, Any] = Field(default_factory=dict)
    agent_id: str | None = None
    session_id: str | None = None
    workflow_id: str | None = None
    repo_id: str | None = None
    created_at: str | None = None

    @classmethod
    def of(cls, hit: SearchHit) -> MemoryHit:
        return cls(id=str(hit.id), content=hit.content, project=hit.project, memory_type=hit.memory_type,
                   score=float(hit.score), source=hit.source, metadata=dict(hit.metadata or {}),
                   agent_id=hit.agent_id, session_id=hit.session_id, workflow_id=hit.workflow_id,
                   repo_id=hit.repo_id, created_at=_iso(hit.created_at))


class SearchResult(BaseModel):
    hits: list[MemoryHit]
    count: int
    mode: str = Field(description="the mode that ran (text while the embedder is down and no mode was named)")
    note: str | None = Field(default=None, description="why another mode than the default ran, if it did")
    projects: list[str] = Field(description="the projects that were searched")


class SourceReport(BaseModel):
    status: Literal["ok", "timeout", "error", "disabled"]
    hits: int = 0
    latency_ms: float = 0.0
    error: str | None = None


class UnifiedSearchResult(BaseModel):
    hits: list[MemoryHit]
    count: int
    degraded: bool = Field(description="true when a source timed out or failed; the hits are still usable")
    sources: dict[str, SourceReport]
    projects: list[str]


class MemoryItem(BaseModel):
    id: str
    content: str
    project: str
    memory_type: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    agent_id: str | None = None
    session_id: str | None = None
    workflow_id: str | None = None
    repo_id: str | None = None
    source_system: str | None = None
    embedding_pending: bool = Field(description="stored but not embedded yet: text search already finds it")
    created_at: str | None = None
    updated_at: str | None = None
    expires_at: str | None = None

    @classmethod
    def of(cls, memory: StoredMemory) -> MemoryItem:
        return cls(id=str(memory.id), content=memory.content, project=memory.project,
                   memory_type=memory.memory_type, metadata=dict(memory.metadata or {}), agent_id=memory.agent_id,
                   session_id=memory.session_id, workflow_id=memory.workflow_id, repo_id=memory.repo_id,
                   source_system=memory.source_system, embedding_pending=memory.embedding_pending,
                   created_at=_iso(memory.created_at), updated_at=_iso(memory.updated_at),
                   expires_at=_iso(memory.expires_at))


class ForgetResult(BaseModel):
    removed: int = Field(description="how many memories were deleted")
    requested: int = Field(description="how many distinct ids were asked for; ids outside the scope count as "
                                       "not found")


class ProjectCount(BaseModel):
    project: str
    memories: int
    by_type: dict[str, int] = Field(default_factory=dict)


class ProjectsResult(BaseModel):
    projects: list[ProjectCount]
    pinned: bool = Field(description="true when this server is pinned to these projects")


class StatsResult(BaseModel):
    total: int
    projects: list[ProjectCount]


class HealthPart(BaseModel):
    name: str
    status: str
    message: str | None = None


class HealthResult(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    version: str
    components: list[HealthPart]
    scope: str
