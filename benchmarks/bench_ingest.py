"""Repository ingestion (issue 17): throughput by phase, the no-change rerun, 20-result query latency, and
retrieval quality on the stdlib evaluation set with chunks cut by the ingester.

Three steps, so the long ingestion can run at low priority and the latency step at normal priority (each step
starts its own embedded PostgreSQL, whose processes inherit the step's priority):

    nice -n 19 uv run python benchmarks/bench_ingest.py ingest --corpus repo --embedder hashing
    nice -n 19 uv run python benchmarks/bench_ingest.py ingest --corpus stdlib --embedder hashing
    uv run python benchmarks/bench_ingest.py query --corpus stdlib --embedder hashing
    nice -n 19 uv run python benchmarks/bench_ingest.py quality --embedder hashing

Corpora: ``repo`` is this repository; ``stdlib`` is the installed Python's standard library (``sysconfig``'s
``stdlib`` path, ``site-packages/`` excluded), the default file types.
Embedders: ``hashing`` (offline, lexical), ``local`` (bge-small-en ONNX from ``shared/tools/fetch-bge-small``).
Each (corpus, embedder) gets its own schema, dropped before a first run. Results are printed as JSON lines and
appended to ``--out`` (default ``/tmp/bench-ingest.jsonl``); docs/benchmarks.md records them by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from oneiric_memory.coordinator import UnifiedMemory
from oneiric_memory.evaluation import load_eval_set, score_rankings
from oneiric_memory.rag import IngestOptions
from oneiric_memory.records import SearchFilters
from oneiric_memory.settings import MemorySettings, load_settings

ROOT = Path(__file__).resolve().parents[1]
EVAL_SET = ROOT / "benchmarks" / "data" / "eval_set.json"
MODEL = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "oneiric-memory-models" / "bge-small-en"
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def corpus_root(name: str) -> Path:
    return ROOT if name == "repo" else STDLIB


def options_for(name: str) -> IngestOptions:
    """The stdlib folder also holds site-packages (pip, uv here): not the standard library."""
    return IngestOptions(exclude=["site-packages/"] if name == "stdlib" else [])


def settings_for(corpus: str, embedder: str, data_dir: str) -> MemorySettings:
    overrides: dict[str, Any] = {
        "postgres": {"db_schema": f"om_bench_ingest_{corpus}_{embedder}", "embedded_data_dir": data_dir,
                     "statement_timeout_ms": 0},
        "embedder": {"provider": embedder},
        "session_buddy": {"enabled": False},
        "coordinator": {"embed_timeout_s": 600.0},
    }
    if embedder == "local":
        overrides["embedder"]["model_path"] = str(MODEL)
        overrides["postgres"]["vector_dimension"] = 384
    return load_settings(overrides, environ={})


def emit(out: Path, row: dict[str, Any]) -> None:
    row = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load": os.getloadavg(),
           "cpus": os.cpu_count(), "python": platform.python_version(), **row}
    line = json.dumps(row, default=str)
    print(line, flush=True)
    with out.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")


async def drop_schema(memory: UnifiedMemory) -> None:
    async with memory.store.gate.acquire() as connection:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{memory.store.schema}" CASCADE')


async def ingest(args: argparse.Namespace) -> None:
    settings = settings_for(args.corpus, args.embedder, args.data_dir)
    repo_id = args.corpus
    if not args.keep:
        async with UnifiedMemory.open(settings, background=False) as memory:
            await drop_schema(memory)
    async with UnifiedMemory.open(settings, background=False) as memory:
        first = await memory.ingest_repository(corpus_root(args.corpus), repo_id, options=options_for(args.corpus))
        emit(args.out, {"step": "ingest-first", "corpus": args.corpus, "embedder": args.embedder,
                        "model": memory.embedder.model_id if memory.embedder else None, **_rates(first.as_dict())})
        again = await memory.ingest_repository(corpus_root(args.corpus), repo_id, options=options_for(args.corpus))
        emit(args.out, {"step": "ingest-rerun", "corpus": args.corpus, "embedder": args.embedder,
                        "ratio_to_first": round(again.timings["total_s"] / first.timings["total_s"], 4),
                        **_rates(again.as_dict())})


def _rates(report: dict[str, Any]) -> dict[str, Any]:
    total = report["timings"]["total_s"]
    counts = report["counts"]
    return {"counts": counts, "timings": report["timings"],
            "files_per_s": round(counts["files_seen"] / total, 1),
            "chunks_per_s": round(counts["chunks_added"] / total, 1) if counts["chunks_added"] else 0.0}


async def vacuum(memory: UnifiedMemory) -> None:
    """What autovacuum does after a load, done now: merge the GIN pending list and refresh statistics, so the
    measurement is not a race with autovacuum."""
    async with memory.store.gate.acquire() as connection:
        await connection.execute(f"VACUUM (ANALYZE) {memory.store.table('memories')}")


async def query(args: argparse.Namespace) -> None:
    settings = settings_for(args.corpus, args.embedder, args.data_dir)
    queries = [q.text for q in load_eval_set(EVAL_SET).queries][: args.queries]
    filters = SearchFilters(repo_id=args.corpus)
    async with UnifiedMemory.open(settings, background=False) as memory:
        await vacuum(memory)
        rows = await memory.store.count(filters)
        for mode in ("vector", "text", "hybrid"):
            for text in queries[:10]:  # warm-up: caches, plans, the embedder
                await memory.search(text, mode=mode, filters=filters, limit=20)  # type: ignore[arg-type]
            latencies: list[float] = []
            short = 0
            for text in queries:
                started = time.perf_counter()
                hits = await memory.search(text, mode=mode, filters=filters, limit=20)  # type: ignore[arg-type]
                latencies.append((time.perf_counter() - started) * 1000)
                short += len(hits) < 20
            latencies.sort()
            emit(args.out, {"step": "query", "corpus": args.corpus, "embedder": args.embedder, "mode": mode,
                            "rows": rows, "queries": len(latencies), "limit": 20, "under_20_hits": short,
                            "p50_ms": round(statistics.median(latencies), 2),
                            "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
                            "max_ms": round(latencies[-1], 2)})


def _module_of(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _key(metadata: dict[str, Any]) -> str | None:
    """The evaluation target a chunk stands for (function, class or module), or None."""
    if metadata.get("language") != "python":
        return None
    module, symbol, kind = _module_of(metadata["path"]), metadata.get("symbol"), metadata.get("kind")
    if kind == "function":
        return f"fn:{module}.{symbol}"
    if kind == "class":
        return f"class:{module}.{symbol}"
    if kind == "module":
        return f"module:{module}"
    return None


def _relevant(relevant: dict[str, int]) -> dict[str, int]:
    mapped: dict[str, int] = {}
    for doc_id, grade in relevant.items():
        kind, _, name = doc_id.partition(":")
        key = {"code": f"fn:{name}", "doc": f"fn:{name}", "class": f"class:{name}",
               "module": f"module:{name}"}.get(kind)
        if key is not None:
            mapped[key] = max(grade, mapped.get(key, 0))
    return mapped


async def quality(args: argparse.Namespace) -> None:
    """nDCG@10 / recall@20 of the stdlib set against the ingested stdlib chunks (targets, not documents: the
    chunks of one function count once, at their best rank)."""
    from oneiric_memory.evaluation import EvalQuery

    settings = settings_for("stdlib", args.embedder, args.data_dir)
    eval_set = load_eval_set(EVAL_SET)
    queries = [EvalQuery(q.id, q.text, _relevant(q.relevant), q.metadata) for q in eval_set.queries]
    queries = [q for q in queries if q.relevant]
    filters = SearchFilters(repo_id="stdlib")
    async with UnifiedMemory.open(settings, background=False) as memory:
        await vacuum(memory)
        for mode in ("vector", "text", "hybrid"):
            rankings: dict[str, list[str]] = {}
            for q in queries:
                hits = await memory.search(q.text, mode=mode, filters=filters, limit=60)  # type: ignore[arg-type]
                ranked: list[str] = []
                for hit in hits:
                    key = _key(hit.metadata)
                    if key is not None and key not in ranked:
                        ranked.append(key)
                rankings[q.id] = ranked
            scores = score_rankings(queries, rankings, ndcg_k=10, recall_k=20)
            emit(args.out, {"step": "quality", "corpus": "stdlib", "embedder": args.embedder, "mode": mode,
                            "queries": len(queries), "ndcg@10": round(scores.ndcg, 3),
                            "recall@20": round(scores.recall, 3)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("ingest", "query", "quality"))
    parser.add_argument("--corpus", choices=("repo", "stdlib"), default="repo")
    parser.add_argument("--embedder", choices=("hashing", "local"), default="hashing")
    parser.add_argument("--queries", type=int, default=176)
    parser.add_argument("--keep", action="store_true", help="ingest: keep the schema (no fresh first run)")
    parser.add_argument("--data-dir", default="/tmp/om-bench-ingest/pgdata")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-ingest.jsonl"))
    args = parser.parse_args()
    step = {"ingest": ingest, "query": query, "quality": quality}[args.step]
    asyncio.run(step(args))


if __name__ == "__main__":
    sys.exit(main())
