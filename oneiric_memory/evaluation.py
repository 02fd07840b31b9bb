"""Retrieval-quality metrics and the labelled evaluation set they run on.

The metrics are the ones BEIR reports (through ``pytrec_eval``), so our numbers can be read next to
the published ones in the design references:

* nDCG@k with *linear* gain: ``DCG = sum(grade_i / log2(i + 1))`` over ranks ``i = 1..k``,
  divided by the DCG of the ideal ordering of all judged grades;
* recall@k over the documents with grade > 0.

A repeated id still takes its slot but earns nothing the second time (a ranking that repeats itself
wastes its slots, and can never exceed 1.0); both return 0.0 when a query has no relevant document, so a mean over queries never divides by zero.
The functions are pure and synchronous; :func:`load_eval_set` reads and validates the JSON file
written by ``benchmarks/build_eval_set.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oneiric_memory.errors import InvalidInput
from oneiric_memory.records import MEMORY_TYPES

__all__ = [
    "EvalDocument",
    "EvalQuery",
    "EvalSet",
    "RetrievalScores",
    "load_eval_set",
    "ndcg_at_k",
    "recall_at_k",
    "score_rankings",
]

SUPPORTED_FORMAT_VERSIONS = frozenset({1})


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInput(f"k must be a positive integer, got {k!r}", field="k")


def _first_k(ranked_ids: Sequence[str], k: int) -> list[tuple[int, str]]:
    """(rank, id) of the first ``k`` slots; a repeated id keeps its slot but is dropped (no second gain)."""
    seen: set[str] = set()
    out: list[tuple[int, str]] = []
    for rank, doc_id in enumerate(ranked_ids[:k]):
        if doc_id not in seen:
            seen.add(doc_id)
            out.append((rank, doc_id))
    return out


def ndcg_at_k(ranked_ids: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Normalized discounted cumulative gain of the first ``k`` ids, linear gain, in [0, 1]."""
    _check_k(k)
    ideal = sorted((grade for grade in relevant.values() if grade > 0), reverse=True)[:k]
    if not ideal:
        return 0.0
    idcg = sum(grade / math.log2(rank + 2) for rank, grade in enumerate(ideal))
    dcg = 0.0
    for rank, doc_id in _first_k(ranked_ids, k):
        grade = relevant.get(doc_id, 0)
        if grade > 0:
            dcg += grade / math.log2(rank + 2)
    return min(1.0, dcg / idcg)


