"""Deterministic synthetic memories for the store benchmarks: clustered unit vectors plus matching text.

Why synthetic: the benchmark must run anywhere with no download and no model. A hierarchical Gaussian
mixture of L2-normalized 768-d vectors (topics, sub-topics, low-rank noise) reproduces what matters for
latency and index behaviour; recall numbers are only indicative for real embeddings. Text is built from per-cluster topic words plus a Zipf-distributed
general vocabulary, so the lexical and the vector branch of hybrid search agree loosely, as they do on
real notes. Filter columns are assigned independently of the clusters (the hard case for filtered
HNSW): ``project`` has 10 values (10% each) and ``agent_id`` 100 values (1% each).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

import numpy as np
import numpy.typing as npt

__all__ = [
    "AGENTS",
    "ExactSearch",
    "MEMORY_TYPES",
    "PROJECTS",
    "SyntheticCorpus",
    "SyntheticQueries",
    "exact_top_k",
    "make_corpus",
    "make_queries",
]

PROJECTS = 10
AGENTS = 100
MEMORY_TYPES = ("agent", "rag", "workflow", "insight")
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_SYLLABLES = ("ka", "lo", "mi", "ren", "tu", "sa", "vo", "ne", "qui", "dra", "pel", "zon", "ar", "bis", "cor",
              "fen", "gal", "hux", "jor", "mek")
F32 = npt.NDArray[np.float32]


def _vocabulary(size: int) -> list[str]:
    words: list[str] = []
    for length in (2, 3, 4):
        for combo in itertools.product(_SYLLABLES, repeat=length):
            words.append("".join(combo))
            if len(words) == size:
                return words
    raise ValueError("vocabulary too large")


@dataclass(frozen=True, slots=True)
class SyntheticCorpus:
    """Rows ``0..n-1``: vector, text and filter columns (ints; see the ``*_name`` helpers)."""

    vectors: F32
    clusters: npt.NDArray[np.int32]
    projects: npt.NDArray[np.int16]
    agents: npt.NDArray[np.int16]
    types: npt.NDArray[np.int8]
    age_minutes: npt.NDArray[np.int32]
    texts: list[str]
    seed: int

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @staticmethod
    def project_name(value: int) -> str:
        return f"proj{value:02d}"

    @staticmethod
    def agent_name(value: int) -> str:
        return f"agent{value:03d}"

    def created_at(self, row: int) -> datetime:
        return _EPOCH + timedelta(minutes=int(self.age_minutes[row]))

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[int]:
        return iter(range(start, len(self) if stop is None else stop))


@dataclass(frozen=True, slots=True)
class SyntheticQueries:
    """Query vectors drawn from the same mixture (not in the corpus), and short query texts."""

    vectors: F32
    clusters: npt.NDArray[np.int32]
    texts: list[str]


class _Mixture:
    """Topics -> sub-topics -> points, with noise in a low-dimensional subspace.

    Real embedding spaces are graded (a note is close to its sub-topic, nearer its topic than the rest)
    and have a low effective dimension; isotropic 768-d noise would make every non-neighbour
    equidistant, which no real model produces and which makes HNSW recall meaningless.
    """

    def __init__(self, dim: int, clusters: int, spread: float, seed: int) -> None:
        rng = np.random.default_rng(seed)

        def unit(rows: int, width: int) -> F32:
            block = rng.standard_normal((rows, width)).astype(np.float32)
            return block / np.linalg.norm(block, axis=1, keepdims=True)

        self.topics_count = max(1, clusters // 20)
        self.global_direction = unit(1, dim)[0]
        self.topic_centers = unit(self.topics_count, dim)
        self.centers = unit(clusters, dim)
        self.topic_of = (np.arange(clusters) % self.topics_count).astype(np.int32)
        self.noise_basis = unit(96, dim)
        self.dim = dim
        self.spread = spread
        vocab = _vocabulary(4000 + clusters * 8)
        self.general = vocab[: 4000]
        self.topics = [vocab[4000 + c * 8: 4000 + (c + 1) * 8] for c in range(clusters)]
        ranks = np.arange(1, len(self.general) + 1, dtype=np.float64)
        self.zipf = (1.0 / ranks) / (1.0 / ranks).sum()

    def sample(self, rng: np.random.Generator, count: int, clusters: npt.NDArray[np.int32]) -> F32:
        latent = rng.standard_normal((count, self.noise_basis.shape[0]), dtype=np.float32)
        noise = latent @ self.noise_basis
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        points = (np.float32(0.4) * self.global_direction + np.float32(0.6) * self.topic_centers[self.topic_of[clusters]]
                  + np.float32(0.6) * self.centers[clusters] + np.float32(0.8 * self.spread) * noise)
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        return cast(F32, points.astype(np.float32))

    def texts(self, rng: np.random.Generator, clusters: npt.NDArray[np.int32], general: int, topical: int) -> list[str]:
        count = len(clusters)
        gen = rng.choice(len(self.general), size=(count, general), p=self.zipf)
        top = rng.integers(0, 8, size=(count, topical))
        out: list[str] = []
        general_words = self.general
        for i in range(count):
            topic = self.topics[int(clusters[i])]
            words = [general_words[j] for j in gen[i]] + [topic[j] for j in top[i]]
            rng_order = (i * 7919) % len(words)
            words = words[rng_order:] + words[:rng_order]
            out.append(" ".join(words))
        return out


def make_corpus(rows: int, *, dim: int = 768, clusters: int = 500, spread: float = 1.0, seed: int = 7,
                start: int = 0) -> SyntheticCorpus:
    """``rows`` memories; ``start`` offsets the random stream so chunks of a huge corpus stay distinct."""
    mixture = _Mixture(dim, clusters, spread, seed)
    rng = np.random.default_rng([seed, 1, start])
    cluster_ids = rng.integers(0, clusters, size=rows, dtype=np.int32)
    vectors = mixture.sample(rng, rows, cluster_ids)
    projects = rng.integers(0, PROJECTS, size=rows, dtype=np.int16)
    agents = rng.integers(0, AGENTS, size=rows, dtype=np.int16)
    types = rng.integers(0, len(MEMORY_TYPES), size=rows, dtype=np.int8)
    age = rng.integers(0, 180 * 24 * 60, size=rows, dtype=np.int32)
    texts = mixture.texts(rng, cluster_ids, general=24, topical=6)
    texts = [f"memory {start + i}: {text}" for i, text in enumerate(texts)]  # unique content, no dedup merges
    return SyntheticCorpus(vectors=vectors, clusters=cluster_ids, projects=projects, agents=agents, types=types,
                           age_minutes=age, texts=texts, seed=seed)


def make_queries(count: int, *, dim: int = 768, clusters: int = 500, spread: float = 1.0, seed: int = 7
                 ) -> SyntheticQueries:
    """Queries from the corpus's mixture; each text names two topic words of its cluster and a common word."""
    mixture = _Mixture(dim, clusters, spread, seed)
    rng = np.random.default_rng([seed, 2])
    cluster_ids = rng.integers(0, clusters, size=count, dtype=np.int32)
    vectors = mixture.sample(rng, count, cluster_ids)
    texts: list[str] = []
    for i in range(count):
        topic = mixture.topics[int(cluster_ids[i])]
        a, b = rng.choice(8, size=2, replace=False)
        texts.append(f"{topic[int(a)]} {topic[int(b)]}")
    return SyntheticQueries(vectors=vectors, clusters=cluster_ids, texts=texts)


