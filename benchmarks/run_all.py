"""Run every benchmark of the repository, one after the other, each writing its own section of docs/benchmarks.md.

Discovers ``benchmarks/bench_*.py`` and ``benchmarks/eval_retrieval.py`` (whatever exists), runs each as its own
process (so one benchmark's server state or memory never colours the next), streams its output, and prints a
summary with exit codes and durations. Benchmarks run sequentially: on a 2-core machine, two at once would
measure each other.

    uv run python benchmarks/run_all.py            # the full suite
    uv run python benchmarks/run_all.py --quick    # smoke runs (--quick is passed to scripts that accept it)
    uv run python benchmarks/run_all.py --only bench_store --only eval_retrieval
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["discover", "main"]

HERE = Path(__file__).resolve().parent
# Cheap, informative ones first; the long store suite last.
ORDER = ("eval_retrieval", "bench_embedder", "bench_migration", "bench_storage_layout", "bench_store")


def discover() -> list[Path]:
    """Every benchmark script present, in a stable order (known ones first, then the rest by name)."""
    found = {path.stem: path for path in HERE.glob("bench_*.py")}
    evaluation = HERE / "eval_retrieval.py"
    if evaluation.is_file():
        found[evaluation.stem] = evaluation
    known = [found.pop(name) for name in ORDER if name in found]
    return known + [found[name] for name in sorted(found)]


def _accepts(path: Path, flag: str) -> bool:
    return f'"{flag}"' in path.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark that accepts it")
    parser.add_argument("--no-write", action="store_true", help="pass --no-write (print only) where accepted")
    parser.add_argument("--only", action="append", default=[], help="run only this benchmark (repeatable)")
    args = parser.parse_args(argv)
    scripts = [p for p in discover() if not args.only or p.stem in args.only]
    if not scripts:
        print("no benchmark matched", file=sys.stderr)
        return 2
    results: list[tuple[str, int, float]] = []
    for script in scripts:
        command = [sys.executable, str(script)]
        for flag, wanted in (("--quick", args.quick), ("--no-write", args.no_write)):
            if wanted and _accepts(script, flag):
                command.append(flag)
        print(f"\n=== {script.name}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        code = subprocess.call(command, cwd=HERE.parent)
        results.append((script.name, code, time.perf_counter() - started))
    print("\n=== summary")
    for name, code, seconds in results:
        print(f"{'ok  ' if code == 0 else 'FAIL'} {name:28s} {seconds / 60:6.1f} min  (exit {code})")
    if not (args.only or args.no_write or args.quick):
        _write_summary(results, args.quick)
    return 0 if all(code == 0 for _, code, _ in results) else 1


def _write_summary(results: list[tuple[str, int, float]], quick: bool) -> None:
    """The ``suite`` section: the one command, and what the last full run did."""
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.markdown_report import command_line, machine_line, run_at, write_section

    lines = ["## The suite (`run_all.py`)", "",
             "- One command runs every benchmark below, each in its own process, one after the other: "
             "`uv run python benchmarks/run_all.py` (`--quick` for smoke runs).",
             f"- Last run: `{command_line()}` at {run_at()}{' (quick)' if quick else ''} on {machine_line()}.", "",
             "| Benchmark | Minutes | Exit |", "|---|---:|---:|"]
    lines += [f"| `{name}` | {seconds / 60:.1f} | {code} |" for name, code, seconds in results]
    write_section("suite", "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
