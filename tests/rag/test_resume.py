"""Kill-and-resume: a real ``oneiric-memory ingest`` process is killed (SIGKILL) mid-run; the rerun finishes
the job with no duplicate and no orphan chunk, and the killed run is recorded as interrupted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.settings import MemorySettings
from tests.cli_helpers import BIN, run_cli, store_env
from tests.rag.repo_fixtures import chunk_rows, rag_file_rows

FILES = 240


def _big_repo(root: Path) -> Path:
    for n in range(FILES):
        folder = root / f"pkg{n % 12}"
        folder.mkdir(parents=True, exist_ok=True)
        body = "\n\n".join(f"def f{n}_{k}(x):\n    \"\"\"Function {k} of module {n}.\"\"\"\n    return x * {k}\n"
                           for k in range(4))
        (folder / f"m{n}.py").write_text(f'"""Module {n}."""\n\n{body}', encoding="utf-8")
    return root


async def _count(store: PgvectorMemoryStore, table: str) -> int:
    async with store.gate.acquire() as connection:
        return int(await connection.fetchval(f"SELECT count(*) FROM {store.table(table)}"))


async def test_killed_ingest_resumes_without_duplicates_or_orphans(
        settings: MemorySettings, store: PgvectorMemoryStore, pg_data_dir: Path, tmp_path: Path) -> None:
    repo = _big_repo(tmp_path / "repo")
    env = {**os.environ, **store_env(pg_data_dir, store.schema)}
    env = {k: v for k, v in env.items() if not k.startswith("ONEIRIC_")}
    process = subprocess.Popen(
        [str(BIN / "oneiric-memory"), "ingest", str(repo), "--repo-id", "big", "--batch-chunks", "5",
         "--no-progress"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if await _count(store, "rag_files") >= 10:  # some batches committed, most not
                    break
            except Exception:  # the child may still be creating the tables
                pass
            await asyncio.sleep(0.02)
        assert process.poll() is None, "the ingest finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    partial = await _count(store, "rag_files")
    assert 10 <= partial < FILES
    # what was committed is whole: every indexed file's chunks exist, nothing else does
    files = await rag_file_rows(store, "big")
    rows = await chunk_rows(store, "big")
    assert sorted(i for f in files.values() for i in f["chunk_ids"]) == sorted(r["id"] for r in rows)

    async with UnifiedMemory.open(settings, background=False) as memory:
        report = await memory.ingest_repository(repo, "big")
        runs = await memory.ingestions("big")
    assert report.counts["files_unchanged"] == partial
    assert report.counts["files_added"] == FILES - partial
    assert runs[0]["status"] == "completed"
    assert runs[1]["status"] == "failed" and runs[1]["error"].startswith("interrupted")

    files = await rag_file_rows(store, "big")
    rows = await chunk_rows(store, "big")
    assert len(files) == FILES
    assert len(rows) == FILES * 5 == report.counts["chunks_total"]  # module + 4 functions, once each
    assert len({(r["metadata"]["path"], r["metadata"]["chunk"]) for r in rows}) == len(rows)
    assert sorted(i for f in files.values() for i in f["chunk_ids"]) == sorted(r["id"] for r in rows)
    # the CLI's stdout after a clean rerun: nothing to do
    done = run_cli(["ingest", str(repo), "--repo-id", "big", "--json", "--no-progress"], cwd=tmp_path,
                   env=store_env(pg_data_dir, store.schema))
    assert done.returncode == 0, done.stderr
    assert '"files_unchanged": 240' in done.stdout and '"chunks_added": 0' in done.stdout