class ExactSearch:
    """Exact cosine top-k over a fixed corpus (ground truth); the rounded corpus and norms are computed once."""

    def __init__(self, corpus_vectors: F32, *, as_half: bool = True) -> None:
        self.base = corpus_vectors.astype(np.float16).astype(np.float32) if as_half else corpus_vectors
        self.norms = np.linalg.norm(self.base, axis=1)

    def top_k(self, queries: F32, k: int, mask: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.int64]:
        """Row indices of the exact top-k per query, optionally restricted to ``mask``."""
        rows = np.arange(self.base.shape[0]) if mask is None else np.flatnonzero(mask)
        sub = self.base if mask is None else self.base[rows]
        sub_norms = self.norms if mask is None else self.norms[rows]
        out = np.empty((queries.shape[0], k), dtype=np.int64)
        for start in range(0, queries.shape[0], 64):
            q = queries[start:start + 64]
            sims = (q @ sub.T) / (np.linalg.norm(q, axis=1, keepdims=True) * sub_norms[None, :])
            top = np.argpartition(-sims, kth=min(k, sims.shape[1] - 1), axis=1)[:, :k]
            order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
            out[start:start + 64] = rows[np.take_along_axis(top, order, axis=1)]
        return out


def exact_top_k(corpus_vectors: F32, queries: F32, k: int, mask: npt.NDArray[np.bool_] | None = None,
                *, as_half: bool = True) -> npt.NDArray[np.int64]:
    """Row indices of the exact cosine top-k per query (ground truth), optionally restricted by ``mask``.

    ``as_half`` rounds the corpus to float16 first, as a ``halfvec`` column stores it. For many calls on the
    same corpus use :class:`ExactSearch`.
    """
    return ExactSearch(corpus_vectors, as_half=as_half).top_k(queries, k, mask)
