"""Backfill: embed the memories stored while the embedder was down (their embedding is pending).

Walks pending rows with a keyset cursor, so each run passes over every pending row once even when some
texts cannot be embedded; stops early (and says so) when the embedder is unavailable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from oneiric_memory.errors import EmbedderError, EmbedderUnavailable
from oneiric_memory.observability import get_logger, span
from oneiric_memory.protocols import Embedder

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector import PgvectorMemoryStore

__all__ = ["BackfillReport", "backfill"]


@dataclass(slots=True)
class BackfillReport:
    embedded: int = 0
    skipped: int = 0
    remaining: int = 0
    stopped_reason: str | None = None


async def backfill(store: PgvectorMemoryStore, embedder: Embedder, *, batch_size: int = 256,
                   max_rows: int | None = None, progress: Callable[[int, int], None] | None = None) -> BackfillReport:
    """Embed pending memories; ``progress(done, total)`` is called after each batch."""
    log = get_logger("oneiric_memory.backfill")
    report = BackfillReport()
    total = await store.count_pending()
    if max_rows is not None:
        total = min(total, max_rows)
    if total:
        await store.bind_embedding_model(embedder.model_id)
    cursor = None
    done = 0
    with span("backfill", pending=total) as current:
        while done < total:
            batch = await store.fetch_pending(min(batch_size, total - done), after=cursor)
            if not batch:
                break
            cursor = (batch[-1].created_at, batch[-1].id)
            try:
                vectors = await embedder.embed_documents([item.content for item in batch])
            except EmbedderUnavailable as exc:
                report.stopped_reason = f"embedder unavailable: {exc}"
                break
            except EmbedderError:
                vectors = []
                for item in batch:  # isolate the texts the embedder rejects
                    try:
                        vectors.extend(await embedder.embed_documents([item.content]))
                    except EmbedderUnavailable as exc:
                        report.stopped_reason = f"embedder unavailable: {exc}"
                        break
                    except EmbedderError:
                        vectors.append([])
                if report.stopped_reason:
                    break
            items = [(item.project, item.id, vector) for item, vector in zip(batch, vectors, strict=False) if vector]
            report.skipped += len(batch) - len(items)
            report.embedded += await store.set_embeddings(items, embedder.model_id)
            done += len(batch)
            if progress is not None:
                progress(done, total)
        current.set_attribute("embedded", report.embedded)
    report.remaining = await store.count_pending()
    if report.embedded:
        log.info("backfill-done", embedded=report.embedded, remaining=report.remaining)
    return report
