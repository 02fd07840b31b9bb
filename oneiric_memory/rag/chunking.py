"""Chunks that follow a file's structure, each with its symbol and 1-based inclusive line range.

* Python: parsed with the standard ``ast`` module. Every function and method is a chunk (decorators included;
  nested functions stay inside their parent), named with its enclosing classes (``Outer.Inner.method``). A
  class's own lines (header, docstring, attributes) form a chunk named after it, and the module's top-level
  lines (docstring, imports, constants) one named ``<module>``. A file that does not parse is chunked by size.
* Markdown (ATX and setext headings, fenced code ignored) and reST (underlined or over-and-underlined titles):
  one chunk per section, named by its heading path (``Install > From source``).
* Everything else: by size with overlap, cut at a blank line when one is near the limit.

Any chunk longer than ``max_chars`` is split by size with overlap and keeps its symbol.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Chunk", "chunk_file", "chunk_markdown", "chunk_python", "chunk_rst", "chunk_sized"]

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RST_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+<>:._!$%&,/;?@\\|])\1{2,}[ \t]*$")


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    symbol: str | None
    kind: str
    """``module``, ``class``, ``function``, ``section`` or ``text``."""
    start_line: int
    end_line: int


def chunk_file(text: str, language: str, *, max_chars: int = 2000, overlap: int = 200) -> list[Chunk]:
    """Chunks of one file, by its language; blank chunks are dropped."""
    if language == "python":
        chunks = chunk_python(text, max_chars=max_chars, overlap=overlap)
    elif language == "markdown":
        chunks = chunk_markdown(text, max_chars=max_chars, overlap=overlap)
    elif language == "rst":
        chunks = chunk_rst(text, max_chars=max_chars, overlap=overlap)
    else:
        chunks = chunk_sized(text.splitlines(keepends=True), 1, max_chars=max_chars, overlap=overlap)
    return [c for c in chunks if c.text.strip()]


def chunk_sized(lines: Sequence[str], first_line: int, *, max_chars: int, overlap: int, symbol: str | None = None,
                kind: str = "text") -> list[Chunk]:
    """Line-aligned pieces of at most ~``max_chars``; each repeats up to ``overlap`` characters of lines from the
    end of the previous one. A cut prefers the last blank line in the second half of a piece."""
    pieces: list[tuple[int, str]] = []  # (line number, text); over-long lines are hard-split in place
    for offset, line in enumerate(lines):
        if len(line) <= max_chars:
            pieces.append((first_line + offset, line))
        else:
            pieces.extend((first_line + offset, line[i:i + max_chars]) for i in range(0, len(line), max_chars))
    chunks: list[Chunk] = []
    start = 0
    while start < len(pieces):
        size, end = 0, start
        while end < len(pieces) and (end == start or size + len(pieces[end][1]) <= max_chars):
            size += len(pieces[end][1])
            end += 1
        if end < len(pieces):  # prefer to cut after a blank line in the second half
            for cut in range(end - 1, start + (end - start) // 2, -1):
                if not pieces[cut][1].strip():
                    end = cut + 1
                    break
        body = pieces[start:end]
        chunks.append(Chunk("".join(t for _, t in body), symbol, kind, body[0][0], body[-1][0]))
        if end >= len(pieces):
            break
        back, kept = end, 0
        while back - 1 > start and kept + len(pieces[back - 1][1]) <= overlap:
            back -= 1
            kept += len(pieces[back][1])
        start = back
    return chunks


def _runs(lines: Sequence[str], start: int, end: int, holes: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Line ranges ``[a, b]`` inside ``[start, end]`` not covered by ``holes`` (1-based, inclusive)."""
    covered: set[int] = set()
    for a, b in holes:
        covered.update(range(a, b + 1))
    runs: list[tuple[int, int]] = []
    current: list[int] = []
    for number in range(start, end + 1):
        if number in covered:
            if current:
                runs.append((current[0], current[-1]))
                current = []
        else:
            current.append(number)
    if current:
        runs.append((current[0], current[-1]))
    return [(a, b) for a, b in runs if any(lines[n - 1].strip() for n in range(a, b + 1))]


def _pack(lines: Sequence[str], runs: Sequence[tuple[int, int]], *, symbol: str, kind: str, max_chars: int,
          overlap: int) -> list[Chunk]:
    """Group line runs (e.g. a class's lines between its methods) into chunks of at most ``max_chars``."""
    chunks: list[Chunk] = []
    group: list[tuple[int, int]] = []
    size = 0

    def flush() -> None:
        if group:
            text = "".join("".join(lines[a - 1:b]) for a, b in group)
            chunks.append(Chunk(text, symbol, kind, group[0][0], group[-1][1]))
            group.clear()

    for a, b in runs:
        length = sum(len(lines[n - 1]) for n in range(a, b + 1))
        if length > max_chars:
            flush()
            size = 0
            chunks.extend(chunk_sized(lines[a - 1:b], a, max_chars=max_chars, overlap=overlap, symbol=symbol,
                                      kind=kind))
            continue
        if size + length > max_chars:
            flush()
            size = 0
        group.append((a, b))
        size += length
    flush()
    return chunks


