"""Test helpers shipped with oneiric-memory for downstream apps.

- :mod:`.fake_ollama`: a real HTTP fake of Ollama on loopback.
- :mod:`.telemetry`: :func:`~.telemetry.capture_telemetry`, OpenTelemetry spans and metrics captured in memory.

Import the modules themselves; this package keeps its import cheap.
"""

__all__: list[str] = []
