"""``load_settings``: layering, Mahavishnu defaults, env handling, validation messages and secret hygiene."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from pydantic import ValidationError

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.adapters.pgvector.connection import ConnectParams
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.errors import ConfigurationError, StoreError
from oneiric_memory.settings import (
    EmbedderSettings,
    MemorySettings,
    PostgresSettings,
    load_settings,
    resolve_settings,
)
from oneiric_memory.settings_sources import Source, follows_legacy_llm_keys, installed_mahavishnu_version
from tests.foundation_fixtures import ensure_database
from tests.support import make_settings

SECRET = "s3cr3t-Pa55word-0042"
ENV = "MAHAVISHNU_ONEIRIC_MEMORY__"


def write(root: Path, name: str, document: dict[str, Any] | str) -> Path:
    path = root / "settings" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document), encoding="utf-8")
    return path


# --- layering ----------------------------------------------------------------------------------------------


def test_layers_apply_lowest_first(tmp_path: Path) -> None:
    assert load_settings(root=tmp_path, environ={}).postgres.port == 5432  # code default
    write(tmp_path, "mahavishnu.yaml", {"oneiric_memory": {
        "postgres": {"port": 5001, "max_connections": 3, "database": "from_main", "user": "main_user"},
        "search": {"default_limit": 7}}})
    settings = load_settings(root=tmp_path, environ={})
    assert (settings.postgres.port, settings.postgres.database, settings.search.default_limit) == (5001, "from_main", 7)

    write(tmp_path, "local.yaml", {"oneiric_memory": {"postgres": {"port": 5002, "database": "from_local"}}})
    settings = load_settings(root=tmp_path, environ={})
    assert (settings.postgres.port, settings.postgres.database) == (5002, "from_local")
    assert settings.postgres.max_connections == 3  # deep merge: the main file's sibling keys survive

    environ = {f"{ENV}POSTGRES__PORT": "5003", f"{ENV}POSTGRES__USER": "env_user"}
    settings = load_settings(root=tmp_path, environ=environ)
    assert (settings.postgres.port, settings.postgres.user) == (5003, "env_user")

    settings = load_settings({"postgres": {"user": "explicit"}}, root=tmp_path, environ=environ)
    assert (settings.postgres.port, settings.postgres.user) == (5003, "explicit")
    assert settings.postgres.database == "from_local"
    assert settings.postgres.statement_timeout_ms == 30_000  # untouched keys keep their code defaults
    assert settings.search.default_limit == 7


def test_env_values_are_converted_per_field(tmp_path: Path) -> None:
    settings = load_settings(root=tmp_path, environ={
        f"{ENV}POSTGRES__AUTO_MIGRATE": "false", f"{ENV}SEARCH__DEFAULT_MODE": "text",
        f"{ENV}POSTGRES__STATEMENT_TIMEOUT_MS": "1500", f"{ENV}EMBEDDER__TASK_PREFIXES__M__QUERY": "q: ",
        "UNRELATED__POSTGRES__PORT": "1"})
    assert settings.postgres.auto_migrate is False
    assert settings.search.default_mode == "text"
    assert settings.postgres.statement_timeout_ms == 1500
    assert settings.embedder.task_prefixes["m"].query == "q: "
    assert settings.embedder.task_prefixes["nomic-embed-text"].query == "search_query: "  # merged, not replaced
    assert settings.postgres.port == 5432


def test_earlier_branch_candidates_key_still_loads_as_both_counts(tmp_path: Path) -> None:
    """Settings files from before the split keep working; an explicit new key wins over the old one."""
    settings = load_settings(root=tmp_path, environ={f"{ENV}SEARCH__BRANCH_CANDIDATES": "25"})
    assert (settings.search.vector_candidates, settings.search.text_candidates) == (25, 25)
    both = load_settings({"search": {"branch_candidates": 30, "vector_candidates": 90}}, root=tmp_path, environ={})
    assert (both.search.vector_candidates, both.search.text_candidates) == (90, 30)
    with pytest.raises(ConfigurationError, match=r"vector_candidates|text_candidates"):
        load_settings({"search": {"branch_candidates": 0}}, root=tmp_path, environ={})


def test_numbers_through_env_stay_strings_where_strings_are_expected(tmp_path: Path) -> None:
    settings = load_settings(root=tmp_path, environ={
        f"{ENV}POSTGRES__PASSWORD": "12345", f"{ENV}POSTGRES__USER": "007", f"{ENV}POSTGRES__DATABASE": "2024",
        f"{ENV}EMBEDDER__MODEL": "1.5"})
    assert settings.postgres.password is not None
    assert settings.postgres.password.get_secret_value() == "12345"
    assert settings.postgres.user == "007"  # not 7
    assert settings.postgres.database == "2024"
    assert settings.embedder.model == "1.5"
    write(tmp_path, "local.yaml", {"oneiric_memory": {"postgres": {"password": 12345, "user": 7}}})
    from_yaml = load_settings(root=tmp_path, environ={})
    assert from_yaml.postgres.password is not None
    assert from_yaml.postgres.password.get_secret_value() == "12345"
    assert from_yaml.postgres.user == "7"


def test_mahavishnu_keys_are_defaults(tmp_path: Path) -> None:
    """Mahavishnu before 0.36 (``llm.ollama_base_url`` exists there): its keys serve as our defaults."""
    write(tmp_path, "mahavishnu.yaml", {
        "llm": {"ollama_base_url": "http://gpu-box:11434", "model": "nomic-embed-text:v1.5"},
        "pools": {"session_buddy_url": "http://buddy:8678/mcp"}})
    settings = load_settings(root=tmp_path, environ={}, mahavishnu_version="0.14.0")
    assert settings.embedder.ollama_url == "http://gpu-box:11434" == settings.embedder.url_for("ollama")
    assert settings.embedder.base_url is None  # base_url is ours alone: it would also redirect the openai provider
    assert settings.embedder.model == "nomic-embed-text:v1.5"
    assert settings.session_buddy.mcp_url == "http://buddy:8678/mcp"
    # a chat model is not an embedding model: it is not taken over
    write(tmp_path, "mahavishnu.yaml", {"llm": {"model": "qwen2.5:7b"}})
    assert load_settings(root=tmp_path, environ={}, mahavishnu_version="0.14.0").embedder.model == "nomic-embed-text"
    # Mahavishnu's env and an already-parsed Mahavishnu config count too; our own block wins over them
    settings = load_settings(root=tmp_path, environ={"MAHAVISHNU_LLM__OLLAMA_BASE_URL": "http://env-ollama:1"},
                             mahavishnu_config={"pools": {"session_buddy_url": "http://parsed:2/mcp"}},
                             mahavishnu_version="0.35.1")
    assert settings.embedder.ollama_url == "http://env-ollama:1"
    assert settings.session_buddy.mcp_url == "http://parsed:2/mcp"
    write(tmp_path, "local.yaml", {"oneiric_memory": {"embedder": {"base_url": "http://ours:3"}}})
    assert load_settings(root=tmp_path, environ={"MAHAVISHNU_LLM__OLLAMA_BASE_URL": "http://env-ollama:1"},
                         mahavishnu_version="0.14.0").embedder.url_for("ollama") == "http://ours:3"


def test_keys_mahavishnu_036_removed_are_no_longer_followed(tmp_path: Path) -> None:
    """0.36 dropped ``llm.ollama_base_url`` (its loader silently discards a stale one): so do we. Keys that
    still exist (``pools.session_buddy_url``) are followed as before."""
    write(tmp_path, "mahavishnu.yaml", {
        "llm": {"ollama_base_url": "http://stale:11434", "model": "nomic-embed-text:v1.5"},
        "pools": {"session_buddy_url": "http://buddy:8678/mcp"}})
    environ = {"MAHAVISHNU_LLM__OLLAMA_BASE_URL": "http://stale-env:1"}
    current = resolve_settings(root=tmp_path, environ=environ, mahavishnu_version="0.36.0")
    assert current.settings.embedder.ollama_url == EmbedderSettings().ollama_url
    assert current.settings.embedder.model == EmbedderSettings().model
    assert current.settings.session_buddy.mcp_url == "http://buddy:8678/mcp"
    assert current.source_of("embedder.ollama_url").layer == "default"
    assert current.as_dict()["mahavishnu"] == {"installed_version": "0.36.0", "follows_llm_ollama_base_url": False}
    legacy = resolve_settings(root=tmp_path, environ=environ, mahavishnu_version="0.35.1")
    assert legacy.settings.embedder.ollama_url == "http://stale-env:1"
    # with no Mahavishnu installed the file is the user's own, and its keys are followed
    assert load_settings(root=tmp_path, environ={}, mahavishnu_version=None).embedder.ollama_url == "http://stale:11434"
    # the default is the installed Mahavishnu's generation (0.14-era/none on 3.13, 0.36 on 3.14)
    installed = installed_mahavishnu_version()
    expected = "http://stale:11434" if follows_legacy_llm_keys(installed) else EmbedderSettings().ollama_url
    assert load_settings(root=tmp_path, environ={}).embedder.ollama_url == expected


# --- where the layers are: XDG user files, the settings root, MAHAVISHNU_CONFIG -----------------------------


def user_file(home: Path, name: str, document: dict[str, Any]) -> Path:
    path = home / ".config" / "mahavishnu" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_user_local_yaml_block_takes_effect_and_names_its_file(tmp_path: Path) -> None:
    """The issue's case: ``oneiric_memory:`` in ~/.config/mahavishnu/local.yaml used to be silently ignored."""
    home = tmp_path / "home"
    local = user_file(home, "local.yaml", {"oneiric_memory": {"postgres": {"dsn": f"postgresql://app:{SECRET}@db:5/m"},
                                                              "search": {"default_limit": 4}}})
    resolved = resolve_settings(root=tmp_path / "project", environ={"HOME": str(home)})
    assert resolved.settings.search.default_limit == 4
    assert not resolved.settings.postgres.embedded  # not the embedded database any more
    assert resolved.source_of("search.default_limit") == Source("user-local", str(local))
    values = {row.key: row for row in resolved.values()}
    assert values["postgres.dsn"].value == "postgresql://app:**********@db:5/m" and values["postgres.dsn"].secret
    assert (values["postgres.dsn"].layer, values["postgres.dsn"].origin) == ("user-local", str(local))
    assert SECRET not in json.dumps(resolved.as_dict())


