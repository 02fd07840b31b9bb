"""Test helpers shipped with oneiric-memory for downstream apps.

- :mod:`.fake_ollama`: a real HTTP fake of Ollama, and of the OpenAI embeddings API under ``/v1``, on loopback.
- :mod:`.models`: a small real ONNX embedding model (bge-small-en) for the local embedder, with no model hub.
- :mod:`.telemetry`: :func:`~.telemetry.capture_telemetry`, OpenTelemetry spans and metrics captured in memory.

Import the modules themselves; this package keeps its import cheap.
"""

__all__: list[str] = []
