"""The tag codec and the other pure parts of the sink: no Session-Buddy, no database, no thread."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from oneiric_memory.adapters.session_buddy.mcp_backend import tool_arguments
from oneiric_memory.adapters.session_buddy.tags import (
    artifact_uri,
    hit_from,
    id_tags,
    insight_ids,
    is_wildcard,
    looks_like_insight,
    query_tokens,
    session_buddy_project,
    tags_for,
)
from oneiric_memory.insights import Insight, extract_insights, format_insight_block, insight_id


def test_tags_for_marks_type_topics_id_project_and_memory() -> None:
    item = Insight(insight_id="abc", content="x", insight_type="gotcha",
                   topics=("database", "gotcha", "insight", "om:forged", "project:forged", "database"),
                   project="repo-a", memory_id="m-1")
    assert tags_for(item) == ["insight", "gotcha", "database", "om:abc", "project:repo-a", "om-memory:m-1"]
    unknown = Insight(insight_id="abc", content="x", insight_type="not-a-type", project="p")
    assert tags_for(unknown) == ["insight", "general", "om:abc", "project:p"]  # no memory id, no memory tag


def test_hit_from_reads_our_markers_back_and_never_as_topics() -> None:
    item = Insight(insight_id="abc", content="x", insight_type="pattern", topics=("api", "testing"),
                   project="repo-a", memory_id="m-1")
    hit = hit_from("01J0000000000000000000000Z", "x", tags_for(item), None, 0.5)
    assert (hit.insight_type, hit.topics, hit.project, hit.insight_id, hit.score) == (
        "pattern", ("api", "testing"), "repo-a", "abc", 0.5)
    # 0.23's insight_type column wins; 0.36's project column fills in when no project: tag exists
    other = hit_from("0" * 32, "y", ["notes"], "gotcha", None, project="repo-b")
    assert (other.insight_type, other.project, other.insight_id, other.score, other.topics) == (
        "gotcha", "repo-b", None, None, ("notes",))
    assert hit_from(1, None, None, 3, "high").content == "" and hit_from(1, "", None, None, None).id == "1"


def test_session_buddy_project_pattern_and_artifact_uri() -> None:
    assert session_buddy_project("repo-a.v2_x") == "repo-a.v2_x"
    for refused in ("my repo", "a/b", "x" * 129, "", None, "ünïcode"):
        assert session_buddy_project(refused) is None
    assert artifact_uri(Insight(insight_id="i", content="c", memory_id="3f2a")) == "oneiric-memory://3f2a"
    assert artifact_uri(Insight(insight_id="i", content="c")) is None


@pytest.mark.parametrize(("ids", "ours", "tags"), [
    (["abc", "om:abc", "def"], ["abc", "def"], ["om:abc", "om:def"]),
    (["01J0000000000000000000000Z"], ["01J0000000000000000000000Z"], ["om:01J0000000000000000000000Z"]),
    ([], [], []),
])
def test_ids_accept_our_ids_and_the_om_handle(ids: list[str], ours: list[str], tags: list[str]) -> None:
    assert insight_ids(ids) == ours and id_tags(ids) == tags


def test_small_predicates() -> None:
    assert is_wildcard("*") and is_wildcard("  * ") and not is_wildcard("**") and not is_wildcard("a*")
    assert looks_like_insight(["insight"]) and looks_like_insight(["x", "om:1"]) and not looks_like_insight(["x"])
    assert not looks_like_insight(None)
    assert query_tokens("The HNSW index, the HNSW index!") == ["the", "hnsw", "index"]
    assert query_tokens("a b") == [] and len(query_tokens(" ".join(f"w{i}xx" for i in range(20)))) == 8


def test_extracted_insight_keyed_per_project() -> None:
    (found,) = extract_insights(format_insight_block("Prefer SKIP LOCKED for relays."))
    a, b = found.keyed("repo-a", memory_id="m"), found.keyed("repo-b")
    assert a.insight_id == insight_id("repo-a", found.content) != b.insight_id
    assert (a.content, a.insight_type, a.topics, a.project, a.memory_id) == (
        found.content, found.insight_type, found.topics, "repo-a", "m")


def test_tool_arguments_reads_either_schema_spelling() -> None:
    new = SimpleNamespace(input_schema={"properties": {"content": {}, "project": {}}})
    old = SimpleNamespace(inputSchema={"properties": {"content": {}, "tags": {}}})
    assert tool_arguments(new) == {"content", "project"}
    assert tool_arguments(old) == {"content", "tags"}
    assert tool_arguments(SimpleNamespace(inputSchema=None)) == frozenset()
    assert tool_arguments(SimpleNamespace()) == frozenset()
