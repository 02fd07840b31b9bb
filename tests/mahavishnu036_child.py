"""Child process of ``test_attach_to_the_real_mahavishnu_036_app``: the real Mahavishnu 0.36 app installs
process-wide logging handlers and OpenTelemetry providers, so it is built here and not in the pytest process.

argv: the embedded server's data folder and a fresh schema name. HOME, XDG_CONFIG_HOME and the working directory
are set by the parent. Prints one JSON line of facts for the parent to assert on.
"""

from __future__ import annotations

import asyncio
import json
import sys
import types
from pathlib import Path
from typing import Any


class NoopMetric:
    """Stands in for the Prometheus metrics of ``monitoring.metrics``, a package Mahavishnu 0.36's wheel imports but
    does not ship (so does 0.14's): the only part that is not real here, and nothing of ours touches it."""

    def __getattr__(self, _name: str) -> NoopMetric:
        return self

    def __call__(self, *_args: Any, **_kwargs: Any) -> NoopMetric:
        return self

    def __enter__(self) -> NoopMetric:
        return self

    def __exit__(self, *_exc: object) -> bool:
        return False


async def main(schema: str) -> dict[str, Any]:
    package = types.ModuleType("monitoring")
    package.__path__ = []
    metrics = types.ModuleType("monitoring.metrics")
    metrics.__getattr__ = lambda _name: NoopMetric()  # type: ignore[method-assign]
    sys.modules["monitoring"], sys.modules["monitoring.metrics"] = package, metrics

    import mahavishnu
    from mahavishnu.core.app import MahavishnuApp
    from mahavishnu.core.bootstrap import load_config

    from oneiric_memory.insights import format_insight_block
    from oneiric_memory.mahavishnu import attach

    config = load_config()  # Mahavishnu's own loader
    facts: dict[str, Any] = {"session_buddy_url": config.pools.session_buddy_url,
                             "block_kept_by_mahavishnu": "oneiric_memory" in config.model_dump()}
    app = MahavishnuApp(config)
    facts["adapters_before"] = sorted(app.adapters)
    memory = attach(app)
    try:
        facts["attached"] = app.adapters.get("oneiric_memory") is memory
        facts["settings_root"] = str(memory._settings_root)
        facts["mahavishnu_anchor"] = str(Path(str(mahavishnu.__file__)).resolve().parent.parent)
        text = "Deploy notes.\n" + format_insight_block("The real Mahavishnu 0.36 app reaches the memory via attach.")
        stored = await memory.execute({"op": "remember", "content": text, "memory_type": "agent", "project": "mv"})
        found = await memory.execute({"op": "search", "query": "real Mahavishnu app attach"})
        facts["stored"] = stored.get("status") == "ok"
        facts["found_first"] = found.get("status") == "ok" and found["hits"][0]["id"] == stored.get("id")
        settings = memory._memory.settings  # type: ignore[union-attr]
        facts["schema"] = settings.postgres.db_schema
        facts["default_limit"] = settings.search.default_limit
        facts["mcp_url"] = settings.session_buddy.mcp_url
        facts["health"] = await app.adapters["oneiric_memory"].get_health()  # what Mahavishnu's monitoring calls
    finally:
        if memory._memory is not None:
            store = memory._memory.store
            async with store.gate.acquire() as connection:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await memory.cleanup()
    return facts


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1])), default=str), flush=True)
