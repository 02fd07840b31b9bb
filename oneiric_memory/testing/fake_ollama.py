"""A real HTTP server on 127.0.0.1 that speaks enough of Ollama's API, and the OpenAI embeddings API that Ollama
also serves under ``/v1`` (as llama-server, vLLM and TEI do), to test embedding clients.

Ollama itself cannot run in CI, and mocking the client hides exactly the bugs that matter (connection reuse,
timeouts, retries, refused connections). :class:`FakeOllama` is a real socket server, in the spirit of httpx's
``MockTransport`` but one layer lower, so your code talks to it exactly as it would to Ollama::

    from oneiric_memory.testing.fake_ollama import FakeOllama

    with FakeOllama(dimension=768, models=("nomic-embed-text",)) as fake:
        settings = load_settings({"embedder": {"base_url": fake.base_url}})
        fake.inject(status=500)              # the next /api/embed answers 500 once
        ...                                  # call your code
        assert len(fake.embed_requests) == 2 # it retried
        fake.stop()                          # now connections are refused ...
        fake.start()                         # ... and it is back, on the same port

Endpoints: ``GET /api/tags``, ``POST /api/embed`` (batched), the legacy ``POST /api/embeddings``,
``GET /api/version``, ``GET /``, and the OpenAI-compatible ``POST /v1/embeddings`` and ``GET /v1/models``
(``fake.openai_url``; errors as ``{"error": {"message", "type"}}``; a bearer token is required when ``api_key``
is set). ``embed_fn`` replaces the hashing vectors with a real model's (the benchmarks serve the local ONNX
model this way). Vectors are deterministic (the hashing embedder's vectors of the exact input
text, so lexical neighbours are also vector neighbours), unit-normalised unless ``vector_norm`` says otherwise,
and honour ``dimensions`` (Matryoshka truncation) unless ``supports_dimensions=False``.

The server runs in its own threads, so it answers whichever event loop (or thread) makes the requests.
It can also run as a separate process (``python -m oneiric_memory.testing.fake_ollama --port 0``), which the
benchmarks use so the server does not compete with the client for the GIL.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from oneiric_memory.adapters.embedders.hashing import hash_vectors

__all__ = ["FakeOllama", "Fault", "RecordedRequest", "main"]

_ROW_CACHE_MAX = 200_000


def _canonical(model: str) -> str:
    """Ollama treats ``name`` and ``name:latest`` as the same model."""
    return model.removesuffix(":latest")


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted misbehaviour, consumed by the next matching request (in injection order)."""

    status: int | None = None
    """Answer this HTTP status (with an Ollama-style ``{"error": ...}`` body) instead of the real answer."""
    delay_s: float = 0.0
    """Wait this long before answering (the wait ends early if the server is stopped)."""
    malformed: bool = False
    """Answer 200 with a body that is not JSON."""
    retry_after: str | None = None
    """Value of a ``Retry-After`` header to send (seconds or an HTTP date)."""
    body: Any = None
    """Answer 200 (or ``status``) with this JSON document instead of the real answer (wrong shapes, counts)."""
    drop_connection: bool = False
    """Close the connection without answering."""
    path: str | None = "/api/embed"
    """The path this fault applies to; ``None`` matches every path (``/v1/embeddings`` for the OpenAI API)."""
    dimension: int | None = None
    """Answer vectors of this many dimensions (a server whose model was swapped)."""


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request as the server saw it (``body`` is the parsed JSON, or ``None``)."""

    method: str
    path: str
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeOllama) -> None:
        self.fake = fake
        self.stop_event = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Shut every open keep-alive connection, so pooled clients see the server go away too."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # headers and body leave in one write (flushed after each request) ...
    server: _Server

    def setup(self) -> None:
        super().setup()
        # ... and without Nagle, so small answers do not wait for the client's delayed ACK (~40 ms)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests read ``FakeOllama.requests`` instead."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
            invalid_json = False
        except ValueError:
            body, invalid_json = None, True
        path = self.path.split("?", 1)[0]
        fake._record(RecordedRequest(method, path, body, dict(self.headers.items())))
        fake._enter()
        try:
            fault = fake._next_fault(path)
            delay = (fault.delay_s if fault else 0.0) + fake.latency_s
            if delay > 0 and self.server.stop_event.wait(delay):
                self.close_connection = True
                return
            if fault is not None and fault.drop_connection:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if invalid_json:
                status, payload, content_type = 400, b'{"error":"invalid JSON in request body"}', "application/json"
            elif path.startswith("/v1/") and not fake._authorized(self.headers.get("Authorization")):
                status, payload, content_type = 401, json.dumps({"error": {
                    "message": "Incorrect API key provided", "type": "invalid_request_error"}}).encode(), \
                    "application/json"
            else:
                status, payload, content_type = fake._answer(method, path, body,
                                                             fault.dimension if fault is not None else None)
            if fault is not None:
                if fault.malformed:
                    status, payload = (fault.status or 200), b'{"embeddings": [[0.1, 0.2,'
                elif fault.body is not None:
                    status, payload = (fault.status or 200), json.dumps(fault.body).encode()
                elif fault.status is not None:
                    message = f"injected fault {fault.status}"
                    error: Any = {"message": message, "type": "server_error"} if path.startswith("/v1/") else message
                    status, payload = fault.status, json.dumps({"error": error}).encode()
                    content_type = "application/json"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            if fault is not None and fault.retry_after is not None:
                self.send_header("Retry-After", fault.retry_after)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True  # the client gave up (timeout) or the server is stopping
        finally:
            fake._leave()


class FakeOllama:
    """A loopback Ollama look-alike with fault injection; see the module docstring.

    ``dimension``: length of the vectors; ``models``: the "pulled" models (``name`` or ``name:tag``);
    ``latency_s``: a delay added to every request; ``vector_norm``: the L2 norm of the returned vectors
    (1.0 like Ollama; anything else tests client-side normalisation); ``record``: keep every request
    (turn off for long benchmarks).
    """

    def __init__(
        self,
        dimension: int = 768,
        models: Sequence[str] = ("nomic-embed-text",),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        vector_norm: float = 1.0,
        supports_dimensions: bool = True,
        record: bool = True,
        api_key: str | None = None,
        embed_fn: Callable[[Sequence[str]], npt.NDArray[Any]] | None = None,
    ) -> None:
        if isinstance(models, str):
            models = (models,)
        self.dimension = dimension
        self.models = tuple(models)
        self.host = host
        self.latency_s = latency_s
        self.vector_norm = vector_norm
        self.supports_dimensions = supports_dimensions
        self.record = record
        self.api_key = api_key
        self.embed_fn = embed_fn
        self._port = port
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._request_count = 0
        self._rows: dict[tuple[str, int], bytes] = {}
        self._rows_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen (again) on the same port; a no-op when running."""
        if self._server is not None:
            return self
        server = _Server((self.host, self._port), self)
        self._port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                  name=f"fake-ollama:{self._port}", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections: clients now get "connection refused"."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.stop_event.set()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        if not self._port:
            raise RuntimeError("FakeOllama has no port yet: call start() (or use it as a context manager)")
        return f"http://{self.host}:{self._port}"

    @property
    def openai_url(self) -> str:
        """The OpenAI-compatible base URL (``.../v1``), as llama-server and Ollama's own ``/v1`` are configured."""
        return f"{self.base_url}/v1"

    # --- scripting and inspection ----------------------------------------------------------------

    def inject(
        self,
        status: int | None = None,
        *,
        delay_s: float = 0.0,
        malformed: bool = False,
        retry_after: str | float | None = None,
        body: Any = None,
        drop_connection: bool = False,
        path: str | None = "/api/embed",
        dimension: int | None = None,
        times: int = 1,
    ) -> None:
        """Queue ``times`` copies of a :class:`Fault`; each matching request consumes one, in order."""
        fault = Fault(status=status, delay_s=delay_s, malformed=malformed,
                      retry_after=None if retry_after is None else str(retry_after), body=body,
                      drop_connection=drop_connection, path=path, dimension=dimension)
        with self._lock:
            self._faults.extend([fault] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget recorded requests, pending faults and the in-flight high-water mark."""
        with self._lock:
            self._faults.clear()
            self._requests.clear()
            self._max_in_flight = self._in_flight
            self._request_count = 0

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a copy), oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def embed_requests(self) -> list[RecordedRequest]:
        """Only the ``POST /api/embed`` requests."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/api/embed"]

    @property
    def openai_requests(self) -> list[RecordedRequest]:
        """Only the ``POST /v1/embeddings`` requests."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/embeddings"]

    @property
    def request_count(self) -> int:
        """Number of requests received, recorded or not."""
        with self._lock:
            return self._request_count

    @property
    def max_in_flight(self) -> int:
        """The largest number of requests the server was handling at the same time."""
        with self._lock:
            return self._max_in_flight

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def vector_for(self, text: str, dimensions: int | None = None) -> list[float]:
        """Exactly the vector the server answers for ``text`` (as it was sent, prefix included)."""
        return list(json.loads(self._rows_json([text], dimensions or self.dimension)[0]))

    # --- request handling (called from server threads) -------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._request_count += 1
            if self.record:
                self._requests.append(request)

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _next_fault(self, path: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.path is None or fault.path == path:
                    del self._faults[index]
                    return fault
        return None

    def _has_model(self, model: Any) -> bool:
        return isinstance(model, str) and _canonical(model) in {_canonical(m) for m in self.models}

    def _rows_json(self, texts: Sequence[str], dimension: int) -> list[bytes]:
        """JSON arrays (8 significant digits, like Ollama's float32 output), cached per text."""
        with self._rows_lock:
            missing = [t for t in dict.fromkeys(texts) if (t, dimension) not in self._rows]
            if missing:
                full = self.embed_fn(missing) if self.embed_fn is not None else hash_vectors(missing, self.dimension)
                matrix = np.asarray(full, dtype=np.float64)[:, :dimension]
                norms = np.linalg.norm(matrix, axis=1, keepdims=True)
                matrix = matrix / np.where(norms == 0, 1.0, norms) * self.vector_norm
                if len(self._rows) + len(missing) > _ROW_CACHE_MAX:
                    self._rows.clear()
                for text, row in zip(missing, matrix.tolist(), strict=True):
                    self._rows[(text, dimension)] = ("[" + ",".join(f"{x:.8g}" for x in row) + "]").encode()
            return [self._rows[(t, dimension)] for t in texts]

    def _authorized(self, header: str | None) -> bool:
        return self.api_key is None or header == f"Bearer {self.api_key}"

    def _answer(self, method: str, path: str, body: Any, dimension: int | None = None) -> tuple[int, bytes, str]:
        if method == "POST" and path == "/v1/embeddings":
            return self._openai_embed(body, dimension)
        if method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.models]
            return 200, json.dumps({"object": "list", "data": data}).encode(), "application/json"
        if method == "GET" and path == "/api/tags":
            return 200, json.dumps({"models": [self._tag(m) for m in self.models]}).encode(), "application/json"
        if method == "GET" and path == "/api/version":
            return 200, b'{"version":"0.0.0-fake"}', "application/json"
        if method == "GET" and path == "/":
            return 200, b"Ollama is running", "text/plain; charset=utf-8"
        if method == "POST" and path in ("/api/embed", "/api/embeddings"):
            return self._embed(path, body, dimension)
        return 404, b"404 page not found", "text/plain; charset=utf-8"

    def _openai_embed(self, body: Any, forced: int | None) -> tuple[int, bytes, str]:
        def error(status: int, message: str, kind: str = "invalid_request_error") -> tuple[int, bytes, str]:
            return status, json.dumps({"error": {"message": message, "type": kind}}).encode(), "application/json"

        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return error(400, "you must provide a model parameter")
        model = body["model"]
        if not self._has_model(model):
            return error(404, f"The model `{model}` does not exist", "model_not_found")
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return error(400, "'input' must be a non-empty string or list of strings")
        dimension = forced or self.dimension
        requested = body.get("dimensions")
        if forced is None and isinstance(requested, int):
            if not self.supports_dimensions:
                return error(400, "This model does not support specifying dimensions.")
            if 0 < requested < self.dimension:
                dimension = requested
        if forced is not None and forced > self.dimension:
            rows = [("[" + ",".join(["0.01"] * forced) + "]").encode() for _ in texts]
        else:
            rows = self._rows_json(texts, dimension)
        data = b",".join(b'{"object":"embedding","index":' + str(i).encode() + b',"embedding":' + row + b"}"
                         for i, row in enumerate(rows))
        tokens = sum(len(t.split()) + 1 for t in texts)
        payload = (b'{"object":"list","data":[' + data + b'],"model":' + json.dumps(model).encode()
                   + b',"usage":{"prompt_tokens":' + str(tokens).encode() + b',"total_tokens":'
                   + str(tokens).encode() + b"}}")
        return 200, payload, "application/json"

    def _embed(self, path: str, body: Any, forced: int | None = None) -> tuple[int, bytes, str]:
        def error(status: int, message: str) -> tuple[int, bytes, str]:
            return status, json.dumps({"error": message}).encode(), "application/json"

        if not isinstance(body, dict) or not body.get("model"):
            return error(400, "model is required")
        model = body["model"]
        if not self._has_model(model):
            return error(404, f'model "{model}" not found, try pulling it first')
        dimension = forced or self.dimension
        requested = body.get("dimensions")
        if forced is None and self.supports_dimensions and isinstance(requested, int) and 0 < requested < self.dimension:
            dimension = requested
        if path == "/api/embeddings":
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                return error(400, "prompt is required")
            return 200, b'{"embedding":' + self._rows_json([prompt], dimension)[0] + b"}", "application/json"
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if texts is None:
            texts = []
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return error(400, "invalid input type: input must be a string or a list of strings")
        rows = self._rows_json(texts, dimension)
        tokens = sum(len(t.split()) + 1 for t in texts)
        payload = (b'{"model":' + json.dumps(model).encode() + b',"embeddings":[' + b",".join(rows)
                   + b'],"total_duration":1000,"load_duration":100,"prompt_eval_count":'
                   + str(tokens).encode() + b"}")
        return 200, payload, "application/json"

    @staticmethod
    def _tag(model: str) -> dict[str, Any]:
        name = model if ":" in model else f"{model}:latest"
        return {"name": name, "model": name, "modified_at": "2025-01-01T00:00:00Z", "size": 274_302_450,
                "digest": "0" * 64,
                "details": {"format": "gguf", "family": "fake", "parameter_size": "137M",
                            "quantization_level": "F16"}}


