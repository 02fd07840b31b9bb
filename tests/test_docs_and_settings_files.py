"""The shipped docs and example settings stay in sync with the code."""

from __future__ import annotations

from pathlib import Path

import yaml

from oneiric_memory.settings import (
    MemorySettings,
    defaults_document,
    load_settings,
    reference_markdown,
    settings_reference,
)

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_doc_lists_every_key_default_and_env_name() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    table = text[text.index("| key | default | env variable | notes |"):]
    # regenerate with: uv run oneiric-memory config --reference  (paste over the table at the end of the doc)
    assert table == reference_markdown()
    for key, default, env, _ in settings_reference():
        assert f"`{key}`" in text, key
        assert f"`{env}`" in text, env
        assert f"`{default}`" in text, (key, default)


def test_mahavishnu_example_holds_every_default_and_loads() -> None:
    document = yaml.safe_load((ROOT / "settings" / "mahavishnu.yaml").read_text(encoding="utf-8"))
    assert document["oneiric_memory"] == defaults_document()
    assert document["plugins"]["auto_load"] is True
    # Mahavishnu 0.14 rejects unknown keys in its nested groups; only new top-level blocks are safe.
    assert set(document) <= {"plugins", "oneiric_memory"}
    settings = load_settings(root=ROOT, environ={})
    assert settings.model_dump(exclude={"cache_dir"}) == MemorySettings().model_dump(exclude={"cache_dir"})


def test_oneiric_settings_select_this_package_in_every_category() -> None:
    document = yaml.safe_load((ROOT / "settings" / "oneiric.yaml").read_text(encoding="utf-8"))
    assert document["plugins"]["auto_load"] is True
    assert document["adapters"]["selections"] == {
        "memory_store": "pgvector", "embedding": "ollama", "insight_sink": "session_buddy", "memory": "unified"}


def test_local_example_is_valid() -> None:
    document = yaml.safe_load((ROOT / "settings" / "local.yaml.example").read_text(encoding="utf-8"))
    MemorySettings.model_validate(document["oneiric_memory"])


def test_readme_gives_exactly_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["uv run oneiric-memory demo", "uv run pytest -n 2"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "\nuv run pytest -n 2\n" in ci


def test_example_block_does_not_override_mahavishnus_own_keys(tmp_path: Path) -> None:
    """Mahavishnu's llm.ollama_base_url / pools.session_buddy_url still win over the example block's defaults."""
    document = yaml.safe_load((ROOT / "settings" / "mahavishnu.yaml").read_text(encoding="utf-8"))
    document["llm"] = {"ollama_base_url": "http://gpu-box:11434"}
    document["pools"] = {"session_buddy_url": "http://buddy:8678/mcp"}
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "mahavishnu.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
    settings = load_settings(root=tmp_path, environ={"MAHAVISHNU_DB_HOST": "pg.internal", "MAHAVISHNU_DB_USER": "mv"},
                             mahavishnu_version="0.14.0")
    assert settings.embedder.url_for("ollama") == "http://gpu-box:11434"
    assert settings.session_buddy.mcp_url == "http://buddy:8678/mcp"
    assert (settings.postgres.host, settings.postgres.user) == ("pg.internal", "mv")
