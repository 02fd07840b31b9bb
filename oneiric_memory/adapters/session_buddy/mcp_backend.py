"""MCP backend: Session-Buddy's MCP server (the process that holds its file), for one batch.

Capabilities are read from the server's tool list, never from its version:

- liveness is ``list_tools`` over a fresh session: with fastmcp 4.x, ``Client.ping()`` against
  Session-Buddy 0.36 answers "Method not found", so a ping would call a running server dead;
- ``store_reflection`` gets ``project`` and ``source_artifact_uri="oneiric-memory://<memory id>"`` when
  its schema lists them (0.36), only ``content`` and ``tags`` otherwise (0.23);
- neither version answers with the new entry's id, so the id comes from ``fingerprint_search`` (its
  token-overlap path returns tags, so the ``om:<insight_id>`` tag identifies our entry exactly); without
  it the handle ``om:<insight_id>`` stands in for the id;
- no version has a tool that deletes a reflection, so :meth:`McpBackend.delete` refuses (the caller keeps
  its tombstone until in-process mode can reach the file), and no tool lists every reflection, so the
  ``'*'`` wildcard is refused too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from oneiric_memory.adapters.session_buddy.tags import (
    TAG_ID_PREFIX,
    artifact_uri,
    hit_from,
    is_wildcard,
    looks_like_insight,
    query_tokens,
    session_buddy_project,
    tags_for,
)
from oneiric_memory.errors import InsightSinkError
from oneiric_memory.insights import Insight, InsightHit

__all__ = ["McpBackend", "mcp_answers", "tool_arguments"]

_MCP_FIND_LIMIT = 200
# A Session-Buddy id in a tool's answer: a 26-character ULID (0.23) or the 32 hex digits of a uuid7 (0.36).
_ID_IN_ANSWER_RE = re.compile(r"\bID:\s*([0-9A-HJKMNP-TV-Z]{26}|[0-9a-f]{32})\b")


async def _close(client: Any) -> None:
    with contextlib.suppress(BaseException):
        await client.__aexit__(None, None, None)


def tool_arguments(tool: Any) -> frozenset[str]:
    """The argument names a listed tool accepts (``input_schema`` in MCP SDK 2, ``inputSchema`` before)."""
    schema = getattr(tool, "input_schema", None)
    if schema is None:
        schema = getattr(tool, "inputSchema", None)
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return frozenset(properties or ())


async def _list_tools(client: Any, timeout: float) -> dict[str, frozenset[str]]:
    async with asyncio.timeout(timeout):
        return {tool.name: tool_arguments(tool) for tool in await client.list_tools()}


async def mcp_answers(url: str, bound_s: float) -> bool:
    """Whether an MCP server answers at ``url``: a session opens and lists its tools (not ``ping``)."""
    try:
        from fastmcp import Client

        async with asyncio.timeout(bound_s):
            async with Client(url, timeout=bound_s, init_timeout=bound_s) as client:
                await client.list_tools()
    except Exception:  # refused, timed out, not MCP: all mean "does not answer"
        return False
    return True


class McpBackend:
    """A client session on Session-Buddy's MCP server for one batch."""

    mode = "mcp"

    def __init__(self, client: Any, url: str, tools: Mapping[str, frozenset[str]], timeout: float) -> None:
        self._client = client
        self._url = url
        self._tools = tools  # tool name -> the argument names it accepts
        self._timeout = timeout

    @classmethod
    async def open(cls, url: str, bound_s: float) -> McpBackend:
        from fastmcp import Client

        timeout = bound_s
        client: Any = Client(url, timeout=timeout, init_timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                await client.__aenter__()
        except asyncio.CancelledError:
            await _close(client)
            raise
        except Exception as exc:
            await _close(client)
            raise InsightSinkError(
                f"Session-Buddy's MCP server at {url} does not answer ({type(exc).__name__}); start it "
                "(session-buddy) or use in_process mode; deliveries stay queued",
                reason="unreachable", url=url,
            ) from None
        try:
            tools = await _list_tools(client, timeout)
        except asyncio.CancelledError:
            await _close(client)
            raise
        except Exception as exc:
            await _close(client)
            raise InsightSinkError(f"Session-Buddy's MCP server at {url} did not list its tools "
                                   f"({type(exc).__name__}); deliveries stay queued",
                                   reason="unreachable", url=url) from None
        backend = cls(client, url, tools, timeout)
        if "store_reflection" not in tools:
            await backend.close()
            raise InsightSinkError(f"the MCP server at {url} has no store_reflection tool; is it Session-Buddy?",
                                   reason="incompatible", url=url)
        return backend

    def accepts(self, tool: str, argument: str) -> bool:
        return argument in self._tools.get(tool, frozenset())

    async def _call(self, name: str, arguments: dict[str, Any]) -> Any:
        accepted = self._tools.get(name)
        if accepted:  # pass only what this server version accepts
            arguments = {key: value for key, value in arguments.items() if key in accepted}
        try:
            async with asyncio.timeout(self._timeout):
                return await self._client.call_tool(name, arguments, timeout=self._timeout)
        except TimeoutError:
            raise InsightSinkError(f"Session-Buddy's {name} tool did not answer within {self._timeout:g}s; "
                                   "deliveries stay queued and are retried", reason="timeout", tool=name) from None
        except Exception as exc:
            raise InsightSinkError(f"Session-Buddy's {name} tool failed at {self._url}: {type(exc).__name__}: "
                                   f"{str(exc)[:200]}", reason="tool_failed", tool=name) from None

    @staticmethod
    def _text(result: Any) -> str:
        parts = getattr(result, "content", None) or []
        return "\n".join(str(getattr(part, "text", "")) for part in parts)

    @staticmethod
    def _data(result: Any) -> dict[str, Any]:
        for candidate in (getattr(result, "data", None), getattr(result, "structured_content", None)):
            if isinstance(candidate, dict):
                return candidate
        text = McpBackend._text(result)
        with contextlib.suppress(ValueError):
            decoded = json.loads(text)
            if isinstance(decoded, dict):
                return decoded
        return {}

    async def _fingerprint_rows(self, query: str, limit: int) -> list[dict[str, Any]]:
        """Rows from ``fingerprint_search``; threshold > 1 forces its token-overlap path, which returns tags."""
        result = await self._call("fingerprint_search", {"query": query, "content_type": "reflection",
                                                         "threshold": 1.01, "limit": limit})
        data = self._data(result)
        rows = data.get("reflection_results") or data.get("results") or []
        return [row for row in rows if isinstance(row, dict)]

    async def _find(self, insight: Insight) -> str | None:
        """Our entry's id, found by its exact ``om:`` tag; the handle when only ``quick_search`` can tell.

        ``fingerprint_search`` sees at most ``_MCP_FIND_LIMIT`` rows sharing a word with the content, so
        ``quick_search`` backs it up. Without embeddings that matches the tag exactly; with them (0.36 with
        llama-server) it returns the nearest entry whatever it is, so its hit counts only when it shows our
        content.
        """
        tag = f"{TAG_ID_PREFIX}{insight.insight_id}"
        found = await self._real_id(insight, tag)
        if found is not None or "quick_search" not in self._tools:
            return found
        text = self._text(await self._call("quick_search", {"query": tag, "min_score": 0.0}))
        head = " ".join(insight.content.split())[:60]
        if "no results" not in text.lower() and head and head in " ".join(text.split()):
            return tag
        return None

    async def _real_id(self, insight: Insight, tag: str) -> str | None:
        if "fingerprint_search" not in self._tools:
            return None
        tokens = sorted(query_tokens(insight.content, limit=64), key=len, reverse=True)
        if not tokens:
            return None
        with contextlib.suppress(InsightSinkError):
            for row in await self._fingerprint_rows(tokens[0], _MCP_FIND_LIMIT):
                if tag in [str(t) for t in row.get("tags") or []]:
                    return str(row.get("id"))
        return None

    async def deliver(self, insight: Insight) -> tuple[str, bool]:
        existing = await self._find(insight)
        if existing is not None:
            return existing, False
        arguments: dict[str, Any] = {"content": insight.content, "tags": tags_for(insight)}
        project = session_buddy_project(insight.project)
        if project is not None:  # 0.36 refuses a project outside ^[a-zA-Z0-9._-]{1,128}$; the tag keeps it
            arguments["project"] = project
        uri = artifact_uri(insight)
        if uri is not None:
            arguments["source_artifact_uri"] = uri
        answer = self._text(await self._call("store_reflection", arguments))
        if "stored successfully" not in answer.lower():
            first_line = answer.strip().splitlines()[0][:160] if answer.strip() else "(empty answer)"
            raise InsightSinkError(f"Session-Buddy at {self._url} did not store the insight: {first_line}",
                                   reason="refused")
        match = _ID_IN_ANSWER_RE.search(answer)
        if match:
            return match.group(1), True
        tag = f"{TAG_ID_PREFIX}{insight.insight_id}"
        return await self._real_id(insight, tag) or tag, True

    async def search(self, query: str, fetch: int, projects: frozenset[str] | None) -> list[InsightHit]:
        if is_wildcard(query):
            raise InsightSinkError(
                f"Session-Buddy's MCP server at {self._url} has no tool that lists every reflection; "
                "'*' works in-process (while the server is stopped)", reason="unsupported", url=self._url)
        if "fingerprint_search" not in self._tools:
            raise InsightSinkError(
                f"Session-Buddy's MCP server at {self._url} offers no structured search tool (fingerprint_search); "
                "insights can be searched in-process while the server is stopped",
                reason="incompatible", url=self._url,
            )
        hits = [hit_from(row.get("id"), row.get("content"), row.get("tags"), row.get("insight_type"),
                         row.get("similarity"), row.get("project"))
                for row in await self._fingerprint_rows(query, fetch) if looks_like_insight(row.get("tags"))]
        hits.sort(key=lambda hit: hit.score if hit.score is not None else -1.0, reverse=True)
        return hits

    async def delete(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        raise InsightSinkError(
            f"Session-Buddy's MCP server at {self._url} has no tool that deletes a reflection; the deletion "
            "stays queued and runs in-process once the server no longer holds its file",
            reason="unsupported", url=self._url)

    async def close(self) -> None:
        with contextlib.suppress(BaseException):
            async with asyncio.timeout(self._timeout):
                await self._client.__aexit__(None, None, None)
