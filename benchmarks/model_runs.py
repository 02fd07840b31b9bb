"""The embedders the quality benchmarks run, built the project's one way, plus a disk cache of their vectors.

``eval_locomo.py`` and ``eval_retrieval.py`` measure retrieval quality through every embedder available here:

* ``hashing``: the offline lexical embedder (``hashing_embedder_factory``);
* ``local``: the real bge-small-en model in this process through the project's ``provider: local`` embedder
  (``local_embedder_factory`` with ``embedder.model_path`` = the folder ``shared/tools/fetch-bge-small`` prints);
* ``openai``: the same model served behind the shipped loopback fake's ``/v1/embeddings``
  (:class:`~oneiric_memory.testing.fake_ollama.FakeOllama` with ``embed_fn`` = the local model), reached through
  the project's ``provider: openai`` embedder (``openai_embedder_factory``): the HTTP client layer for real.

:class:`CachedEmbedder` keeps every vector an embedder produced in ``<cache>/<model_id>.npz`` (keyed by the sha1 of
the exact text it was given, prefix included), so a re-run pays only for the searches. Each cache is per model_id:
the OpenAI path's vectors are never taken from the local run's cache. It counts what it really embedded
(:attr:`CachedEmbedder.embedded`, wall and process-CPU seconds), so a report can say which vectors came from the
model in that run and which from the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from oneiric_memory.adapters.embedders.hashing import hashing_embedder_factory
from oneiric_memory.adapters.embedders.local import LocalEmbedder, local_embedder_factory
from oneiric_memory.adapters.embedders.openai import openai_embedder_factory
from oneiric_memory.protocols import Embedder
from oneiric_memory.settings import load_settings
from oneiric_memory.testing.fake_ollama import FakeOllama

__all__ = ["BGE_DIMENSION", "CachedEmbedder", "agreement", "hashing_embedder", "local_bge", "served_bge"]

BGE_DIMENSION = 384
SERVED_MODEL = "bge-small-en"
_CHUNK = 256  # texts per embed call: the cache is saved after each, so a stopped run keeps its work


class CachedEmbedder:
    """An :class:`Embedder` whose vectors are kept on disk by text; counts what the model itself computed."""

    def __init__(self, inner: Embedder, folder: Path | None, *, query_prefix: str = "",
                 borrow_from: CachedEmbedder | None = None) -> None:
        self.inner = inner
        # Documents another embedder already computed are taken from it instead of embedded (counted in
        # ``borrowed``): how the OpenAI path reuses the local model's document vectors when only a sample of the
        # documents is sent over HTTP (the same model; agreement() measures how same).
        self.borrow_from = borrow_from
        self.borrowed = 0
        self.query_prefix = query_prefix  # e.g. BGE's retrieval instruction; part of the cached text
        self._path = (folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', inner.model_id)}.npz") if folder else None
        self._vectors: dict[str, list[float]] = {}
        if self._path is not None and self._path.is_file():
            with np.load(self._path) as stored:
                self._vectors = {str(k): v.tolist() for k, v in zip(stored["keys"], stored["vectors"], strict=True)}
        self.from_cache = 0
        self.embedded = 0
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self._dirty = False

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    @staticmethod
    def key(kind: str, text: str) -> str:
        return kind + ":" + hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        keys = [self.key("d", t) for t in texts]
        missing = list({k: t for k, t in zip(keys, texts, strict=True) if k not in self._vectors}.items())
        self.from_cache += len(texts) - len(missing)
        if self.borrow_from is not None:
            lender = self.borrow_from.cached
            borrowed = {k: lender[k] for k, _ in missing if k in lender}
            self.borrowed += len(borrowed)
            missing = [(k, t) for k, t in missing if k not in borrowed]
            keys_vectors = {**self._vectors, **borrowed}
        else:
            keys_vectors = self._vectors
        for start in range(0, len(missing), _CHUNK):
            chunk = missing[start:start + _CHUNK]
            wall, cpu = time.perf_counter(), time.process_time()
            vectors = await self.inner.embed_documents([t for _, t in chunk])
            self.wall_s += time.perf_counter() - wall
            self.cpu_s += time.process_time() - cpu
            self.embedded += len(chunk)
            for (key, _), vector in zip(chunk, vectors, strict=True):
                self._vectors[key] = vector
            self._dirty = True
            self.save()
        keys_vectors.update(self._vectors)
        return [keys_vectors[k] for k in keys]

    @property
    def cached(self) -> dict[str, list[float]]:
        """Every vector this embedder holds, by :meth:`key` (borrowed ones are not kept)."""
        return self._vectors

    async def embed_query(self, text: str) -> list[float]:
        key = self.key("q", self.query_prefix + text)
        if key not in self._vectors:
            wall, cpu = time.perf_counter(), time.process_time()
            self._vectors[key] = await self.inner.embed_query(self.query_prefix + text)
            self.wall_s += time.perf_counter() - wall
            self.cpu_s += time.process_time() - cpu
            self.embedded += 1
            self._dirty = True
        else:
            self.from_cache += 1
        return self._vectors[key]

    def save(self) -> None:
        if self._path is None or not self._dirty:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._vectors)
        tmp = self._path.with_name(self._path.stem + ".tmp.npz")
        np.savez(tmp, keys=np.array(keys), vectors=np.asarray([self._vectors[k] for k in keys], dtype=np.float32))
        tmp.replace(self._path)
        self._dirty = False

    def summary(self) -> str:
        rate = f", {self.embedded / self.wall_s:.1f} texts/s" if self.wall_s > 0 and self.embedded else ""
        borrowed = (f", {self.borrowed} document vectors taken from `{self.borrow_from.model_id}`"
                    if self.borrow_from is not None else "")
        return (f"{self.embedded} texts embedded by the model in this run ({self.wall_s:.1f} s wall, "
                f"{self.cpu_s:.1f} s CPU of this process{rate}), {self.from_cache} taken from the cache{borrowed}")

    # the rest of the Embedder protocol goes to the real embedder
    async def init(self) -> None:
        await self.inner.init()

    async def health(self) -> bool:
        return await self.inner.health()

    async def component_health(self) -> Any:
        return await self.inner.component_health()

    async def cleanup(self) -> None:
        self.save()
        await self.inner.cleanup()


def agreement(a: CachedEmbedder, b: CachedEmbedder) -> str:
    """How close two embedders' vectors are for the texts both embedded: count, mean and minimum cosine.

    The bge-small test model is dynamically int8-quantised: activation scales are computed per batch, so a text's
    vector moves slightly with its batch-mates, and the HTTP path batches differently from the in-process call.
    """
    shared = sorted(a.cached.keys() & b.cached.keys())
    if not shared:
        return "no text was embedded by both"
    x = np.asarray([a.cached[k] for k in shared], dtype=np.float64)
    y = np.asarray([b.cached[k] for k in shared], dtype=np.float64)
    cos = (x * y).sum(axis=1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-12)
    identical = int(np.sum(np.all(np.abs(x - y) < 1e-6, axis=1)))
    return (f"{len(shared)} texts embedded by both: cosine mean {cos.mean():.5f}, min {cos.min():.5f}, "
            f"{identical} identical to 1e-6")


async def hashing_embedder(dimension: int | None = None) -> Embedder:
    overrides: dict[str, Any] = {"embedder": {"provider": "hashing"}}
    if dimension is not None:
        overrides["postgres"] = {"vector_dimension": dimension}
    return await hashing_embedder_factory(load_settings(overrides))


async def local_bge(folder: Path, *, batch_size: int = 64) -> LocalEmbedder:
    """The project's ``provider: local`` embedder on the bge-small-en folder (CLS pooling read from the folder)."""
    return await local_embedder_factory(load_settings({
        "postgres": {"vector_dimension": BGE_DIMENSION},
        "embedder": {"provider": "local", "model_path": str(folder), "batch_size": batch_size}}))


@contextlib.asynccontextmanager
async def served_bge(local: LocalEmbedder, *, batch_size: int = 64) -> AsyncIterator[tuple[Embedder, FakeOllama]]:
    """The project's ``provider: openai`` embedder against the loopback fake serving ``local``'s model on /v1.

    One request at a time (``max_concurrency: 1``): a CPU-bound single-model server serialises batches anyway, and
    queued requests would otherwise hit the request timeout and be sent again (docs/benchmarks.md, model-embedders).
    """
    with FakeOllama(dimension=local.dimension, models=(SERVED_MODEL,), embed_fn=local.embed_sync,
                    record=False) as server:
        client = await openai_embedder_factory(load_settings({
            "postgres": {"vector_dimension": BGE_DIMENSION},
            "embedder": {"provider": "openai", "base_url": server.openai_url, "model": SERVED_MODEL,
                         "batch_size": batch_size, "max_concurrency": 1, "request_timeout_s": 600,
                         "total_timeout_s": 3600}}))
        try:
            yield client, server
        finally:
            await client.cleanup()
