"""The Ollama embedder: Oneiric category ``embedding``, provider ``ollama``.

Ollama's own API: ``GET /api/tags`` says which models are pulled, ``POST /api/embed`` embeds a batch
(``{"model", "input": [...], "truncate", "keep_alive", "dimensions"}`` → ``{"embeddings": [[...]]}``). The
batching, bounds, retries, cache and health are :class:`~oneiric_memory.adapters.embedders.http_embedder.HttpEmbedder`'s;
this module adds what is Ollama's: the model must be pulled, ``keep_alive``/``truncate``, and advice that names
``ollama serve`` and ``ollama pull``.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar

from oneiric_memory.adapters.embedders.http_embedder import HttpEmbedder, canonical_model
from oneiric_memory.adapters.embedders.prefixed import initialized
from oneiric_memory.errors import EmbedderError
from oneiric_memory.settings import DEFAULT_OLLAMA_URL, MemorySettings, load_settings

__all__ = ["OllamaEmbedder", "ollama_embedder_factory"]


def _keep_alive_value(value: str) -> str | int | float:
    """Ollama reads a number as seconds (``-1`` = forever) and a string as a Go duration (``5m``)."""
    try:
        number = float(value)
    except ValueError:
        return value
    if not math.isfinite(number):
        return value
    return int(number) if number.is_integer() else number


class OllamaEmbedder(HttpEmbedder):
    """Embeddings from a local (or remote) Ollama server; see the module docstring."""

    provider: ClassVar[str] = "ollama"
    server_name: ClassVar[str] = "Ollama"
    example_url: ClassVar[str] = DEFAULT_OLLAMA_URL
    embed_path: ClassVar[str] = "/api/embed"
    checks_reachability: ClassVar[bool] = True

    async def _start_checks(self, deadline: float) -> None:
        models = await self._fetch_tags(deadline, retry_connect=False)
        names = self._model_names(models)
        if not any(canonical_model(self._model) == canonical_model(m) for m in names):
            raise EmbedderError(
                f"model {self._model} is not pulled at {self._public_url}: run `ollama pull "
                f"{self._model}` (or set oneiric_memory.embedder.model to one of: "
                f"{', '.join(names) or 'no models are pulled'})",
                model=self._model, available=names)

    def _embed_payload(self, inputs: list[str], model: str) -> dict[str, Any]:
        cfg = self._cfg
        payload: dict[str, Any] = {"model": model, "input": inputs, "truncate": cfg.truncate}
        if cfg.keep_alive is not None:
            payload["keep_alive"] = _keep_alive_value(cfg.keep_alive)
        if cfg.dimensions is not None:
            payload["dimensions"] = cfg.dimensions
        return payload

    def _vectors_of(self, body: Any, expected: int) -> list[Any]:
        embeddings = body.get("embeddings") if isinstance(body, dict) else None
        if not isinstance(embeddings, list):
            raise EmbedderError(f"Ollama at {self._public_url} answered JSON without an 'embeddings' list: upgrade "
                                "Ollama to 0.3 or later (it needs /api/embed), or check "
                                "oneiric_memory.embedder.base_url")
        return embeddings

    def _model_damaged_hint(self) -> str:
        return f"run `ollama pull {self._model}` again"

    def _healthy_message(self) -> str:
        return f"Ollama answers; model {canonical_model(self._model)} is pulled"

    def _unreachable(self, why: str = "") -> str:
        return (f"Ollama is not reachable at {self._public_url}{why}: start it with `ollama serve` or set "
                "oneiric_memory.embedder.base_url")

    def _client_error(self, status: int, detail: str, path: str) -> EmbedderError:
        url = self._public_url
        if status == 404 and "model" in detail.lower():
            return EmbedderError(f"model {self._model} is not pulled at {url} ({detail}): run `ollama pull "
                                 f"{self._model}`", status=status, model=self._model)
        if status == 404:
            return EmbedderError(f"{url} has no {path} endpoint (HTTP 404): upgrade Ollama to 0.3 or later, or "
                                 "check that oneiric_memory.embedder.base_url points at Ollama", status=status)
        if status == 400:
            return EmbedderError(f"Ollama at {url} rejected the request (HTTP 400: {detail}): if the text is too "
                                 "long for the model, set oneiric_memory.embedder.truncate: true or split it",
                                 status=status)
        return EmbedderError(f"Ollama at {url} refused the request (HTTP {status}: {detail}): check "
                             "oneiric_memory.embedder.base_url and any proxy in front of Ollama; not retried",
                             status=status)

    async def _probe(self) -> tuple[bool, str]:
        """One bounded ``GET /api/tags``: (healthy, why not)."""
        response, detail = await self._get("/api/tags")
        if response is None:
            return False, detail
        if response.status_code != 200:
            return False, f"Ollama at {self._public_url} answered HTTP {response.status_code} to /api/tags"
        try:
            names = self._model_names(self._parse_tags(response.content))
        except EmbedderError as exc:
            return False, exc.message
        if not any(canonical_model(self._model) == canonical_model(name) for name in names):
            return False, f"model {self._model} is no longer pulled: run `ollama pull {self._model}`"
        return True, "ok"

    # --- Oneiric's EmbeddingBase: the model list ----------------------------------------------------

    async def _get_model_info(self, model: str) -> dict[str, Any]:
        name = str(model or self._model)
        for entry in await self._list_models():
            if canonical_model(str(entry.get("name") or entry.get("model") or "")) == canonical_model(name):
                info = dict(entry)
                prefixes = self.prefixes_for(name)
                info.update(provider=self.provider, document_prefix=prefixes.document,
                            query_prefix=prefixes.query)
                if canonical_model(name) == canonical_model(self._model):
                    info.update(model_id=self.model_id, dimension=self.dimension)
                return info
        raise EmbedderError(f"model {name} is not pulled at {self._public_url}: run `ollama pull {name}`",
                            model=name)

    async def _list_models(self) -> list[dict[str, Any]]:
        async with self._total_budget() as deadline:
            return await self._fetch_tags(deadline, retry_connect=True)

    async def _fetch_tags(self, deadline: float, *, retry_connect: bool) -> list[dict[str, Any]]:
        response = await self._request("GET", "/api/tags", deadline=deadline, retry_connect=retry_connect)
        return self._parse_tags(response.content)

    def _parse_tags(self, content: bytes) -> list[dict[str, Any]]:
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        models = body.get("models") if isinstance(body, dict) else None
        if not isinstance(models, list):
            raise EmbedderError(f"{self._public_url}/api/tags did not answer Ollama's model list: check that "
                                "oneiric_memory.embedder.base_url points at Ollama")
        return [entry for entry in models if isinstance(entry, dict)]

    @staticmethod
    def _model_names(models: list[dict[str, Any]]) -> list[str]:
        names: list[str] = []
        for entry in models:
            for field in ("name", "model"):
                value = entry.get(field)
                if isinstance(value, str) and value not in names:
                    names.append(value)
        return names


async def ollama_embedder_factory(settings: MemorySettings | None = None) -> OllamaEmbedder:
    """The one way to build it: settings (loaded when omitted, as Oneiric calls it with no arguments), build,
    ``init()``; closes the client if init fails."""
    return await initialized(OllamaEmbedder(settings or load_settings()))
