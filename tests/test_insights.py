"""The tolerant ``★ Insight`` parser, its classification and the insight id (unit and property tests)."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oneiric_memory import insights
from oneiric_memory.errors import InvalidInput
from oneiric_memory.insights import (
    INSIGHT_TYPES,
    ExtractedInsight,
    classify_insight,
    extract_insights,
    format_insight_block,
    insight_id,
)

CANONICAL = (
    "Some explanation first.\n\n"
    "`★ Insight ─────────────────────────────────────`\n"
    "Always close the DuckDB file after a batch: Session-Buddy needs its lock.\n"
    "`─────────────────────────────────────────────────`\n\n"
    "More text after."
)


def contents(text: str) -> list[str]:
    return [insight.content for insight in extract_insights(text)]


# --- shapes the parser must accept ------------------------------------------------------------


def test_canonical_block_with_text_around() -> None:
    found = extract_insights(CANONICAL)
    assert len(found) == 1
    assert found[0].content == "Always close the DuckDB file after a batch: Session-Buddy needs its lock."
    assert isinstance(found[0], ExtractedInsight)
    assert found[0].insight_type in INSIGHT_TYPES
    assert "database" in found[0].topics


def test_no_stray_backtick_where_session_buddys_extractor_leaves_one() -> None:
    (insight,) = extract_insights(CANONICAL)
    assert "`" not in insight.content


@pytest.mark.parametrize("header_rule, footer_rule", [(0, 3), (1, 5), (12, 80), (37, 49), (120, 200)])
def test_any_rule_length(header_rule: int, footer_rule: int) -> None:
    text = f"`★ Insight {'─' * header_rule}`\nUse one pool per process.\n`{'─' * footer_rule}`"
    assert contents(text) == ["Use one pool per process."]


def test_without_backticks_and_with_plain_dashes() -> None:
    text = "★ Insight -----------\nPrefer COPY for bulk loads.\n-------------\nafter"
    assert contents(text) == ["Prefer COPY for bulk loads."]


def test_crlf_and_lone_cr_line_endings() -> None:
    assert contents(CANONICAL.replace("\n", "\r\n")) == contents(CANONICAL)
    assert contents(CANONICAL.replace("\n", "\r")) == contents(CANONICAL)


def test_several_blocks_in_order() -> None:
    text = "\n".join([
        "intro",
        format_insight_block("First insight."),
        "between",
        format_insight_block("Second insight\nspans two lines."),
        "outro",
    ])
    assert contents(text) == ["First insight.", "Second insight\nspans two lines."]


def test_last_block_closed_by_end_of_text_and_block_closed_by_next_header() -> None:
    text = "★ Insight ────\nfirst, never closed\n★ Insight ────\nsecond, closed by the end"
    assert contents(text) == ["first, never closed", "second, closed by the end"]


def test_header_with_inline_content_and_rule_on_the_next_line() -> None:
    text = "★ Insight: cache the query embedding\n\n`★ Insight`\n`──────────`\nthe rule wrapped\n`──────`"
    assert contents(text) == ["cache the query embedding", "the rule wrapped"]


def test_closing_rule_glued_to_the_last_line() -> None:
    assert contents("`★ Insight ───`\nkeep it short `──────────`\ntail") == ["keep it short"]


def test_inline_code_and_code_fences_are_kept() -> None:
    content = "Call `asyncio.to_thread` for DuckDB:\n```python\nawait asyncio.to_thread(conn.execute, sql)\n```"
    assert contents(format_insight_block(content)) == [content]


def test_stray_backticks_are_stripped() -> None:
    text = "`★ Insight ─────\n`\n` Watch out for the lock\n`────────`"
    assert contents(text) == ["Watch out for the lock"]


def test_empty_blocks_are_skipped() -> None:
    text = "★ Insight ───\n\n   \n`\n───────\n★ Insight ───\nreal one\n───────\n★ Insight ───"
    assert contents(text) == ["real one"]


def test_no_blocks() -> None:
    assert extract_insights("") == []
    assert extract_insights("plain text with the word insight and ─── rules\n-----") == []
    assert extract_insights("a ★ star but no header") == []


def test_non_string_input_never_raises() -> None:
    assert extract_insights(None) == []  # type: ignore[arg-type]
    assert extract_insights(b"\xe2\x98\x85 Insight") == []  # type: ignore[arg-type]


# --- classification ---------------------------------------------------------------------------


def test_types_and_topics() -> None:
    kind, topics = classify_insight("Watch out for this common mistake: a DuckDB transaction blocks the loop.")
    assert kind == "gotcha"
    assert "database" in topics
    kind, _ = classify_insight("Use the repository pattern to keep SQL out of handlers.")
    assert kind == "pattern"
    assert classify_insight("Nothing to classify here.")[0] == "general"


def test_own_classifier_when_session_buddy_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback used when session-buddy is not installed (simulated by hiding its classifiers)."""
    monkeypatch.setattr(insights, "_session_buddy_classifiers", lambda: None)
    kind, topics = classify_insight("Beware: pytest fixtures that share a DuckDB file race on its lock.")
    assert kind == "gotcha"
    assert {"testing", "database"} <= set(topics)
    assert classify_insight("A layered architecture keeps the API thin.")[0] == "architecture"
    assert classify_insight("You should prefer batch inserts.")[0] == "best_practice"
    assert classify_insight("Hello.") == ("general", ())


