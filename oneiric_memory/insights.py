"""Find ``★ Insight`` blocks in agent output, classify them and give each a stable id.

Agents write insights as blocks such as::

    `★ Insight ─────────────────────────────────────`
    Always close the DuckDB file after a batch: Session-Buddy needs its lock.
    `─────────────────────────────────────────────────`

Session-Buddy's own extractor only matches that exact shape (37 and 49 ``─``) and leaves a backtick in
the content, so this parser is deliberately tolerant. It accepts:

- any number of ``─`` (or ``━``, ``═``, em and en dashes, ``-``), with or without the surrounding backticks;
- ``\\r\\n`` and ``\\r`` line endings;
- several blocks per text, with text before, between and after them;
- text after the header on the same line (``★ Insight: use X``) and a rule on the line after the header;
- a block closed by a rule line, by the next header, or by the end of the text;
- stray backticks left over from the delimiters (inline code such as ```x``` is kept).

Empty blocks are skipped. The parser never raises on any input.

This module is the one home of the insight types: :class:`ExtractedInsight` (what the parser finds),
:class:`Insight` (one keyed insight, from the outbox to Session-Buddy) and :class:`InsightHit` (one found
in Session-Buddy).

Classification reuses Session-Buddy's ``detect_insight_type``/``extract_topics`` when the package is
importable, so both sides agree on types and topics; otherwise a keyword fallback below does the job.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from oneiric_memory.errors import InvalidInput

__all__ = [
    "INSIGHT_TYPES",
    "ExtractedInsight",
    "Insight",
    "InsightHit",
    "classify_insight",
    "extract_insights",
    "format_insight_block",
    "insight_id",
    "normalize_insight_content",
]

INSIGHT_TYPES: tuple[str, ...] = ("pattern", "architecture", "best_practice", "gotcha", "general")
"""The types Session-Buddy knows; anything else is stored as ``general``."""

_STARS = "★⭐☆"
_RULE_CHARS = "─━═\u2014\u2013-"  # box drawings, em dash, en dash, hyphen
_BOX_RULE_CHARS = "─━═"  # only these may close a block at the end of a content line

# Header: optional backticks, a star, "Insight", optional ':' and rule characters, optional backticks.
_HEADER_RE = re.compile(
    rf"`*[ \t]*[{_STARS}]\ufe0f?[ \t]*insight\b[ \t]*:?[ \t]*[{re.escape(_RULE_CHARS)}]*[ \t]*`*",
    re.IGNORECASE,
)
# A rule line: only rule characters (at least three), optionally wrapped in backticks.
_RULE_LINE_RE = re.compile(rf"^[ \t]*`*[ \t]*[{re.escape(_RULE_CHARS)}]{{3,}}[ \t]*`*[ \t]*$")
# A closing rule glued to the end of a content line: "... last words `──────`".
_TRAILING_RULE_RE = re.compile(rf"[ \t]*`?[ \t]*[{_BOX_RULE_CHARS}]{{3,}}[ \t]*`?[ \t]*$")

_CANONICAL_HEADER = "`★ Insight " + "─" * 37 + "`"
_CANONICAL_FOOTER = "`" + "─" * 49 + "`"


@dataclass(frozen=True, slots=True)
class ExtractedInsight:
    """One insight found in a text: its cleaned content, its type and its topics (no key yet: the key
    depends on the project, see :meth:`keyed`)."""

    content: str
    insight_type: str
    topics: tuple[str, ...]

    def keyed(self, project: str, *, memory_id: str | None = None) -> Insight:
        """This insight with its idempotency key for ``project``."""
        return Insight(insight_id=insight_id(project, self.content), content=self.content,
                       insight_type=self.insight_type, topics=self.topics, project=project, memory_id=memory_id)


@dataclass(frozen=True, slots=True)
class Insight:
    """One insight keyed by ``insight_id`` (see :func:`insight_id`): queued in the outbox with its memory,
    delivered to Session-Buddy, deleted from it when the memory is forgotten.

    ``project`` and ``memory_id`` are None while the store has not attached the insight to its memory row
    (the store takes both from the row); a delivery needs ``project``.
    """

    insight_id: str
    content: str
    insight_type: str = "general"
    topics: tuple[str, ...] = ()
    project: str | None = None
    memory_id: str | None = None


@dataclass(frozen=True, slots=True)
class InsightHit:
    """An insight found in Session-Buddy.

    ``id`` is Session-Buddy's id (a 26-character ULID before 0.36, 32 hex digits of a uuid7 since).
    ``score`` is Session-Buddy's similarity, a token-overlap fraction, or None for its plain text match;
    only the rank is comparable across sources. ``insight_id`` is our key when the entry carries it.
    """

    id: str
    content: str
    insight_type: str
    topics: tuple[str, ...]
    project: str | None
    score: float | None
    insight_id: str | None = None


# --- normalization and ids --------------------------------------------------------------------


def _clean_content(raw: str) -> str:
    """Trim edges and trailing spaces, drop backtick-only stray lines and unbalanced edge backticks."""
    lines = [line.rstrip() for line in raw.split("\n")]
    lines = [line for line in lines if line.strip() not in {"`", "``"}]
    text = "\n".join(lines).strip()
    # A single unbalanced backtick at an edge is a leftover of a delimiter, not inline code.
    while text.count("`") % 2 == 1:
        if text.startswith("`") and not text.startswith("```"):
            text = text[1:].strip()
        elif text.endswith("`") and not text.endswith("```"):
            text = text[:-1].strip()
        else:
            break
    return text


def normalize_insight_content(content: str) -> str:
    """The form hashed into :func:`insight_id`: NFKC, whitespace collapsed, case folded.

    Two blocks that differ only in spacing, line breaks or case are the same insight.
    """
    text = unicodedata.normalize("NFKC", content)
    return " ".join(text.split()).casefold()


def insight_id(project: str, content: str) -> str:
    """Deterministic idempotency key: ``sha256(project NUL normalized content)``, first 32 hex digits."""
    digest = hashlib.sha256()
    digest.update(project.encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update(normalize_insight_content(content).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


# --- classification ---------------------------------------------------------------------------

_TYPE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gotcha", (r"gotcha", r"pitfall", r"common mistake", r"watch out", r"be careful", r"beware", r"trap",
                r"surprising(?:ly)?", r"silently")),
    ("architecture", (r"architecture", r"architectural", r"design", r"structure", r"component", r"layer",
                      r"module boundar(?:y|ies)")),
    ("pattern", (r"pattern", r"approach", r"strategy", r"idiom", r"technique")),
    ("best_practice", (r"best practice", r"should", r"recommend(?:ed)?", r"avoid", r"prefer", r"always",
                       r"never")),
)
_TYPE_RES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(r"\b(?:" + "|".join(words) + r")\b", re.IGNORECASE)) for name, words in _TYPE_RULES
)

_TOPIC_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("async", ("async", "await", "asyncio", "coroutine", "event loop")),
    ("database", ("database", "sql", "query", "transaction", "duckdb", "postgres", "postgresql", "index")),
    ("testing", ("test", "tests", "pytest", "mock", "fixture", "assert", "coverage", "hypothesis")),
    ("api", ("api", "endpoint", "http", "rest", "graphql", "request", "response")),
    ("security", ("security", "authentication", "authorization", "csrf", "xss", "injection", "secret")),
    ("performance", ("performance", "optimization", "cache", "caching", "latency", "throughput")),
    ("python", ("python", "pip", "virtualenv", "uv", "import")),
    ("architecture", ("architecture", "design", "layer", "component")),
    ("error-handling", ("error", "errors", "exception", "raise", "retry", "retries")),
    ("logging", ("log", "logs", "logger", "logging", "tracing")),
    ("type-safety", ("type hint", "type hints", "annotation", "pydantic", "validation", "mypy")),
)
_TOPIC_RES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE))
    for name, words in _TOPIC_RULES
)


def _own_type(content: str) -> str:
    for name, pattern in _TYPE_RES:
        if pattern.search(content):
            return name
    return "general"


def _own_topics(content: str) -> list[str]:
    return [name for name, pattern in _TOPIC_RES if pattern.search(content)]


@functools.cache
def _session_buddy_classifiers() -> tuple[Callable[[str], str], Callable[[str], list[str]]] | None:
    """Session-Buddy's classifiers, imported once; None when the package is not importable."""
    try:
        from session_buddy.insights.extractor import detect_insight_type, extract_topics
    except Exception:  # any import-time failure means "not available", never an error here
        return None
    return detect_insight_type, extract_topics