def chunk_python(text: str, *, max_chars: int = 2000, overlap: int = 200) -> list[Chunk]:
    lines = text.splitlines(keepends=True)
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return chunk_sized(lines, 1, max_chars=max_chars, overlap=overlap)
    chunks: list[Chunk] = []

    def span(node: ast.AST) -> tuple[int, int]:
        decorators = getattr(node, "decorator_list", [])
        start = min([d.lineno for d in decorators] + [node.lineno])  # type: ignore[attr-defined]
        return start, node.end_lineno or node.lineno  # type: ignore[attr-defined]

    def visit(body: Sequence[ast.stmt], prefix: str) -> None:
        for node in body:
            if not isinstance(node, _DEFS):
                continue
            start, end = span(node)
            name = f"{prefix}{node.name}"
            if isinstance(node, ast.ClassDef):
                inner = [span(child) for child in node.body if isinstance(child, _DEFS)]
                chunks.extend(_pack(lines, _runs(lines, start, end, inner), symbol=name, kind="class",
                                    max_chars=max_chars, overlap=overlap))
                visit(node.body, f"{name}.")
            else:
                chunks.extend(chunk_sized(lines[start - 1:end], start, max_chars=max_chars, overlap=overlap,
                                          symbol=name, kind="function"))

    visit(tree.body, "")
    top = [span(node) for node in tree.body if isinstance(node, _DEFS)]
    module = _pack(lines, _runs(lines, 1, len(lines), top), symbol="<module>", kind="module", max_chars=max_chars,
                   overlap=overlap)
    return sorted(module + chunks, key=lambda c: (c.start_line, c.end_line))


def _sections(lines: Sequence[str], headings: Sequence[tuple[int, int, str]], *, max_chars: int,
              overlap: int) -> list[Chunk]:
    """One chunk (or several, by size) per section; ``headings`` are (0-based first line, level, title)."""
    chunks: list[Chunk] = []
    path: list[tuple[int, str]] = []
    bounds = [*headings, (len(lines), 0, "")]
    if bounds[0][0] > 0:
        chunks.extend(chunk_sized(lines[:bounds[0][0]], 1, max_chars=max_chars, overlap=overlap, kind="section"))
    for (first, level, title), (following, _, _) in itertools.pairwise(bounds):
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, title))
        symbol = " > ".join(t for _, t in path)
        chunks.extend(chunk_sized(lines[first:following], first + 1, max_chars=max_chars, overlap=overlap,
                                  symbol=symbol, kind="section"))
    return chunks


def chunk_markdown(text: str, *, max_chars: int = 2000, overlap: int = 200) -> list[Chunk]:
    lines = text.splitlines(keepends=True)
    headings: list[tuple[int, int, str]] = []
    fence: str | None = None
    for index, line in enumerate(lines):
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
            continue
        atx = _ATX.match(line.rstrip("\n"))
        if atx:
            headings.append((index, len(atx.group(1)), (atx.group(2) or "").strip()))
            continue
        setext = _SETEXT.match(line.rstrip("\n"))
        if setext and index > 0 and lines[index - 1].strip() and (not headings or headings[-1][0] != index - 1) \
                and not _SETEXT.match(lines[index - 1].rstrip("\n")):
            headings.append((index - 1, 1 if setext.group(1)[0] == "=" else 2, lines[index - 1].strip()))
    return _sections(lines, headings, max_chars=max_chars, overlap=overlap)


def chunk_rst(text: str, *, max_chars: int = 2000, overlap: int = 200) -> list[Chunk]:
    """reST section levels are assigned in order of first appearance of each adornment style."""
    lines = text.splitlines(keepends=True)
    styles: list[tuple[str, bool]] = []
    headings: list[tuple[int, int, str]] = []
    index = 0
    while index < len(lines) - 1:
        title, under = lines[index].rstrip(), lines[index + 1].rstrip()
        over = index > 0 and _RST_ADORNMENT.match(lines[index - 1].rstrip()) is not None \
            and lines[index - 1].rstrip() == under
        if title.strip() and not _RST_ADORNMENT.match(title) and _RST_ADORNMENT.match(under) \
                and len(under) >= len(title.strip()):
            style = (under[0], over)
            if style not in styles:
                styles.append(style)
            headings.append((index - 1 if over else index, styles.index(style) + 1, title.strip()))
            index += 2
            continue
        index += 1
    return _sections(lines, headings, max_chars=max_chars, overlap=overlap)
