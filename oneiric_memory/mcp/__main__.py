"""``python -m oneiric_memory.mcp [--http [HOST:]PORT] [--project NAME ...]``: the same server as ``oneiric-memory mcp``."""

from __future__ import annotations

import argparse
import os
import sys

from oneiric_memory.errors import ConfigurationError, InvalidInput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oneiric_memory.mcp", description=__doc__)
    parser.add_argument("--http", metavar="[HOST:]PORT", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--project", action="append", default=[], help="pin the server to this project (repeat)")
    args = parser.parse_args(argv)
    from oneiric_memory.mcp.launcher import prepare_settings, serve
    from oneiric_memory.observability import configure_logging
    from oneiric_memory.settings import load_settings

    try:
        settings = prepare_settings(load_settings(), projects=args.project, http=args.http)
    except (ConfigurationError, InvalidInput) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, ConfigurationError) else 5
    configure_logging(level=os.environ.get("ONEIRIC_MEMORY_LOG_LEVEL", "WARNING"))
    serve(settings, http=args.http is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