def test_file_layers_apply_in_oneirics_order(tmp_path: Path) -> None:
    """project < project local < XDG config < XDG local < env < MAHAVISHNU_CONFIG < explicit arguments."""
    root, xdg = tmp_path / "root", tmp_path / "xdg"
    keys = ("port", "max_connections", "min_connections", "connect_timeout_s", "acquire_timeout_s",
            "command_timeout_s")
    write(root, "mahavishnu.yaml", {"oneiric_memory": {"postgres": dict.fromkeys(keys, 1)}})
    write(root, "local.yaml", {"oneiric_memory": {"postgres": dict.fromkeys(keys[1:], 2)}})
    for name, value, keep in (("config.yaml", 3, keys[2:]), ("local.yaml", 4, keys[3:])):
        path = xdg / "mahavishnu" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"oneiric_memory": {"postgres": dict.fromkeys(keep, value)}}), encoding="utf-8")
    explicit_file = tmp_path / "explicit.yaml"
    explicit_file.write_text(yaml.safe_dump({"oneiric_memory": {"postgres": {"command_timeout_s": 6}}}),
                             encoding="utf-8")
    environ = {"XDG_CONFIG_HOME": str(xdg), "HOME": str(tmp_path / "ignored-home"),
               f"{ENV}POSTGRES__ACQUIRE_TIMEOUT_S": "5", f"{ENV}POSTGRES__COMMAND_TIMEOUT_S": "5",
               "MAHAVISHNU_CONFIG": str(explicit_file)}
    resolved = resolve_settings({"postgres": {"command_timeout_s": 7}}, root=root, environ=environ)
    pg = resolved.settings.postgres
    assert (pg.port, pg.max_connections, pg.min_connections, pg.connect_timeout_s) == (1, 2, 3, 4)
    assert (pg.acquire_timeout_s, pg.command_timeout_s) == (5, 7)
    assert [resolved.source_of(f"postgres.{key}").layer for key in keys] == [
        "project", "project-local", "user", "user-local", "env", "explicit"]
    without_explicit = resolve_settings(root=root, environ=environ)
    assert without_explicit.settings.postgres.command_timeout_s == 6  # MAHAVISHNU_CONFIG beats env, as in Oneiric
    assert without_explicit.source_of("postgres.command_timeout_s").layer == "mahavishnu-config"
    assert {f.layer: f.exists for f in without_explicit.files} == {
        "project": True, "project-local": True, "user": True, "user-local": True, "mahavishnu-config": True}


