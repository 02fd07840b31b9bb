"""The one place that picks the embedder: ``embedder.provider`` names one, or ``auto`` walks a chain.

``auto`` tries, in order, Ollama, an OpenAI-compatible server (llama-server, vLLM, TEI, ...), the in-process
local model (only when its extra is installed and a model is present or configured), then the hashing
embedder. Each candidate is first probed within ``embedder.probe_timeout_s`` so a missing server costs about
that long, not a full retry budget. Whatever is skipped is kept with its reason: the coordinator's health,
``oneiric-memory config`` and the demo show it, because silently storing lexical-only vectors would surprise
whoever expected semantic search. An explicitly named provider that fails raises instead of falling back.

Every embedder is built the one way, its module's ``*_embedder_factory(settings)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from oneiric_memory.errors import ConfigurationError, EmbedderError
from oneiric_memory.observability import get_logger
from oneiric_memory.protocols import Embedder
from oneiric_memory.settings import MemorySettings

__all__ = [
    "AUTO_CHAIN",
    "EmbedderSelection",
    "SkippedEmbedder",
    "build_embedder",
    "describe_embedder",
    "select_embedder",
]

AUTO_CHAIN: tuple[str, ...] = ("ollama", "openai", "local", "hashing")
"""The providers ``auto`` tries, in order; the last one never fails."""


@dataclass(frozen=True, slots=True)
class SkippedEmbedder:
    """A provider ``auto`` tried and passed over, and why (a sentence that says what to do)."""

    provider: str
    reason: str


@dataclass(slots=True)
class EmbedderSelection:
    """The chosen provider, its initialised embedder (None once released) and the reasons for the choice."""

    provider: str
    requested: str
    note: str
    embedder: Embedder | None = None
    model_id: str = ""
    dimension: int = 0
    skipped: list[SkippedEmbedder] = field(default_factory=list)

    @property
    def fell_back(self) -> bool:
        """True when ``auto`` passed over at least one provider before this one."""
        return bool(self.skipped)

    @property
    def lexical_only(self) -> bool:
        return self.provider == "hashing"

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view for health metadata and ``oneiric-memory config``."""
        return {"provider": self.provider, "requested": self.requested, "model_id": self.model_id,
                "dimension": self.dimension, "note": self.note, "lexical_only": self.lexical_only,
                "skipped": [{"provider": s.provider, "reason": s.reason} for s in self.skipped]}


async def _ollama(settings: MemorySettings) -> Embedder:
    from oneiric_memory.adapters.embedders.ollama import ollama_embedder_factory

    return await ollama_embedder_factory(settings)


async def _openai(settings: MemorySettings) -> Embedder:
    from oneiric_memory.adapters.embedders.openai import openai_embedder_factory

    return await openai_embedder_factory(settings)


async def _local(settings: MemorySettings) -> Embedder:
    from oneiric_memory.adapters.embedders.local import local_embedder_factory

    return await local_embedder_factory(settings)


async def _hashing(settings: MemorySettings) -> Embedder:
    from oneiric_memory.adapters.embedders.hashing import hashing_embedder_factory

    return await hashing_embedder_factory(settings)


_FACTORIES: dict[str, Callable[[MemorySettings], Awaitable[Embedder]]] = {
    "ollama": _ollama,
    "openai": _openai,
    "local": _local,
    "hashing": _hashing,
}


async def build_embedder(provider: str, settings: MemorySettings) -> Embedder:
    """Build and ``init()`` the named provider through its factory; raises if it cannot be used."""
    factory = _FACTORIES.get(provider)
    if factory is None:
        raise ConfigurationError(f"unknown embedder provider {provider!r}: use one of auto, "
                                 f"{', '.join(_FACTORIES)}")
    return await factory(settings)


def _describe(provider: str, embedder: Embedder, requested: str) -> str:
    why = f"as embedder.provider is '{requested}'" if requested != "auto" else "chosen by embedder.provider 'auto'"
    if provider == "hashing":
        return f"using the hashing embedder (lexical only, {embedder.dimension} dims), {why}"
    where = getattr(embedder, "base_url", "")
    model = getattr(embedder, "model", embedder.model_id)
    at = f" at {where}" if where else ""
    names = {"ollama": "Ollama", "openai": "the OpenAI-compatible server's", "local": "the local ONNX"}
    return f"using {names.get(provider, provider)} model {model}{at} ({embedder.dimension} dims), {why}"