def test_session_buddy_classifier_failure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_content: str) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(insights, "_session_buddy_classifiers", lambda: (broken, broken))
    assert classify_insight("Watch out for the lock.")[0] == "gotcha"


# --- ids and formatting -----------------------------------------------------------------------


def test_insight_id_is_stable_and_scoped_by_project() -> None:
    first = insight_id("repo-a", "Use one pool per process.")
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert insight_id("repo-a", "  use ONE pool\nper   process. ") == first
    assert insight_id("repo-b", "Use one pool per process.") != first
    assert insight_id("repo-a", "Use two pools per process.") != first
    # project and content cannot bleed into each other
    assert insight_id("ab", "c") != insight_id("a", "bc")


def test_format_insight_block_is_canonical_and_rejects_empty() -> None:
    block = format_insight_block("  hello\r\nworld  ")
    assert block.splitlines()[0] == "`★ Insight " + "─" * 37 + "`"
    assert block.splitlines()[-1] == "`" + "─" * 49 + "`"
    assert contents(block) == ["hello\nworld"]
    with pytest.raises(InvalidInput):
        format_insight_block(" \n ` ")


# --- properties -------------------------------------------------------------------------------

_NOISY = st.text(alphabet=st.sampled_from([*"★⭐─━-—`\r\n \t:Insightinsight", "\ufe0f", "x", "é"]), max_size=400)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=400), _NOISY))
def test_never_raises_and_yields_clean_insights(text: str) -> None:
    direct = insights._extract(text)  # the parser itself, without the public safety net
    assert extract_insights(text) == direct
    for insight in direct:
        assert insight.content == insight.content.strip()
        assert insight.content
        assert insight.insight_type in INSIGHT_TYPES
        assert isinstance(insight.topics, tuple)


_WORD = st.text(alphabet=string.ascii_letters + string.digits + ".,;:!?()'\"/é", min_size=1, max_size=12)
_CODE_WORD = _WORD.map(lambda word: f"`{word}`")
_LINE = st.lists(st.one_of(_WORD, _WORD, _CODE_WORD), min_size=0, max_size=8).map(" ".join)
_CONTENT = st.lists(_LINE, min_size=1, max_size=5).map("\n".join).filter(lambda text: text.strip() != "")
_FILLER = st.lists(_LINE, max_size=3).map("\n".join)


@st.composite
def _documents(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A text of filler and blocks in varied shapes, and the contents it must yield."""
    expected: list[str] = []
    parts = [draw(_FILLER)]
    count = draw(st.integers(min_value=1, max_value=4))
    for index in range(count):
        content = draw(_CONTENT)
        tick = draw(st.sampled_from(["", "`"]))
        header = f"{tick}★ Insight {draw(st.sampled_from('─━-')) * draw(st.integers(0, 60))}{tick}"
        last = index == count - 1
        closed = not last or draw(st.booleans())
        block = [header, content]
        if closed:
            tick = draw(st.sampled_from(["", "`"]))
            block.append(f"{tick}{draw(st.sampled_from('─━-')) * draw(st.integers(3, 60))}{tick}")
        parts.append("\n".join(block))
        if closed:
            parts.append(draw(_FILLER))
        expected.append("\n".join(line.rstrip() for line in content.split("\n")).strip())
    text = "\n".join(parts)
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    return text, expected


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents())
def test_round_trips_generated_blocks(document: tuple[str, list[str]]) -> None:
    text, expected = document
    assert contents(text) == expected


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_CONTENT, _FILLER, _FILLER)
def test_round_trips_the_canonical_block(content: str, before: str, after: str) -> None:
    expected = "\n".join(line.rstrip() for line in content.split("\n")).strip()
    assert contents(f"{before}\n{format_insight_block(content)}\n{after}") == [expected]
