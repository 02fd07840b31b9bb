"""Search over ingested chunks: ``repo_id`` and path-prefix filters in the API and the CLI, hits that show file,
symbol and lines, and hostile filter values (always bind parameters; ``%`` and ``_`` are literal)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.errors import InvalidInput
from oneiric_memory.records import SearchFilters
from oneiric_memory.settings import MemorySettings
from tests.cli_helpers import invoke, store_env

SOURCE = 'def parse_config(path):\n    """Read the configuration file."""\n    return open(path).read()\n'


def _repo(root: Path) -> Path:
    for folder in ("src/app", "src/app_x", "src/a%p", "docs", "src/ap_"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "config.py").write_text(SOURCE.replace("path", folder.replace("/", "_").replace("%", "pct")),
                                                 encoding="utf-8")
    return root


@pytest.fixture
async def memory(settings: MemorySettings, tmp_path: Path) -> UnifiedMemory:
    async with UnifiedMemory.open(settings, background=False) as opened:
        await opened.ingest_repository(_repo(tmp_path / "one"), "one")
        await opened.ingest_repository(_repo(tmp_path / "two"), "two")
        yield opened  # type: ignore[misc]


async def _paths(memory: UnifiedMemory, **filters: object) -> set[tuple[str | None, str]]:
    hits = await memory.search("configuration file", filters=SearchFilters(**filters), limit=50)  # type: ignore[arg-type]
    return {(hit.repo_id, hit.metadata["path"]) for hit in hits}


async def test_repo_and_prefix_filters(memory: UnifiedMemory) -> None:
    everything = await _paths(memory)
    assert len(everything) == 10
    assert {repo for repo, _ in await _paths(memory, repo_id="two")} == {"two"}
    assert await _paths(memory, repo_id="one", path_prefix="src/app/") == {("one", "src/app/config.py")}
    assert {p for _, p in await _paths(memory, repo_id="one", path_prefix="src/app")} == \
        {"src/app/config.py", "src/app_x/config.py"}
    # % and _ are literal characters, not LIKE wildcards
    assert {p for _, p in await _paths(memory, repo_id="one", path_prefix="src/a%")} == {"src/a%p/config.py"}
    assert {p for _, p in await _paths(memory, repo_id="one", path_prefix="src/ap_")} == {"src/ap_/config.py"}
    assert await _paths(memory, path_prefix="src/a_p") == set()
    for mode in ("vector", "text", "hybrid"):
        hits = await memory.search("configuration", mode=mode,  # type: ignore[arg-type]
                                   filters=SearchFilters(repo_id="one", path_prefix="docs/"), limit=5)
        assert [(h.metadata["path"], h.metadata["symbol"], h.metadata["start_line"], h.metadata["end_line"])
                for h in hits] == [("docs/config.py", "parse_config", 1, 3)]


@pytest.mark.parametrize("prefix", ["'; DROP TABLE memories; --", "src\\", "x" * 4000, "%", "_", "é/ünï/"])
async def test_hostile_prefixes_are_plain_text(memory: UnifiedMemory, prefix: str) -> None:
    assert await _paths(memory, path_prefix=prefix) == set()
    assert await memory.store.count() == 10


@pytest.mark.parametrize("prefix", ["", "a\x00b", "x" * 5000, "\ud800"])
async def test_bad_prefixes_are_refused(memory: UnifiedMemory, prefix: str) -> None:
    with pytest.raises(InvalidInput):
        await memory.search("configuration", filters=SearchFilters(path_prefix=prefix))


def test_cli_search_by_repo_and_path_shows_file_symbol_lines(settings: MemorySettings, pg_data_dir: Path,
                                                              tmp_path: Path) -> None:
    env = store_env(pg_data_dir, settings.postgres.db_schema)
    ingested = invoke(["ingest", str(_repo(tmp_path / "two")), "--repo-id", "two", "--json"], env=env, root=tmp_path)
    assert ingested.returncode == 0, ingested.stderr
    report = json.loads(ingested.stdout)  # stdout holds only the result; progress went to stderr
    assert report["status"] == "completed" and report["counts"]["files_added"] == 5
    result = invoke(["search", "configuration file", "--repo", "two", "--path", "src/app/", "--json"], env=env,
                    root=tmp_path)
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert [(h["repo_id"], h["file"], h["symbol"], h["lines"]) for h in hits] == \
        [("two", "src/app/config.py", "parse_config", [1, 3])]
    table = invoke(["search", "configuration file", "--repo", "two", "--path", "docs/"], env=env, root=tmp_path)
    assert table.returncode == 0 and "docs/config.py:1-3 (parse_config)" in table.stdout
    bad = invoke(["search", "x", "--path", ""], env=env, root=tmp_path)
    assert bad.returncode != 0 and "path_prefix" in bad.stderr
