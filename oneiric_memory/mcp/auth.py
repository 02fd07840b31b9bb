"""The bearer-token check of the HTTP server: one static token, compared in constant time.

mcp-common's ``auth`` package is the ecosystem's service-to-service JWT scheme (issuer allowlist, HS256,
per-tool ``__auth_token__`` argument); MCP hosts such as Claude Code send a static ``Authorization: Bearer``
header instead, so the token is checked by a FastMCP ``TokenVerifier`` here. The token is a ``SecretStr``
setting and never appears in a log line, an error or a repr.
"""

from __future__ import annotations

import hashlib
import hmac

from fastmcp.server.auth import AccessToken, TokenVerifier
from pydantic import SecretStr

__all__ = ["StaticBearerVerifier"]


class StaticBearerVerifier(TokenVerifier):
    """Accepts exactly one bearer token; other requests get FastMCP's 401."""

    def __init__(self, token: SecretStr) -> None:
        super().__init__()
        # Compare digests: equal lengths, so the comparison time says nothing about the token either.
        self._expected = hashlib.sha256(token.get_secret_value().encode("utf-8")).digest()

    async def verify_token(self, token: str) -> AccessToken | None:
        given = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        if not hmac.compare_digest(given, self._expected):
            return None
        # The AccessToken keeps a placeholder, not the secret, so nothing downstream can log it.
        return AccessToken(token="static-bearer", client_id="oneiric-memory-client", scopes=[])  # noqa: S106

    def __repr__(self) -> str:
        return "StaticBearerVerifier(token=SecretStr('**********'))"
