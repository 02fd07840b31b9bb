"""Backup and restore report real progress (issue 12: it was `0/?`): tables dumped out of the schema's tables,
archive entries restored out of the archive's entries; and the CLI's documented `--bin-dir` exists."""

from __future__ import annotations

from pathlib import Path

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.ops.backup import backup, restore
from oneiric_memory.records import MemoryRecord
from oneiric_memory.settings import MemorySettings


async def test_backup_and_restore_report_progress_to_the_end(store: PgvectorMemoryStore, settings: MemorySettings,
                                                             tmp_path: Path) -> None:
    await store.upsert_many([MemoryRecord(content=f"progress row {n}") for n in range(3)])
    dumped: list[tuple[int, int | None]] = []
    archive = tmp_path / "memories.dump"
    result = await backup(store, archive, progress=lambda done, total: dumped.append((done, total)))
    assert dumped[0][0] == 0
    tables = dumped[-1][1]
    assert tables is not None and tables >= 5  # memories, memory_access, insight_outbox, rag_ingestions, ...
    assert dumped[-1] == (tables, tables)  # every table dumped, counted one by one
    assert len({done for done, _ in dumped}) == tables + 1
    restored: list[tuple[int, int | None]] = []
    await restore(settings, archive, progress=lambda done, total: restored.append((done, total)))
    assert restored[-1][1] == result.entries
    assert restored[-1][0] >= result.entries // 2 and restored[-1][0] <= result.entries
    assert len(restored) > 5  # it moved step by step, not 0 then done