def classify_insight(content: str) -> tuple[str, tuple[str, ...]]:
    """``(insight_type, topics)`` for a content, with Session-Buddy's rules when available."""
    classifiers = _session_buddy_classifiers()
    kind: object = None
    topics: object = None
    if classifiers is not None:
        try:
            kind = classifiers[0](content)
            topics = classifiers[1](content)
        except Exception:
            kind = topics = None
    if not isinstance(kind, str) or kind not in INSIGHT_TYPES:
        kind = _own_type(content)
    if not isinstance(topics, list | tuple) or not all(isinstance(t, str) for t in topics):
        topics = _own_topics(content)
    return kind, tuple(dict.fromkeys(t for t in topics if t))


# --- parsing ----------------------------------------------------------------------------------


def _build(raw_lines: list[str]) -> ExtractedInsight | None:
    content = _clean_content("\n".join(raw_lines))
    if not content:
        return None
    kind, topics = classify_insight(content)
    return ExtractedInsight(content=content, insight_type=kind, topics=topics)


def extract_insights(text: str) -> list[ExtractedInsight]:
    """Every non-empty ``★ Insight`` block of ``text``, in order. Never raises."""
    if not isinstance(text, str) or not any(star in text for star in _STARS):
        return []
    try:
        return _extract(text)
    except Exception:  # defensive: a parser bug must not break the write path that calls it
        return []


