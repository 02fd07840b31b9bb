"""What the read rule costs, enforced by the store's predicate or by PostgreSQL row-level security (issue 18).

Three ways to answer "search as project P", each end to end through ``PgvectorMemoryStore.search``:

* ``projects=[P]`` (own memories only, the pre-issue-18 filter): the baseline;
* ``acting_for=[P]``: the store's predicate (``project = ANY(..) OR shared_with && ..``), as shipped;
* RLS: no filter in the statement; a policy on ``memories`` holds the same rule, evaluated for a non-owner role
  (``SET LOCAL ROLE`` + ``set_config('om.acting_for', P, true)`` inside the search transaction).

Both scoped variants must return the same hits (checked). Data: ``--rows`` memories over 100 projects, 10 groups of
10 projects, 1% of rows shared with a group and 1% with a project; P belongs to one group. Writes the
``scope-rls`` section of ``docs/benchmarks.md``.

    uv run python benchmarks/bench_scope_rls.py [--quick] [--rows 50000] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.markdown_report import command_line, load_average, machine_line, run_at, write_section
from benchmarks.synthetic_data import make_corpus, make_queries
from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.adapters.pgvector.planner import SearchPlan
from oneiric_memory.records import MemoryRecord, SearchFilters
from oneiric_memory.settings import load_settings

SCHEMA = "om_bench_scope"
ROLE = "om_bench_tenant"
PROJECT = "p7"
LIMIT = 10


async def load(store: PgvectorMemoryStore, rows: int) -> None:
    corpus = make_corpus(rows)
    await store.bind_embedding_model("bench")
    batch = 2000
    for start in range(0, rows, batch):
        await store.upsert_many([
            MemoryRecord(content=f"{corpus.texts[i]} #{i}", memory_type="agent", project=f"p{i % 100}",
                         embedding=corpus.vectors[i].tolist(), embedding_model="bench")
            for i in range(start, min(rows, start + batch))])
    memories, members = store.table("memories"), store.table("project_group_members")
    groups = store.table("project_groups")
    async with store.gate.acquire() as connection:
        await connection.execute(f"INSERT INTO {groups} (name) SELECT 'g' || g FROM generate_series(0, 9) g")
        await connection.execute(f"INSERT INTO {members} (group_name, project) "
                                 "SELECT 'g' || (p % 10), 'p' || p FROM generate_series(0, 99) p")
        await connection.execute("SELECT setseed(0.42)")
        await connection.execute(f"UPDATE {memories} SET shared_with = ARRAY['g:g' || (abs(hashtext(id::text)) % 10)] "
                                 "WHERE random() < 0.01")
        await connection.execute(f"UPDATE {memories} SET shared_with = shared_with || "
                                 "ARRAY['p:p' || (abs(hashtext(id::text)) % 100)] WHERE random() < 0.01")
        await connection.execute(f"VACUUM ANALYZE {memories}")
        # the same rule as a policy; the owner (this pool's user) is not subject to it, the tenant role is
        await connection.execute(f"ALTER TABLE {memories} ENABLE ROW LEVEL SECURITY")
        await connection.execute(
            f"CREATE POLICY om_read ON {memories} FOR SELECT USING (project = current_setting('om.acting_for', true) "
            "OR shared_with && (ARRAY['p:' || current_setting('om.acting_for', true)] || ARRAY(SELECT 'g:' || "
            f"x.group_name FROM {members} x WHERE x.project = current_setting('om.acting_for', true))))")
        exists = await connection.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", ROLE)
        if not exists:
            await connection.execute(f"CREATE ROLE {ROLE} NOLOGIN NOBYPASSRLS")
        await connection.execute(f'GRANT USAGE ON SCHEMA "{SCHEMA}" TO {ROLE}')
        await connection.execute(f"GRANT SELECT ON {memories}, {members} TO {ROLE}")


async def as_tenant(connection: asyncpg.Connection, _plan: SearchPlan) -> None:
    await connection.execute(f"SET LOCAL ROLE {ROLE}")
    await connection.execute("SELECT set_config('om.acting_for', $1, true)", PROJECT)


async def timed(call: Callable[[], Awaitable[list[Any]]], repeats: int) -> tuple[list[float], list[Any]]:
    times: list[float] = []
    hits: list[Any] = []
    for _ in range(repeats):
        started = time.perf_counter()
        hits = await call()
        times.append((time.perf_counter() - started) * 1000)
    return times, hits


async def run(rows: int, nq: int, data_dir: Path | None) -> str:
    postgres: dict[str, Any] = {"db_schema": SCHEMA}
    if data_dir is not None:
        postgres["embedded_data_dir"] = str(data_dir)
    store = PgvectorMemoryStore(load_settings({"postgres": postgres}))
    await store.init()
    variants = {"projects=[P] (own only)": SearchFilters(projects=[PROJECT]),
                "acting_for=[P] (store predicate)": SearchFilters(acting_for=[PROJECT]),
                "RLS policy (no predicate)": None}
    results: dict[tuple[str, str], list[float]] = {}
    counts: dict[tuple[str, str], list[int]] = {}
    mismatches = 0
    load_before = ""
    try:
        print(f"[{time.strftime('%H:%M:%S')}] loading {rows:,} rows", flush=True)
        await load(store, rows)
        texts = make_corpus(nq, seed=11).texts
        vectors = make_queries(nq).vectors
        load_before = load_average()
        for mode in ("text", "vector", "hybrid"):
            for index in range(nq):
                answers: dict[str, set[Any]] = {}
                for name, filters in variants.items():
                    store.search_probe = as_tenant if filters is None else None
                    query_text = " ".join(texts[index].split()[:4])
                    vector = vectors[index].tolist()
                    times, hits = await timed(lambda f=filters, q=query_text, v=vector, m=mode: store.search(  # type: ignore[misc]
                        query_text=q, query_embedding=v, mode=m, filters=f, limit=LIMIT), 3)
                    results.setdefault((mode, name), []).extend(times[1:])  # the first run warms the caches
                    answers[name] = {hit.id for hit in hits}
                    counts.setdefault((mode, name), []).append(len(hits))
                store.search_probe = None
                if answers["acting_for=[P] (store predicate)"] != answers["RLS policy (no predicate)"]:
                    mismatches += 1
            print(f"[{time.strftime('%H:%M:%S')}] {mode} done", flush=True)
    finally:
        store.search_probe = None
        async with store.gate.acquire() as connection:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
            await connection.execute(f"DROP ROLE IF EXISTS {ROLE}")
        await store.cleanup()
    lines = [
        "## Scoped reads: the store's predicate vs row-level security (`bench_scope_rls.py`)",
        "",
        f"- Command: `{command_line()}`",
        f"- Machine: {machine_line()}",
        f"- Run at: {run_at()}; load average {load_before} before, {load_average()} after",
        f"- Data: {rows:,} memories (768-d halfvec, HNSW) over 100 projects, 10 groups of 10 projects, ~1% shared "
        f"with a group and ~1% with a project; searching as `{PROJECT}` (1% of the rows, in one group), limit "
        f"{LIMIT}, {nq} queries per mode, 2 timed runs each after a warm-up, end to end through "
        "`PgvectorMemoryStore.search`.",
        f"- The scoped variants returned different hits for {mismatches} of {3 * nq} queries.",
        "",
        "| mode | variant | p50 ms | p95 ms | hits per query |",
        "|---|---|---:|---:|---:|",
    ]
    for (mode, name), times in results.items():
        ordered = sorted(times)
        lines.append(f"| {mode} | {name} | {statistics.median(ordered):.1f} | "
                     f"{ordered[max(0, int(len(ordered) * 0.95) - 1)]:.1f} | {statistics.mean(counts[mode, name]):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="5,000 rows: a smoke run, leaves docs/benchmarks.md alone")
    parser.add_argument("--rows", type=int, help="memories (default 50,000)")
    parser.add_argument("--queries", type=int, default=30, help="queries per mode (default 30)")
    parser.add_argument("--data-dir", type=Path, help="embedded PostgreSQL data folder (default: the cache folder)")
    parser.add_argument("--no-write", action="store_true", help="print the section; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    rows = args.rows or (5_000 if args.quick else 50_000)
    section = asyncio.run(run(rows, 10 if args.quick else args.queries, args.data_dir))
    print(section)
    if not (args.no_write or args.quick):
        write_section("scope-rls", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
