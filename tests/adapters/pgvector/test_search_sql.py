"""The search SQL builder, as text: every value is a bind parameter, identifiers come only from the caller."""

from __future__ import annotations

from datetime import UTC, datetime

from oneiric_memory.adapters.pgvector.search_sql import (
    Params,
    capped_count_sql,
    estimate_sql,
    filter_clause,
    filters_well_estimated,
    vector_branch,
)
from oneiric_memory.records import SearchFilters

HOSTILE = "x'); DROP TABLE memories; --"


def test_params_number_the_placeholders_and_keep_the_values_in_order() -> None:
    params = Params()
    assert params.add("a") == "$1"
    assert params.add([1, 2], "int[]") == "$2::int[]"
    assert params.values == ["a", [1, 2]]


def test_no_filter_is_true_except_for_expiry() -> None:
    params = Params()
    assert filter_clause(None, params) == "(m.expires_at IS NULL OR m.expires_at > now())"
    assert filter_clause(SearchFilters(include_expired=True), params) == "TRUE"
    assert params.values == []


def test_every_filter_value_is_bound_never_interpolated() -> None:
    after = datetime(2026, 1, 1, tzinfo=UTC)
    filters = SearchFilters(projects=[HOSTILE], memory_types=["agent"], agent_id=HOSTILE, created_after=after,
                            metadata={"k": HOSTILE})
    params = Params()
    where = filter_clause(filters, params, alias="t")
    assert HOSTILE not in where and "DROP" not in where
    assert where.startswith("t.project = ANY($1::text[]) AND t.memory_type = ANY($2::text[])")
    assert "t.agent_id = $3::text" in where and "t.created_at >= $4::timestamptz" in where
    assert "t.metadata @> $5::text::jsonb" in where
    assert params.values[0] == [HOSTILE] and params.values[2] == HOSTILE and params.values[3] == after
    assert HOSTILE in params.values[4]  # the JSON document, as a bound string


def test_only_one_column_without_metadata_is_well_estimated() -> None:
    assert filters_well_estimated(SearchFilters(projects=["p"]))
    assert not filters_well_estimated(SearchFilters(projects=["p"], agent_id="a"))
    assert not filters_well_estimated(SearchFilters(metadata={"k": 1}))


def test_the_count_is_capped_one_above_the_line_and_the_estimate_only_plans() -> None:
    assert capped_count_sql('"s"."memories"', "TRUE", 6000).endswith("LIMIT 6001) AS capped")
    assert estimate_sql('"s"."memories"', "TRUE").startswith("EXPLAIN (FORMAT JSON) SELECT 1 FROM")


def test_the_exact_vector_branch_defeats_the_index_and_the_ann_branch_orders_by_the_operator() -> None:
    for path in ("exact", "ann"):
        params = Params()
        sql = vector_branch(params, table='"s"."memories"', vector_cast="halfvec(3)", query_embedding=[0.1, 0.2, 0.3],
                            filters=SearchFilters(projects=["p"]), n=7, path=path)  # type: ignore[arg-type]
        assert params.values[0] == [0.1, 0.2, 0.3] and params.values[-1] == 7
        assert "$1::halfvec(3)" in sql and "0.1" not in sql
        if path == "exact":
            assert "ORDER BY e.distance + 0" in sql and "OFFSET 0" in sql
        else:
            assert "ORDER BY m.embedding <=> $1::halfvec(3)" in sql
