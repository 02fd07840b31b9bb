"""HashingEmbedder: deterministic, model-free, lexical-only vectors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp_common.health import HealthStatus

from oneiric_memory.adapters.embedders.hashing import HashingEmbedder, hash_vectors, hashing_embedder_factory
from oneiric_memory.errors import InvalidInput
from oneiric_memory.protocols import Embedder
from oneiric_memory.settings import MemorySettings, load_settings


def make(tmp_path: Path, dimension: int = 768) -> HashingEmbedder:
    return HashingEmbedder(load_settings({"postgres": {"vector_dimension": dimension},
                                          "embedder": {"provider": "hashing"}}, root=tmp_path, environ={}))


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_satisfies_the_embedder_protocol(tmp_path: Path) -> None:
    embedder = make(tmp_path)
    assert isinstance(embedder, Embedder)
    assert embedder.model_id == "hashing:v1:768"
    assert embedder.dimension == 768


@pytest.mark.asyncio
@pytest.mark.parametrize("dimension", [1, 8, 384, 768, 1536])
async def test_dimension_follows_the_store_and_vectors_are_unit_length(tmp_path: Path, dimension: int) -> None:
    embedder = make(tmp_path, dimension)
    assert embedder.model_id == f"hashing:v1:{dimension}"
    vectors = await embedder.embed_documents(["hello world", "a longer sentence about databases", "x"])
    assert [len(v) for v in vectors] == [dimension] * 3
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-12)


_SCRIPT = """
import json, sys
from oneiric_memory.adapters.embedders.hashing import hash_vectors
print(json.dumps(hash_vectors(["Deterministic across processes", "ünïcode wörds ✓", ""], 64).tolist()))
"""


def test_deterministic_across_processes_whatever_the_hash_seed() -> None:
    """A child with another ``PYTHONHASHSEED`` (this process's seed is random) gets the same vectors."""
    expected = hash_vectors(["Deterministic across processes", "ünïcode wörds ✓", ""], 64).tolist()
    seed = "1" if os.environ.get("PYTHONHASHSEED") == "4242" else "4242"
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                            env={**os.environ, "PYTHONHASHSEED": seed}, check=True, timeout=120)
    assert json.loads(result.stdout) == expected


def test_stable_reference_values() -> None:
    """Pin version v1: if this changes, the vectors changed and ``model_id`` must get a new version."""
    vector = hash_vectors(["the quick brown fox"], 16)[0]
    assert np.count_nonzero(vector) > 4
    again = hash_vectors(["The  QUICK brown fox"], 16)[0]  # case and spacing do not matter
    np.testing.assert_array_equal(vector, again)


@pytest.mark.asyncio
async def test_similar_texts_score_higher_than_unrelated_ones(tmp_path: Path) -> None:
    embedder = make(tmp_path)
    base, near, typo, far = await embedder.embed_documents([
        "the database connection pool is exhausted",
        "connection pool exhausted in the database",
        "the databse conection pool is exhasted",
        "quarterly revenue grew in european markets",
    ])
    assert cosine(base, near) > cosine(base, far) + 0.3
    assert cosine(base, typo) > cosine(base, far) + 0.2  # character n-grams tolerate typos
    query = await embedder.embed_query("database pool exhausted")
    assert cosine(query, base) > cosine(query, far)


@pytest.mark.asyncio
@pytest.mark.parametrize("text", ["", " ", "\n\t  ", "?!", "...", "\u200b"])
async def test_empty_blank_and_punctuation_only_texts_give_unit_vectors(tmp_path: Path, text: str) -> None:
    embedder = make(tmp_path, 32)
    vector = await embedder.embed_query(text)
    assert len(vector) == 32
    assert np.isfinite(vector).all()
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0)


@pytest.mark.asyncio
async def test_blank_texts_share_one_vector_and_punctuation_differs(tmp_path: Path) -> None:
    embedder = make(tmp_path, 64)
    empty, blank, punctuation = await embedder.embed_documents(["", "   \n", "?!"])
    assert empty == blank
    assert empty != punctuation


@pytest.mark.asyncio
async def test_query_and_document_vectors_are_the_same_space(tmp_path: Path) -> None:
    embedder = make(tmp_path)
    assert await embedder.embed_query("same text") == (await embedder.embed_documents(["same text"]))[0]


@pytest.mark.asyncio
async def test_large_batches_equal_single_embeddings(tmp_path: Path) -> None:
    """Batches above 64 texts go to a worker thread and over several chunks; the result must not change."""
    embedder = make(tmp_path, 128)
    texts = [f"memory {i} mentions topic {i % 13} and word{i}" for i in range(2500)]
    batch = await embedder.embed_documents(texts)
    assert len(batch) == 2500
    for index in (0, 64, 2047, 2048, 2499):
        assert batch[index] == await embedder.embed_query(texts[index])


@pytest.mark.asyncio
async def test_empty_list_and_bad_input(tmp_path: Path) -> None:
    embedder = make(tmp_path)
    assert await embedder.embed_documents([]) == []
    with pytest.raises(InvalidInput, match="not one string"):
        await embedder.embed_documents("a string")
    with pytest.raises(InvalidInput, match="text #0"):
        await embedder.embed_documents([None])  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        await embedder.embed_query(3)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="dimension"):
        hash_vectors(["x"], 0)


def test_very_long_tokens_are_bounded(tmp_path: Path) -> None:
    blob = "A" * 200_000  # e.g. a base64 attachment pasted into a conversation
    matrix = make(tmp_path, 64).embed_sync([blob, blob + "B"])
    assert matrix.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=200), min_size=1, max_size=8), st.integers(min_value=1, max_value=300))
def test_any_text_gives_finite_unit_vectors(texts: list[str], dimension: int) -> None:
    matrix = hash_vectors(texts, dimension)
    assert matrix.shape == (len(texts), dimension)
    assert np.isfinite(matrix).all()
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-9)
    np.testing.assert_array_equal(matrix, hash_vectors(texts, dimension))


@pytest.mark.asyncio
async def test_health_and_component_health(tmp_path: Path) -> None:
    embedder = make(tmp_path, 384)
    await embedder.init()
    assert await embedder.health() is True
    report = await embedder.component_health()
    assert report.name == "embedding"
    assert report.status == HealthStatus.HEALTHY
    assert report.latency_ms is not None
    assert report.metadata["model"] == "hashing:v1:384"
    assert report.metadata["dimension"] == 384
    assert report.metadata["lexical_only"] is True
    await embedder.cleanup()
    assert await embedder.health() is True  # nothing external can fail


@pytest.mark.asyncio
async def test_factory_loads_settings_and_initialises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__VECTOR_DIMENSION", "256")
    embedder = await hashing_embedder_factory()
    assert isinstance(embedder.memory_settings, MemorySettings)
    assert embedder.model_id == "hashing:v1:256"
    assert len(await embedder.embed_query("hello")) == 256
    assert (await embedder.component_health()).metadata["initialized"] is True
