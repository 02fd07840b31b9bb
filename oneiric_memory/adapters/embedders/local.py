"""The in-process embedder: Oneiric category ``embedding``, provider ``local``; no server, no torch.

A sentence-embedding model in ONNX format runs inside this process through ``onnxruntime``, with Hugging Face
``tokenizers`` for the text (the optional extra ``oneiric-memory[local]``). Why not fastembed: it would bring
huggingface-hub, requests, tqdm, loguru, mmh3, Pillow and a stemmer for what is ~150 lines here, and its custom-model
path wants a hub-style description anyway; onnxruntime + tokenizers are the two pieces fastembed itself runs on.

The model comes from one of two places:

* ``embedder.model_path``: a folder in Hugging Face layout, ``model.onnx`` (or ``onnx/model.onnx``) beside
  ``tokenizer.json``;
* a named model (``embedder.model``, default ``nomic-embed-text`` → nomic-embed-text-v1.5, 768-d like the store's
  default and Ollama's/llama-server's nomic-embed-text), downloaded once into ``<cache>/models/<name>`` with a
  progress bar on stderr. Offline with neither, init fails with a message naming both ways.

Pooling follows the model: ``CLS`` for the BGE family, masked mean otherwise (nomic, MiniLM), or
``embedder.local_pooling``; vectors are L2-normalised. Inference runs in a worker thread, one batch at a time (the
ONNX session already uses every core), with texts sorted by length so padding stays small. ``model_id`` is
``local:<name>``: vectors from another runtime of the "same" model are not assumed identical (see
docs/benchmarks.md), so the store refuses to mix them until ``oneiric-memory db reembed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from oneiric_memory.adapters.embedders.inputs import check_texts
from oneiric_memory.adapters.embedders.prefixed import PrefixedEmbedder, initialized
from oneiric_memory.adapters.embedders.query_cache import QueryCache
from oneiric_memory.errors import EmbedderError, OneiricMemoryError
from oneiric_memory.observability import Stopwatch, get_logger, span
from oneiric_memory.settings import MemorySettings, load_settings

if TYPE_CHECKING:  # mcp_common is slow to import
    from mcp_common.health import ComponentHealth

__all__ = ["KNOWN_MODELS", "LocalEmbedder", "LocalModelSpec", "find_local_model", "local_embedder_factory"]

Pooling = Literal["cls", "mean"]
_HUB = "https://huggingface.co"
_DOWNLOAD_TIMEOUT_S = 30.0
_MAX_TOKENS_CAP = 8192


@dataclass(frozen=True, slots=True)
class LocalModelSpec:
    """A model this package knows how to fetch by name: where its files are and how it is pooled."""

    name: str
    repo: str
    pooling: Pooling
    dimension: int
    onnx_file: str = "onnx/model.onnx"
    max_tokens: int = 512


KNOWN_MODELS: dict[str, LocalModelSpec] = {
    spec.name: spec for spec in (
        LocalModelSpec("nomic-embed-text-v1.5", "nomic-ai/nomic-embed-text-v1.5", "mean", 768, max_tokens=2048),
        LocalModelSpec("bge-small-en-v1.5", "BAAI/bge-small-en-v1.5", "cls", 384),
        LocalModelSpec("bge-base-en-v1.5", "BAAI/bge-base-en-v1.5", "cls", 768),
        LocalModelSpec("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2", "mean", 384, max_tokens=256),
    )
}
_ALIASES = {"nomic-embed-text": "nomic-embed-text-v1.5", "bge-small-en": "bge-small-en-v1.5",
            "all-minilm": "all-minilm-l6-v2"}


def _spec_for(model: str) -> LocalModelSpec | None:
    name = model.removesuffix(":latest").lower()
    return KNOWN_MODELS.get(_ALIASES.get(name, name))


def _onnx_in(folder: Path) -> Path | None:
    for candidate in (folder / "model.onnx", folder / "onnx" / "model.onnx"):
        if candidate.is_file() and candidate.stat().st_size > 0:
            return candidate
    return None


def find_local_model(settings: MemorySettings) -> tuple[Path | None, str]:
    """The folder the local embedder would load, without loading or downloading anything; else why not.

    ``auto`` uses this to consider ``local`` only when its extra is installed and a model is already here.
    """
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("tokenizers") is None:
        return None, ("the local embedder is not installed: `pip install 'oneiric-memory[local]'` (onnxruntime + "
                      "tokenizers)")
    cfg = settings.embedder
    if cfg.model_path is not None:
        folder = cfg.model_path.expanduser()
        if _onnx_in(folder) is None or not (folder / "tokenizer.json").is_file():
            return None, (f"embedder.model_path {folder} does not hold model.onnx and tokenizer.json (Hugging Face "
                          "layout): point it at such a folder")
        return folder, ""
    spec = _spec_for(cfg.model)
    if spec is None:
        return None, (f"no local model configured: embedder.model {cfg.model!r} is not a model this package can "
                      f"download ({', '.join(KNOWN_MODELS)}); set embedder.model_path to a folder with model.onnx "
                      "and tokenizer.json")
    folder = settings.cache_dir / "models" / spec.name
    if _onnx_in(folder) is None or not (folder / "tokenizer.json").is_file():
        return None, (f"local model {spec.name} is not downloaded yet (it would go to {folder}); set "
                      "embedder.provider: local to download it once, or set embedder.model_path")
    return folder, ""


def _download(spec: LocalModelSpec, folder: Path) -> None:
    """Fetch the model's ONNX file and tokenizer into ``folder`` once, with a progress bar on stderr (blocking)."""
    import httpx
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    folder.mkdir(parents=True, exist_ok=True)
    files = [(spec.onnx_file, folder / "model.onnx"), ("tokenizer.json", folder / "tokenizer.json"),
             ("tokenizer_config.json", folder / "tokenizer_config.json"), ("config.json", folder / "config.json")]
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=False) as progress, \
            httpx.Client(follow_redirects=True, timeout=_DOWNLOAD_TIMEOUT_S) as client:
        for remote, target in files:
            if target.is_file() and target.stat().st_size > 0:
                continue
            url = f"{_HUB}/{spec.repo}/resolve/main/{remote}"
            partial = target.with_suffix(target.suffix + ".part")
            with client.stream("GET", url) as response:
                if response.status_code == 404 and remote.endswith("config.json"):
                    continue  # optional files
                response.raise_for_status()
                total = int(response.headers.get("Content-Length") or 0) or None
                task = progress.add_task(f"{spec.name}/{target.name}", total=total)
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                        progress.advance(task, len(chunk))
            os.replace(partial, target)  # a half-written file never looks like a model


