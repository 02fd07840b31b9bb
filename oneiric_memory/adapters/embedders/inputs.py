"""Input checks every embedder applies before any work: a list of strings in, a clear ``InvalidInput`` otherwise."""

from __future__ import annotations

from collections.abc import Sequence

from oneiric_memory.errors import InvalidInput

__all__ = ["check_query", "check_texts"]


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
