"""The real `oneiric` CLI, run as a subprocess with this repo's settings/oneiric.yaml, sees, explains,
activates and health-probes all four adapter categories of this package (end-to-end entry-point client).

Oneiric 0.33's CLI calls ``load_settings(config_path)`` without a project root, so ``settings/oneiric.yaml`` in
the working directory is no longer read: the file is passed with ``--config`` (or ``ONEIRIC_CONFIG``), which
both 0.17 and 0.33 honour. Which version ignores the bare folder is asserted, not assumed.
"""

from __future__ import annotations

import json
import shutil
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.testing.fake_ollama import FakeOllama
from oneiric_memory.testing.models import find_test_model
from tests.cli_helpers import run_cli, store_env

ROOT = Path(__file__).resolve().parents[1]
ONEIRIC_VERSION = tuple(int(part) for part in version("oneiric").split(".")[:2])
CONFIG = ["--config", "settings/oneiric.yaml"]
CATEGORIES = {"memory_store": "pgvector", "embedding": "ollama", "insight_sink": "session_buddy", "memory": "unified"}


@pytest.fixture
def oneiric_folder(tmp_path: Path) -> Path:
    (tmp_path / "settings").mkdir()
    shutil.copy(ROOT / "settings" / "oneiric.yaml", tmp_path / "settings" / "oneiric.yaml")
    return tmp_path


def _json_payload(stdout: str) -> dict[str, object]:
    start = stdout.index("\n{") + 1 if not stdout.startswith("{") else 0
    return json.loads(stdout[start:])  # type: ignore[no-any-return]


def test_oneiric_cli_lists_explains_activates_and_probes(oneiric_folder: Path, pg_server: EmbeddedConnectInfo,
                                                         pg_data_dir: Path) -> None:
    env = {**store_env(pg_data_dir, f"onc_{uuid.uuid4().hex[:10]}"),
           "MAHAVISHNU_ONEIRIC_MEMORY__SESSION_BUDDY__ENABLED": "true",
           "MAHAVISHNU_ONEIRIC_MEMORY__SESSION_BUDDY__MODE": "in_process",
           "MAHAVISHNU_ONEIRIC_MEMORY__SESSION_BUDDY__DATABASE_PATH": str(oneiric_folder / "reflection.duckdb"),
           # Session-Buddy writes under HOME; a folder that does not exist keeps its offline start quick.
           "HOME": str(oneiric_folder / "no-home"), "XDG_CACHE_HOME": str(oneiric_folder / "cache")}

    listed = run_cli([*CONFIG, "--suppress-events", "list", "--domain", "adapter"], cwd=oneiric_folder, env=env,
                     program="oneiric")
    assert listed.returncode == 0, listed.stderr[-2000:]
    for category, provider in CATEGORIES.items():
        assert f"{category}/{provider}" in listed.stdout and "source=entry_point" in listed.stdout

    by_env = run_cli(["--suppress-events", "list", "--domain", "adapter"], cwd=oneiric_folder,
                     env={**env, "ONEIRIC_CONFIG": "settings/oneiric.yaml"}, program="oneiric")
    assert by_env.returncode == 0, by_env.stderr[-2000:]
    assert "memory_store/pgvector" in by_env.stdout  # the env equivalent of --config

    bare = run_cli(["--suppress-events", "list", "--domain", "adapter"], cwd=oneiric_folder, env=env,
                   program="oneiric")
    assert bare.returncode == 0, bare.stderr[-2000:]
    # 0.17 reads settings/oneiric.yaml from the working directory; 0.33 anchors settings/ at its own install.
    assert ("memory_store/pgvector" in bare.stdout) is (ONEIRIC_VERSION < (0, 18)), bare.stdout[-2000:]

    explained = run_cli([*CONFIG, "--suppress-events", "explain", "embedding"], cwd=oneiric_folder, env=env,
                        program="oneiric")
    assert explained.returncode == 0, explained.stderr[-2000:]
    for provider in ("ollama", "openai", "local", "hashing"):
        assert provider in explained.stdout

    # The OpenAI-compatible embedder against a loopback server, and the local ONNX model, by name.
    with FakeOllama(dimension=768) as server:
        swapped = run_cli([*CONFIG, "--suppress-events", "swap", "embedding", "--provider", "openai"], cwd=oneiric_folder,
                          env={**env, "MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__BASE_URL": server.openai_url},
                          program="oneiric")
        assert swapped.returncode == 0, swapped.stderr[-3000:]
        assert "Swapped adapter:embedding" in swapped.stdout and server.openai_requests
    folder, _why = find_test_model(ROOT)
    if folder is not None:  # without the real model the local swap is covered by test_oneiric_plugin's skip
        swapped = run_cli([*CONFIG, "--suppress-events", "swap", "embedding", "--provider", "local"], cwd=oneiric_folder,
                          env={**env, "MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__MODEL_PATH": str(folder),
                               "MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__VECTOR_DIMENSION": "384"}, program="oneiric")
        assert swapped.returncode == 0, swapped.stderr[-3000:]
        assert "Swapped adapter:embedding" in swapped.stdout

    for category, provider in (("memory_store", None), ("embedding", "hashing"), ("insight_sink", None),
                               ("memory", None)):
        args = [*CONFIG, "--suppress-events", "swap", category] + (["--provider", provider] if provider else [])
        swapped = run_cli(args, cwd=oneiric_folder, env=env, program="oneiric")
        assert swapped.returncode == 0, swapped.stderr[-3000:]
        assert f"Swapped adapter:{category}" in swapped.stdout, swapped.stdout[-2000:]

    health = run_cli([*CONFIG, "--suppress-events", "health", "--json"], cwd=oneiric_folder, env=env, program="oneiric")
    assert health.returncode == 0, health.stderr[-2000:]
    statuses = {entry["key"]: entry for entry in _json_payload(health.stdout)["lifecycle"]}  # type: ignore[union-attr,index]
    for category in CATEGORIES:
        assert statuses[category]["state"] == "ready", statuses[category]
        assert statuses[category]["last_error"] is None
        assert statuses[category]["last_health_at"] is not None  # the activation health probe ran and passed
    assert statuses["embedding"]["current_provider"] == "hashing"
