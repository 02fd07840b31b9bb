"""Writing one benchmark's section of ``docs/benchmarks.md``, and describing the machine it ran on.

Each benchmark owns the text between ``<!-- BEGIN <name> -->`` and ``<!-- END <name> -->`` and replaces only
that, under a file lock, because several benchmarks write the same document.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import re
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["DOCS", "ROOT", "command_line", "load_average", "machine_line", "run_at", "write_section"]

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"


def _memory_gib() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown memory"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def load_average() -> str:
    """The 1-minute load average: other work on the machine shows up in every latency."""
    with contextlib.suppress(OSError, IndexError):
        return Path("/proc/loadavg").read_text(encoding="utf-8").split()[0]
    return "?"


def machine_line() -> str:
    return (f"{os.cpu_count()} logical CPUs ({_cpu_model()}), {_memory_gib()} RAM, {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}")


def run_at() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def command_line() -> str:
    """The command as typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(ROOT)
    return shlex.join(["uv", "run", "python", str(script), *sys.argv[1:]])


def write_section(name: str, body: str, path: Path = DOCS) -> None:
    """Replace (or append) the ``name`` section; ``body`` is the markdown between the markers."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    section = f"{begin}\n{body.rstrip()}\n{end}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / ".benchmarks.md.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
        if pattern.search(current):
            updated = pattern.sub(lambda _match: section, current, count=1)
        else:
            updated = current.rstrip("\n") + "\n\n" + section
        path.write_text(updated, encoding="utf-8")