def test_missing_mahavishnu_config_file_is_reported_not_fatal(tmp_path: Path) -> None:
    resolved = resolve_settings(root=tmp_path, environ={"MAHAVISHNU_CONFIG": str(tmp_path / "nope.yaml")})
    assert resolved.settings.postgres.port == 5432
    assert any("nope.yaml" in note and "does not exist" in note for note in resolved.notes)


def test_no_home_in_the_environment_reads_no_user_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit environment is the whole truth: the real ~/.config of whoever runs the tests is never read."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    user_file(tmp_path / "home", "local.yaml", {"oneiric_memory": {"search": {"default_limit": 9}}})
    assert load_settings(root=tmp_path, environ={}).search.default_limit == 10
    assert load_settings(root=tmp_path).search.default_limit == 9  # os.environ's HOME


def test_settings_root_is_explicit_then_env_then_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, from_env, cwd = tmp_path / "explicit", tmp_path / "env", tmp_path / "cwd"
    for folder, limit in ((explicit, 1), (from_env, 2), (cwd, 3)):
        write(folder, "mahavishnu.yaml", {"oneiric_memory": {"search": {"default_limit": limit}}})
    monkeypatch.chdir(cwd)
    environ = {"ONEIRIC_MEMORY_SETTINGS_ROOT": str(from_env)}
    assert resolve_settings(root=explicit, environ=environ).settings.search.default_limit == 1
    by_env = resolve_settings(environ=environ)
    assert (by_env.settings.search.default_limit, by_env.root_source) == (2, "env ONEIRIC_MEMORY_SETTINGS_ROOT")
    fallback = resolve_settings(environ={})
    assert (fallback.settings.search.default_limit, fallback.root_source) == (3, "working directory")


