"""The tag codec: how an insight is marked in Session-Buddy, and how a Session-Buddy row is read back.

Every entry the sink writes carries the tags ``insight``, its type, its topics, ``om:<insight_id>`` (our
idempotency key, so a redelivery finds the entry instead of duplicating it, and a forget can delete it),
``project:<name>`` (Session-Buddy 0.23 drops ``projects``, so attribution is ours) and, when known,
``om-memory:<memory id>``. Session-Buddy's own searches match tags, so these stay plain strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from oneiric_memory.insights import INSIGHT_TYPES, Insight, InsightHit

__all__ = [
    "ARTIFACT_URI_PREFIX",
    "SESSION_BUDDY_PROJECT_RE",
    "TAG_ID_PREFIX",
    "TAG_INSIGHT",
    "TAG_MEMORY_PREFIX",
    "TAG_PROJECT_PREFIX",
    "artifact_uri",
    "hit_from",
    "id_tags",
    "insight_ids",
    "is_wildcard",
    "looks_like_insight",
    "query_tokens",
    "session_buddy_project",
    "tags_for",
]

TAG_INSIGHT = "insight"
TAG_ID_PREFIX = "om:"
TAG_PROJECT_PREFIX = "project:"
TAG_MEMORY_PREFIX = "om-memory:"
ARTIFACT_URI_PREFIX = "oneiric-memory://"
_MARKER_PREFIXES = (TAG_ID_PREFIX, TAG_PROJECT_PREFIX, TAG_MEMORY_PREFIX)

SESSION_BUDDY_PROJECT_RE = re.compile(r"^[a-zA-Z0-9._-]{1,128}$")
"""What Session-Buddy 0.36's ``store_reflection`` tool accepts as ``project`` (it refuses anything else)."""

_TOKEN_RE = re.compile(r"\w{3,}")


def tags_for(insight: Insight) -> list[str]:
    """``["insight", <type>, *topics, "om:<id>", "project:<name>"(, "om-memory:<id>")]``."""
    kind = insight.insight_type if insight.insight_type in INSIGHT_TYPES else "general"
    topics = [t for t in dict.fromkeys(insight.topics)
              if t and t not in (TAG_INSIGHT, kind) and not t.startswith(_MARKER_PREFIXES)]
    tags = [TAG_INSIGHT, kind, *topics, f"{TAG_ID_PREFIX}{insight.insight_id}",
            f"{TAG_PROJECT_PREFIX}{insight.project}"]
    if insight.memory_id:
        tags.append(f"{TAG_MEMORY_PREFIX}{insight.memory_id}")
    return tags


def session_buddy_project(project: str | None) -> str | None:
    """The project to hand to Session-Buddy's own ``project`` column, or None when it would refuse it."""
    return project if project is not None and SESSION_BUDDY_PROJECT_RE.fullmatch(project) else None


def artifact_uri(insight: Insight) -> str | None:
    """``oneiric-memory://<memory id>``: Session-Buddy 0.36's provenance pointer back to our memory."""
    return f"{ARTIFACT_URI_PREFIX}{insight.memory_id}" if insight.memory_id else None


def hit_from(entry_id: Any, content: Any, tags: Iterable[Any] | None, insight_type: Any, score: Any,
             project: Any = None) -> InsightHit:
    """One Session-Buddy row as an :class:`InsightHit`; our marker tags become fields, not topics."""
    tag_list = [str(t) for t in (tags or [])]
    tagged_project = next((t[len(TAG_PROJECT_PREFIX):] for t in tag_list if t.startswith(TAG_PROJECT_PREFIX)),
                          None)
    our_id = next((t[len(TAG_ID_PREFIX):] for t in tag_list if t.startswith(TAG_ID_PREFIX)), None)
    kind = insight_type if isinstance(insight_type, str) and insight_type in INSIGHT_TYPES else None
    if kind is None and len(tag_list) > 1 and tag_list[0] == TAG_INSIGHT and tag_list[1] in INSIGHT_TYPES:
        kind = tag_list[1]
    kind = kind or "general"
    skip_type = tag_list[1] if len(tag_list) > 1 and tag_list[0] == TAG_INSIGHT else None
    topics = tuple(t for t in dict.fromkeys(tag_list)
                   if t != TAG_INSIGHT and t != skip_type and not t.startswith(_MARKER_PREFIXES))
    return InsightHit(id=str(entry_id), content=str(content or ""), insight_type=kind, topics=topics,
                      project=tagged_project or (str(project) if isinstance(project, str) and project else None),
                      score=float(score) if isinstance(score, int | float) else None, insight_id=our_id)


def looks_like_insight(tags: Iterable[Any] | None) -> bool:
    return any(str(t) == TAG_INSIGHT or str(t).startswith(TAG_ID_PREFIX) for t in (tags or []))


def is_wildcard(query: str) -> bool:
    """``'*'`` lists every insight (Session-Buddy 0.23's ``search_insights`` convention)."""
    return query.strip() == "*"


def query_tokens(text: str, limit: int = 8) -> list[str]:
    return list(dict.fromkeys(_TOKEN_RE.findall(text.lower())))[:limit]


def insight_ids(ids: Sequence[str]) -> list[str]:
    """Our insight ids from what a caller holds: the id itself or the handle ``om:<id>``, deduplicated."""
    return list(dict.fromkeys(i[len(TAG_ID_PREFIX):] if i.startswith(TAG_ID_PREFIX) else i for i in ids))


def id_tags(ids: Sequence[str]) -> list[str]:
    """The ``om:<id>`` tags for ``ids``."""
    return [f"{TAG_ID_PREFIX}{i}" for i in insight_ids(ids)]
