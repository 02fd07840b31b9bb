"""Where the HTTP server may listen: loopback by default; any other address only with a bearer token.

Pure checks, run before anything starts (no FastMCP import), so a refused start costs nothing.
"""

from __future__ import annotations

import ipaddress

from pydantic import SecretStr

from oneiric_memory.errors import ConfigurationError

__all__ = ["MIN_TOKEN_CHARS", "TOKEN_SETTING", "check_bind", "is_loopback"]

MIN_TOKEN_CHARS = 32  # the same floor as mcp-common's AuthConfig secrets
TOKEN_SETTING = "mcp.token (env MAHAVISHNU_ONEIRIC_MEMORY__MCP__TOKEN)"  # noqa: S105 (a setting name)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and any loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_bind(host: str, token: SecretStr | None) -> None:
    """Refuse, before anything starts, a non-loopback bind without a token, and a token too weak to use."""
    if token is not None:
        value = token.get_secret_value()
        if len(value) < MIN_TOKEN_CHARS or value.strip() != value:
            raise ConfigurationError(
                f"{TOKEN_SETTING} must be at least {MIN_TOKEN_CHARS} characters without surrounding spaces; "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    elif not is_loopback(host):
        raise ConfigurationError(
            f"refusing to listen on {host}: the memory would be reachable from other machines without "
            f"authentication. Set {TOKEN_SETTING}, or bind 127.0.0.1")
