"""Retrieval metrics (hand-computed values, properties) and the committed evaluation set."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oneiric_memory.errors import InvalidInput
from oneiric_memory.evaluation import (
    EvalSet,
    load_eval_set,
    ndcg_at_k,
    recall_at_k,
    score_rankings,
)

EVAL_SET = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "eval_set.json"


def _log2(rank: int) -> float:
    """Discount of 1-based ``rank``."""
    return math.log2(rank + 1)


# --- nDCG -------------------------------------------------------------------------------------------


def test_ndcg_perfect_ranking_is_one() -> None:
    relevant = {"a": 2, "b": 1, "c": 1}
    assert ndcg_at_k(["a", "b", "c", "x"], relevant, 10) == pytest.approx(1.0)


def test_ndcg_reversed_ranking_hand_computed() -> None:
    relevant = {"a": 2, "b": 1}
    ideal = 2 / _log2(1) + 1 / _log2(2)
    reversed_dcg = 1 / _log2(1) + 2 / _log2(2)
    assert ndcg_at_k(["b", "a"], relevant, 10) == pytest.approx(reversed_dcg / ideal)
    assert ndcg_at_k(["b", "a"], relevant, 10) == pytest.approx(0.8597, abs=1e-4)


def test_ndcg_graded_with_gap_and_cutoff() -> None:
    relevant = {"a": 2, "b": 1, "c": 1}
    # a at rank 3, b at rank 1; c beyond the cut-off k=3
    dcg = 1 / _log2(1) + 2 / _log2(3)
    idcg = 2 / _log2(1) + 1 / _log2(2) + 1 / _log2(3)
    assert ndcg_at_k(["b", "x", "a", "c"], relevant, 3) == pytest.approx(dcg / idcg)


def test_ndcg_ideal_is_truncated_at_k() -> None:
    # Only one slot: the best possible is the grade-2 document alone.
    relevant = {"a": 2, "b": 2, "c": 1}
    assert ndcg_at_k(["b"], relevant, 1) == pytest.approx(1.0)
    assert ndcg_at_k(["c"], relevant, 1) == pytest.approx(0.5)


def test_ndcg_empty_inputs_score_zero() -> None:
    assert ndcg_at_k([], {"a": 2}, 10) == 0.0
    assert ndcg_at_k(["a", "b"], {}, 10) == 0.0
    assert ndcg_at_k(["a"], {"a": 0}, 10) == 0.0
    assert ndcg_at_k(["x", "y"], {"a": 1}, 10) == 0.0


def test_ndcg_duplicates_earn_gain_once() -> None:
    relevant = {"a": 2, "b": 2}
    assert ndcg_at_k(["a", "a", "a"], relevant, 3) == pytest.approx(2 / (2 + 2 / _log2(2)))


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_metrics_reject_bad_k(bad: object) -> None:
    with pytest.raises(InvalidInput, match="k must be a positive integer"):
        ndcg_at_k(["a"], {"a": 1}, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        recall_at_k(["a"], {"a": 1}, bad)  # type: ignore[arg-type]


# --- recall -----------------------------------------------------------------------------------------


def test_recall_counts_only_positive_grades() -> None:
    relevant = {"a": 2, "b": 1, "c": 0, "d": 1}
    assert recall_at_k(["a", "c", "x"], relevant, 3) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "b", "d"], relevant, 3) == pytest.approx(1.0)
    assert recall_at_k(["x", "a", "b", "d"], relevant, 3) == pytest.approx(2 / 3)


def test_recall_empty_and_duplicates() -> None:
    assert recall_at_k([], {"a": 1}, 5) == 0.0
    assert recall_at_k(["a"], {}, 5) == 0.0
    # the repeated "a" uses up the second slot, so "b" falls outside k=2
    assert recall_at_k(["a", "a", "b"], {"a": 1, "b": 1}, 2) == pytest.approx(0.5)
    assert recall_at_k(["a", "a", "b"], {"a": 1, "b": 1}, 3) == pytest.approx(1.0)


def test_score_rankings_means_and_missing_queries(tmp_path: Path) -> None:
    data = {
        "format_version": 1,
        "documents": [{"id": i, "content": i, "memory_type": "rag", "repo_id": None, "metadata": {}}
                      for i in ("a", "b", "c")],
        "queries": [{"id": "q1", "text": "x", "relevant": {"a": 2}},
                    {"id": "q2", "text": "y", "relevant": {"b": 1, "c": 1}}],
    }
    path = tmp_path / "small.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    eval_set = load_eval_set(path)
    scores = score_rankings(eval_set.queries, {"q1": ["a"]}, ndcg_k=10, recall_k=20)
    assert scores.queries == 2
    assert scores.ndcg == pytest.approx(0.5)  # q1 perfect, q2 missing -> 0
    assert scores.recall == pytest.approx(0.5)


# --- properties -------------------------------------------------------------------------------------

_ids = st.sampled_from([f"d{i}" for i in range(12)])
_relevant = st.dictionaries(_ids, st.integers(min_value=0, max_value=3), max_size=12)
_ranking = st.lists(_ids, max_size=20)


@settings(max_examples=300, deadline=None)
@given(ranking=_ranking, relevant=_relevant, k=st.integers(min_value=1, max_value=25))
def test_metrics_are_bounded(ranking: list[str], relevant: dict[str, int], k: int) -> None:
    assert 0.0 <= ndcg_at_k(ranking, relevant, k) <= 1.0
    assert 0.0 <= recall_at_k(ranking, relevant, k) <= 1.0


@settings(max_examples=300, deadline=None)
@given(ranking=_ranking, relevant=_relevant, k=st.integers(min_value=1, max_value=25))
def test_perfect_ranking_maximizes(ranking: list[str], relevant: dict[str, int], k: int) -> None:
    perfect = sorted((d for d, g in relevant.items() if g > 0), key=lambda d: -relevant[d])
    has_relevant = bool(perfect)
    assert ndcg_at_k(perfect, relevant, k) == pytest.approx(1.0 if has_relevant else 0.0)
    assert ndcg_at_k(ranking, relevant, k) <= ndcg_at_k(perfect, relevant, k) + 1e-12
    assert recall_at_k(ranking, relevant, k) <= recall_at_k(perfect, relevant, k) + 1e-12


# --- loading ----------------------------------------------------------------------------------------


def test_load_rejects_unknown_relevant_id(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({
        "format_version": 1,
        "documents": [{"id": "a", "content": "x", "memory_type": "rag", "metadata": {}}],
        "queries": [{"id": "q", "text": "t", "relevant": {"zzz": 2}}],
    }), encoding="utf-8")
    with pytest.raises(InvalidInput, match="'zzz' does not exist"):
        load_eval_set(path)


@pytest.mark.parametrize(
    ("documents", "queries", "message"),
    [
        ([{"id": "a", "content": "x", "memory_type": "nope"}], [], "memory_type 'nope'"),
        ([{"id": "a", "content": "x", "memory_type": "rag"}] * 2, [], "duplicate document id"),
        ([{"id": "a", "content": "x", "memory_type": "rag"}],
         [{"id": "q", "text": "t", "relevant": {"a": -1}}], "must be an integer >= 0"),
        ([{"id": "a", "content": "x", "memory_type": "rag"}],
         [{"id": "q", "text": "t", "relevant": {"a": 0}}], "no relevant document"),
        ([{"id": "a", "content": "", "memory_type": "rag"}], [], "'content' must be a non-empty string"),
    ],
)
def test_load_rejects_malformed_entries(tmp_path: Path, documents: list[object], queries: list[object],
                                        message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format_version": 1, "documents": documents, "queries": queries}),
                    encoding="utf-8")
    with pytest.raises(InvalidInput, match=message):
        load_eval_set(path)


def test_load_rejects_missing_file_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_eval_set(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(InvalidInput, match="not valid UTF-8 JSON"):
        load_eval_set(broken)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format_version": 99, "documents": [], "queries": []}), encoding="utf-8")
    with pytest.raises(InvalidInput, match="format_version 99"):
        load_eval_set(old)


# --- the committed evaluation set -------------------------------------------------------------------


@pytest.fixture(scope="module")
def committed() -> EvalSet:
    return load_eval_set(EVAL_SET)


def test_committed_set_meets_size_requirements(committed: EvalSet) -> None:
    assert len(committed.documents) >= 300
    assert len(committed.queries) >= 50
    assert EVAL_SET.stat().st_size < 3_000_000


def test_committed_set_has_graded_relevance_and_valid_ids(committed: EvalSet) -> None:
    doc_ids = {doc.id for doc in committed.documents}
    grades: set[int] = set()
    for query in committed.queries:
        assert set(query.relevant) <= doc_ids, query.id
        grades.update(query.relevant.values())
        assert any(grade == 2 for grade in query.relevant.values()), query.id
    assert {1, 2} <= grades
    assert sum(1 for q in committed.queries if 1 in q.relevant.values()) >= len(committed.queries) // 2


def test_committed_set_covers_the_store_kinds(committed: EvalSet) -> None:
    types = {doc.memory_type for doc in committed.documents}
    assert {"rag", "agent", "workflow"} <= types
    assert all(doc.content.startswith("Agent note: ") for doc in committed.documents if doc.memory_type == "agent")
    assert all(doc.repo_id for doc in committed.documents if doc.memory_type == "rag")
    styles = {str(q.metadata.get("style")) for q in committed.queries}
    assert {"natural", "identifier"} <= styles
    judged = {doc_id for q in committed.queries for doc_id in q.relevant}
    distractors = [doc for doc in committed.documents if doc.id not in judged]
    assert len(distractors) >= len(committed.documents) // 2


def test_committed_set_queries_are_not_verbatim_in_their_answers(committed: EvalSet) -> None:
    contents = {doc.id: doc.content.lower() for doc in committed.documents}
    for query in committed.queries:
        for doc_id, grade in query.relevant.items():
            if grade == 2:
                assert query.text.lower() not in contents[doc_id], (query.id, doc_id)


def test_committed_set_has_unique_content_per_memory_type(committed: EvalSet) -> None:
    # The store deduplicates on (tenant, memory_type, content hash); a duplicate would lose an eval id.
    from oneiric_memory.records import content_hash

    keys = [(doc.memory_type, content_hash(doc.content)) for doc in committed.documents]
    assert len(keys) == len(set(keys))


def test_committed_set_is_reproducible(committed: EvalSet, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = str(committed.source.get("python"))
    running = ".".join(str(part) for part in sys.version_info[:3])
    if recorded != running:
        pytest.skip(f"the set was built from Python {recorded}'s standard library, this is {running}")
    spec = importlib.util.spec_from_file_location("build_eval_set", EVAL_SET.parents[1] / "build_eval_set.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, builder)  # dataclasses resolve annotations through it
    spec.loader.exec_module(builder)
    assert builder.render_eval_set(builder.build_eval_set()) == EVAL_SET.read_text(encoding="utf-8")
