"""What goes into a model: input checks every embedder applies first (a clear ``InvalidInput`` otherwise), and
the task prefixes a model expects, found by its name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from oneiric_memory.errors import InvalidInput
from oneiric_memory.settings import TaskPrefixes

__all__ = ["check_query", "check_texts", "task_prefixes"]


def check_texts(texts: Sequence[str]) -> None:
    """Refuse a bare string (it would be embedded letter by letter) and any non-string item."""
    if isinstance(texts, str):
        raise InvalidInput("embed_documents takes a list of texts, not one string: use embed_query or wrap it "
                           "in a list")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInput(f"text #{position} is a {type(text).__name__}, not a str: pass strings only")


def check_query(text: str) -> None:
    if not isinstance(text, str):
        raise InvalidInput(f"the query is a {type(text).__name__}, not a str: pass a string")


def task_prefixes(table: Mapping[str, TaskPrefixes], model: str) -> TaskPrefixes:
    """The prefixes configured for ``model``: its exact name (``:latest`` ignored), then the name before a tag
    (``nomic-embed-text:v1.5``), then the longest configured name it starts with, so the names servers and files
    use (``nomic-embed-text-v1.5``, ``nomic-embed-text-v1.5.Q8_0.gguf``) get nomic's prefixes too."""
    canonical = {key.removesuffix(":latest").lower(): value for key, value in table.items()}
    name = model.removesuffix(":latest").lower().rsplit("/", 1)[-1]
    found = canonical.get(name) or canonical.get(name.split(":", 1)[0])
    if found is None:
        starts = [key for key in canonical if name.startswith(key)]
        found = canonical[max(starts, key=len)] if starts else None
    return found if found is not None else TaskPrefixes()
