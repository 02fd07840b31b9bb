"""Connections to PostgreSQL: parameters, the bounded asyncpg pool, codecs and transient-fault retries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
from pgvector.asyncpg import register_vector
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from oneiric_memory.errors import ConfigurationError, StoreError, StoreUnavailable
from oneiric_memory.settings import PostgresSettings

__all__ = [
    "ConnectParams",
    "MIN_PGVECTOR_VERSION",
    "PoolGate",
    "PoolStats",
    "TRANSIENT_SQLSTATE_PREFIXES",
    "connect_once",
    "copy_records",
    "create_pool",
    "ensure_vector_extension",
    "is_transient",
    "retrying",
    "run_with_retries",
    "translate_error",
    "wait_closed",
]

T = TypeVar("T")
MIN_PGVECTOR_VERSION = (0, 8, 4)
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03", "53300"})
TRANSIENT_SQLSTATE_PREFIXES = ("08",)


@dataclass(frozen=True, slots=True)
class ConnectParams:
    """Keyword arguments for asyncpg; the password never appears in repr()."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    database: str | None = None
    dsn: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    ssl: str | None = None

    @property
    def where(self) -> str:
        """``host:port`` tried, for error messages (read from the DSN when there is one; never the password)."""
        host, port = self.host, self.port
        if self.dsn is not None:
            try:
                parts = urlsplit(self.dsn)
                host, port = parts.hostname, parts.port
            except ValueError:
                host, port = None, None
        return f"{host or 'localhost'}:{port or 5432}"

    def as_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for name in ("dsn", "host", "port", "user", "password", "database", "ssl"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs

    @classmethod
    def from_settings(cls, settings: PostgresSettings, *, read: bool = False) -> ConnectParams:
        dsn_secret = settings.read_dsn if read and settings.read_dsn is not None else settings.dsn
        if dsn_secret is not None:
            return cls(dsn=dsn_secret.get_secret_value(),
                       password=settings.password.get_secret_value() if settings.password else None,
                       ssl=settings.ssl)
        return cls(host=settings.host, port=settings.port, user=settings.user, database=settings.database,
                   password=settings.password.get_secret_value() if settings.password else None, ssl=settings.ssl)


def is_transient(exc: BaseException) -> bool:
    """True for faults worth retrying: connection loss, serialization failure, deadlock, shutdown, pool timeout.

    A client-side ``InterfaceError`` raised while handling a transient fault counts as that fault: when the
    server kills a connection inside ``async with connection.transaction()``, the rollback in ``__aexit__``
    fails with "the underlying connection is closed" and hides the real cause (SQLSTATE 57P01, 08xxx).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _transient_one(current):
            return True
        if not isinstance(current, asyncpg.InterfaceError):
            return False
        current = current.__cause__ or current.__context__
    return False


_CLOSED_CONNECTION_TEXTS = ("connection is closed", "connection was closed", "underlying connection is closed")


def _transient_one(exc: BaseException) -> bool:
    if isinstance(exc, StoreUnavailable):
        return True
    if isinstance(exc, asyncpg.InterfaceError) and any(text in str(exc) for text in _CLOSED_CONNECTION_TEXTS):
        return True  # the client noticed the connection loss first (e.g. in Transaction.__aexit__)
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate in TRANSIENT_SQLSTATES or sqlstate.startswith(TRANSIENT_SQLSTATE_PREFIXES)
    return isinstance(exc, (ConnectionError, asyncpg.exceptions.ConnectionDoesNotExistError)) or (
        isinstance(exc, OSError) and not isinstance(exc, TimeoutError))


async def copy_records(connection: asyncpg.Connection, table: str, *, records: Sequence[tuple[Any, ...]],
                       columns: Sequence[str], poll_s: float = 0.5) -> None:
    """``copy_records_to_table`` that notices a server death.

    When the server dies while asyncpg's COPY IN waits for write flow control, the wait never ends (the paused
    transport is never resumed on connection loss), so the COPY, its transaction and the caller hang forever.
    The COPY runs as a task watched every ``poll_s``: once the connection is closed it is cancelled and the
    loss surfaces as ``ConnectionDoesNotExistError`` (transient, so the write is retried).
    """
    copy = asyncio.ensure_future(connection.copy_records_to_table(table, records=records, columns=columns))
    try:
        while True:
            done, _ = await asyncio.wait({copy}, timeout=poll_s)
            if done:
                copy.result()
                return
            if connection.is_closed():
                raise asyncpg.ConnectionDoesNotExistError("the connection closed in the middle of a COPY")
    finally:
        if not copy.done():
            copy.cancel()
            with contextlib.suppress(BaseException):
                await copy


def translate_error(exc: BaseException, action: str) -> StoreError:
    """Map a driver exception onto our hierarchy without leaking parameters or secrets."""
    sqlstate = getattr(exc, "sqlstate", None)
    detail = type(exc).__name__ + (f" (SQLSTATE {sqlstate})" if sqlstate else "")
    if is_transient(exc) or isinstance(exc, TimeoutError):
        return StoreUnavailable(f"{action} failed: PostgreSQL is unavailable or busy, {detail}; retry later",
                                sqlstate=sqlstate)
    text = str(exc)
    message = getattr(exc, "message", None) or (text.splitlines()[0] if text else "")
    if isinstance(exc, asyncpg.DataError) and message.startswith("invalid input for query argument"):
        # the driver quotes the argument (a whole vector, a document): keep only which argument it was
        message = message.split(":", 1)[0]
    return StoreError(f"{action} failed: {detail}: {message[:300]}", sqlstate=sqlstate)


def retrying(settings: PostgresSettings) -> AsyncRetrying:
    """Exponential backoff with jitter on transient faults only."""
    return AsyncRetrying(
        stop=stop_after_attempt(settings.retry_attempts),
        wait=wait_exponential_jitter(multiplier=settings.retry_base_delay_s, max=settings.retry_max_delay_s),
        retry=retry_if_exception(is_transient),
        reraise=True,
    )


async def run_with_retries[R](settings: PostgresSettings, action: str, operation: Callable[[], Awaitable[R]]) -> R:
    """Run ``operation`` with transient retries; translate driver errors into StoreError subclasses."""
    try:
        async for attempt in retrying(settings):
            with attempt:
                return await operation()
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise translate_error(exc, action) from exc
    raise AssertionError("unreachable")


async def _init_connection(connection: asyncpg.Connection, schema: str) -> None:
    await register_vector(connection, schema=schema)
    await connection.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await connection.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def _server_settings(settings: PostgresSettings) -> dict[str, str]:
    return {
        "application_name": "oneiric-memory",
        "statement_timeout": str(settings.statement_timeout_ms),
        "idle_in_transaction_session_timeout": str(max(settings.statement_timeout_ms * 2, 60_000)),
    }


def _bad_connect_config(exc: BaseException, params: ConnectParams) -> ConfigurationError:
    """A DSN or option the driver cannot parse. The driver's text may quote parts of a DSN, so it is left out."""
    where = "postgres.dsn (or postgres.read_dsn)" if params.dsn is not None else "the postgres connection settings"
    return ConfigurationError(
        f"{where} could not be used ({type(exc).__name__}): check the URI format "
        "postgresql://user:password@host:port/database, percent-encode special characters in the password, and "
        "use a valid port and sslmode")


