"""A deterministic, model-free embedder (feature hashing), for offline use, demos and tests.

**Lexical only.** Two texts are close when they share words, word pairs or spellings; synonyms and
paraphrases are *not* recognised. It exists so that oneiric-memory works with no model at all (CI, air-gapped
machines, the demo when Ollama is down) and keeps text + vector search meaningful for exact and near-exact
wording. Its vectors live in their own space (``model_id = "hashing:v1:<dim>"``), so the store refuses to mix
them with a real model's vectors.

How a text becomes a vector (version ``v1``; changing any of this must bump the version in ``model_id``):

* NFKC-normalise and lower-case the text, split it into word tokens (``\\w+``);
* features: every word (weight 1), every pair of adjacent words (weight 1), and the character 3-, 4- and
  5-grams of each word padded as ``<word>`` (together weight 1 per word, so long words do not dominate);
* each feature is hashed with blake2b (stable across processes, unlike :func:`hash`), the low bits pick one
  of ``dimension`` buckets and the top bit a sign (signed hashing keeps collisions unbiased);
* the bucket sums are L2-normalised. A text with no features (empty, blanks, punctuation only) maps to one
  fixed unit vector, so no caller ever sees a zero vector or NaN.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import unicodedata
from collections.abc import Sequence
from hashlib import blake2b
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from oneiric_memory.adapters.embedders.inputs import check_query, check_texts
from oneiric_memory.adapters.embedders.prefixed import initialized
from oneiric_memory.errors import InvalidInput
from oneiric_memory.observability import INSTRUMENTS, Stopwatch, get_logger, span
from oneiric_memory.settings import MemorySettings, load_settings

if TYPE_CHECKING:  # mcp_common is slow to import; the fake server and benchmarks only need hash_vectors
    from mcp_common.health import ComponentHealth

__all__ = ["HashingEmbedder", "hash_vectors", "hashing_embedder_factory"]

_VERSION = "v1"
_WORD = re.compile(r"\w+")
_NGRAM_SIZES = (3, 4, 5)
_MAX_NGRAM_WORD_CHARS = 40
"""Character n-grams are taken from at most this many leading characters of a word (bounds base64 blobs)."""
_WORD_CACHE_MAX = 200_000
_PAIR_CACHE_MAX = 200_000
_CHUNK_ROWS = 2048
"""Texts per bincount; bounds the dense scratch matrix to 2048 x dimension floats."""
_THREAD_THRESHOLD = 64
"""Batches larger than this are hashed in a worker thread so the event loop stays responsive."""
_SIGN_BIT = np.uint64(1 << 63)

_FloatArray = npt.NDArray[np.float64]
_HashArray = npt.NDArray[np.uint64]

# Caches of raw 64-bit hashes: independent of the dimension, so every embedder instance shares them.
# dict get/set are atomic under the GIL; clearing on overflow keeps memory bounded without locks.
_word_cache: dict[str, tuple[_HashArray, _FloatArray]] = {}
_pair_cache: dict[str, int] = {}


def _hash64(feature: str) -> int:
    return int.from_bytes(blake2b(feature.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _signed(hashes: list[int], weights: list[float]) -> tuple[_HashArray, _FloatArray]:
    raw = np.array(hashes, dtype=np.uint64)
    signs = np.where((raw & _SIGN_BIT) != 0, -1.0, 1.0)
    return raw, np.asarray(weights, dtype=np.float64) * signs


def _word_features(word: str) -> tuple[_HashArray, _FloatArray]:
    cached = _word_cache.get(word)
    if cached is not None:
        return cached
    hashes = [_hash64("w\x1f" + word)]
    padded = f"<{word[:_MAX_NGRAM_WORD_CHARS]}>"
    grams = [padded[i:i + n] for n in _NGRAM_SIZES for i in range(len(padded) - n + 1)]
    hashes.extend(_hash64("c\x1f" + gram) for gram in grams)
    weight = 1.0 / float(np.sqrt(len(grams))) if grams else 0.0
    result = _signed(hashes, [1.0] + [weight] * len(grams))
    if len(_word_cache) >= _WORD_CACHE_MAX:
        _word_cache.clear()
    _word_cache[word] = result
    return result


def _pair_hash(pair: str) -> int:
    cached = _pair_cache.get(pair)
    if cached is None:
        cached = _hash64("b\x1f" + pair)
        if len(_pair_cache) >= _PAIR_CACHE_MAX:
            _pair_cache.clear()
        _pair_cache[pair] = cached
    return cached


_EMPTY_HASH, _EMPTY_WEIGHT = _signed([_hash64("e\x1fempty")], [1.0])


def _text_words(text: str) -> list[str]:
    words: list[str] = _WORD.findall(unicodedata.normalize("NFKC", text).lower())
    if words:
        return words
    stripped = "".join(text.split()).lower()
    # punctuation only: its character n-grams still tell "?!" from "..."; blank text gets the empty vector
    return [stripped] if stripped else []


def _hash_chunk(texts: Sequence[str], dimension: int) -> _FloatArray:
    word_hashes: list[_HashArray] = []
    word_weights: list[_FloatArray] = []
    counts: list[int] = []
    pair_hashes: list[int] = []
    pair_rows: list[int] = []
    for row, text in enumerate(texts):
        words = _text_words(text)
        if not words:
            word_hashes.append(_EMPTY_HASH)
            word_weights.append(_EMPTY_WEIGHT)
            counts.append(1)
            continue
        count = 0
        for word in words:
            hashes, weights = _word_features(word)
            word_hashes.append(hashes)
            word_weights.append(weights)
            count += len(hashes)
        counts.append(count)
        for first, second in itertools.pairwise(words):
            pair_hashes.append(_pair_hash(f"{first} {second}"))
            pair_rows.append(row)
    pairs, pair_weights = _signed(pair_hashes, [1.0] * len(pair_hashes))
    rows = np.concatenate([np.repeat(np.arange(len(texts), dtype=np.int64), counts),
                           np.asarray(pair_rows, dtype=np.int64)])
    buckets = (np.concatenate([*word_hashes, pairs]) % np.uint64(dimension)).astype(np.int64)
    flat = np.bincount(rows * dimension + buckets, weights=np.concatenate([*word_weights, pair_weights]),
                       minlength=len(texts) * dimension)
    matrix = flat.reshape(len(texts), dimension)
    norms = np.linalg.norm(matrix, axis=1)
    zero = norms == 0.0
    if zero.any():  # features cancelled out exactly (a signed collision): use the fixed empty-text vector
        matrix[zero] = 0.0
        matrix[zero, int(_EMPTY_HASH[0] % np.uint64(dimension))] = _EMPTY_WEIGHT[0]
        norms[zero] = 1.0
    matrix /= norms[:, None]
    return matrix


def hash_vectors(texts: Sequence[str], dimension: int) -> _FloatArray:
    """Unit vectors (``len(texts) x dimension``, float64) for ``texts``; synchronous and CPU-bound.

    Public so tools (the fake Ollama server, benchmarks) can produce the same vectors without settings.
    """
    if dimension < 1:
        raise InvalidInput(f"dimension must be at least 1, got {dimension}: fix postgres.vector_dimension")
    if isinstance(texts, str):
        raise InvalidInput("hash_vectors takes a sequence of texts, not one string: wrap it in a list")
    if not texts:
        return np.zeros((0, dimension), dtype=np.float64)
    chunks = [_hash_chunk(texts[start:start + _CHUNK_ROWS], dimension)
              for start in range(0, len(texts), _CHUNK_ROWS)]
    return chunks[0] if len(chunks) == 1 else np.vstack(chunks)


class HashingEmbedder:
    """Feature-hashing embedder (lexical only, no model, no network); see the module docstring."""

    provider = "hashing"

    def __init__(self, settings: MemorySettings) -> None:
        self._settings = settings
        self._dimension = settings.postgres.vector_dimension
        self._log = get_logger("oneiric_memory.embedder", provider=self.provider, model=self.model_id)
        self._initialized = False

    @property
    def memory_settings(self) -> MemorySettings:
        return self._settings

    @property
    def model_id(self) -> str:
        return f"hashing:{_VERSION}:{self._dimension}"

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed_sync(self, texts: Sequence[str]) -> _FloatArray:
        """Synchronous batch embedding as a numpy matrix (for CPU-bound callers already off the loop)."""
        check_texts(texts)
        return hash_vectors(texts, self._dimension)

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        check_texts(texts)
        if not texts:
            return []
        return await self._embed(list(texts), kind="documents")

    async def embed_query(self, text: str) -> list[float]:
        check_query(text)
        return (await self._embed([text], kind="query"))[0]

    async def _embed(self, texts: list[str], *, kind: str) -> list[list[float]]:
        watch = Stopwatch()
        outcome = "error"
        try:
            with span("embed", provider=self.provider, model=self.model_id, texts=len(texts), kind=kind):
                if len(texts) > _THREAD_THRESHOLD:
                    matrix = await asyncio.to_thread(hash_vectors, texts, self._dimension)
                else:
                    matrix = hash_vectors(texts, self._dimension)
                vectors: list[list[float]] = matrix.tolist()
                outcome = "ok"
                return vectors
        finally:
            INSTRUMENTS.embed_latency.record(watch.ms, {"provider": self.provider, "kind": kind,
                                                        "outcome": outcome})

    async def init(self) -> None:
        """Nothing to connect to; logs once so operators see which (lexical) embedder is active."""
        if not self._initialized:
            self._initialized = True
            self._log.info("embedder-ready", dimension=self._dimension, lexical_only=True)

    async def health(self) -> bool:
        """Always True: there is no external dependency that could fail."""
        return True

    async def component_health(self) -> ComponentHealth:
        from mcp_common.health import ComponentHealth, HealthStatus

        watch = Stopwatch()
        try:
            hash_vectors(["health probe"], self._dimension)
        except Exception as exc:  # a bug, not an outage: still report instead of raising from health
            return ComponentHealth(name="embedding", status=HealthStatus.UNHEALTHY,
                                   message=f"hashing embedder failed: {type(exc).__name__}",
                                   latency_ms=watch.ms, metadata=self._metadata())
        return ComponentHealth(name="embedding", status=HealthStatus.HEALTHY,
                               message="hashing embedder (lexical only, no model)",
                               latency_ms=watch.ms, metadata=self._metadata())

    def _metadata(self) -> dict[str, object]:
        return {"provider": self.provider, "model": self.model_id, "dimension": self._dimension,
                "lexical_only": True, "initialized": self._initialized}

    async def cleanup(self) -> None:
        """Holds no resources; the shared feature caches stay warm for other instances."""
        self._initialized = False


async def hashing_embedder_factory(settings: MemorySettings | None = None) -> HashingEmbedder:
    """The one way to build it: settings (loaded when omitted, as Oneiric calls it with no arguments), build,
    ``init()``."""
    return await initialized(HashingEmbedder(settings or load_settings()))
