"""The CLI's error contract (issue 12): one line on stderr, the documented exit code (kept by ``--debug``), the
host:port that was tried, ``health`` answering UNHEALTHY (7) when the database is down, non-UTF-8 stdin named as
such. Run in-process (typer's CliRunner): the process boundary is not what these tests are about."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import pytest

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.cli import EXIT_CODES
from tests.cli_helpers import invoke, store_env


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def down_env() -> dict[str, str]:
    port = closed_port()
    return {"MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__DSN": f"postgresql://memory:s3cret-pw@127.0.0.1:{port}/memory",
            "MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__RETRY_ATTEMPTS": "1",
            "MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__PROVIDER": "hashing",
            "MAHAVISHNU_ONEIRIC_MEMORY__SESSION_BUDDY__ENABLED": "false",
            "PORT_UNDER_TEST": str(port)}


def test_unreachable_database_is_one_line_exit_4_naming_host_and_port(down_env: dict[str, str]) -> None:
    result = invoke(["search", "anything"], env=down_env)
    assert result.returncode == EXIT_CODES["unavailable"], result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"127.0.0.1:{down_env['PORT_UNDER_TEST']}" in lines[0]
    assert "s3cret-pw" not in result.stderr and result.stdout == ""


def test_debug_shows_the_traceback_and_keeps_the_exit_code(down_env: dict[str, str]) -> None:
    result = invoke(["--debug", "search", "anything"], env=down_env)
    assert result.returncode == EXIT_CODES["unavailable"]
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: ")
    assert "s3cret-pw" not in result.stderr


def test_health_reports_unhealthy_exit_7_when_the_database_is_down(down_env: dict[str, str]) -> None:
    table = invoke(["health"], env=down_env)
    assert table.returncode == EXIT_CODES["check_failed"], table.stderr
    assert "unhealthy" in table.stdout and "memory_store" in table.stdout
    as_json = invoke(["health", "--json"], env=down_env)
    assert as_json.returncode == EXIT_CODES["check_failed"]
    document = json.loads(as_json.stdout)
    assert document["status"] == "unhealthy"
    store = next(c for c in document["components"] if c["name"] == "memory_store")
    assert store["status"] == "unhealthy" and f"127.0.0.1:{down_env['PORT_UNDER_TEST']}" in store["message"]


def test_non_utf8_stdin_is_named_as_such(pg_server: EmbeddedConnectInfo, pg_data_dir: Path) -> None:
    env = store_env(pg_data_dir, f"err_{uuid.uuid4().hex[:10]}")
    result = invoke(["remember", "-"], env=env, stdin=b"caf\xe9 in latin-1")
    assert result.returncode == EXIT_CODES["invalid_input"]
    assert "not UTF-8" in result.stderr and "surrogate" not in result.stderr
    assert "offset 3" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["search", "x", "--mode", "bogus"], EXIT_CODES["invalid_input"], "--mode 'bogus' is unknown"),
        (["search", "x", "--limit", "abc"], EXIT_CODES["invalid_input"], "--limit"),
        (["search", "x", "--nope"], EXIT_CODES["usage"], "No such option"),
        (["search"], EXIT_CODES["usage"], "Missing argument"),
        (["restore", "x.dump"], EXIT_CODES["usage"], "--yes"),
        (["remember", "x", "--metadata", "{nope"], EXIT_CODES["invalid_input"], "not JSON"),
        (["remember", "x", "--expires-at", "2020-01-01T00:00:00Z"], EXIT_CODES["invalid_input"], "in the past"),
    ],
)
def test_argument_errors_are_one_line_before_anything_opens(args: list[str], code: int, needle: str) -> None:
    # A DSN to nowhere: reaching the database would fail differently (exit 4), so a pass proves nothing opened.
    result = invoke(args, env={"MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__DSN": f"postgresql://x@127.0.0.1:{closed_port()}/x"})
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
