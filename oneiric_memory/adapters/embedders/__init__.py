"""Text to vectors: the Ollama, OpenAI-compatible, in-process local and hashing embedders, and the selection.

Each embedder lives in its own module and is built one way, its ``*_embedder_factory(settings)``;
:mod:`~oneiric_memory.adapters.embedders.selection` is the one place that chooses among them (``auto``).
Import the modules themselves: this package keeps its import cheap.
"""

__all__: list[str] = []
