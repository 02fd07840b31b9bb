"""A small repository on disk for the ingestion tests (real files, a real .gitignore)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore

__all__ = ["PY_SOURCE", "chunk_rows", "make_repo", "rag_file_rows"]

PY_SOURCE = '''"""Tiny module."""

import os

LIMIT = 3


def top(x):
    """Add one."""
    return x + 1


class Greeter:
    """Says hello."""

    greeting = "hello"

    def greet(self, name):
        return f"{self.greeting} {name}"

    @staticmethod
    def wave():
        return "wave"
'''

README = """Intro line.

# Project

Some words about the project.

## Install

pip install it

```
# not a heading
```

## Usage

Run it.
"""


def make_repo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / ".gitignore").write_text("build/\n*.log\n!keep.log\n", encoding="utf-8")
    (root / "pkg").mkdir()
    (root / "pkg" / "mod.py").write_text(PY_SOURCE, encoding="utf-8")
    (root / "pkg" / "other.py").write_text("def unrelated():\n    return 42\n", encoding="utf-8")
    (root / "README.md").write_text(README, encoding="utf-8")
    (root / "notes.txt").write_text("LICENSE HEADER shared\n", encoding="utf-8")
    (root / "copy.txt").write_text("LICENSE HEADER shared\n", encoding="utf-8")
    (root / "build").mkdir()
    (root / "build" / "gen.py").write_text("x = 1\n", encoding="utf-8")
    (root / "debug.log").write_text("noise\n", encoding="utf-8")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (root / "blob.txt").write_bytes(b"text then \x00 binary")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "huge.txt").write_text("y" * 5000, encoding="utf-8")
    (root / "sub").mkdir()
    (root / "sub" / ".gitignore").write_text("secret.md\n", encoding="utf-8")
    (root / "sub" / "secret.md").write_text("# hidden\n", encoding="utf-8")
    (root / "sub" / "guide.rst").write_text("Guide\n=====\n\nIntro.\n\nSetup\n-----\n\nSteps.\n", encoding="utf-8")
    return root


async def chunk_rows(store: PgvectorMemoryStore, repo_id: str) -> list[dict[str, Any]]:
    async with store.gate.acquire() as connection:
        rows = await connection.fetch(
            f"SELECT id, content, content_hash, metadata, embedding::text AS embedding, updated_at "
            f"FROM {store.table('memories')} WHERE repo_id = $1 ORDER BY metadata->>'path', "
            "(metadata->>'chunk')::int", repo_id)
    return [dict(row) for row in rows]


async def rag_file_rows(store: PgvectorMemoryStore, repo_id: str) -> dict[str, dict[str, Any]]:
    async with store.gate.acquire() as connection:
        rows = await connection.fetch(
            f"SELECT path, file_hash, chunk_ids FROM {store.table('rag_files')} WHERE repo_id = $1", repo_id)
    return {row["path"]: dict(row) for row in rows}
