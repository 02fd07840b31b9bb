"""The search planner: every decision a search makes before its statement runs, as pure functions.

Which path a filtered vector search takes (exact B-tree scan or the vector index), how far ``ef_search`` is
raised, which transaction-local knobs are set, and which per-call overrides are refused. The store feeds these
functions the numbers it reads (the planner's row estimate, ``reltuples``, a capped count); nothing here
touches the database, so all of it is unit-tested without one (tests/adapters/pgvector/test_planner.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from oneiric_memory.errors import InvalidInput
from oneiric_memory.settings import MemorySettings

__all__ = [
    "EXACT_COST_RATIO",
    "EXACT_FLOOR",
    "GREY_ZONE",
    "GREY_ZONE_IMPRECISE",
    "MAX_EF_SEARCH",
    "SearchPlan",
    "check_search_knobs",
    "decide_by_count",
    "decide_by_estimate",
    "ef_search_for",
    "exact_cap",
    "filtered_ef",
    "plan_rows",
    "search_knobs",
]

MAX_EF_SEARCH = 1000
"""pgvector's upper bound for ``hnsw.ef_search``."""
GREY_ZONE = 2
"""Trust a one-column estimate when it is at least 2x away from the exact-path line."""
GREY_ZONE_IMPRECISE = 8
"""Multi-column/metadata estimates: only a very large one skips the count."""
EXACT_COST_RATIO = 15.0
"""HNSW candidate cost / exact row cost, x2 in favour of exact (see :func:`exact_cap`)."""
EXACT_FLOOR = 1000
"""Below this many matching rows the exact path always wins."""


@dataclass(frozen=True, slots=True)
class SearchPlan:
    """How a vector search was executed: ``exact`` (B-tree + sort) or ``ann`` (vector index scan).

    ``probe`` says what decided the path: ``none`` (no filter), ``estimate`` (the planner's row estimate,
    ``estimated_rows``) or ``count`` (a count capped at ``exact_search_max_rows + 1``,
    ``matching_rows_capped``). ``fallback`` is true when an ANN answer came back short and was redone exactly.
    """

    path: Literal["exact", "ann", "none"]
    matching_rows_capped: int | None
    ef_search: int
    probe: Literal["none", "estimate", "count"] = "none"
    estimated_rows: int | None = None
    fallback: bool = False


def exact_cap(max_rows: int, limit: int, table_rows: float | None) -> int:
    """Most matching rows the exact path takes.

    The exact path costs ~2 µs of CPU per matching row; an HNSW iterative scan costs roughly
    ``limit / selectivity`` candidates at ~15 µs each and loses recall as the selectivity drops (measured at
    150k rows, docs/benchmarks.md). They cross at ``sqrt(15 * limit * table_rows)`` matching rows (6.7k at 150k
    rows and limit 20, 17k at 1M), bounded by ``search.exact_search_max_rows`` (``max_rows``; 0 turns the
    exact path off) and never below :data:`EXACT_FLOOR`. Unknown table size (never analyzed): the setting.
    """
    if max_rows <= 0 or table_rows is None:
        return max_rows
    return min(max_rows, max(EXACT_FLOOR, int(math.sqrt(EXACT_COST_RATIO * limit * table_rows))))


def filtered_ef(ef_search: int, limit: int, estimate: int | None, table_rows: float | None) -> int:
    """``ef_search`` for a filtered ANN scan: raised towards ``limit / selectivity``, at most 2x and 1000."""
    if estimate is None or table_rows is None or estimate <= 0:
        return ef_search
    wanted = math.ceil(limit * table_rows / estimate)
    return min(MAX_EF_SEARCH, max(ef_search, min(2 * ef_search, wanted)))


