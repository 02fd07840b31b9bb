"""``export`` and ``import``: memories as JSON Lines, streamed, with a progress bar; export → import → export is
byte-identical (ids, timestamps, metadata and embeddings are kept; ``updated_at`` becomes the import time)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from oneiric_memory.cli._runtime import console, err_console, invalid, open_memory, progress, run, settings

if TYPE_CHECKING:
    from oneiric_memory.records import MemoryRecord

__all__ = ["FIELDS", "ORDER", "record_from_line", "register"]

ORDER = 25
_PANEL = "Memories"
_PAGE = 500
_BATCH = 256
FIELDS = ("id", "project", "memory_type", "content", "metadata", "source_system", "agent_id", "workflow_id",
          "repo_id", "session_id", "created_at", "expires_at", "embedding_model", "embedding")
"""The keys of one exported line, in order."""


def _line(memory: Any) -> str:
    row = {"id": str(memory.id), "project": memory.project, "memory_type": memory.memory_type,
           "content": memory.content, "metadata": memory.metadata, "source_system": memory.source_system,
           "agent_id": memory.agent_id, "workflow_id": memory.workflow_id, "repo_id": memory.repo_id,
           "session_id": memory.session_id, "created_at": memory.created_at.isoformat(),
           "expires_at": memory.expires_at.isoformat() if memory.expires_at else None,
           "embedding_model": memory.embedding_model if memory.embedding is not None else None,
           "embedding": memory.embedding}
    return json.dumps(row, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def export(
    path: Annotated[str, typer.Argument(help="File to write, or '-' for standard output.")] = "-",
    project: Annotated[list[str] | None, typer.Option(help="Only these projects (repeatable).")] = None,
    memory_type: Annotated[list[str] | None, typer.Option("--type", help="Repeatable.")] = None,
    include_expired: Annotated[bool, typer.Option(help="Include memories past their expiry.")] = True,
) -> None:
    """Write memories as JSON Lines (one memory per line, with its embedding), oldest first."""
    from oneiric_memory.cli.memories import build_filters

    filters = build_filters(projects=project, memory_types=memory_type)
    filters.include_expired = include_expired
    target = None if path == "-" else Path(path)
    if target is not None and target.is_dir():
        raise invalid(f"{path} is a folder; give a file name", field="path")

    async def work() -> int:
        from oneiric_memory.adapters.pgvector import list_memories

        async with open_memory({"session_buddy": {"enabled": False}}) as memory:  # reads PostgreSQL only
            total = await memory.store.count(filters)
            out: IO[str] = sys.stdout if target is None else target.open("w", encoding="utf-8")
            written = 0
            try:
                with progress("exporting memories", total) as update:
                    cursor: str | None = None
                    while True:
                        page = await list_memories(memory.store, filters=filters, limit=_PAGE, after=cursor,
                                                   with_embeddings=True)
                        out.writelines(_line(m) + "\n" for m in page.memories)
                        written += len(page.memories)
                        update(written, max(total, written))
                        cursor = page.next_cursor
                        if cursor is None:
                            break
            finally:
                if target is not None:
                    out.close()
                else:
                    out.flush()
            return written

    written = run(work)
    err_console.print(f"exported {written} memories" + (f" to {target}" if target else ""), highlight=False)


def _when(value: Any, name: str, number: int) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise invalid(f"line {number}: {name} {str(value)[:40]!r} is not an ISO 8601 time", field=name,
                      line=number) from None
    if parsed.tzinfo is None:
        raise invalid(f"line {number}: {name} needs a time zone", field=name, line=number)
    return parsed


def record_from_line(text: str, number: int) -> MemoryRecord:
    """One JSON Lines row as a :class:`MemoryRecord` (``InvalidInput`` names the line)."""
    import uuid

    from oneiric_memory.records import MemoryRecord

    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid(f"line {number}: not JSON ({exc.msg} at character {exc.pos})", line=number) from None
    if not isinstance(row, dict):
        raise invalid(f"line {number}: a memory must be a JSON object", line=number)
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise invalid(f"line {number}: unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}",
                      line=number)
    if not isinstance(row.get("content"), str):
        raise invalid(f"line {number}: content must be a string", field="content", line=number)
    memory_id = None
    if row.get("id") is not None:
        try:
            memory_id = uuid.UUID(str(row["id"]))
        except ValueError:
            raise invalid(f"line {number}: id {str(row['id'])[:40]!r} is not a UUID", field="id",
                          line=number) from None
    embedding = row.get("embedding")
    if embedding is not None and (not isinstance(embedding, list)
                                  or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                             for x in embedding)):
        raise invalid(f"line {number}: embedding must be a list of numbers", field="embedding", line=number)
    metadata = row.get("metadata") if row.get("metadata") is not None else {}
    if not isinstance(metadata, dict):
        raise invalid(f"line {number}: metadata must be a JSON object", field="metadata", line=number)
    texts = {name: row.get(name) for name in ("source_system", "agent_id", "workflow_id", "repo_id", "session_id",
                                               "embedding_model")}
    for name, value in texts.items():
        if value is not None and not isinstance(value, str):
            raise invalid(f"line {number}: {name} must be a string", field=name, line=number)
    return MemoryRecord(
        content=row["content"], memory_type=str(row.get("memory_type", "agent")),
        project=str(row.get("project", "default")), metadata=metadata, id=memory_id,
        embedding=[float(x) for x in embedding] if embedding is not None else None,
        created_at=_when(row.get("created_at"), "created_at", number),
        expires_at=_when(row.get("expires_at"), "expires_at", number), **texts)


def _lines(source: IO[bytes]) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(source, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise invalid(f"line {number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start})",
                          line=number) from None
        if text.strip():
            yield number, text


def _checked(source: IO[bytes], dimension: int, max_bytes: int) -> Iterator[MemoryRecord]:
    for number, text in _lines(source):
        record = record_from_line(text, number)
        record.validate(dimension=dimension, max_content_bytes=max_bytes, index=number)
        yield record


def import_command(
    path: Annotated[str, typer.Argument(help="JSON Lines written by `export`, or '-' for standard input.")],
) -> None:
    """Read memories from JSON Lines (as `export` writes them); a file is checked whole before anything is
    written, standard input batch by batch. Re-importing is harmless: duplicates are recognized."""
    configured = settings()
    pg = configured.postgres
    source_path = None if path == "-" else Path(path)
    total: int | None = None
    if source_path is not None:
        if not source_path.is_file():
            raise invalid(f"{path} is not a file", field="path")
        with source_path.open("rb") as source:  # pass 1: every line valid, or nothing is written
            total = sum(1 for _ in _checked(source, pg.vector_dimension, pg.max_content_bytes))

    async def work() -> tuple[int, int]:
        source: IO[bytes] = sys.stdin.buffer if source_path is None else source_path.open("rb")
        done = new = 0
        try:
            async with open_memory() as memory:
                with progress("importing memories", total) as update:
                    batch: list[MemoryRecord] = []
                    for record in _checked(source, pg.vector_dimension, pg.max_content_bytes):
                        batch.append(record)
                        if len(batch) == _BATCH:
                            new += await _write(memory, batch)
                            done += len(batch)
                            batch = []
                            update(done, total)
                    if batch:
                        new += await _write(memory, batch)
                        done += len(batch)
                    update(done, total if total is not None else done)
        finally:
            if source_path is not None:
                source.close()
        return done, new

    done, new = run(work)
    console.print(f"imported {done} memories ({new} new, {done - new} already present)", highlight=False)


async def _write(memory: Any, batch: list[MemoryRecord]) -> int:
    """One atomic batch; the number of new rows (an id the store already holds counts as present)."""
    ids = [record.id for record in batch]
    before = {str(m.id) for m in await memory.store.get([i for i in ids if i is not None])}
    await memory.remember_many(batch)
    return sum(1 for i in ids if i is None or str(i) not in before)


def register(app: typer.Typer) -> None:
    app.command("export", rich_help_panel=_PANEL)(export)
    app.command("import", rich_help_panel=_PANEL)(import_command)
