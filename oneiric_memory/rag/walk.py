"""Walk a repository as git would see it: ``.gitignore`` files (root and nested) and ``.git/info/exclude`` are
honoured, ``.git`` and symbolic links are never entered, and every file left out is counted by reason.

Only files with a covered suffix are read; a covered file is skipped when it is too large, binary (a NUL byte
anywhere, or not UTF-8) or has a path that is not valid text. Reading a file also hashes it (sha256 of
the raw bytes): the hash is what makes a rerun incremental.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

__all__ = ["DEFAULT_SUFFIXES", "LANGUAGES", "RepoFile", "WalkCounts", "language_of", "walk_repository"]

LANGUAGES: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".md": "markdown", ".markdown": "markdown", ".rst": "rst", ".txt": "text",
    ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".ini": "ini", ".cfg": "ini",
    ".js": "javascript", ".mjs": "javascript", ".jsx": "javascript", ".ts": "typescript", ".tsx": "typescript",
    ".go": "go", ".rs": "rust", ".java": "java", ".kt": "kotlin", ".c": "c", ".h": "c", ".cc": "cpp",
    ".cpp": "cpp", ".hpp": "cpp", ".cs": "csharp", ".rb": "ruby", ".php": "php", ".swift": "swift",
    ".scala": "scala", ".sh": "shell", ".bash": "shell", ".sql": "sql", ".html": "html", ".css": "css",
}
"""Suffix → language name (stored with each chunk). Python, Markdown and reST are chunked by structure."""

DEFAULT_SUFFIXES: tuple[str, ...] = (
    ".py", ".md", ".rst", ".txt", ".toml", ".yaml", ".yml",
    ".pyi", ".js", ".mjs", ".jsx", ".ts", ".tsx", ".go", ".rs", ".java", ".kt", ".c", ".h", ".cc", ".cpp",
    ".hpp", ".cs", ".rb", ".php", ".swift", ".scala", ".sh", ".sql",
)
"""The issue's default set plus common source languages (chunked by size at blank-line boundaries)."""



def language_of(path: str) -> str:
    return LANGUAGES.get(Path(path).suffix.lower(), "text")


@dataclass(frozen=True, slots=True)
class RepoFile:
    """One covered text file: its path relative to the root (POSIX separators), text and raw-byte hash."""

    path: str
    text: str
    file_hash: str
    size: int

    @property
    def language(self) -> str:
        return language_of(self.path)


@dataclass(slots=True)
class WalkCounts:
    """Files seen by the walk, by outcome (``skipped`` maps a reason to a count)."""

    covered: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        return {"covered": self.covered, **{f"skipped_{reason}": n for reason, n in sorted(self.skipped.items())}}


class _Ignores:
    """The ignore files in scope, root first; the deepest file with a decisive rule wins (as in git)."""

    def __init__(self) -> None:
        self._specs: list[tuple[str, pathspec.GitIgnoreSpec]] = []

    def add(self, base: str, lines: Sequence[str]) -> None:
        if lines:
            self._specs.append((base, pathspec.GitIgnoreSpec.from_lines(lines)))

    def ignored(self, rel: str, *, is_dir: bool) -> bool:
        verdict = False
        for base, spec in self._specs:
            if base and not rel.startswith(base + "/"):
                continue
            local = rel[len(base) + 1:] if base else rel
            result = spec.check_file(local + "/" if is_dir else local)
            if result.include is not None:
                verdict = result.include
        return verdict


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def walk_repository(root: Path, *, suffixes: Sequence[str] = DEFAULT_SUFFIXES, max_file_bytes: int = 1_000_000,
                    exclude: Sequence[str] = (), counts: WalkCounts | None = None) -> Iterator[RepoFile]:
    """Yield the covered files under ``root`` in a stable (sorted) order, counting every file left out.

    ``exclude`` holds extra ``.gitignore``-style patterns, applied as if in a root ``.gitignore`` read first.
    """
    tally = counts if counts is not None else WalkCounts()
    wanted = {s.lower() for s in suffixes}
    ignores = _Ignores()
    ignores.add("", [*exclude, *_read_lines(root / ".git" / "info" / "exclude")])
    for current, dirs, files in os.walk(root, followlinks=False):
        here = Path(current)
        rel_dir = here.relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        if ".gitignore" in files:
            ignores.add(rel_dir, _read_lines(here / ".gitignore"))
        kept = []
        for name in sorted(dirs):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if name == ".git" or (here / name).is_symlink():
                continue
            if ignores.ignored(rel, is_dir=True):
                tally.skipped["ignored_dir"] += 1
                continue
            kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = here / name
            if ignores.ignored(rel, is_dir=False):
                tally.skipped["ignored"] += 1
                continue
            if Path(name).suffix.lower() not in wanted:
                tally.skipped["type"] += 1
                continue
            found = _read(full, rel, max_file_bytes, tally)
            if found is not None:
                tally.covered += 1
                yield found


def _read(full: Path, rel: str, max_file_bytes: int, tally: WalkCounts) -> RepoFile | None:
    if full.is_symlink() or not full.is_file():
        tally.skipped["not_regular"] += 1
        return None
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:  # os.walk decodes undecodable names with surrogate escapes
        tally.skipped["bad_path"] += 1
        return None
    try:
        size = full.stat().st_size
        if size > max_file_bytes:
            tally.skipped["too_large"] += 1
            return None
        data = full.read_bytes()
    except OSError:
        tally.skipped["unreadable"] += 1
        return None
    if b"\x00" in data:  # PostgreSQL text cannot hold NUL; a NUL anywhere means binary
        tally.skipped["binary"] += 1
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        tally.skipped["binary"] += 1
        return None
    return RepoFile(path=rel, text=text.removeprefix("\ufeff"), file_hash=hashlib.sha256(data).hexdigest(),
                    size=len(data))