@contextmanager
def _terminate_on_signals() -> Iterator[threading.Event]:
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None) -> None:
    """Run a FakeOllama in the foreground; prints its base URL on the first line of stdout."""
    parser = argparse.ArgumentParser(prog="python -m oneiric_memory.testing.fake_ollama",
                                     description="A loopback fake of Ollama's embedding API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--dimension", type=int, default=768)
    parser.add_argument("--model", action="append", dest="models", help="a pulled model (repeatable)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--model-path", default=None,
                        help="serve a real ONNX model's vectors (a folder with model.onnx + tokenizer.json)")
    args = parser.parse_args(argv)
    embed_fn = None
    dimension = args.dimension
    if args.model_path:
        import asyncio

        from oneiric_memory.adapters.embedders.local import LocalEmbedder
        from oneiric_memory.settings import load_settings

        local = LocalEmbedder(load_settings({"embedder": {"provider": "local", "model_path": args.model_path},
                                             "postgres": {"vector_dimension": args.dimension}}, environ={}))
        asyncio.run(local.init())
        embed_fn, dimension = local.embed_sync, local.dimension
    fake = FakeOllama(dimension, tuple(args.models or ("nomic-embed-text",)), host=args.host,
                      port=args.port, latency_s=args.latency, record=False, embed_fn=embed_fn)
    with _terminate_on_signals() as stop, fake:
        print(fake.base_url, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