async def create_pool(params: ConnectParams, settings: PostgresSettings, *, vector_schema: str) -> asyncpg.Pool:
    """A bounded pool whose connections know the vector and JSONB codecs."""

    async def init(connection: asyncpg.Connection) -> None:
        await _init_connection(connection, vector_schema)

    try:
        pool = await asyncpg.create_pool(
            **params.as_kwargs(),
            min_size=min(settings.min_connections, settings.max_connections),
            max_size=settings.max_connections,
            max_queries=settings.max_queries_per_connection,
            max_inactive_connection_lifetime=settings.max_inactive_connection_lifetime_s,
            command_timeout=settings.command_timeout_s,
            timeout=settings.connect_timeout_s,
            statement_cache_size=settings.statement_cache_size,
            server_settings=_server_settings(settings),
            init=init,
        )
    except (ValueError, asyncpg.ClientConfigurationError) as exc:
        raise _bad_connect_config(exc, params) from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise translate_error(exc, f"connecting to PostgreSQL at {params.where}") from exc
    assert pool is not None
    return pool


async def connect_once(params: ConnectParams, settings: PostgresSettings) -> asyncpg.Connection:
    """A single connection without codecs (bootstrap: extensions, databases, migrations)."""
    try:
        return await asyncpg.connect(**params.as_kwargs(), timeout=settings.connect_timeout_s,
                                     statement_cache_size=0, server_settings={"application_name": "oneiric-memory"})
    except (ValueError, asyncpg.ClientConfigurationError) as exc:
        raise _bad_connect_config(exc, params) from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise translate_error(exc, f"connecting to PostgreSQL at {params.where}") from exc


