"""The demo corpus: real text shipped inside the package (sample notes plus this package's own docstrings)."""

from __future__ import annotations

import ast
import importlib.resources
import pkgutil
import re
from pathlib import Path

from oneiric_memory.insights import format_insight_block
from oneiric_memory.records import MemoryRecord

__all__ = ["DEMO_CONVERSATIONS", "DEMO_QUERIES", "demo_corpus"]

DEMO_QUERIES: tuple[str, ...] = (
    "why does a filtered vector search return too few rows",
    "restore a backup and check the row counts",
    "Ollama model not pulled",
    "connection pool size per core",
)

DEMO_CONVERSATIONS: tuple[tuple[str, str], ...] = (
    ("reviewer", "Reviewed the store's search path.\n\n" + format_insight_block(
        "Filtered HNSW searches under-return: choose the exact B-tree path for selective filters and iterative "
        "index scans for the rest.") + "\nNext: benchmark the 1% selectivity case."),
    ("operator", "Nightly maintenance ran.\n" + format_insight_block(
        "Rebuild the HNSW index concurrently before VACUUM after a mass delete; a pool over 80% busy means "
        "the app needs fewer concurrent queries, not more connections.")),
)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.strip()) > 80 and not p.startswith("#")]


def demo_corpus(project: str = "demo") -> list[MemoryRecord]:
    """RAG chunks from the sample markdown files and the package's module docstrings."""
    records: list[MemoryRecord] = []
    corpus = importlib.resources.files("oneiric_memory") / "sample_corpus"
    for entry in sorted(corpus.iterdir(), key=lambda item: item.name):
        if not entry.name.endswith(".md"):
            continue
        memory_type = "workflow" if "workflow" in entry.name else ("agent" if "agent" in entry.name else "rag")
        for position, chunk in enumerate(_paragraphs(entry.read_text(encoding="utf-8"))):
            records.append(MemoryRecord(content=chunk, memory_type=memory_type, project=project,
                                        repo_id="oneiric-memory", source_system="demo",
                                        metadata={"file": entry.name, "chunk": position}))
    package_dir = Path(__file__).parent
    for module in sorted(pkgutil.walk_packages([str(package_dir)], prefix="oneiric_memory."), key=lambda m: m.name):
        relative = module.name.removeprefix("oneiric_memory.").replace(".", "/")
        path = package_dir / f"{relative}.py"
        if not path.is_file():
            path = package_dir / relative / "__init__.py"
        if not path.is_file():
            continue
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if docstring and len(docstring) > 80:
            records.append(MemoryRecord(content=docstring, memory_type="rag", project=project,
                                        repo_id="oneiric-memory", source_system="demo",
                                        metadata={"module": module.name}))
    return records
