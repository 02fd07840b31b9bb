"""``python -m oneiric_memory.cli``: the same as the ``oneiric-memory`` console script."""

from oneiric_memory.cli import main

main()