# --- MAHAVISHNU_DB_*: Mahavishnu's PostgreSQL ---------------------------------------------------------------


def test_mahavishnu_db_env_feeds_postgres_when_host_is_set(tmp_path: Path) -> None:
    assert load_settings(root=tmp_path, environ={"MAHAVISHNU_DB_NAME": "x"}).postgres.embedded  # no host: ignored
    environ = {"MAHAVISHNU_DB_HOST": "pg.internal", "MAHAVISHNU_DB_PASSWORD": SECRET, "MAHAVISHNU_DB_PORT": "6543"}
    resolved = resolve_settings(root=tmp_path, environ=environ)
    pg = resolved.settings.postgres
    assert not pg.embedded
    assert (pg.host, pg.port, pg.database, pg.user, pg.ssl) == ("pg.internal", 6543, "mahavishnu", "mahavishnu",
                                                                "prefer")  # Mahavishnu's own defaults
    assert pg.password is not None and pg.password.get_secret_value() == SECRET
    assert resolved.source_of("postgres.host").origin == "env MAHAVISHNU_DB_HOST"
    assert "MAHAVISHNU_DB_NAME" in resolved.source_of("postgres.database").origin
    shown = {row.key: row.value for row in resolved.values()}
    assert shown["postgres.password"] == "**********" and SECRET not in json.dumps(resolved.as_dict())
    # our own keys win, one by one
    write(tmp_path, "local.yaml", {"oneiric_memory": {"postgres": {"database": "memory"}}})
    assert load_settings(root=tmp_path, environ=environ).postgres.database == "memory"
    # once our settings name the server, none of Mahavishnu's user/password/database leaks onto it
    mine = load_settings({"postgres": {"dsn": "postgresql://me@mine/m"}}, root=tmp_path, environ=environ)
    assert mine.postgres.password is None and mine.postgres.user == "postgres" and mine.postgres.host is None