def _pooling_of(folder: Path, name: str, configured: str) -> Pooling:
    if configured in ("cls", "mean"):
        return "cls" if configured == "cls" else "mean"
    st_config = folder / "1_Pooling" / "config.json"
    if st_config.is_file():  # sentence-transformers' own description wins
        try:
            pooling = json.loads(st_config.read_text(encoding="utf-8"))
            if pooling.get("pooling_mode_cls_token"):
                return "cls"
            if pooling.get("pooling_mode_mean_tokens"):
                return "mean"
        except (OSError, ValueError):
            pass
    hints = [name.lower()]
    config = folder / "config.json"
    if config.is_file():
        with contextlib.suppress(OSError, ValueError):
            hints.append(str(json.loads(config.read_text(encoding="utf-8")).get("_name_or_path", "")).lower())
    return "cls" if any("bge" in hint for hint in hints) else "mean"


def _max_tokens(folder: Path, default: int) -> int:
    config = folder / "tokenizer_config.json"
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("model_max_length")
    except (OSError, ValueError):
        return default
    return min(int(value), _MAX_TOKENS_CAP) if isinstance(value, int) and value > 0 else default


class LocalEmbedder(PrefixedEmbedder):
    """An ONNX sentence-embedding model in this process; see the module docstring."""

    provider: ClassVar[str] = "local"

    def __init__(self, settings: MemorySettings) -> None:
        self._memory_settings = settings
        self._cfg = settings.embedder
        self._spec = None if self._cfg.model_path is not None else _spec_for(self._cfg.model)
        self._name = (self._cfg.model_path.expanduser().name if self._cfg.model_path is not None
                      else (self._spec.name if self._spec is not None else self._cfg.model))
        self._folder: Path | None = None
        self._session: Any = None
        self._tokenizer: Any = None
        self._input_names: list[str] = []
        self._pooling: Pooling = "mean"
        self._dimension: int | None = None
        self._cache = QueryCache(self._cfg.query_cache_size)
        self._run_lock = threading.Lock()
        self._gate = asyncio.Semaphore(1)
        self._initialized = False
        self._last_error: str | None = None
        self._log = get_logger("oneiric_memory.embedder", provider=self.provider, model=self._name)

    # --- identity --------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        return self._name

    @property
    def model_path(self) -> Path | None:
        """The folder the model was loaded from (known after ``init()``)."""
        return self._folder

    @property
    def model_id(self) -> str:
        return f"local:{self._name}"

    @property
    def dimension(self) -> int:
        if self._dimension is not None:
            return self._dimension
        return self._spec.dimension if self._spec is not None else self._memory_settings.postgres.vector_dimension

    @property
    def pooling(self) -> str:
        return self._pooling

    # --- start -----------------------------------------------------------------------------------

    async def init(self) -> None:
        """Find (or download once) the model, load it off the event loop, probe its dimension against the store."""
        if self._initialized:
            return
        watch = Stopwatch()
        with span("embedder.init", provider=self.provider, model=self._name):
            folder = await asyncio.to_thread(self._locate)
            await asyncio.to_thread(self._load, folder)
            probe = await asyncio.to_thread(self._run, ["dimension probe"])
        width = int(probe.shape[1])
        store = self._memory_settings.postgres.vector_dimension
        if width != store:
            raise EmbedderError(
                f"local model {self._name} gives {width} dims, the store expects {store}: set "
                f"postgres.vector_dimension: {width} (a migration, `oneiric-memory db reembed`) or choose a "
                f"{store}-d model (embedder.model / embedder.model_path)", expected=store, actual=width)
        self._dimension = width
        self._initialized = True
        self._log.info("embedder-ready", dimension=width, model_id=self.model_id, pooling=self._pooling,
                       init_ms=round(watch.ms, 1))

    def _locate(self) -> Path:
        folder, why = find_local_model(self._memory_settings)
        if folder is not None:
            return folder
        if "not installed" in why or self._cfg.model_path is not None or self._spec is None:
            raise EmbedderError(why)
        target = self._memory_settings.cache_dir / "models" / self._spec.name
        if not self._cfg.local_download:
            raise EmbedderError(self._offline_message(target, "embedder.local_download is false"))
        try:
            _download(self._spec, target)
        except Exception as exc:  # httpx errors, OSError: offline is the common case
            raise EmbedderError(self._offline_message(target, f"{type(exc).__name__}: {str(exc)[:160]}")) from None
        if _onnx_in(target) is None:
            raise EmbedderError(self._offline_message(target, "the download left no model.onnx"))
        return target

    def _offline_message(self, target: Path, why: str) -> str:
        assert self._spec is not None
        return (f"no local model, and {self._spec.name} could not be downloaded ({why}). Either set "
                "oneiric_memory.embedder.model_path to a folder holding model.onnx and tokenizer.json (Hugging Face "
                f"layout), or download it once while online (embedder.provider: local, model {self._spec.name}; "
                f"it goes to {target}) — e.g. the ONNX export of {self._spec.repo}")

    def _load(self, folder: Path) -> None:
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError:
            raise EmbedderError("the local embedder is not installed: `pip install 'oneiric-memory[local]'` "
                                "(onnxruntime + tokenizers)") from None
        onnx = _onnx_in(folder)
        if onnx is None:
            raise EmbedderError(f"{folder} holds no model.onnx: point embedder.model_path at a Hugging Face-layout "
                                "folder")
        options = onnxruntime.SessionOptions()
        if self._cfg.local_threads:
            options.intra_op_num_threads = self._cfg.local_threads
        options.log_severity_level = 3
        try:
            session = onnxruntime.InferenceSession(str(onnx), sess_options=options,
                                                   providers=["CPUExecutionProvider"])
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # a damaged or foreign file: say which
            raise EmbedderError(f"cannot load the local model in {folder} ({type(exc).__name__}: {str(exc)[:160]}): "
                                "check that model.onnx and tokenizer.json belong together") from None
        limit = _max_tokens(folder, self._spec.max_tokens if self._spec is not None else 512)
        tokenizer.enable_truncation(max_length=limit)
        tokenizer.no_padding()
        self._session, self._tokenizer, self._folder = session, tokenizer, folder
        self._input_names = [item.name for item in session.get_inputs()]
        self._pooling = _pooling_of(folder, self._name, self._cfg.local_pooling)

    # --- inference (worker thread) ---------------------------------------------------------------

    def _run(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Token ids → pooled, normalised vectors for one batch; serialised (the session uses every core)."""
        encodings = self._tokenizer.encode_batch(list(texts))
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, :len(encoding.ids)] = encoding.ids
            mask[row, :len(encoding.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        with self._run_lock:
            hidden = self._session.run(None, {name: feeds[name] for name in self._input_names if name in feeds})[0]
        if hidden.ndim == 2:  # a model exported with pooling built in
            pooled = hidden.astype(np.float32)
        elif self._pooling == "cls":
            pooled = hidden[:, 0, :].astype(np.float32)
        else:
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if self._cfg.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        result: npt.NDArray[np.float32] = np.asarray(pooled, dtype=np.float32)
        return result

    def embed_sync(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Synchronous batch embedding of raw texts (no prefixes) for callers already off the event loop."""
        check_texts(texts)
        if not self._initialized:
            raise EmbedderError("the local embedder is not initialised: await init() (or use the factory) first")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        size = self._cfg.batch_size
        for start in range(0, len(order), size):
            chosen = order[start:start + size]
            out[chosen] = self._run([texts[i] for i in chosen])
        return out

    # --- the Embedder protocol (embed_documents, embed_query: PrefixedEmbedder's) ---------------------

    async def _embed_prefixed(self, inputs: list[str], *, kind: str) -> list[list[float]]:
        with self._metered(model=self._name, kind=kind, texts=len(inputs)):
            try:
                async with self._gate:
                    matrix = await asyncio.to_thread(self.embed_sync, inputs)
            except OneiricMemoryError:
                raise
            except Exception as exc:  # onnxruntime failures surface as our error, not theirs
                raise EmbedderError(f"the local model {self._name} failed ({type(exc).__name__}: "
                                    f"{str(exc)[:160]})") from None
            vectors: list[list[float]] = matrix.tolist()
        return vectors

    async def health(self) -> bool:
        """True while the model is loaded; never raises."""
        return self._initialized and self._session is not None

    async def component_health(self) -> ComponentHealth:
        from mcp_common.health import ComponentHealth, HealthStatus

        if not self._initialized:
            status, message = HealthStatus.UNHEALTHY, "the local model is not loaded (init() has not run)"
        elif self._last_error is not None:
            status, message = HealthStatus.DEGRADED, f"the last embedding call failed: {self._last_error}"
        else:
            status, message = HealthStatus.HEALTHY, f"local ONNX model {self._name} ({self._pooling} pooling)"
        return ComponentHealth(name="embedding", status=status, message=message, latency_ms=0.0,
                               metadata={"provider": self.provider, "model": self._name, "model_id": self.model_id,
                                         "dimension": self.dimension, "model_path": str(self._folder or ""),
                                         "pooling": self._pooling, "initialized": self._initialized,
                                         "threads": self._cfg.local_threads, **self._cache.stats(),
                                         "last_error": self._last_error})

    async def cleanup(self) -> None:
        """Drop the session (its memory goes with it). Safe to call twice."""
        async with self._gate:
            self._session = None
            self._tokenizer = None
        self._cache.clear()
        self._initialized = False


async def local_embedder_factory(settings: MemorySettings | None = None) -> LocalEmbedder:
    """The one way to build it: settings (loaded when omitted, as Oneiric calls it with no arguments), build,
    ``init()`` (find or download the model, load it, probe its dimension)."""
    return await initialized(LocalEmbedder(settings or load_settings()))