async def _probe(provider: str, settings: MemorySettings) -> str:
    """Why ``auto`` should not even try ``provider`` ("" = try it), learned within ``embedder.probe_timeout_s``.

    A server must answer HTTP at its URL (any status: the full start-up checks then say what is wrong); the local
    model must be installed and already present, since ``auto`` never starts a download.
    """
    cfg = settings.embedder
    if provider == "local":
        from oneiric_memory.adapters.embedders.local import find_local_model

        folder, why = find_local_model(settings)
        return "" if folder is not None else why
    if provider not in ("ollama", "openai"):
        return ""
    import httpx

    from oneiric_memory.adapters.embedders.http_embedder import redact_url

    url = cfg.url_for(provider).rstrip("/")
    probe = f"{url}/api/tags" if provider == "ollama" else (f"{url}/models" if url.endswith("/v1")
                                                            else f"{url}/v1/models")
    timeout = cfg.probe_timeout_s
    try:
        async with asyncio.timeout(timeout + 0.5), httpx.AsyncClient(timeout=timeout) as client:
            await client.get(probe)
    except (httpx.HTTPError, httpx.InvalidURL, TimeoutError, ValueError) as exc:
        what = "Ollama" if provider == "ollama" else "no OpenAI-compatible server (llama-server, vLLM, TEI)"
        verb = "is not reachable" if provider == "ollama" else "answers"
        return (f"{what} {verb} at {redact_url(url)} within {timeout:g}s ({type(exc).__name__}): "
                + ("start it with `ollama serve` or set oneiric_memory.embedder.ollama_url" if provider == "ollama"
                   else "start llama-server with --embeddings or set oneiric_memory.embedder.openai_url"))
    return ""


async def select_embedder(settings: MemorySettings) -> EmbedderSelection:
    """An initialised embedder, chosen as the module docstring says, with the reasons for the choice.

    The caller owns ``selection.embedder`` and must ``cleanup()`` it.
    """
    requested = settings.embedder.provider
    if requested != "auto":
        embedder = await build_embedder(requested, settings)
        return EmbedderSelection(provider=requested, requested=requested, embedder=embedder,
                                 model_id=embedder.model_id, dimension=embedder.dimension,
                                 note=_describe(requested, embedder, requested))
    log = get_logger("oneiric_memory.embedders.selection")
    skipped: list[SkippedEmbedder] = []
    for provider in AUTO_CHAIN:
        last = provider == AUTO_CHAIN[-1]
        try:
            why_not = await _probe(provider, settings)
            if why_not:
                skipped.append(SkippedEmbedder(provider, why_not))
                log.info("embedder-skipped", provider=provider)
                continue
            embedder = await build_embedder(provider, settings)
        except (EmbedderError, ConfigurationError, TimeoutError) as exc:
            if last:
                raise
            reason = exc.message if isinstance(exc, (EmbedderError, ConfigurationError)) else \
                f"{provider} did not answer in time"
            skipped.append(SkippedEmbedder(provider, reason.rstrip(".")))
            log.warning("embedder-skipped", provider=provider, error=type(exc).__name__)
            continue
        note = _describe(provider, embedder, requested)
        if skipped:
            passed = "; ".join(f"{s.provider} skipped: {s.reason}" for s in skipped)
            note = f"{note}. {passed}"
            if provider == "hashing":
                note += "; fell back to the hashing embedder (lexical only)"
                log.warning("embedder-fallback", model_id=embedder.model_id, skipped=[s.provider for s in skipped])
        return EmbedderSelection(provider=provider, requested=requested, embedder=embedder,
                                 model_id=embedder.model_id, dimension=embedder.dimension, note=note,
                                 skipped=skipped)
    raise AssertionError("unreachable: the last provider of the chain raises or returns")


async def describe_embedder(settings: MemorySettings) -> EmbedderSelection:
    """Which embedder ``settings`` would activate now and why the ones before it were skipped.

    For reports (``oneiric-memory config``): it runs the same selection, then releases the embedder.
    """
    selection = await select_embedder(settings)
    embedder, selection.embedder = selection.embedder, None
    if embedder is not None:
        await asyncio.shield(embedder.cleanup())
    return selection
