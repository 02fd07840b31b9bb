"""CLI start-up: CPU seconds and imported modules per command, now and before issue 12 (writes the ``cli``
section of docs/benchmarks.md).

Each command runs as its own process, the way users run it; CPU is the child's user + system time (it barely
depends on the machine's load, unlike wall time). ``-X importtime`` gives the modules each command loads.
"Cold" runs point ``PYTHONPYCACHEPREFIX`` at an empty folder with ``PYTHONDONTWRITEBYTECODE=1``: every module
is compiled again, as for a user whose environment was installed without bytecode. "Before" runs the package as
it was at ``--before`` (default: the commit before issue 12's CLI work) from a ``git archive`` copy.

    uv run python benchmarks/bench_cli_startup.py            # 5 runs per warm case
    uv run python benchmarks/bench_cli_startup.py --quick    # 2 runs
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from markdown_report import ROOT, command_line, load_average, machine_line, run_at, write_section

__all__ = ["main"]

HEAVY = ("asyncpg", "duckdb", "mcp_common", "fastmcp", "sqlalchemy", "alembic", "session_buddy", "numpy", "httpx",
         "oneiric.")


# What the console script does (the old package has no ``python -m oneiric_memory.cli``).
_ENTRY = "import sys; sys.argv[0] = 'oneiric-memory'; from oneiric_memory.cli import main; main()"


@dataclass
class Case:
    label: str
    args: list[str]
    needs_db: bool = False


CASES = [
    Case("`--help`", ["--help"]),
    Case("`search --help`", ["search", "--help"]),
    Case("argument error: `search x --mode bogus`", ["search", "x", "--mode", "bogus"]),
    Case("`remember TEXT` (hashing embedder, no Session-Buddy)", ["remember", "cli start-up benchmark row"], True),
    Case("`search TEXT --mode text`", ["search", "benchmark row", "--mode", "text"], True),
]


def run_once(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, exit code) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _ENTRY, *args], env=env, cwd=cwd,
                            capture_output=True, text=True, check=False, timeout=300)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, result.returncode


def modules(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, list[str]]:
    """How many modules the command imports, and which heavy families among them."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", _ENTRY, *args], env=env,
                            cwd=cwd, capture_output=True, text=True, check=False, timeout=300)
    names = [line.split("|")[2].strip() for line in result.stderr.splitlines()
             if line.startswith("import time:") and line.count("|") == 2][1:]
    heavy = sorted({h.rstrip(".") for h in HEAVY for name in names if name == h.rstrip(".") or name.startswith(h)})
    return len(names), heavy


