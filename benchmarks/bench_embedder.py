"""Throughput of the embedder's client layer (OllamaEmbedder) against the loopback fake Ollama.

This measures the adapter's own overhead, not a model: the fake server (its own process, so it does not
compete with the client for the GIL) answers precomputed deterministic vectors. For every batch size and
concurrency it embeds the same distinct texts with two clients, interleaved, ``--repeats`` times, and reports
the best wall-clock rate and the client process's CPU time per text (which the machine's load barely moves):

* **adapter**: ``OllamaEmbedder.embed_documents`` (prefixes, batching, semaphore, retries wrapper, JSON
  decoding, shape checks, L2 normalisation, ``list[list[float]]`` output);
* **raw httpx**: the same ``POST /api/embed`` calls with a bare ``httpx.AsyncClient`` and ``response.json()``,
  the floor any Python client pays for HTTP and JSON.

Then it prints a markdown table and writes it into docs/benchmarks.md between
``<!-- BEGIN embedder -->`` and ``<!-- END embedder -->``.

    uv run python benchmarks/bench_embedder.py [--quick] [--no-write] [--repeats 3] [--dimension 768]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import structlog

from oneiric_memory.adapters.embedders.ollama import OllamaEmbedder
from oneiric_memory.settings import load_settings

BEGIN, END = "<!-- BEGIN embedder -->", "<!-- END embedder -->"
ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
BATCH_SIZES = (1, 16, 64, 256)
CONCURRENCY = (1, 4, 16)
PREFIX = "search_document: "


@dataclass(frozen=True)
class Result:
    """Best (least disturbed) of the repeats: wall seconds and client CPU seconds for the whole set."""

    batch_size: int
    concurrency: int
    texts: int
    adapter_s: float
    raw_s: float
    adapter_cpu_s: float
    raw_cpu_s: float

    @property
    def requests(self) -> int:
        return -(-self.texts // self.batch_size)

    @property
    def adapter_rate(self) -> float:
        return self.texts / self.adapter_s

    @property
    def raw_rate(self) -> float:
        return self.texts / self.raw_s

    @property
    def adapter_cpu_us(self) -> float:
        return 1e6 * self.adapter_cpu_s / self.texts

    @property
    def raw_cpu_us(self) -> float:
        return 1e6 * self.raw_cpu_s / self.texts


def texts_for(batch_size: int, quick: bool) -> int:
    """Enough texts for about half a second per measurement on an idle machine."""
    full = {1: 300, 16: 1024, 64: 2048, 256: 4096}[batch_size]
    return max(batch_size, full // 4) if quick else full


def corpus(count: int) -> list[str]:
    words = ["memory", "agent", "workflow", "insight", "vector", "index", "search", "query", "store", "postgres", "embedding", "batch", "retry", "timeout", "session", "project", "tenant", "rank", "fusion", "latency", "cache", "pool"]
    return [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8 + i % 17)) + f" #{i}"
            for i in range(count)]


@contextlib.contextmanager
def fake_ollama_process(dimension: int) -> Iterator[str]:
    """Start ``python -m oneiric_memory.testing.fake_ollama`` and yield its base URL."""
    process = subprocess.Popen([sys.executable, "-m", "oneiric_memory.testing.fake_ollama", "--port", "0",
                                "--dimension", str(dimension)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        if not base_url.startswith("http://"):
            raise RuntimeError(f"the fake Ollama did not start (it printed {base_url!r})")
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


Timing = tuple[float, float]
"""(wall seconds, client-process CPU seconds, all threads)"""


async def timed(call: Awaitable[int], expected: int) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    count = await call
    timing = (time.perf_counter() - wall, time.process_time() - cpu)
    assert count == expected
    return timing


async def run_case(base_url: str, texts: list[str], batch_size: int, concurrency: int, root: Path,
                   dimension: int, repeats: int) -> Result:
    """Adapter and raw runs interleaved, so both see the same machine load."""
    settings = load_settings({
        "embedder": {"provider": "ollama", "base_url": base_url, "batch_size": batch_size,
                     "max_concurrency": concurrency, "request_timeout_s": 60, "total_timeout_s": 600},
        "postgres": {"vector_dimension": dimension},
    }, root=root, environ={})
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    batches = [[PREFIX + t for t in texts[i:i + batch_size]] for i in range(0, len(texts), batch_size)]
    adapter: list[Timing] = []
    raw: list[Timing] = []
    async with OllamaEmbedder(settings) as embedder, \
            httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def adapter_run(subset: list[str]) -> int:
            vectors = await embedder.embed_documents(subset)
            assert len(vectors[0]) == dimension
            return len(vectors)

        async def raw_one(batch: list[str]) -> int:
            async with semaphore:
                response = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": batch})
            return len(response.json()["embeddings"])

        async def raw_run(subset: list[list[str]]) -> int:
            return sum(await asyncio.gather(*(raw_one(batch) for batch in subset)))

        warm = min(len(texts), batch_size * concurrency)  # open the connections of both clients
        await adapter_run(texts[:warm])
        await raw_run(batches[:concurrency])
        for _ in range(repeats):
            adapter.append(await timed(adapter_run(texts), len(texts)))
            raw.append(await timed(raw_run(batches), len(texts)))
    return Result(batch_size, concurrency, len(texts), min(t[0] for t in adapter), min(t[0] for t in raw),
                  min(t[1] for t in adapter), min(t[1] for t in raw))


async def warm_server(base_url: str, texts: list[str]) -> None:
    """Let the fake compute and cache every answer once, so the runs measure serving, not hashing."""
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        for start in range(0, len(texts), 256):
            batch = [PREFIX + t for t in texts[start:start + 256]]
            response = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": batch})
            response.raise_for_status()


def memory_gib() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown memory"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def load_average() -> str:
    with contextlib.suppress(OSError, IndexError):
        return Path("/proc/loadavg").read_text(encoding="utf-8").split()[0]
    return "?"


def render(results: list[Result], command: str, dimension: int, repeats: int, load_before: str,
           load_after: str) -> str:
    lines = [
        BEGIN,
        "## Embedder client layer (OllamaEmbedder against the loopback fake Ollama)",
        "",
        f"- Command: `{command}`",
        f"- Machine: {os.cpu_count()} logical CPUs ({cpu_model()}), {memory_gib()} RAM, "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}, httpx {httpx.__version__}",
        f"- Run at: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {load_before} before, {load_after} after",
        f"- What: `embed_documents` of distinct short texts (9 to 25 words), {dimension}-dim vectors; the fake "
        "server runs in its own process and answers precomputed vectors, so this is the client layer's cost "
        "(plus the loopback server's), not a model's. *raw httpx* sends the same requests with a bare "
        "`httpx.AsyncClient` and `response.json()`: the floor for any Python client. Each figure is the best of "
        f"{repeats} runs, adapter and raw interleaved so both see the same machine load.",
        "",
        "| batch size | concurrency | texts | requests | adapter texts/s | raw httpx texts/s "
        "| adapter CPU µs/text | raw httpx CPU µs/text | CPU adapter/raw |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r.batch_size} | {r.concurrency} | {r.texts} | {r.requests} | {r.adapter_rate:,.0f} | "
                     f"{r.raw_rate:,.0f} | {r.adapter_cpu_us:,.0f} | {r.raw_cpu_us:,.0f} | "
                     f"{r.adapter_cpu_s / r.raw_cpu_s:.2f} |")
    best = max(results, key=lambda r: r.adapter_rate)
    single = next((r for r in results if r.batch_size == 1 and r.concurrency == 1), None)
    big = [r for r in results if r.batch_size >= 64]
    lines += ["", f"Best wall-clock rate: {best.adapter_rate:,.0f} texts/s at batch {best.batch_size}, concurrency "
              f"{best.concurrency}."]
    if single is not None:
        lines.append(f"One text per request, one at a time: {1000 * single.adapter_s / single.requests:.2f} ms "
                     f"per request through the adapter, {1000 * single.raw_s / single.requests:.2f} ms raw; "
                     f"{single.adapter_cpu_us:,.0f} µs of client CPU per request "
                     f"({single.raw_cpu_us:,.0f} µs raw).")
    if big:
        ratio = sum(r.adapter_cpu_s / r.raw_cpu_s for r in big) / len(big)
        lines.append(f"At batch sizes >= 64 the adapter spends {ratio:.2f}x the client CPU of bare httpx + "
                     "`response.json()` (the extra is validation, the document prefix and L2 normalisation).")
    lines += [
        "Client CPU time (all threads of the client process) depends much less on the machine's load than the "
        "wall-clock rates, which should be read against the load average above. "
        "With a real model, the model's time per text comes on top of these numbers; the client layer matters "
        "only if Ollama itself embeds faster than the rates above. Against a real Ollama, concurrency above its "
        "`OLLAMA_NUM_PARALLEL` only queues requests.",
        END,
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace only this benchmark's section (under a lock: other benchmarks write the same file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / ".benchmarks.md.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
        pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
        if pattern.search(current):
            updated = pattern.sub(lambda _match: section, current, count=1)
        else:
            updated = current.rstrip("\n") + "\n\n" + section
        path.write_text(updated, encoding="utf-8")


async def main_async(args: argparse.Namespace) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    load_before = load_average()
    texts = corpus(max(texts_for(b, args.quick) for b in BATCH_SIZES))
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="om-bench-embedder-") as root, \
            fake_ollama_process(args.dimension) as base_url:
        print(f"fake Ollama at {base_url}; warming its vector cache ...", flush=True)
        await warm_server(base_url, texts)
        for batch_size in BATCH_SIZES:
            subset = texts[: texts_for(batch_size, args.quick)]
            for concurrency in CONCURRENCY:
                result = await run_case(base_url, subset, batch_size, concurrency, Path(root), args.dimension,
                                        args.repeats)
                results.append(result)
                print(f"batch {batch_size:>3} concurrency {concurrency:>2}: {result.adapter_rate:>9,.0f} texts/s "
                      f"(raw {result.raw_rate:,.0f}); client CPU {result.adapter_cpu_us:,.0f} us/text "
                      f"(raw {result.raw_cpu_us:,.0f})", flush=True)
    command = "uv run python benchmarks/bench_embedder.py" + (" --quick" if args.quick else "")
    if args.repeats != 3:
        command += f" --repeats {args.repeats}"
    section = render(results, command, args.dimension, args.repeats, load_before, load_average())
    print()
    print(section)
    if not args.no_write:
        write_section(DOCS, section)
        print(f"wrote the embedder section of {DOCS.relative_to(ROOT)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a quarter of the texts (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--dimension", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the best one is reported")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
