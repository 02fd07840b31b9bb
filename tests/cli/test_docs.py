"""Docs that were false (issue 12, "Docs that are false today"): each claim is checked against the code or the
measured figures, so it cannot drift again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from oneiric_memory.cli import EXIT_CODES, app
from tests.cli_helpers import invoke

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _tree() -> typer.core.TyperGroup:
    return typer.main.get_command(app)  # type: ignore[return-value]


def _options(command: object) -> set[str]:
    return {opt for param in getattr(command, "params", []) for opt in (*param.opts, *param.secondary_opts)}


def cli_mentions() -> list[tuple[str, int, str, str]]:
    """(file, line, command path, option) for every ``--option`` written after ``oneiric-memory <command>``."""
    root = _tree()
    found = []
    for path in DOCS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if "oneiric-memory" not in line:
                continue
            rest = line.split("oneiric-memory", 1)[1]
            rest = rest.split("`", 1)[0].split("#", 1)[0]  # the inline code span (or the code line, sans comment)
            tokens = re.findall(r"[\w-]+|--[\w-]+", rest.replace("|", " "))
            if not tokens or tokens[0] not in root.commands:
                continue  # not a command line of ours (e.g. a server named oneiric-memory in another tool's call)
            command: object = None
            name = ""
            for token in tokens:
                group = command if isinstance(command, typer.core.TyperGroup) else root
                if not token.startswith("-") and token in group.commands and (command is None or group is command
                                                                               or token in root.commands):
                    command = group.commands[token] if group is command else root.commands[token]
                    name = token if group is root else f"{name} {token}"
                elif token.startswith("--") and command is not None:
                    found.append((path.name, number, name, token))
    return found


def test_every_documented_cli_option_exists() -> None:
    mentions = cli_mentions()
    assert len(mentions) > 20  # the README's usage block alone names many
    root = _tree()
    missing = []
    for file, line, name, option in mentions:
        command: object = root
        for part in name.split():
            command = command.commands[part]  # type: ignore[attr-defined]
        if option not in _options(command) | _options(root) | {"--help"}:
            missing.append(f"{file}:{line}: oneiric-memory {name} {option}")
    assert missing == []


def test_backup_and_restore_take_the_documented_bin_dir() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "--bin-dir" in operations
    root = _tree()
    assert "--bin-dir" in _options(root.commands["backup"]) and "--bin-dir" in _options(root.commands["restore"])


def test_readme_exit_codes_are_the_cli_s() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    sentence = readme[readme.index("Errors are one"):][:700]
    for name, code in EXIT_CODES.items():
        if code:
            assert re.search(rf"\b{code} ", sentence), (name, code)
    documented = {int(n) for n in re.findall(r"\b(\d+) (?:other|usage|configuration|unavailable|invalid|schema|a "
                                              r"check|interrupted)", sentence)}
    assert documented == {code for code in EXIT_CODES.values() if code}


def test_operations_figures_are_this_project_s_measurements() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    figures = re.findall(r"([\d,]+(?:\.\d+)?) (?:rows|queries)/s", operations)
    assert figures
    assert [f for f in figures if f not in benchmarks] == []
    assert "35,000" not in operations and "1,158" not in operations
    million = benchmarks[benchmarks.index("## Store at 1,000,000 rows"):]
    build = re.search(r"HNSW build \(m=16, ef_construction=64, \+ ANALYZE\) \| ([\d.]+) min", million)
    assert build is not None and f"{build.group(1)} min" in operations  # the measured 1M build time
    assert "6–8 min" not in operations and "7–8 min" not in operations


def test_operations_says_stats_prints_tables_and_json_on_request() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    paragraph = operations[operations.index("`oneiric-memory stats`"):][:300]
    assert "tables" in paragraph and "--json" in paragraph
    assert "returns `Monitor.stats()` as JSON" not in operations


def test_mahavishnu_doc_lists_every_health_component() -> None:
    source = (ROOT / "oneiric_memory" / "coordinator.py").read_text(encoding="utf-8")
    components = set(re.findall(r'\("(\w+)", HealthStatus\.', source))
    assert len(components) >= 5
    doc = (ROOT / "docs" / "mahavishnu.md").read_text(encoding="utf-8")
    line = next(line for line in doc.splitlines() if line.startswith("oneiric-memory health ") and "table" in line)
    assert {name for name in components if name in line} == components


@pytest.mark.parametrize("args", [["migrate-duckdb", "--help"]])
def test_migrate_duckdb_help_does_not_promise_a_default_path(args: list[str]) -> None:
    result = invoke(args, env={"COLUMNS": "200"})
    assert result.returncode == 0
    assert "required for a run" in result.stdout
    assert "default location" not in result.stdout


def test_architecture_errors_section_names_real_bounds_and_tables() -> None:
    """architecture.md said every transient fault is retried and every bad record gets InvalidInput, with nothing to
    back either: now it names the settings that bound the retries and the tables that check the input."""
    from oneiric_memory.settings import MemorySettings

    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    errors = doc[doc.index("## Errors"):]
    errors = errors[: errors.find("\n## ", 5) if "\n## " in errors[5:] else len(errors)]
    settings = MemorySettings()
    named = re.findall(r"`(postgres|embedder|session_buddy)\.(\w+)`", errors)
    assert {"retry_attempts", "max_attempts"} <= {field for _, field in named}
    for section, field in named:
        assert hasattr(getattr(settings, section), field), f"{section}.{field}"
    tables = re.findall(r"`(tests/[\w/]+\.py)`", errors)
    assert len(tables) == 2 and all((ROOT / table).is_file() for table in tables)
    assert "transient and retried." not in errors  # the old unbounded claim