def base_env(data_dir: Path, schema: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAHAVISHNU_", "ONEIRIC_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update({"MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__EMBEDDED_DATA_DIR": str(data_dir),
                "MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__DB_SCHEMA": schema,
                "MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__PROVIDER": "hashing",
                "MAHAVISHNU_ONEIRIC_MEMORY__SESSION_BUDDY__ENABLED": "false",
                "XDG_RUNTIME_DIR": tempfile.gettempdir()})
    return env


def old_tree(commit: str, into: Path) -> Path:
    """The package as it was at ``commit`` (``git archive``), to run with PYTHONPATH in front."""
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "old.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit, "oneiric_memory"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(case: Case, env: dict[str, str], cwd: Path, runs: int) -> tuple[float, float, int]:
    results = [run_once(case.args, env, cwd) for _ in range(runs)]
    codes = {code for _, _, code in results}
    return (statistics.median(cpu for cpu, _, _ in results), statistics.median(w for _, w, _ in results),
            codes.pop() if len(codes) == 1 else -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 runs per warm case instead of 5")
    parser.add_argument("--before", default="590dc46", help="the commit to compare with")
    options = parser.parse_args()
    runs = 2 if options.quick else 5
    load_before = load_average()
    from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="om-cli-bench-") as tmp:
        folder = Path(tmp)
        server = EmbeddedPostgres(folder / "pgdata")
        asyncio.run(server.start())
        try:
            env = base_env(folder / "pgdata", f"bench_{uuid.uuid4().hex[:8]}")
            run_once(["remember", "warm-up row"], env, folder)  # schema migrated, bytecode cached
            rows = []
            for case in CASES:
                cpu, wall, code = measure(case, env, folder, runs)
                count, heavy = modules(case.args, env, folder)
                cold_env = {**env, "PYTHONDONTWRITEBYTECODE": "1",
                            "PYTHONPYCACHEPREFIX": str(folder / f"empty-{uuid.uuid4().hex[:6]}")}
                cold_cpu, _, _ = run_once(case.args, cold_env, folder)
                rows.append((case, cpu, wall, code, count, heavy, cold_cpu))
                print(f"{case.label}: {cpu:.2f} s CPU warm, {cold_cpu:.2f} s cold, {count} modules", flush=True)
            old = old_tree(options.before, folder / "before")
            old_env = {**base_env(folder / "pgdata", f"bench_old_{uuid.uuid4().hex[:8]}"),
                       "PYTHONPATH": str(old)}
            run_once(["remember", "warm-up row"], old_env, folder)
            before = {}
            for case in CASES:
                cpu, _, code = measure(case, old_env, folder, max(2, runs // 2))
                count, heavy = modules(case.args, old_env, folder)
                before[case.label] = (cpu, code, count, heavy)
                print(f"before {case.label}: {cpu:.2f} s CPU, {count} modules", flush=True)
        finally:
            asyncio.run(server.stop())
    uv_run = uv_run_overhead()
    lines = [
        "## CLI start-up (`bench_cli_startup.py`)",
        "",
        f"- Command: `{command_line()}`",
        f"- Machine: {machine_line()}",
        f"- Run at: {run_at()}; load average {load_before} before, {load_average()} after (CPU seconds barely "
        "depend on the load; wall seconds do)",
        f"- What: each command as its own process, started the way the `oneiric-memory` console script starts it; median of {runs} warm runs "
        "(bytecode cached by Python, or once by `uv sync --compile-bytecode`). *Cold*: one run "
        "with no bytecode at all (`PYTHONDONTWRITEBYTECODE=1`, empty `PYTHONPYCACHEPREFIX`). *Before*: the same "
        f"commands on the package at `{options.before}` (before issue 12). Modules from `python -X importtime`; "
        "*heavy* lists the database, MCP, DuckDB and HTTP families loaded.",
        "",
        "| command | exit | CPU s warm | wall s warm | CPU s cold | modules | heavy modules loaded | before: CPU s "
        "warm | before: modules | before: heavy |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for case, cpu, wall, code, count, heavy, cold_cpu in rows:
        old_cpu, _old_code, old_count, old_heavy = before[case.label]
        lines.append(f"| {case.label} | {code} | {cpu:.2f} | {wall:.2f} | {cold_cpu:.2f} | {count:,} | "
                     f"{', '.join(heavy) or 'none'} | {old_cpu:.2f} | {old_count:,} | {', '.join(old_heavy) or 'none'} |")
    lines += [
        "",
        "`--help` and argument errors load typer and rich only (the goal: no database, MCP or DuckDB module, under "
        "0.5 s of CPU); `tests/cli/test_startup.py` fails if one of those modules comes back. A command loads the "
        "store (asyncpg; alembic to check the schema's revision) and its embedder, and no longer MCP, fastmcp or "
        "DuckDB, which came in through `mcp_common.health` imported at module level for a type.",
        "Help imports neither pydantic nor asyncio (also tested): typer 0.29 coerces every processed option through "
        "a pydantic `TypeAdapter`, and the root group's options are processed before `<command> --help` answers, so "
        "the root's four options are coerced by the CLI itself (`cli._RootOption`), and `errors` imports asyncio "
        "only when it needs it. What remains of `--help` is typer, click and rich (its markdown renderer is "
        "imported by typer's rich help). An argument error still loads pydantic: typer validates values with it.",
        "",
        f"`uv run` itself, before the command starts (`uv run python -c pass`, median of 3): {uv_run}. "
        "`[tool.uv] compile-bytecode = true` made that 3-5 s, because uv byte-compiled the whole environment "
        "(~17,000 files) on every `uv run`; it was removed, and users whose shell sets `PYTHONDONTWRITEBYTECODE=1` "
        "compile once with `uv sync --compile-bytecode` (README).",
    ]
    write_section("cli", "\n".join(lines))


def uv_run_overhead(runs: int = 3) -> str:
    """Wall and CPU seconds of `uv run python -c pass` from the project root (uv's sync check included)."""
    import shutil

    uv = shutil.which("uv")
    if uv is None:
        return "not measured (uv is not on PATH)"
    results = []
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([uv, "run", "--frozen", "python", "-c", "pass"], cwd=ROOT, env=env, capture_output=True,
                       check=True, timeout=300)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        results.append((wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)))
    return (f"{statistics.median(w for w, _ in results):.2f} s wall, "
            f"{statistics.median(c for _, c in results):.2f} s CPU")


if __name__ == "__main__":
    main()
