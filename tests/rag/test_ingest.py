"""Repository ingestion on the real embedded PostgreSQL with the hashing embedder: what is covered and skipped,
the chunks' metadata, and the incremental rerun (unchanged, changed, deleted, renamed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import InvalidInput, StoreUnavailable
from oneiric_memory.rag import IngestOptions
from oneiric_memory.rag.ingest import ingest_lock_key
from oneiric_memory.settings import MemorySettings
from tests.rag.repo_fixtures import chunk_rows, make_repo, rag_file_rows

OPTIONS = IngestOptions(max_file_bytes=4000)


async def test_first_ingest_covers_text_files_and_counts_the_rest(settings: MemorySettings, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    async with UnifiedMemory.open(settings, background=False) as memory:
        seen: list[tuple[str, int, int]] = []
        report = await memory.ingest_repository(repo, "demo", options=OPTIONS,
                                                progress=lambda unit, done, total: seen.append((unit, done, total)))
        store = memory.store
        files = await rag_file_rows(store, "demo")
        rows = await chunk_rows(store, "demo")
        runs = await memory.ingestions("demo")
    assert sorted(files) == ["README.md", "copy.txt", "notes.txt", "pkg/mod.py", "pkg/other.py", "sub/guide.rst"]
    c = report.counts
    assert report.status == "completed"
    assert (c["files_seen"], c["files_added"], c["files_unchanged"]) == (6, 6, 0)
    assert (c["skipped_ignored"], c["skipped_ignored_dir"]) == (2, 1)  # debug.log, sub/secret.md; build/
    assert c["skipped_binary"] == 2  # blob.txt (NUL), latin1.txt (not UTF-8)
    assert c["skipped_type"] == 3  # image.png and the two .gitignore files
    assert c["skipped_too_large"] == 1
    assert c["chunks_added"] == len(rows) == sum(len(f["chunk_ids"]) for f in files.values())
    assert all(row["embedding"] is not None for row in rows)
    # Python chunks by structure, with enclosing names and line ranges
    py = [r["metadata"] for r in rows if r["metadata"]["path"] == "pkg/mod.py"]
    symbols = {(m["symbol"], m["kind"], m["start_line"], m["end_line"]) for m in py}
    assert ("top", "function", 8, 10) in symbols
    assert ("Greeter.greet", "function", 18, 19) in symbols
    assert ("Greeter.wave", "function", 21, 23) in symbols  # the decorator line is included
    assert any(s[0] == "Greeter" and s[1] == "class" for s in symbols)
    assert any(s[0] == "<module>" for s in symbols)
    assert all(m["language"] == "python" and m["path"] == "pkg/mod.py" and len(m["file_hash"]) == 64 for m in py)
    md = {r["metadata"]["symbol"] for r in rows if r["metadata"]["path"] == "README.md"}
    assert {"Project", "Project > Install", "Project > Usage"} <= md
    assert "not a heading" not in " ".join(str(s) for s in md)
    # equal text in two files stays two rows (the dedup key is the chunk's place)
    assert sum(1 for r in rows if r["content"].strip() == "LICENSE HEADER shared") == 2
    # progress by files and by chunks reached the totals
    assert ("files", 6, 6) in seen and ("chunks", len(rows), len(rows)) in seen
    assert runs[0]["status"] == "completed" and runs[0]["counts"]["files_added"] == 6
    assert {"walk_s", "diff_s", "chunk_s", "embed_s", "write_s", "total_s"} <= set(runs[0]["timings"])


async def test_rerun_is_incremental(settings: MemorySettings, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    async with UnifiedMemory.open(settings, background=False) as memory:
        await memory.ingest_repository(repo, "demo", options=OPTIONS)
        store = memory.store
        before = {(r["metadata"]["path"], r["metadata"]["chunk"]): r for r in await chunk_rows(store, "demo")}

        again = await memory.ingest_repository(repo, "demo", options=OPTIONS)
        assert again.counts["files_unchanged"] == 6
        assert again.counts["chunks_added"] == again.counts["chunks_removed"] == 0
        after = {(r["metadata"]["path"], r["metadata"]["chunk"]): r for r in await chunk_rows(store, "demo")}
        assert {k: v["id"] for k, v in after.items()} == {k: v["id"] for k, v in before.items()}

        (repo / "pkg" / "other.py").write_text("def unrelated():\n    return 43\n\n\ndef more():\n    pass\n",
                                               encoding="utf-8")
        (repo / "notes.txt").unlink()
        (repo / "sub" / "guide.rst").rename(repo / "sub" / "manual.rst")
        changed = await memory.ingest_repository(repo, "demo", options=OPTIONS)
        c = changed.counts
        assert (c["files_changed"], c["files_removed"], c["files_renamed"], c["files_unchanged"]) == (1, 1, 1, 3)
        assert c["chunks_moved"] == 2
        rows = await chunk_rows(store, "demo")
        files = await rag_file_rows(store, "demo")
        paths = {r["metadata"]["path"] for r in rows}
        assert "notes.txt" not in paths and "sub/guide.rst" not in paths and "sub/manual.rst" in paths
        assert set(files) == paths
        # the rename kept rows, ids and vectors: nothing was re-embedded
        moved = {r["metadata"]["chunk"]: r for r in rows if r["metadata"]["path"] == "sub/manual.rst"}
        old = {k[1]: v for k, v in before.items() if k[0] == "sub/guide.rst"}
        assert {k: (v["id"], v["embedding"]) for k, v in moved.items()} == \
               {k: (v["id"], v["embedding"]) for k, v in old.items()}
        # the changed file's chunks were replaced: two functions now, the old text is gone
        other = [r for r in rows if r["metadata"]["path"] == "pkg/other.py"]
        assert [r["metadata"]["symbol"] for r in other] == ["unrelated", "more"]
        assert all("return 42" not in r["content"] for r in other)
        # no orphans: every repo row is referenced by exactly one file
        referenced = [i for f in files.values() for i in f["chunk_ids"]]
        assert sorted(referenced) == sorted(r["id"] for r in rows)
        # a renamed-back file under its old name is found again by hash
        assert c["chunks_total"] == len(rows)


async def test_a_changed_file_reembeds_only_its_changed_chunks(settings: MemorySettings, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    async with UnifiedMemory.open(settings, background=False) as memory:
        await memory.ingest_repository(repo, "demo", options=OPTIONS)
        before = {r["metadata"]["symbol"]: r["embedding"] for r in await chunk_rows(memory.store, "demo")
                  if r["metadata"]["path"] == "pkg/mod.py"}
        source = (repo / "pkg" / "mod.py").read_text(encoding="utf-8")
        (repo / "pkg" / "mod.py").write_text(source.replace("return x + 1", "return x + 2"), encoding="utf-8")
        report = await memory.ingest_repository(repo, "demo", options=OPTIONS)
        after = {r["metadata"]["symbol"]: r["embedding"] for r in await chunk_rows(memory.store, "demo")
                 if r["metadata"]["path"] == "pkg/mod.py"}
    assert report.counts["files_changed"] == 1
    assert report.counts["chunks_reused"] == len(before) - 1
    assert before.keys() == after.keys()
    assert {k for k in before if before[k] != after[k]} == {"top"}


async def test_forgotten_chunks_are_restored_by_the_next_run(settings: MemorySettings, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    async with UnifiedMemory.open(settings, background=False) as memory:
        await memory.ingest_repository(repo, "demo", options=OPTIONS)
        rows = await chunk_rows(memory.store, "demo")
        victim = next(r for r in rows if r["metadata"]["path"] == "pkg/mod.py")
        assert await memory.forget([victim["id"]]) == 1
        report = await memory.ingest_repository(repo, "demo", options=OPTIONS)
        assert report.counts["files_changed"] == 1
        assert len(await chunk_rows(memory.store, "demo")) == len(rows)


@pytest.mark.parametrize(("repo_id", "options"), [
    ("", None), ("a\x00b", None), (None, None),
    ("ok", IngestOptions(suffixes=".py")), ("ok", IngestOptions(max_chars=10)),
    ("ok", IngestOptions(overlap=5000)), ("ok", IngestOptions(batch_chunks=0)),
])
async def test_bad_arguments_change_nothing(settings: MemorySettings, tmp_path: Path, repo_id: object,
                                            options: IngestOptions | None) -> None:
    repo = make_repo(tmp_path / "repo")
    async with UnifiedMemory.open(settings, background=False) as memory:
        with pytest.raises(InvalidInput):
            await memory.ingest_repository(repo, repo_id, options=options)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            await memory.ingest_repository(tmp_path / "missing", "ok")
        assert await memory.store.count() == 0
        assert await rag_file_rows(memory.store, "ok") == {}


async def test_a_second_run_of_the_same_repository_waits_then_refuses(settings: MemorySettings,
                                                                      tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    async with UnifiedMemory.open(settings, background=False) as memory:
        store = memory.store
        async with store.direct_session(purpose="test") as other:  # what a running ingestion of "demo" holds
            assert await other.try_lock(ingest_lock_key(store.schema, "default", "demo"))
            with pytest.raises(StoreUnavailable, match="another ingestion"):
                await memory.ingest_repository(repo, "demo", options=OPTIONS)
            assert await memory.ingestions("demo") == []  # refused before anything was recorded
            report = await memory.ingest_repository(repo, "other", options=OPTIONS)  # other repositories run
            assert report.status == "completed"
        assert (await memory.ingest_repository(repo, "demo", options=OPTIONS)).status == "completed"
