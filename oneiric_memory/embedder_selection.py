"""Pick the embedder from ``embedder.provider``: ``ollama``, ``hashing`` or ``auto`` (Ollama, else hashing).

``auto`` exists for the demo and first runs: it never fails for want of Ollama, and it says so in one
sentence, because silently storing lexical-only vectors would surprise whoever expected semantic search.
"""

from __future__ import annotations

from oneiric_memory.adapters.hashing_embedder import HashingEmbedder
from oneiric_memory.adapters.ollama_embedder import OllamaEmbedder
from oneiric_memory.errors import EmbedderError
from oneiric_memory.observability import get_logger
from oneiric_memory.protocols import Embedder
from oneiric_memory.settings import MemorySettings

__all__ = ["select_embedder"]


async def select_embedder(settings: MemorySettings) -> tuple[Embedder, str]:
    """An initialised embedder and a human sentence saying which one and why.

    ``ollama`` raises ``EmbedderError``/``EmbedderUnavailable`` if Ollama cannot be used; ``auto`` falls back
    to the hashing embedder on either, and the sentence explains the fallback.
    """
    log = get_logger("oneiric_memory.embedder_selection")
    provider = settings.embedder.provider
    if provider == "hashing":
        hashing = HashingEmbedder(settings)
        await hashing.init()
        return hashing, (f"using the hashing embedder (lexical only, {hashing.dimension} dims), as "
                         "embedder.provider is 'hashing'")
    ollama = OllamaEmbedder(settings)
    try:
        await ollama.init()
    except EmbedderError as exc:
        await ollama.cleanup()
        if provider == "ollama":
            raise
        hashing = HashingEmbedder(settings)
        await hashing.init()
        reason = exc.message.rstrip(".")
        log.warning("embedder-fallback", reason=type(exc).__name__, model_id=hashing.model_id)
        return hashing, f"{reason}; fell back to the hashing embedder (lexical only)"
    except BaseException:
        await ollama.cleanup()
        raise
    return ollama, (f"using Ollama model {ollama.model} at {ollama.base_url} ({ollama.dimension} dims)")
