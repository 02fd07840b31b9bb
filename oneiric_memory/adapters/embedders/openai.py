"""The OpenAI-compatible embedder: Oneiric category ``embedding``, provider ``openai``.

One client for every server that speaks ``POST /v1/embeddings`` (``{"model", "input": [...], "dimensions"?}`` →
``{"data": [{"index", "embedding"}]}``): llama.cpp's ``llama-server --embeddings`` (the ecosystem's default since
Mahavishnu and Session-Buddy 0.36, on ``http://localhost:8080/v1``), vLLM, Hugging Face TEI, LM Studio, OpenAI
itself, and Ollama's own ``/v1``. ``embedder.base_url`` may be given with or without ``/v1``: a bare server URL
gets ``/v1`` appended, any other path is kept. ``embedder.api_key`` is sent as a bearer token and never logged.

The batching, bounds, retries (connection errors, 429 with ``Retry-After``, 5xx; never other 4xx), the query cache,
the dimension probe and health are :class:`~oneiric_memory.adapters.embedders.http_embedder.HttpEmbedder`'s.
nomic-embed-text's ``search_document: ``/``search_query: `` prefixes are applied by model name, as for Ollama.
``model_id`` is ``openai:<model>``: the same model served by Ollama is ``ollama:<model>``, and the store refuses to
mix them until ``oneiric-memory db reembed``, since two servers' quantisations of one model are not proven equal.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar
from urllib.parse import urlsplit

from oneiric_memory.adapters.embedders.http_embedder import HttpEmbedder
from oneiric_memory.adapters.embedders.prefixed import initialized
from oneiric_memory.errors import EmbedderError
from oneiric_memory.settings import DEFAULT_OPENAI_URL, MemorySettings, load_settings

__all__ = ["OpenAIEmbedder", "openai_embedder_factory"]


class OpenAIEmbedder(HttpEmbedder):
    """Embeddings from an OpenAI-compatible ``/v1/embeddings`` endpoint; see the module docstring."""

    provider: ClassVar[str] = "openai"
    server_name: ClassVar[str] = "the OpenAI-compatible server"
    example_url: ClassVar[str] = DEFAULT_OPENAI_URL
    embed_path: ClassVar[str] = "/embeddings"

    def _server_root(self, url: str) -> str:
        """``http://host:8080`` → ``http://host:8080/v1``; a URL with a path (``/v1``, ``/openai/v1``) is kept."""
        url = url.strip().rstrip("/")
        try:
            path = urlsplit(url).path
        except ValueError:
            return url  # reported as an unusable URL when the client is built
        return url if path else f"{url}/v1"

    def _headers(self) -> dict[str, str]:
        headers = super()._headers()
        key = self._cfg.api_key
        if key is not None and key.get_secret_value():
            headers["Authorization"] = f"Bearer {key.get_secret_value()}"
        return headers

    async def _start_checks(self, deadline: float) -> None:
        """Nothing beyond the dimension probe: not every server lists its models (and llama-server serves one)."""

    def _embed_payload(self, inputs: list[str], model: str) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"}
        if self._cfg.dimensions is not None:
            payload["dimensions"] = self._cfg.dimensions
        return payload

    def _vectors_of(self, body: Any, expected: int) -> list[Any]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise EmbedderError(f"{self.server_name} at {self._public_url} answered JSON without a 'data' list of "
                                "embeddings: check that oneiric_memory.embedder.base_url points at an "
                                "OpenAI-compatible /v1 endpoint (llama-server needs --embeddings)")
        # The API numbers the rows; most servers keep input order, but the index is what the API promises.
        indexed = [item.get("index", position) for position, item in enumerate(data)]
        if sorted(indexed) == list(range(len(data))):
            data = [item for _, item in sorted(zip(indexed, data, strict=True), key=lambda pair: pair[0])]
        return [item.get("embedding") for item in data]

    def _model_damaged_hint(self) -> str:
        return "check the server's model file and its log"

    def _healthy_message(self) -> str:
        return f"{self.server_name} answers at {self._public_url}; model {self._model}"

    def _unreachable(self, why: str = "") -> str:
        return (f"no OpenAI-compatible server answers at {self._public_url}{why}: start one (e.g. `llama-server "
                "--embeddings -m nomic-embed-text-v1.5.gguf --port 8080`) or set oneiric_memory.embedder.base_url "
                f"(or embedder.openai_url, default {DEFAULT_OPENAI_URL})")

    def _client_error(self, status: int, detail: str, path: str) -> EmbedderError:
        url = self._public_url
        if status in (401, 403):
            return EmbedderError(f"{self.server_name} at {url} refused our credentials (HTTP {status}: {detail}): "
                                 "set oneiric_memory.embedder.api_key (env "
                                 "MAHAVISHNU_ONEIRIC_MEMORY__EMBEDDER__API_KEY)", status=status)
        if status == 404 and "model" in detail.lower():
            return EmbedderError(f"model {self._model} is not served at {url} ({detail}): set "
                                 "oneiric_memory.embedder.model to a model the server serves", status=status,
                                 model=self._model)
        if status == 404:
            return EmbedderError(f"{url} has no {path.lstrip('/')} endpoint (HTTP 404): check "
                                 "oneiric_memory.embedder.base_url (it should end in /v1) and start llama-server "
                                 "with --embeddings", status=status)
        if status in (400, 422) and "dimension" in detail.lower():
            return EmbedderError(f"{self.server_name} at {url} does not accept the dimensions parameter for model "
                                 f"{self._model} (HTTP {status}: {detail}): remove oneiric_memory.embedder.dimensions",
                                 status=status)
        if status in (400, 413, 422):
            return EmbedderError(f"{self.server_name} at {url} rejected the request (HTTP {status}: {detail}): if "
                                 "a text is too long for the model, split it or raise the server's context or "
                                 "batch size (llama-server: -c, -ub); not retried", status=status)
        return EmbedderError(f"{self.server_name} at {url} refused the request (HTTP {status}: {detail}): check "
                             "oneiric_memory.embedder.base_url and any proxy in front of it; not retried",
                             status=status)

    async def _probe(self) -> tuple[bool, str]:
        """One bounded ``GET /models``: a 404 still proves a live server (TEI and some proxies list no models)."""
        response, detail = await self._get("/models")
        if response is None:
            return False, detail
        status = response.status_code
        if status in (401, 403):
            return False, f"{self.server_name} at {self._public_url} refused our credentials (HTTP {status}): " \
                          "set oneiric_memory.embedder.api_key"
        if status >= 500:
            return False, f"{self.server_name} at {self._public_url} answered HTTP {status} to /models"
        return True, "ok"

    # --- Oneiric's EmbeddingBase: the model list ----------------------------------------------------

    async def _list_models(self) -> list[dict[str, Any]]:
        async with self._total_budget() as deadline:
            response = await self._request("GET", "/models", deadline=deadline)
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise EmbedderError(f"{self._public_url}/models did not answer an OpenAI model list")
        return [entry for entry in data if isinstance(entry, dict)]

    async def _get_model_info(self, model: str) -> dict[str, Any]:
        name = str(model or self._model)
        prefixes = self.prefixes_for(name)
        info: dict[str, Any] = {"id": name, "provider": self.provider, "document_prefix": prefixes.document,
                                "query_prefix": prefixes.query}
        for entry in await self._list_models():
            if entry.get("id") == name:
                info.update(entry)
        if name == self._model:
            info.update(model_id=self.model_id, dimension=self.dimension)
        return info


async def openai_embedder_factory(settings: MemorySettings | None = None) -> OpenAIEmbedder:
    """The one way to build it: settings (loaded when omitted, as Oneiric calls it with no arguments), build,
    ``init()`` (the dimension probe); closes the client if init fails."""
    return await initialized(OpenAIEmbedder(settings or load_settings()))