def _parse_version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


async def ensure_vector_extension(connection: asyncpg.Connection, *, create: bool, schema: str) -> str:
    """Make sure pgvector >= 0.8.4 is installed; create it when allowed. Returns its version."""
    version = await connection.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    if version is None:
        available = await connection.fetchval(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
        if available is None:
            raise ConfigurationError(
                "the PostgreSQL server has no pgvector extension: install pgvector >= 0.8.4 on the server "
                "(e.g. `apt install postgresql-18-pgvector`, or build it from source), then run "
                "`CREATE EXTENSION vector;` as a superuser")
        if not create:
            raise ConfigurationError(
                "the vector extension is available but not created, and postgres.create_extension is false: "
                "ask a superuser to run `CREATE EXTENSION vector;` in this database")
        try:
            await connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except asyncpg.InsufficientPrivilegeError:
            raise ConfigurationError(
                "this user may not create the vector extension: ask a superuser to run "
                "`CREATE EXTENSION vector;` in this database (pgvector >= 0.8.4)") from None
        except asyncpg.UniqueViolationError:
            pass  # a concurrent process created it first
        version = await connection.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    if _parse_version(str(version)) < MIN_PGVECTOR_VERSION:
        raise ConfigurationError(
            f"pgvector {version} is too old: 0.8.4 or newer is required (HNSW vacuum/repair fixes); "
            "upgrade the package on the server, then run `ALTER EXTENSION vector UPDATE;`")
    # IF NOT EXISTS is not atomic: another process may create the schema at the same moment.
    with contextlib.suppress(asyncpg.UniqueViolationError, asyncpg.DuplicateSchemaError):
        await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    return str(version)


@dataclass(frozen=True, slots=True)
class PoolStats:
    """The asyncpg pool right now, with the gate's wait counters; ``busy_ratio`` is in-use over max."""

    size: int
    idle: int
    in_use: int
    max_size: int
    min_size: int
    waiting: int
    acquires: int = 0
    mean_acquire_ms: float | None = None

    @property
    def busy_ratio(self) -> float:
        return self.in_use / self.max_size if self.max_size else 0.0


class PoolGate:
    """Counts waiters and bounds acquire time, so pool exhaustion is visible and never unbounded."""

    def __init__(self, pool: asyncpg.Pool, timeout_s: float) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self.waiting = 0
        self.acquire_ms_total = 0.0
        self.acquires = 0

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        self.waiting += 1
        started = time.perf_counter()
        try:
            connection = await self.pool.acquire(timeout=self.timeout_s)
        except TimeoutError as exc:
            raise StoreUnavailable(
                f"no PostgreSQL connection became free within {self.timeout_s:.1f}s "
                f"(pool max {self.pool.get_max_size()}): lower concurrency or raise postgres.max_connections"
            ) from exc
        finally:
            self.waiting -= 1
        self.acquire_ms_total += (time.perf_counter() - started) * 1000.0
        self.acquires += 1
        try:
            yield connection
        finally:
            await self.pool.release(connection)

    def stats(self) -> PoolStats:
        size, idle = self.pool.get_size(), self.pool.get_idle_size()
        mean = self.acquire_ms_total / self.acquires if self.acquires else None
        return PoolStats(size=size, idle=idle, in_use=size - idle, max_size=self.pool.get_max_size(),
                         min_size=self.pool.get_min_size(), waiting=self.waiting, acquires=self.acquires,
                         mean_acquire_ms=None if mean is None else round(mean, 3))


async def wait_closed(pool: asyncpg.Pool, timeout_s: float) -> None:
    """Close gracefully (waits for checked-out connections), then terminate if it takes too long."""
    try:
        await asyncio.wait_for(pool.close(), timeout=timeout_s)
    except TimeoutError:
        pool.terminate()
