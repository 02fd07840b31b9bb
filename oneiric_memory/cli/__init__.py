"""``oneiric-memory``: the command line (typer + rich).

stdout carries only a command's result; progress, notes and errors go to stderr. Every error is one line with
a stable exit code (:data:`EXIT_CODES`); ``--debug`` adds the traceback and keeps the code.

Adding a command is a one-file change: a public module of this package that defines ``register(app)`` is
found and mounted by :func:`_mount_commands` (see ``docs/architecture.md``). Command modules import heavy
modules (database, MCP, DuckDB) inside their functions, so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup, TyperOption

from oneiric_memory.cli._runtime import EXIT_CODES, STATE, report_cli_error, report_error

__all__ = ["EXIT_CODES", "app", "main"]


class _RootOption(TyperOption):
    """A root option (``--debug``, ``--verbose``, ``--help``, ``--settings-root``) coerced without pydantic.

    The root group's options are processed for every command, ``<command> --help`` included, and typer (0.29)
    builds a pydantic ``TypeAdapter`` to coerce any option whose value is not already a bool, even an absent one:
    importing pydantic cost ``search --help`` about a third of its CPU. These options need no such validation: a
    flag is true or false and a folder name is text. Any other root option keeps typer's coercion.
    """

    def process_value(self, ctx: Any, value: Any) -> Any:
        if self.name == "settings_root":
            value = Path(value) if isinstance(value, str) and value else None
        elif self.type_descriptor.annotation is bool and (value is None or isinstance(value, bool)):
            value = bool(value)
        else:
            return super().process_value(ctx, value)
        return self.callback(ctx, self, value) if self.callback is not None else value


class _OneLineErrors(TyperGroup):
    """The root group: every failure becomes one line on stderr and a documented exit code."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if type(param) is TyperOption:
                param.__class__ = _RootOption  # the same object and help text; only its coercion changes
        return params

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        STATE.debug = "--debug" in (sys.argv[1:] if args is None else list(args))  # before parsing can fail
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False,
                                 windows_expand_args=windows_expand_args, **extra)
            code = result if isinstance(result, int) else 0
        except typer.TyperException as exc:  # the parser's errors (click's ClickException tree)
            code = report_cli_error(exc)
        except typer.Abort:
            code = EXIT_CODES["interrupted"]
        except (Exception, KeyboardInterrupt) as exc:
            code = report_error(exc)
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(name="oneiric-memory", cls=_OneLineErrors, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="One reliable, fast memory for Mahavishnu (PostgreSQL + pgvector).")


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs (exit codes stay).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show INFO logs on stderr.")] = False,
    settings_root: Annotated[Path | None, typer.Option(
        "--settings-root", help="Folder holding settings/ (default: the working directory).")] = None,
) -> None:
    STATE.debug = debug
    STATE.settings_root = settings_root
    STATE.log_level = "DEBUG" if debug else "INFO" if verbose else \
        os.environ.get("ONEIRIC_MEMORY_LOG_LEVEL", "WARNING").upper()


def _mount_commands() -> None:
    """Import every public module of this package and call its ``register(app)`` (ordered by ``ORDER``)."""
    found: list[tuple[int, str, Any]] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if callable(register):
            found.append((int(getattr(module, "ORDER", 100)), info.name, register))
    for _order, _name, register in sorted(found, key=lambda item: (item[0], item[1])):
        register(app)


_mount_commands()


def main() -> None:
    """Console-script entry point (``oneiric-memory``)."""
    app()