def _extract(text: str) -> list[ExtractedInsight]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    found: list[ExtractedInsight] = []
    current: list[str] | None = None  # content lines of the open block
    header_only = False  # True until the open block has a non-empty content line

    def close() -> None:
        nonlocal current
        if current is not None:
            built = _build(current)
            if built is not None:
                found.append(built)
        current = None

    for line in lines:
        header = _HEADER_RE.search(line)
        if header is not None:
            close()
            rest = line[header.end():]
            current = []
            header_only = True
            if rest.strip() not in {"", "`", "``"}:
                current.append(rest)
                header_only = False
            continue
        if current is None:
            continue
        if _RULE_LINE_RE.match(line):
            if header_only:
                continue  # the header's rule wrapped onto its own line
            close()
            continue
        trailing = _TRAILING_RULE_RE.search(line)
        if trailing is not None and line[: trailing.start()].strip():
            current.append(line[: trailing.start()])
            close()
            continue
        current.append(line)
        if line.strip() not in {"", "`", "``"}:
            header_only = False
    close()
    return found


def format_insight_block(content: str) -> str:
    """The canonical block (Claude Code's explanatory style) for ``content``.

    ``extract_insights(format_insight_block(c))[0].content`` is ``c`` cleaned (trimmed, CRLF unified),
    provided no line of ``c`` is itself a rule or an insight header.
    """
    cleaned = _clean_content(content.replace("\r\n", "\n").replace("\r", "\n"))
    if not cleaned:
        raise InvalidInput("an insight needs non-empty content; pass the text of the insight")
    return f"{_CANONICAL_HEADER}\n{cleaned}\n{_CANONICAL_FOOTER}"
