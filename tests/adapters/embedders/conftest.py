"""Fixtures of the HTTP embedder tests (pytest loads this file; nothing imports it).

The Ollama and OpenAI-compatible embedders meet the same loopback server (FakeOllama speaks both APIs) and are
configured the same way; each test module says which provider it tests (``PROVIDER``) and its fast retry
settings (``FAST``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from oneiric_memory.settings import MemorySettings, load_settings
from oneiric_memory.testing.fake_ollama import FakeOllama

SettingsFactory = Callable[..., MemorySettings]


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    """A real HTTP server on 127.0.0.1: 768-d deterministic vectors, two models pulled, scriptable faults."""
    with FakeOllama(dimension=768, models=("nomic-embed-text", "all-minilm")) as server:
        yield server


@pytest.fixture
def make_settings(request: pytest.FixtureRequest, tmp_path: Path) -> SettingsFactory:
    """Settings from explicit values only (no settings files, no environment): the test module's ``PROVIDER``
    at ``base_url``, with its ``FAST`` retries, overridable per call."""
    provider: str = request.module.PROVIDER
    fast: dict[str, Any] = request.module.FAST

    def build(base_url: str, *, dimension: int = 768, **embedder: Any) -> MemorySettings:
        values = {**fast, "provider": provider, "base_url": base_url, **embedder}
        return load_settings({"embedder": values, "postgres": {"vector_dimension": dimension}},
                             root=tmp_path, environ={})

    return build
