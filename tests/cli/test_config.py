"""``oneiric-memory config``: the effective settings and the layer each came from, as a user runs it.

The issue's case: an ``oneiric_memory:`` block in ``~/.config/mahavishnu/local.yaml`` used to be ignored silently
(the user got the embedded database). HOME and XDG_CONFIG_HOME point at temp folders; nothing of the machine's
own configuration is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.cli_helpers import run_cli

SECRET = "hunter2-Pa55-0042"


def user_home(tmp_path: Path, block: dict[str, object]) -> Path:
    home = tmp_path / "home"
    local = home / ".config" / "mahavishnu" / "local.yaml"
    local.parent.mkdir(parents=True)
    local.write_text(yaml.safe_dump({"pools": {"session_buddy_url": "http://buddy.invalid:1/mcp"},
                                     "oneiric_memory": block}), encoding="utf-8")
    return home


def test_config_json_shows_each_value_with_its_layer_and_masks_secrets(tmp_path: Path) -> None:
    home = user_home(tmp_path, {"postgres": {"dsn": f"postgresql://app:{SECRET}@db.invalid:5433/mem"},
                                "search": {"default_limit": 4}, "embedder": {"provider": "hashing"}})
    project = tmp_path / "project"
    (project / "settings").mkdir(parents=True)
    (project / "settings" / "mahavishnu.yaml").write_text(
        yaml.safe_dump({"oneiric_memory": {"search": {"default_limit": 2, "rrf_k": 30}}}), encoding="utf-8")
    env = {"HOME": str(home), "MAHAVISHNU_ONEIRIC_MEMORY__SEARCH__EF_SEARCH": "77"}
    result = run_cli(["--settings-root", str(project), "config", "--json"], cwd=tmp_path, env=env,
                     drop=("XDG_CONFIG_HOME",))
    assert result.returncode == 0, result.stderr[-2000:]
    assert SECRET not in result.stdout and SECRET not in result.stderr
    report = json.loads(result.stdout)
    values = report["values"]
    local = str(home / ".config" / "mahavishnu" / "local.yaml")
    assert values["search.default_limit"] == {"value": 4, "layer": "user-local", "from": local}  # beats the project
    assert values["search.rrf_k"] == {"value": 30, "layer": "project",
                                      "from": str(project / "settings" / "mahavishnu.yaml")}
    assert values["search.ef_search"] == {"value": 77, "layer": "env",
                                          "from": "env MAHAVISHNU_ONEIRIC_MEMORY__SEARCH__EF_SEARCH"}
    assert values["postgres.dsn"]["value"] == "postgresql://app:**********@db.invalid:5433/mem"
    assert values["postgres.port"] == {"value": 5432, "layer": "default", "from": "default"}
    assert values["session_buddy.mcp_url"]["value"] == "http://buddy.invalid:1/mcp"
    assert values["session_buddy.mcp_url"]["layer"] == "mahavishnu-key"  # Mahavishnu's pools.session_buddy_url
    assert report["settings_root"] == {"path": str(project), "from": "argument"}
    assert {"layer": "user-local", "path": local, "exists": True} in report["files"]
    selection = report["embedder_selection"]
    assert selection["available"] is True and selection["provider"] == "hashing"


def test_config_table_names_the_user_file_and_changed_keys_only(tmp_path: Path) -> None:
    home = user_home(tmp_path, {"coordinator": {"max_in_flight": 17}})
    result = run_cli(["config", "--changed", "--no-embedder"], cwd=tmp_path, env={"HOME": str(home), "COLUMNS": "200"},
                     drop=("XDG_CONFIG_HOME",))
    assert result.returncode == 0, result.stderr[-2000:]
    flat = " ".join(result.stdout.split())
    assert "coordinator.max_in_flight" in flat and "17" in flat and "user-local" in flat
    assert "postgres.port" not in flat  # --changed hides the defaults
    assert "from working directory" in flat


def test_config_reference_is_the_documented_table() -> None:
    result = run_cli(["config", "--reference"], cwd=Path(__file__).parent, env={})
    assert result.returncode == 0, result.stderr[-2000:]
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert doc.endswith(result.stdout) and result.stdout.startswith("| key | default | env variable | notes |")