def recall_at_k(ranked_ids: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Share of the documents with grade > 0 found in the first ``k`` ids, in [0, 1]."""
    _check_k(k)
    wanted = {doc_id for doc_id, grade in relevant.items() if grade > 0}
    if not wanted:
        return 0.0
    found = sum(1 for _, doc_id in _first_k(ranked_ids, k) if doc_id in wanted)
    return found / len(wanted)


@dataclass(frozen=True, slots=True)
class EvalDocument:
    """One document to load into the store; ``id`` goes into ``metadata["eval_id"]``."""

    id: str
    content: str
    memory_type: str
    repo_id: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EvalQuery:
    """A query with graded judgements: ``relevant`` maps document id to grade (2 best, 0 = not)."""

    id: str
    text: str
    relevant: dict[str, int]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EvalSet:
    """Documents and queries of one evaluation set, plus where they came from."""

    documents: tuple[EvalDocument, ...]
    queries: tuple[EvalQuery, ...]
    source: dict[str, Any] = field(default_factory=dict)

    def document(self, doc_id: str) -> EvalDocument:
        """Look a document up by id (linear scan; the sets are small)."""
        for doc in self.documents:
            if doc.id == doc_id:
                return doc
        raise KeyError(doc_id)


@dataclass(frozen=True, slots=True)
class RetrievalScores:
    """Mean metrics over a set of queries."""

    ndcg: float
    recall: float
    queries: int
    ndcg_k: int
    recall_k: int


def score_rankings(queries: Sequence[EvalQuery], rankings: Mapping[str, Sequence[str]], *,
                   ndcg_k: int = 10, recall_k: int = 20) -> RetrievalScores:
    """Mean nDCG@``ndcg_k`` and recall@``recall_k``; a query missing from ``rankings`` scores 0."""
    _check_k(ndcg_k)
    _check_k(recall_k)
    if not queries:
        return RetrievalScores(0.0, 0.0, 0, ndcg_k, recall_k)
    ndcg = sum(ndcg_at_k(rankings.get(q.id, ()), q.relevant, ndcg_k) for q in queries)
    recall = sum(recall_at_k(rankings.get(q.id, ()), q.relevant, recall_k) for q in queries)
    return RetrievalScores(ndcg / len(queries), recall / len(queries), len(queries), ndcg_k, recall_k)


# --- loading --------------------------------------------------------------------------------------


def _fail(path: Path, message: str, **details: Any) -> InvalidInput:
    return InvalidInput(
        f"{path}: {message}; rebuild it with `uv run python benchmarks/build_eval_set.py`",
        path=str(path), **details,
    )


def _require_str(path: Path, item: Mapping[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise _fail(path, f"{where}: '{key}' must be a non-empty string", field=key)
    return value


def _optional_str(path: Path, item: Mapping[str, Any], key: str, where: str) -> str | None:
    return None if item.get(key) is None else _require_str(path, item, key, where)


def _require_dict(path: Path, item: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = item.get(key, {})
    if not isinstance(value, dict):
        raise _fail(path, f"{where}: '{key}' must be a JSON object", field=key)
    return value


def load_eval_set(path: str | Path) -> EvalSet:
    """Read and validate an evaluation set; raise :class:`InvalidInput` naming the broken entry."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(path, "the evaluation set does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"is not valid UTF-8 JSON ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise _fail(path, "the top level must be a JSON object")
    version = raw.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise _fail(path, f"format_version {version!r} is not supported "
                          f"(expected one of {sorted(SUPPORTED_FORMAT_VERSIONS)})")
    raw_docs, raw_queries = raw.get("documents"), raw.get("queries")
    if not isinstance(raw_docs, list) or not isinstance(raw_queries, list):
        raise _fail(path, "'documents' and 'queries' must be JSON arrays")

    documents: list[EvalDocument] = []
    doc_ids: set[str] = set()
    for index, item in enumerate(raw_docs):
        where = f"documents[{index}]"
        if not isinstance(item, dict):
            raise _fail(path, f"{where} must be a JSON object")
        doc_id = _require_str(path, item, "id", where)
        content = _require_str(path, item, "content", where)
        memory_type = _require_str(path, item, "memory_type", where)
        if doc_id in doc_ids:
            raise _fail(path, f"{where}: duplicate document id {doc_id!r}", field="id")
        if memory_type not in MEMORY_TYPES:
            raise _fail(path, f"{where}: memory_type {memory_type!r} is not one of {', '.join(MEMORY_TYPES)}",
                        field="memory_type")
        doc_ids.add(doc_id)
        documents.append(EvalDocument(
            id=doc_id, content=content, memory_type=memory_type,
            repo_id=_optional_str(path, item, "repo_id", where),
            metadata=_require_dict(path, item, "metadata", where),
        ))

    queries: list[EvalQuery] = []
    query_ids: set[str] = set()
    for index, item in enumerate(raw_queries):
        where = f"queries[{index}]"
        if not isinstance(item, dict):
            raise _fail(path, f"{where} must be a JSON object")
        query_id = _require_str(path, item, "id", where)
        text = _require_str(path, item, "text", where)
        if query_id in query_ids:
            raise _fail(path, f"{where}: duplicate query id {query_id!r}", field="id")
        query_ids.add(query_id)
        relevant = _require_dict(path, item, "relevant", where)
        for doc_id, grade in relevant.items():
            if isinstance(grade, bool) or not isinstance(grade, int) or grade < 0:
                raise _fail(path, f"{where}: grade of {doc_id!r} must be an integer >= 0", field="relevant")
            if doc_id not in doc_ids:
                raise _fail(path, f"{where}: relevant document {doc_id!r} does not exist", field="relevant")
        if not any(grade > 0 for grade in relevant.values()):
            raise _fail(path, f"{where}: has no relevant document (grade > 0)", field="relevant")
        queries.append(EvalQuery(id=query_id, text=text, relevant=dict(relevant),
                                 metadata=_require_dict(path, item, "metadata", where)))
    source = raw.get("source", {})
    return EvalSet(documents=tuple(documents), queries=tuple(queries),
                   source=source if isinstance(source, dict) else {})
