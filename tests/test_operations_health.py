"""Doctor findings reach the aggregated health, so Mahavishnu's dashboard shows DEGRADED with a reason."""

from __future__ import annotations

from pathlib import Path

from mcp_common.health import HealthStatus

from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedConnectInfo
from oneiric_memory.coordinator import UnifiedMemory
from tests.support import make_settings


async def test_invalid_vector_index_degrades_health_with_a_reason(pg_server: EmbeddedConnectInfo,
                                                                  pg_data_dir: Path) -> None:
    settings = make_settings(pg_data_dir, maintenance={"health_cache_s": 0},
                             coordinator={"backfill_enabled": False})
    async with UnifiedMemory.open(settings, background=False) as memory:
        await memory.remember("the canary found a broken index", "workflow")
        parts = {part.name: part for part in (await memory.health()).components}
        assert parts["operations"].status == HealthStatus.HEALTHY, parts["operations"].message
        async with memory.store.gate.acquire() as connection:
            # Simulate a failed CREATE INDEX CONCURRENTLY (the embedded server runs as superuser).
            await connection.execute(
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
                f"'\"{memory.store.schema}\".memories_embedding_hnsw'::regclass")
        response = await memory.health()
        parts = {part.name: part for part in response.components}
        assert parts["operations"].status == HealthStatus.DEGRADED
        assert "reindex" in (parts["operations"].message or "").lower()
        assert response.status != HealthStatus.HEALTHY
        async with memory.store.gate.acquire() as connection:
            await connection.execute(f'DROP SCHEMA "{memory.store.schema}" CASCADE')