def decide_by_estimate(*, estimate: int | None, cap: int, precise: bool, ef_search: int,
                       boosted_ef: int) -> SearchPlan | None:
    """The path the planner's estimate decides on its own, or None when only a capped count can tell.

    The estimate decides outright when it is more than 2x away from the line (8x for filters the planner
    estimates poorly: several columns, metadata). A wrong call is slower, never wrong.
    """
    if cap <= 0:
        return SearchPlan(path="ann", matching_rows_capped=None, ef_search=boosted_ef, probe="estimate",
                          estimated_rows=estimate)
    if estimate is None:
        return None
    if precise and estimate * GREY_ZONE <= cap:
        return SearchPlan(path="exact", matching_rows_capped=None, ef_search=ef_search, probe="estimate",
                          estimated_rows=estimate)
    if estimate >= cap * (GREY_ZONE if precise else GREY_ZONE_IMPRECISE):
        return SearchPlan(path="ann", matching_rows_capped=None, ef_search=boosted_ef, probe="estimate",
                          estimated_rows=estimate)
    return None


def decide_by_count(*, count: int, cap: int, ef_search: int, boosted_ef: int, estimate: int | None) -> SearchPlan:
    """The path a count capped at ``cap + 1`` decides: exact when at most ``cap`` rows match."""
    exact = count <= cap
    return SearchPlan(path="exact" if exact else "ann", matching_rows_capped=count,
                      ef_search=ef_search if exact else boosted_ef, probe="count", estimated_rows=estimate)


def ef_search_for(value: int, limit: int, candidates: int) -> int:
    """``ef_search`` for one call: ``value`` (the override or the setting), never below the rows asked for,
    at most 1000."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EF_SEARCH:
        raise InvalidInput(f"ef_search must be an integer between 1 and {MAX_EF_SEARCH} (pgvector's maximum)")
    return min(max(value, limit, candidates), MAX_EF_SEARCH)


def search_knobs(settings: MemorySettings, ef_search: int) -> list[tuple[str, str]]:
    """Every transaction-local knob of a search.

    ``jit = off``: a search never profits from JIT, and its compile time (tens of ms) is paid whenever a
    misestimated plan crosses ``jit_above_cost``; ``force_custom_plan`` keeps the HNSW-vs-B-tree choice per
    call under asyncpg's prepared-statement cache.
    """
    ss = settings.search
    knobs: list[tuple[str, str]] = [("plan_cache_mode", "force_custom_plan"), ("jit", "off")]
    if settings.postgres.index_type == "hnsw":
        knobs += [("hnsw.ef_search", str(int(ef_search))), ("hnsw.iterative_scan", ss.iterative_scan),
                  ("hnsw.max_scan_tuples", str(int(ss.max_scan_tuples)))]
    else:
        knobs += [("ivfflat.probes", str(int(ss.ivfflat_probes or 10))),
                  ("ivfflat.iterative_scan", "off" if ss.iterative_scan == "off" else "relaxed_order")]
    return knobs


def plan_rows(explained: Any) -> int | None:
    """``Plan Rows`` of the top node of an ``EXPLAIN (FORMAT JSON)`` result (decoded or not)."""
    try:
        document = json.loads(explained) if isinstance(explained, (str, bytes)) else explained
        return int(document[0]["Plan"]["Plan Rows"])
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def check_search_knobs(*, ef_search: int | None = None, vector_weight: float | None = None,
                       text_weight: float | None = None, rrf_k: int | None = None,
                       min_score: float | None = None) -> None:
    """Per-call overrides are input: reject what would fail in SQL or silently mean nothing."""
    if ef_search is not None and (isinstance(ef_search, bool) or not isinstance(ef_search, int)
                                  or not 1 <= ef_search <= MAX_EF_SEARCH):
        raise InvalidInput(f"ef_search must be an integer between 1 and {MAX_EF_SEARCH} (pgvector's maximum)")
    for name, weight in (("vector_weight", vector_weight), ("text_weight", text_weight)):
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                                   or not math.isfinite(weight) or weight < 0):
            raise InvalidInput(f"{name} must be a finite number >= 0")
    if rrf_k is not None and (isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 1):
        raise InvalidInput("rrf_k must be an integer >= 1")
    if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                  or not math.isfinite(min_score)):
        raise InvalidInput("min_score must be a finite number")