def test_embedded_is_the_default_without_dsn_or_host(tmp_path: Path) -> None:
    assert load_settings(root=tmp_path, environ={}).postgres.embedded
    assert not load_settings({"postgres": {"host": "db"}}, root=tmp_path, environ={}).postgres.embedded
    assert not load_settings(root=tmp_path, environ={f"{ENV}POSTGRES__DSN": "postgresql://db/x"}).postgres.embedded
    cache = load_settings({"cache_dir": str(tmp_path / "c")}, root=tmp_path, environ={})
    assert cache.embedded_data_dir == tmp_path / "c" / "pgdata"


# --- validation messages ---------------------------------------------------------------------------------


def test_invalid_values_name_the_key_and_the_file_or_env_var(tmp_path: Path) -> None:
    main = write(tmp_path, "mahavishnu.yaml", {"oneiric_memory": {"postgres": {"port": "abc"}}})
    with pytest.raises(ConfigurationError) as info:
        load_settings(root=tmp_path, environ={})
    assert "oneiric_memory.postgres.port" in str(info.value) and str(main) in str(info.value)

    main.unlink()
    local = write(tmp_path, "local.yaml", {"oneiric_memory": {"postgres": {"prot": 1}, "search": {"ef_search": 0}}})
    with pytest.raises(ConfigurationError) as info:
        load_settings(root=tmp_path, environ={})
    message = str(info.value)
    assert "oneiric_memory.postgres.prot" in message and "oneiric_memory.search.ef_search" in message
    assert message.count(str(local)) == 2
    assert info.value.details == {"errors": 2}

    local.unlink()
    with pytest.raises(ConfigurationError, match=rf"postgres\.max_connections.*env {ENV}POSTGRES__MAX_CONNECTIONS"):
        load_settings(root=tmp_path, environ={f"{ENV}POSTGRES__MAX_CONNECTIONS": "0"})
    with pytest.raises(ConfigurationError, match=r"search\.default_mode.*explicit arguments"):
        load_settings({"search": {"default_mode": "fuzzy"}}, root=tmp_path, environ={})


def test_broken_files_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, "mahavishnu.yaml", "oneiric_memory: [unclosed\n")
    with pytest.raises(ConfigurationError, match="not valid YAML") as info:
        load_settings(root=tmp_path, environ={})
    assert str(path) in str(info.value)
    write(tmp_path, "mahavishnu.yaml", "- a list\n")
    with pytest.raises(ConfigurationError, match="top level must be a mapping"):
        load_settings(root=tmp_path, environ={})
    write(tmp_path, "mahavishnu.yaml", "oneiric_memory: 3\n")
    with pytest.raises(ConfigurationError, match="'oneiric_memory' must be a mapping"):
        load_settings(root=tmp_path, environ={})


@pytest.mark.parametrize("schema", ["x; drop", "x; DROP SCHEMA public CASCADE; --", 'a"b', "Public", "", "1abc",
                                    "a" * 49, "sp ace", "dash-ed", "caf\u00e9"])
def test_unsafe_schema_names_are_rejected(tmp_path: Path, schema: str) -> None:
    with pytest.raises(ConfigurationError, match=r"postgres\.db_schema.*not a safe SQL identifier"):
        load_settings({"postgres": {"db_schema": schema}}, root=tmp_path, environ={})


def test_unsafe_identifiers_through_env_and_text_search_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=rf"db_schema.*env {ENV}POSTGRES__DB_SCHEMA"):
        load_settings(root=tmp_path, environ={f"{ENV}POSTGRES__DB_SCHEMA": "x; drop"})
    with pytest.raises(ConfigurationError, match="text_search_config"):
        load_settings({"postgres": {"text_search_config": "english'); drop"}}, root=tmp_path, environ={})
    assert load_settings({"postgres": {"db_schema": "ok_schema_1"}}, root=tmp_path,
                         environ={}).postgres.db_schema == "ok_schema_1"


