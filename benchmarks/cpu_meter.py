"""CPU time per query (server backends + this client): what a query costs, which machine load moves little."""

from __future__ import annotations

import os
import time
from pathlib import Path

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore

__all__ = ["CpuMeter"]


class CpuMeter:
    """CPU time per query, server backends + this client, which machine load does not inflate much.

    Wall-clock latency on a shared 2-core machine mostly measures the scheduler; CPU time says what a query
    costs. Server CPU is read from ``/proc/<pid>/stat`` of this database's client backends, so it needs the
    server on this host (the embedded one) and excludes parallel workers; otherwise it reports ``n/a``.
    """

    def __init__(self, store: PgvectorMemoryStore) -> None:
        self.store = store
        self._server: dict[int, float] = {}
        self._client = 0.0

    async def _pids(self) -> list[int]:
        async with self.store.gate.acquire() as connection:
            rows = await connection.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                          "AND backend_type = 'client backend'")
        return [int(r["pid"]) for r in rows]

    @staticmethod
    def _cpu_s(pid: int) -> float | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return float(int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))

    async def start(self) -> None:
        self._server = {pid: cpu for pid in await self._pids() if (cpu := self._cpu_s(pid)) is not None}
        self._client = time.process_time()

    async def per_query(self, queries: int, *, scale: float = 1000.0, digits: int = 2) -> str:
        """``server + client`` CPU per query since :meth:`start` (ms; ``scale=1e6`` for µs)."""
        client = (time.process_time() - self._client) * scale / max(1, queries)
        pids = await self._pids()
        readings = {pid: self._cpu_s(pid) for pid in pids}
        if not self._server or all(v is None for v in readings.values()):
            return f"n/a + {client:.{digits}f}"
        server = sum((cpu or 0.0) - self._server.get(pid, 0.0) for pid, cpu in readings.items() if cpu is not None)
        if server <= 0:  # the work ran on backends this meter did not see (e.g. a pool that reconnected)
            return f"n/a + {client:.{digits}f}"
        return f"{server * scale / max(1, queries):.{digits}f} + {client:.{digits}f}"
