"""The search planner's decisions, as pure functions: no database, no event loop."""

from __future__ import annotations

import json

import pytest

from oneiric_memory.adapters.pgvector.planner import (
    MAX_EF_SEARCH,
    SearchPlan,
    check_search_knobs,
    decide_by_count,
    decide_by_estimate,
    ef_search_for,
    exact_cap,
    filtered_ef,
    plan_rows,
    search_knobs,
)
from oneiric_memory.errors import InvalidInput
from oneiric_memory.settings import load_settings


def test_the_exact_path_line_grows_with_sqrt_of_limit_times_rows_within_the_setting() -> None:
    assert exact_cap(15_000, 20, 150_000) == 6708  # sqrt(15 * 20 * 150k)
    assert exact_cap(15_000, 20, 1_000_000) == 15_000  # capped by search.exact_search_max_rows
    assert exact_cap(15_000, 20, 500) == 1000  # floor: tiny tables are always exact below 1,000 rows
    assert exact_cap(15_000, 20, None) == 15_000  # never analyzed: the setting alone
    assert exact_cap(0, 20, 150_000) == 0  # the exact path switched off


def test_filtered_ef_rises_towards_limit_over_selectivity_at_most_twice_and_never_above_pgvector_max() -> None:
    assert filtered_ef(100, 20, 15_000, 150_000) == 200  # 10%: limit / selectivity, at most 2x
    assert filtered_ef(100, 20, 75_000, 150_000) == 100  # 50%: the base value is enough
    assert filtered_ef(990, 20, 1_500, 150_000) == MAX_EF_SEARCH
    assert filtered_ef(100, 20, None, 150_000) == 100
    assert filtered_ef(100, 20, 0, 150_000) == 100


@pytest.mark.parametrize(("estimate", "precise", "expected"), [
    (1_000, True, "exact"),  # far below the line, one well-estimated column: exact at once
    (1_000, False, None),  # the same estimate from a multi-column filter: count first
    (4_000, True, None),  # the grey zone around the line: count
    (12_000, True, "ann"),  # more than 2x above the line
    (12_000, False, None),  # an imprecise estimate must be 8x above
    (48_000, False, "ann"),
    (None, True, None),  # no estimate: count
])
def test_the_estimate_decides_only_outside_the_grey_zone(estimate: int | None, precise: bool,
                                                         expected: str | None) -> None:
    plan = decide_by_estimate(estimate=estimate, cap=6000, precise=precise, ef_search=40, boosted_ef=80)
    assert (None if plan is None else plan.path) == expected
    if plan is not None:
        assert plan.probe == "estimate" and plan.estimated_rows == estimate
        assert plan.ef_search == (40 if plan.path == "exact" else 80)  # only the ANN path gets the raised ef


def test_with_the_exact_path_off_every_filtered_search_is_ann() -> None:
    plan = decide_by_estimate(estimate=10, cap=0, precise=True, ef_search=40, boosted_ef=80)
    assert plan == SearchPlan(path="ann", matching_rows_capped=None, ef_search=80, probe="estimate", estimated_rows=10)


def test_a_capped_count_decides_at_the_line() -> None:
    at_line = decide_by_count(count=6000, cap=6000, ef_search=40, boosted_ef=80, estimate=5000)
    above = decide_by_count(count=6001, cap=6000, ef_search=40, boosted_ef=80, estimate=5000)
    assert (at_line.path, at_line.ef_search, at_line.probe, at_line.matching_rows_capped) == ("exact", 40, "count", 6000)
    assert (above.path, above.ef_search) == ("ann", 80)


def test_ef_search_is_never_below_the_rows_asked_for_and_refuses_nonsense() -> None:
    assert ef_search_for(40, 10, 10) == 40
    assert ef_search_for(40, 100, 10) == 100
    assert ef_search_for(40, 10, 200) == 200
    assert ef_search_for(40, 10, 5000) == MAX_EF_SEARCH
    for bad in (0, MAX_EF_SEARCH + 1, True, 1.5, "40"):
        with pytest.raises(InvalidInput, match="ef_search"):
            ef_search_for(bad, 10, 10)  # type: ignore[arg-type]


def test_knobs_are_per_index_type_and_always_pin_custom_plans_and_jit(tmp_path) -> None:
    hnsw = dict(search_knobs(load_settings({}, root=tmp_path, environ={}), 123))
    assert hnsw["plan_cache_mode"] == "force_custom_plan" and hnsw["jit"] == "off"
    assert hnsw["hnsw.ef_search"] == "123" and "ivfflat.probes" not in hnsw
    ivf = dict(search_knobs(load_settings({"postgres": {"index_type": "ivfflat"}, "search": {"ivfflat_probes": 7}},
                                          root=tmp_path, environ={}), 123))
    assert ivf["ivfflat.probes"] == "7" and "hnsw.ef_search" not in ivf


def test_plan_rows_reads_explain_json_in_either_form_and_tolerates_garbage() -> None:
    document = [{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 42}}]
    assert plan_rows(document) == 42
    assert plan_rows(json.dumps(document)) == 42
    assert plan_rows(json.dumps(document).encode()) == 42
    for garbage in (None, "not json", [], [{}], [{"Plan": {}}]):
        assert plan_rows(garbage) is None


@pytest.mark.parametrize(("knobs", "message"), [
    ({"ef_search": 0}, "ef_search"), ({"ef_search": True}, "ef_search"),
    ({"vector_weight": -1.0}, "vector_weight"), ({"text_weight": float("nan")}, "text_weight"),
    ({"rrf_k": 0}, "rrf_k"), ({"rrf_k": 2.5}, "rrf_k"),
    ({"min_score": float("inf")}, "min_score"), ({"min_score": "0.5"}, "min_score"),
])
def test_per_call_overrides_that_would_fail_or_mean_nothing_are_refused(knobs: dict[str, object],
                                                                       message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_search_knobs(**knobs)  # type: ignore[arg-type]
    check_search_knobs(ef_search=100, vector_weight=0.0, text_weight=2, rrf_k=60, min_score=-0.5)
