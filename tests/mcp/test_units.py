"""The MCP server's pure parts, without a database: the pin, the bind policy, the token check, the address parser,
the error mapping and the shallow output schema."""

from __future__ import annotations

import asyncio

import pytest
from fastmcp.exceptions import ToolError
from pydantic import SecretStr

from oneiric_memory.errors import ConfigurationError, InvalidInput, SchemaMismatch, StoreUnavailable
from oneiric_memory.mcp.auth import StaticBearerVerifier
from oneiric_memory.mcp.bind import check_bind, is_loopback
from oneiric_memory.mcp.failures import as_tool_error
from oneiric_memory.mcp.launcher import parse_http_address, prepare_settings
from oneiric_memory.mcp.results import SearchResult
from oneiric_memory.mcp.scope import ProjectScope
from oneiric_memory.mcp.tools import shallow_output_schema
from oneiric_memory.settings import load_settings

TOKEN = "t" * 40


def test_unpinned_scope_requires_a_project_for_every_read_and_write() -> None:
    scope = ProjectScope()
    for missing in (None, "", []):
        with pytest.raises(InvalidInput, match="project is required"):
            scope.readable(missing)
    with pytest.raises(InvalidInput, match="project is required"):
        scope.writable(None)
    assert scope.readable(["a", "b", "a"]) == ["a", "b"]
    assert scope.writable("a") == "a"


@pytest.mark.parametrize("hostile", ["beta", "alpha ", "ALPHA", "alph", "alpha\x00", "alpha' OR '1'='1", "*", "%",
                                     "alpha,beta", "../alpha", "\u0430lpha"])  # the last one is a Cyrillic 'а'
def test_pinned_scope_refuses_every_other_name(hostile: str) -> None:
    scope = ProjectScope(["alpha"])
    with pytest.raises(InvalidInput, match="outside this server's scope"):
        scope.readable(hostile)
    with pytest.raises(InvalidInput, match="outside this server's scope"):
        scope.readable(["alpha", hostile])
    with pytest.raises(InvalidInput, match="outside this server's scope"):
        scope.writable(hostile)


def test_pinned_scope_defaults() -> None:
    one = ProjectScope(["alpha"])
    assert one.readable(None) == ["alpha"] and one.writable(None) == "alpha"
    two = ProjectScope(["alpha", "beta"])
    assert two.readable(None) == ["alpha", "beta"] and two.readable("beta") == ["beta"]
    with pytest.raises(InvalidInput, match="pinned to several projects"):
        two.writable(None)


def test_scope_rejects_malformed_project_arguments() -> None:
    scope = ProjectScope(["alpha"])
    with pytest.raises(InvalidInput, match="at most 100"):
        scope.readable(["alpha"] * 101)
    with pytest.raises(InvalidInput, match="non-empty string"):
        scope.readable(["alpha", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        ProjectScope("alpha")


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True),
                                                ("[::1]", True), ("localhost", True), ("LOCALHOST", True),
                                                ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
                                                ("example.com", False), ("localhost.evil.com", False)])
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_bind_policy() -> None:
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", SecretStr(TOKEN))
    with pytest.raises(ConfigurationError, match=r"refusing to listen on 0\.0\.0\.0"):
        check_bind("0.0.0.0", None)
    for weak in ("short", " " + TOKEN, TOKEN + "\n"):
        with pytest.raises(ConfigurationError, match="at least 32 characters") as caught:
            check_bind("127.0.0.1", SecretStr(weak))
        assert weak.strip() not in str(caught.value)


def test_bearer_verifier_accepts_only_the_token_and_keeps_no_secret() -> None:
    verifier = StaticBearerVerifier(SecretStr(TOKEN))
    accepted = asyncio.run(verifier.verify_token(TOKEN))
    assert accepted is not None and TOKEN not in repr(accepted) and TOKEN not in repr(verifier)
    for wrong in ("", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "\ud800", "x" * 10_000):
        assert asyncio.run(verifier.verify_token(wrong)) is None


@pytest.mark.parametrize(("text", "host", "port"), [("8686", "127.0.0.1", 8686), ("0.0.0.0:1", "0.0.0.0", 1),
                                                    ("[::1]:9000", "::1", 9000), (" localhost:80 ", "localhost", 80)])
def test_http_address(text: str, host: str, port: int) -> None:
    address = parse_http_address(text)
    assert (address.host, address.port) == (host, port)


@pytest.mark.parametrize("text", ["", "x", "0", "65536", ":80", "[::1]", "[::1]9000", "host:", "1.2.3.4:-1"])
def test_bad_http_address(text: str) -> None:
    with pytest.raises(InvalidInput, match="--http"):
        parse_http_address(text)


def test_prepare_settings_applies_the_pin_and_refuses_before_starting() -> None:
    settings = load_settings(environ={"MAHAVISHNU_ONEIRIC_MEMORY__MCP__PROJECTS": "a,b"})
    assert settings.mcp.projects == ["a", "b"]
    assert prepare_settings(settings, projects=["c"]).mcp.projects == ["c"]
    prepared = prepare_settings(settings, http="127.0.0.1:9999")
    assert (prepared.mcp.host, prepared.mcp.port, prepared.mcp.projects) == ("127.0.0.1", 9999, ["a", "b"])
    with pytest.raises(ConfigurationError, match="refusing"):
        prepare_settings(settings, http="0.0.0.0:9999")


def test_errors_become_actionable_tool_errors() -> None:
    assert str(as_tool_error(InvalidInput("content is empty"), tool="t")) == "InvalidInput: content is empty"
    retry = str(as_tool_error(StoreUnavailable("pool exhausted"), tool="t"))
    assert retry.startswith("retryable: StoreUnavailable: pool exhausted")
    assert str(as_tool_error(SchemaMismatch("switch models"), tool="t")) == "SchemaMismatch: switch models"
    crash = as_tool_error(RuntimeError("postgresql://user:secret@host/db"), tool="t")
    assert isinstance(crash, ToolError) and "secret" not in str(crash) and "internal error (RuntimeError)" in str(crash)


def test_shallow_output_schema_keeps_the_top_level_contract() -> None:
    schema = shallow_output_schema(SearchResult)
    assert schema["type"] == "object" and set(schema["required"]) == {"hits", "count", "mode", "projects"}
    assert schema["properties"]["hits"] == {"type": "array", "title": "Hits", "items": {}}
    assert "$defs" not in schema
