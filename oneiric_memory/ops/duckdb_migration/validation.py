"""Validation: compare a run's source files, as they are now, with what the store holds.

Per table: every keyed source row must have an item, every migrated item a memory, and no item may lack its
source row; then the content hash of every row (or of a random sample) is recomputed from the source and
compared with the stored memory.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from contextlib import aclosing

import asyncpg

from oneiric_memory.adapters.pgvector.migration_ledger import MigrationLedger
from oneiric_memory.ops.duckdb_migration.mapping import Mapped, Mapper
from oneiric_memory.ops.duckdb_migration.reports import TableValidation
from oneiric_memory.ops.duckdb_migration.source import LOOKUP_CHUNK, DuckDBSource, Row, TableSpec
from oneiric_memory.records import content_hash

__all__ = ["check_batch", "check_hashes", "validate_table"]


async def validate_table(ledger: MigrationLedger, spec: TableSpec, source: DuckDBSource, mapper: Mapper, sample: int | None,
                          rng: random.Random, problems: list[str], warnings: list[str]) -> TableValidation:
    result = TableValidation(table=spec.name, file=spec.file_role)
    keys, nulls = await source.keys(spec, with_project=mapper.project is None)
    expected: dict[str, str] = {}
    for sid, row_project in keys:
        expected.setdefault(sid, mapper.target_project(row_project))
    result.source_rows = len(keys) + nulls
    result.unkeyed = nulls + (len(keys) - len(expected))
    if result.unkeyed:
        warnings.append(f"{spec.name}: {result.unkeyed} source row(s) have no id or a duplicate id")
    rows = await ledger.table_items(spec.file_id, spec.name)
    items = {(r["project"], r["source_id"]): r for r in rows}
    for sid, project in expected.items():
        item = items.get((project, sid))
        if item is None:
            result.missing += 1
            if result.missing <= 20:
                problems.append(f"{spec.name}: source row {sid} has not been migrated")
        elif item["status"] == "skipped":
            result.skipped += 1
            if result.skipped <= 20:
                warnings.append(f"{spec.name}: source row {sid} was skipped: {item['reason']}")
        elif not item["present"]:
            result.orphaned += 1
            if result.orphaned <= 20:
                problems.append(f"{spec.name}: memory {item['memory_id']} of source row {sid} is missing")
        else:
            result.migrated += 1
    for (project, sid), item in items.items():
        if item["run_project"] == mapper.project and expected.get(sid) != project:
            result.extra += 1
            if result.extra <= 20:
                problems.append(f"{spec.name}: target holds source row {sid}, which is no longer in the source")
    checkable = sorted(sid for sid, project in expected.items()
                       if (item := items.get((project, sid))) is not None and item["status"] == "migrated"
                       and item["present"])
    if sample is not None and sample < len(checkable):
        checkable = sorted(rng.sample(checkable, sample))
    if checkable:
        await check_hashes(ledger, spec, source, mapper, checkable, expected, items, result, problems)
    return result

async def check_hashes(ledger: MigrationLedger, spec: TableSpec, source: DuckDBSource, mapper: Mapper, ids: list[str],
                        expected: Mapping[str, str], items: Mapping[tuple[str, str], asyncpg.Record],
                        result: TableValidation, problems: list[str]) -> None:
    batches = (source.stream(spec, ids, LOOKUP_CHUNK) if len(ids) > 2 * LOOKUP_CHUNK
               else source.fetch_ids(spec, ids, LOOKUP_CHUNK))
    async with aclosing(batches):
        async for rows in batches:
            await check_batch(ledger, spec, source, mapper, rows, expected, items, result, problems)

async def check_batch(ledger: MigrationLedger, spec: TableSpec, source: DuckDBSource, mapper: Mapper, rows: list[Row],
                       expected: Mapping[str, str], items: Mapping[tuple[str, str], asyncpg.Record],
                       result: TableValidation, problems: list[str]) -> None:
    ctx = await source.context_for(spec, rows)
    wanted: list[tuple[str, Mapped, asyncpg.Record]] = []
    for row in rows:
        mapped = mapper.map(spec, row, ctx, None)
        item = items[(expected[mapped.source_id], mapped.source_id)]
        wanted.append((mapped.source_id, mapped, item))
    stored = await ledger.stored_contents([(w[2]["project"], w[2]["memory_id"])
                                                                 for w in wanted])
    by_key = {(r["project"], r["id"]): r for r in stored}
    for sid, mapped, item in wanted:
        result.hash_checked += 1
        memory = by_key.get((item["project"], item["memory_id"]))
        reason: str | None = None
        if mapped.record is None:
            reason = f"the source row no longer maps to a memory ({mapped.reason})"
        elif memory is None:
            reason = "its memory disappeared during validation"
        elif content_hash(memory["content"]) != mapped.record.content_hash:
            reason = "the stored content differs from the source"
        elif memory["memory_type"] != mapped.record.memory_type:
            reason = f"memory_type is {memory['memory_type']}, expected {mapped.record.memory_type}"
        if reason is not None:
            result.hash_mismatches += 1
            if result.hash_mismatches <= 20:
                problems.append(f"{spec.name}: source row {sid}: {reason}")

