"""Retrieval quality of the store's search modes on the labelled set: nDCG@10 and recall@20.

Loads ``benchmarks/data/eval_set.json`` into a dedicated schema of the store, runs every query in
vector, text and hybrid mode (hybrid with ``text_weight`` in {0.25, 0.5, 1.0, 2.0} and
``vector_weight`` 1.0, so the docs can justify the default weights), and prints a markdown table.
The hashing embedder always runs; the Ollama embedder runs when one is reachable. The table is
written into ``docs/benchmarks.md`` between ``<!-- BEGIN retrieval-eval -->`` and
``<!-- END retrieval-eval -->``; the rest of that file is left alone.

Nothing needs configuring: with no DSN the store starts the embedded PostgreSQL. Each embedder gets
its own schema (``om_eval``, ``om_eval_ollama``) because a schema is bound to one vector space.

Run: ``uv run python benchmarks/eval_retrieval.py``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from oneiric_memory.adapters.embedders.hashing import HashingEmbedder
from oneiric_memory.adapters.pgvector import PgvectorMemoryStore
from oneiric_memory.errors import SchemaMismatch
from oneiric_memory.evaluation import EvalQuery, EvalSet, load_eval_set, ndcg_at_k, recall_at_k
from oneiric_memory.protocols import Embedder
from oneiric_memory.records import MemoryRecord, SearchFilters, SearchMode
from oneiric_memory.settings import MemorySettings, default_cache_dir, load_settings

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EVAL_SET = ROOT / "benchmarks" / "data" / "eval_set.json"
DEFAULT_DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- BEGIN retrieval-eval -->"
END = "<!-- END retrieval-eval -->"
PROJECT = "eval"
NDCG_K = 10
RECALL_K = 20
TEXT_WEIGHTS = (0.25, 0.5, 1.0, 2.0)  # 2.0 shows whether the optimum lies beyond 1.0
VECTOR_WEIGHT = 1.0
UPSERT_BATCH = 500
GROUPS = ("natural", "mixed", "identifier", "module")
GROUP_HELP = {
    "natural": "function queries: a docstring's first line in plain prose",
    "mixed": "function queries: a docstring's first line that names identifiers",
    "identifier": "function queries made of class, function and parameter names",
    "module": "module queries: a module docstring's first line",
}


@dataclass(frozen=True, slots=True)
class Config:
    """One search configuration to evaluate."""

    mode: SearchMode
    vector_weight: float | None = None
    text_weight: float | None = None
    rrf_k: int | None = None
    fusion: str = "convex"

    def label(self) -> str:
        if self.mode != "hybrid":
            return self.mode
        if self.fusion == "rrf":
            return f"hybrid (RRF, v={self.vector_weight:g}, t={self.text_weight:g}, k={self.rrf_k})"
        return f"hybrid ({self.fusion}, v={self.vector_weight:g}, t={self.text_weight:g})"


@dataclass(slots=True)
class Result:
    """Scores of one configuration, overall and per query group."""

    embedder: str
    config: Config
    ndcg: float
    recall: float
    by_group: dict[str, float]
    per_query_ndcg: dict[str, float]
    empty: int
    mean_ms: float
    wins: int = 0
    ties: int = 0
    losses: int = 0


def query_group(query: EvalQuery) -> str:
    if query.metadata.get("target") == "module":
        return "module"
    return str(query.metadata.get("style", "natural"))


def eval_settings(schema: str, provider: str, dimension: int | None = None) -> MemorySettings:
    overrides: dict[str, Any] = {"postgres": {"db_schema": schema}, "embedder": {"provider": provider}}
    if dimension is not None:
        overrides["postgres"]["vector_dimension"] = dimension
    return load_settings(overrides)


async def load_documents(store: PgvectorMemoryStore, embedder: Embedder, eval_set: EvalSet) -> float:
    """Replace the eval project's rows with the set's documents; returns seconds spent."""
    started = time.perf_counter()
    await store.delete(filters=SearchFilters(projects=[PROJECT]))
    try:
        await store.bind_embedding_model(embedder.model_id)
    except SchemaMismatch:  # this schema is ours alone: adopt the new vector space
        await store.switch_embedding_model(embedder.model_id)
    docs = eval_set.documents
    for start in range(0, len(docs), UPSERT_BATCH):
        batch = docs[start:start + UPSERT_BATCH]
        vectors = await embedder.embed_documents([doc.content for doc in batch])
        records = [
            MemoryRecord(
                content=doc.content,
                memory_type=doc.memory_type,
                project=PROJECT,
                source_system="stdlib-eval",
                agent_id="eval-agent" if doc.memory_type == "agent" else None,
                workflow_id=str(doc.metadata.get("workflow_id")) if doc.memory_type == "workflow" else None,
                repo_id=doc.repo_id,
                metadata={**doc.metadata, "eval_id": doc.id},
                embedding=vector,
                embedding_model=embedder.model_id,
            )
            for doc, vector in zip(batch, vectors, strict=True)
        ]
        result = await store.upsert_many(records)
        if result.duplicate_count:
            raise SystemExit(f"{result.duplicate_count} eval documents collapsed as duplicates in the store; "
                             "rebuild the set with benchmarks/build_eval_set.py")
    # VACUUM ANALYZE, not ANALYZE: the lexical statistics come from ANALYZE, and VACUUM also empties the GIN pending
    # list a fresh load leaves behind, which every text query would scan until autovacuum runs (measured by
    # `lexical`: +0.9 ms per text query); otherwise which state a run measures is a race with autovacuum.
    async with store.gate.acquire() as connection:
        await connection.execute(f"VACUUM ANALYZE {store.table('memories')}")
    stored = await store.count(SearchFilters(projects=[PROJECT]))
    if stored != len(docs):
        raise SystemExit(f"expected {len(docs)} stored eval documents, found {stored}")
    return time.perf_counter() - started


async def run_config(store: PgvectorMemoryStore, eval_set: EvalSet, embeddings: dict[str, list[float]],
                     config: Config, embedder_label: str) -> Result:
    filters = SearchFilters(projects=[PROJECT])
    per_query_ndcg: dict[str, float] = {}
    recalls: list[float] = []
    empty = 0
    started = time.perf_counter()
    for query in eval_set.queries:
        hits = await store.search(
            query_text=query.text, query_embedding=embeddings[query.id] if config.mode != "text" else None,
            mode=config.mode, filters=filters, limit=RECALL_K, vector_weight=config.vector_weight,
            text_weight=config.text_weight, rrf_k=config.rrf_k)
        ranked = [str(hit.metadata.get("eval_id")) for hit in hits]
        empty += not ranked
        per_query_ndcg[query.id] = ndcg_at_k(ranked, query.relevant, NDCG_K)
        recalls.append(recall_at_k(ranked, query.relevant, RECALL_K))
    elapsed_ms = (time.perf_counter() - started) * 1000
    by_group: dict[str, float] = {}
    for group in GROUPS:
        values = [per_query_ndcg[q.id] for q in eval_set.queries if query_group(q) == group]
        by_group[group] = sum(values) / len(values) if values else float("nan")
    count = len(eval_set.queries)
    return Result(embedder=embedder_label, config=config, ndcg=sum(per_query_ndcg.values()) / count,
                  recall=sum(recalls) / count, by_group=by_group, per_query_ndcg=per_query_ndcg, empty=empty,
                  mean_ms=elapsed_ms / count)


async def evaluate(embedder: Embedder, settings: MemorySettings, eval_set: EvalSet,
                   label: str) -> tuple[list[Result], dict[str, Any]]:
    """Load the set with ``embedder`` and score every configuration; also returns server facts."""
    store = PgvectorMemoryStore(settings)
    await store.init()
    try:
        load_s = await load_documents(store, embedder, eval_set)
        vectors = [await embedder.embed_query(q.text) for q in eval_set.queries]  # query prefix + cache
        embeddings = {q.id: vector for q, vector in zip(eval_set.queries, vectors, strict=True)}
        rrf_k = settings.search.rrf_k
        weights = sorted({*TEXT_WEIGHTS, settings.search.text_weight})  # the configured default is always scored
        configs = [Config("vector"), Config("text")] + [
            Config("hybrid", VECTOR_WEIGHT, weight, rrf_k, settings.search.fusion) for weight in weights]
        results = [await run_config(store, eval_set, embeddings, config, label) for config in configs]
        baseline = results[0].per_query_ndcg
        for result in results[1:]:
            for query_id, value in result.per_query_ndcg.items():
                delta = value - baseline[query_id]
                if abs(delta) < 1e-9:
                    result.ties += 1
                elif delta > 0:
                    result.wins += 1
                else:
                    result.losses += 1
        async with store.gate.acquire() as connection:
            server_version = await connection.fetchval("SHOW server_version")
        facts = {"load_s": load_s, "server_version": server_version, "pgvector": store.extension_version,
                 "bm25": store.bm25_extension, "embedded": settings.postgres.embedded,
                 "model_id": embedder.model_id, "dimension": embedder.dimension}
        await store.delete(filters=SearchFilters(projects=[PROJECT]))
        return results, facts
    finally:
        await store.cleanup()


def machine_size() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
                break
    except OSError:
        pass
    return f"{os.cpu_count()} logical CPUs ({cpu}){memory}, {platform.system()} {platform.release()}"


def render_table(results: Sequence[Result], default: Config) -> str:
    header = (f"| Mode | nDCG@{NDCG_K} | Recall@{RECALL_K} | " + " | ".join(f"nDCG {g}" for g in GROUPS)
              + " | vs vector W/T/L | No hits | ms/query |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for result in results:
        name = result.config.label() + (" **(default)**" if result.config == default else "")
        wtl = "—" if result.config.mode == "vector" else f"{result.wins}/{result.ties}/{result.losses}"
        groups = " | ".join(f"{result.by_group[g]:.3f}" for g in GROUPS)
        lines.append(f"| {name} | {result.ndcg:.3f} | {result.recall:.3f} | {groups} | {wtl} | "
                     f"{result.empty} | {result.mean_ms:.1f} |")
    return "\n".join(lines)


def verdict(results: Sequence[Result], default: Config) -> str:
    """Hybrid may be the default only when it is not worse than vector-only (issue 3)."""
    vector = next(r for r in results if r.config.mode == "vector")
    hybrids = [r for r in results if r.config.mode == "hybrid"]
    best = max(hybrids, key=lambda r: (r.ndcg, r.recall))
    chosen = next((r for r in hybrids if r.config == default), None)
    parts = [f"Best hybrid setting: {best.config.label()} (nDCG@{NDCG_K} {best.ndcg:.3f}, recall@{RECALL_K} "
             f"{best.recall:.3f}) against vector-only (nDCG@{NDCG_K} {vector.ndcg:.3f}, recall@{RECALL_K} "
             f"{vector.recall:.3f})."]
    if chosen is not None:
        not_worse = chosen.ndcg >= vector.ndcg - 0.0005 and chosen.recall >= vector.recall - 0.0005
        parts.append(f"The configured default, {chosen.config.label()}, is "
                     f"{'not worse than' if not_worse else 'worse than'} vector-only on this set "
                     f"(nDCG@{NDCG_K} {chosen.ndcg - vector.ndcg:+.3f}, recall@{RECALL_K} "
                     f"{chosen.recall - vector.recall:+.3f}).")
    return " ".join(parts)


def render_section(eval_set: EvalSet, sections: list[str], command: str) -> str:
    counts: dict[str, int] = {}
    for doc in eval_set.documents:
        counts[doc.memory_type] = counts.get(doc.memory_type, 0) + 1
    groups: dict[str, int] = {}
    for query in eval_set.queries:
        groups[query_group(query)] = groups.get(query_group(query), 0) + 1
    group_text = "; ".join(f"{groups.get(g, 0)} {g} ({GROUP_HELP[g]})" for g in GROUPS)
    graded = sum(1 for q in eval_set.queries if 1 in q.relevant.values())
    lines = [
        BEGIN,
        "## Retrieval quality",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_size()}; Python {platform.python_version()}",
        f"- Run at: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Evaluation set: `benchmarks/data/eval_set.json` (built by `benchmarks/build_eval_set.py` from the "
        f"Python {eval_set.source.get('python', '?')} standard library): {len(eval_set.documents)} documents "
        f"({', '.join(f'{n} {t}' for t, n in sorted(counts.items()))}), {len(eval_set.queries)} queries: "
        f"{group_text}. Graded relevance: 2 = the function's own code or docs chunk (the module doc for module "
        f"queries), 1 = its agent note, class doc or module doc (the workflow summary for module queries); "
        f"{graded} queries have grade-1 documents. Everything else is a distractor.",
        f"- Metrics: nDCG@{NDCG_K} with linear gain and recall@{RECALL_K} over grade > 0 (BEIR's definitions); "
        f"every search asks for {RECALL_K} rows, filtered to the eval project. \"vs vector W/T/L\" counts queries "
        f"whose nDCG@{NDCG_K} beats, ties or trails vector-only. \"No hits\" counts queries with an empty answer.",
        "",
        *sections,
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace only our marked section; create the file, or append the section, when missing."""
    current = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    if pattern.search(current):
        updated = pattern.sub(lambda _m: section, current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(updated, encoding="utf-8")


async def ollama_embedder(base: MemorySettings) -> tuple[Embedder | None, str]:
    """The Ollama embedder when importable and reachable, else ``None`` and the reason."""
    try:
        from oneiric_memory.adapters.embedders.ollama import OllamaEmbedder
    except ImportError as exc:
        return None, f"the Ollama embedder could not be imported ({exc})"
    embedder = OllamaEmbedder(base)
    try:
        await embedder.init()
        await embedder.embed_query("probe")
    except Exception as exc:  # any failure means "not reachable here": report, do not crash the run
        await _quiet_cleanup(embedder)
        return None, f"no Ollama embedder reachable at {base.embedder.url_for("ollama")} ({type(exc).__name__}: {exc})"
    return embedder, ""


async def _quiet_cleanup(embedder: Any) -> None:
    try:
        await embedder.cleanup()
    except Exception:  # cleanup of an embedder that never started; nothing to report
        return


def embedder_section(title: str, facts: dict[str, Any], results: list[Result], default: Config,
                     queries: int) -> str:
    table = render_table(results, default)
    text = "\n".join([
        f"### {title}",
        "",
        f"`{facts['model_id']}` ({facts['dimension']} dimensions); PostgreSQL {facts['server_version']} "
        f"({'embedded' if facts['embedded'] else 'configured server'}), pgvector {facts['pgvector']}, "
        f"lexical ranking: {facts['bm25'] or 'BM25 in plain PostgreSQL (no BM25 extension installed)'}; "
        f"loading and embedding the set took {facts['load_s']:.1f} s; {queries} queries per row.",
        "",
        table,
        "",
        verdict(results, default),
        *_notes(results, queries),
        "",
    ])
    return text


def _notes(results: Sequence[Result], queries: int) -> list[str]:
    """Explain what the table cannot say by itself."""
    notes = ["", "Ties are broken by row id (random UUIDs), so the third decimal can move between runs; "
             "ms/query is one sequential client including the round trip, not a latency measurement "
             "(the benchmark suite measures latency)."]
    text = next((r for r in results if r.config.mode == "text"), None)
    if text is not None and text.empty:
        notes[-1] += (f" Text mode answers nothing for {text.empty} of {queries} queries: "
                      "none of their terms (after stemming and stop words) occurs in any document.")
    return notes


async def local_sections(args: argparse.Namespace, eval_set: EvalSet, default: Config) -> list[str]:
    """bge-small-en through ``provider: local``, then the same model behind ``provider: openai`` (loopback /v1).

    The local model embeds every document (cached per model_id under ``--cache``, so a re-run pays only for the
    searches). The OpenAI path is bounded (``--served-docs``, default 256): every query and a seeded sample of the
    documents go over HTTP for real and are compared with the local vectors; the rest of the documents borrow the
    local model's vectors (the same model), and the table scores that store with the served query vectors.
    ``--served-docs 0`` sends every document over HTTP too.
    """
    import random

    from model_runs import CachedEmbedder, agreement, local_bge, served_bge

    from oneiric_memory.testing.models import find_test_model

    folder, why = (args.local_model, "") if args.local_model else find_test_model(Path(__file__).parents[1])
    if folder is None:
        return [f"### Local embedder\n\nNot measured in this run: {why}\n"]
    cache = None if args.no_cache else args.cache
    out: list[str] = []
    local = await local_bge(folder)
    try:
        in_process = CachedEmbedder(local, cache)
        settings = eval_settings("om_eval_local", "local", local.dimension)
        results, facts = await evaluate(in_process, settings, eval_set, "local")
        in_process.save()
        text = embedder_section(f"Local embedder ({folder.name} through `provider: local`, in-process ONNX, "
                                f"{local.pooling} pooling)", facts, results, default, len(eval_set.queries))
        text += f"\nVectors: {in_process.summary()}.\n"
        out.append(text)
        print(text)
        if args.skip_served:
            return out
        async with served_bge(local) as (client, _server):
            docs = [doc.content for doc in eval_set.documents]
            sample = docs if args.served_docs <= 0 else random.Random(20261128).sample(docs, min(args.served_docs,
                                                                                                 len(docs)))
            served = CachedEmbedder(client, cache)
            await served.embed_documents(sample)  # over HTTP for real (or from this path's own cache)
            if args.served_docs > 0:
                served.borrow_from = in_process  # only now: the sample itself went over HTTP
            settings = eval_settings("om_eval_openai", "openai", client.dimension)
            results, facts = await evaluate(served, settings, eval_set, "openai")
            served.save()
        bounded = (f"{len(sample)} of the {len(docs)} documents (seeded sample) and every query went over HTTP; "
                   "the other documents use the local model's vectors" if args.served_docs > 0
                   else "every document and query went over HTTP")
        text = embedder_section("OpenAI-compatible embedder (`provider: openai`, the same model behind the "
                                "loopback fake's /v1/embeddings)", facts, results, default, len(eval_set.queries))
        text += (f"\nBounded run: {bounded}. Vectors: {served.summary()}. Against `provider: local`'s vectors: "
                 f"{agreement(in_process, served)} (the test model is dynamically int8-quantised: a vector moves a "
                 "little with its batch-mates, and the HTTP path batches differently).\n")
        out.append(text)
        print(text)
    finally:
        await local.cleanup()
    return out


async def main_async(args: argparse.Namespace) -> int:
    eval_set = await asyncio.to_thread(load_eval_set, args.eval_set)
    command = " ".join(["uv run python benchmarks/eval_retrieval.py", *map(shlex.quote, sys.argv[1:])]).strip()
    sections: list[str] = []

    hashing_settings = eval_settings("om_eval", "hashing")
    ss = hashing_settings.search
    default = Config("hybrid", ss.vector_weight, ss.text_weight, ss.rrf_k, ss.fusion) if ss.default_mode == "hybrid" \
        else Config(ss.default_mode)
    hashing = HashingEmbedder(hashing_settings)
    await hashing.init()
    try:
        results, facts = await evaluate(hashing, hashing_settings, eval_set, "hashing")
    finally:
        await hashing.cleanup()
    text = embedder_section("Hashing embedder (offline, lexical features only)", facts, results, default,
                                   len(eval_set.queries))
    sections.append(text)
    print(text)

    if args.skip_ollama:
        note = "skipped (--skip-ollama)."
        embedder: Embedder | None = None
    else:
        embedder, note = await ollama_embedder(load_settings({"embedder": {"provider": "ollama"}}))
    if embedder is None:
        message = f"### Ollama embedder\n\nNot measured in this run: {note}\n"
        print(message)
        sections.append(message)
    else:
        try:
            settings = eval_settings("om_eval_ollama", "ollama", embedder.dimension)
            results, facts = await evaluate(embedder, settings, eval_set, "ollama")
        finally:
            await embedder.cleanup()
        text = embedder_section("Ollama embedder", facts, results, default, len(eval_set.queries))
        sections.append(text)
        print(text)

    if not args.skip_local:
        sections.extend(await local_sections(args, eval_set, default))

    if not args.no_write:
        write_section(args.docs, render_section(eval_set, sections, command))
        print(f"wrote the retrieval-eval section of {args.docs}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--eval-set", type=Path, default=DEFAULT_EVAL_SET)
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--skip-ollama", action="store_true", help="do not try the Ollama embedder")
    parser.add_argument("--skip-local", action="store_true",
                        help="do not run the local ONNX model (in process, and served over the OpenAI API)")
    parser.add_argument("--skip-served", action="store_true",
                        help="run the local model in process only, not also behind the OpenAI-compatible path")
    parser.add_argument("--local-model", type=Path, default=None,
                        help="folder with model.onnx + tokenizer.json (default: shared/tools/fetch-bge-small)")
    parser.add_argument("--served-docs", type=int, default=256,
                        help="documents sent over the OpenAI path (seeded sample; the rest borrow the local "
                             "model's vectors); 0 = all of them")
    parser.add_argument("--cache", type=Path, default=default_cache_dir() / "eval-vectors",
                        help="folder for the models' vectors, one file per model_id")
    parser.add_argument("--no-cache", action="store_true", help="embed every text with each model in this run")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
