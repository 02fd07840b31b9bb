"""Test helpers shipped with oneiric-memory (a real HTTP fake of Ollama: :mod:`.fake_ollama`)."""

__all__: list[str] = []
