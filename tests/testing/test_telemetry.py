"""``oneiric_memory.testing.telemetry.capture_telemetry``: what a downstream app's test sees.

A real component (the hashing embedder, no model or network) produces real spans and metrics through the
process-wide in-memory SDK; each capture reports only its own block.
"""

from __future__ import annotations

import pytest

from oneiric_memory.adapters.embedders.hashing import hashing_embedder_factory
from oneiric_memory.settings import load_settings
from oneiric_memory.testing.telemetry import capture_telemetry

pytestmark = pytest.mark.asyncio


async def test_a_capture_holds_the_spans_and_metric_changes_of_its_own_block(tmp_path) -> None:
    embedder = await hashing_embedder_factory(load_settings({"embedder": {"provider": "hashing"}}, root=tmp_path,
                                                            environ={}))
    try:
        with capture_telemetry() as first:
            await embedder.embed_documents(["alpha", "beta"])
        with capture_telemetry() as second:
            await embedder.embed_documents(["gamma"])
            await embedder.embed_query("delta")
    finally:
        await embedder.cleanup()

    assert first.span_names() == ["oneiric_memory.embed"]
    assert first.finished("oneiric_memory.embed")[0].attributes["texts"] == 2
    assert first.count("oneiric_memory.embed.duration", provider="hashing") == 1
    assert second.span_names() == ["oneiric_memory.embed", "oneiric_memory.embed"]  # the first block's span is not here
    assert second.count("oneiric_memory.embed.duration", provider="hashing") == 2
    assert second.count("oneiric_memory.embed.duration", provider="ollama") == 0
    assert second.total("oneiric_memory.memories.stored") == 0  # nothing was stored