def test_vector_dimension_must_be_indexable(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="at most 2000") as info:
        load_settings({"postgres": {"vector_type": "vector", "vector_dimension": 3072}}, root=tmp_path, environ={})
    assert "explicit arguments" in str(info.value)
    ok = load_settings({"postgres": {"vector_type": "halfvec", "vector_dimension": 3072}}, root=tmp_path, environ={})
    assert ok.postgres.vector_dimension == 3072


# --- the secret never shows ----------------------------------------------------------------------------------


def test_password_never_shows_in_reprs_dumps_or_errors(tmp_path: Path) -> None:
    dsn = f"postgresql://memory:{SECRET}@db.internal:5432/memory"
    settings = load_settings(root=tmp_path, environ={f"{ENV}POSTGRES__PASSWORD": SECRET, f"{ENV}POSTGRES__DSN": dsn})
    assert settings.postgres.password is not None and settings.postgres.password.get_secret_value() == SECRET
    params = ConnectParams.from_settings(settings.postgres)
    for text in (repr(settings), str(settings), repr(settings.postgres), settings.model_dump_json(),
                 str(settings.model_dump()), repr(params), str(params)):
        assert SECRET not in text
    # a broken configuration next to the secret: the message names keys, never values
    for environ in ({f"{ENV}POSTGRES__PASSWORD": SECRET, f"{ENV}POSTGRES__PORT": SECRET},
                    {f"{ENV}POSTGRES__PASSWORD__NESTED": SECRET},
                    {f"{ENV}POSTGRES__SSL": SECRET}):
        with pytest.raises(ConfigurationError) as info:
            load_settings(root=tmp_path, environ=environ)
        assert SECRET not in str(info.value) and SECRET not in repr(info.value.details)
    # direct construction and assignment: pydantic's own errors hide the input too
    with pytest.raises(ValidationError) as raw:
        PostgresSettings(password=[SECRET])  # type: ignore[arg-type]
    assert SECRET not in str(raw.value)
    with pytest.raises(ValidationError) as raw:
        settings.postgres.port = SECRET  # type: ignore[assignment]
    assert SECRET not in str(raw.value)


@pytest.mark.asyncio
async def test_password_never_shows_in_logs_or_store_errors(
        pg_server: EmbeddedConnectInfo, pg_data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The embedded server is used as an *external* one (host + port + password; it trusts local sockets, so
    the password is sent nowhere but must still stay out of every log line and error)."""
    await ensure_database(pg_server)
    caplog.set_level(logging.DEBUG)
    settings: MemorySettings = make_settings(pg_data_dir, postgres={
        "host": pg_server.host, "port": pg_server.port, "user": pg_server.user, "password": SECRET})
    assert not settings.postgres.embedded
    with structlog.testing.capture_logs() as logs:
        store = PgvectorMemoryStore(settings)
        await store.init()
        try:
            assert await store.health()
            async with store.gate.acquire() as connection:
                await connection.execute(f'DROP SCHEMA "{store.schema}" CASCADE')
        finally:
            await store.cleanup()
        broken = [
            make_settings(pg_data_dir, postgres={"host": "127.0.0.1", "port": 1, "password": SECRET,
                                                 "connect_timeout_s": 2}),
            make_settings(pg_data_dir, postgres={"dsn": f"postgresql://u:{SECRET}@127.0.0.1:1/db",
                                                 "connect_timeout_s": 2}),
            make_settings(pg_data_dir, postgres={"dsn": f"postgresql://u:{SECRET}@127.0.0.1:notaport/db"}),
            make_settings(pg_data_dir, postgres={"dsn": f"postgresql://u:p@{SECRET}@[::1/db"}),
        ]
        failures: list[BaseException] = []
        for bad in broken:
            with pytest.raises((StoreError, ConfigurationError)) as info:
                await PgvectorMemoryStore(bad).init()
            failures.append(info.value)
    assert any(entry.get("event") == "store-ready" for entry in logs)  # logs were captured at all
    assert isinstance(failures[2], ConfigurationError) and "postgres.dsn" in str(failures[2])
    for failure in failures:
        assert SECRET not in str(failure) and SECRET not in repr(failure.details)  # type: ignore[attr-defined]
    assert SECRET not in repr(logs)
    assert SECRET not in caplog.text
