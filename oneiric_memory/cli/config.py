"""``config``: the effective settings, each with the layer it came from (secrets masked), and the embedder they pick.

Settings arrive from up to nine layers (code defaults, Mahavishnu's own keys, two project files, two user files under
``~/.config/mahavishnu``, env, ``MAHAVISHNU_CONFIG`` and explicit arguments); this command is how a user finds out
which one won for every key, instead of guessing why the embedded database was used.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from oneiric_memory.cli._runtime import STATE, console, print_json, run

__all__ = ["ORDER", "register"]

ORDER = 90
_PANEL = "Health and operations"


def config(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable: value, layer and origin of every key.")]
    = False,
    changed: Annotated[bool, typer.Option("--changed", help="Only keys that do not come from the code defaults.")]
    = False,
    embedder: Annotated[bool, typer.Option(
        "--embedder/--no-embedder", help="Also say which embedder these settings activate now, and why.")] = True,
    reference: Annotated[bool, typer.Option(
        "--reference", help="Print the key reference table of docs/configuration.md (generated from the model).")]
    = False,
) -> None:
    """Effective settings and where each came from (file, env variable or default); secrets are masked."""
    from oneiric_memory.settings import reference_markdown, resolve_settings

    if reference:
        typer.echo(reference_markdown(), nl=False)
        return
    resolved = resolve_settings(root=STATE.settings_root)
    document = resolved.as_dict()
    if changed:
        document["values"] = {key: row for key, row in document["values"].items() if row["layer"] != "default"}
    if embedder:
        document["embedder_selection"] = run(lambda: _selection(resolved.settings))
    if as_json:
        print_json(document)
        return
    _print_tables(document)


async def _selection(settings: Any) -> dict[str, Any]:
    """The embedder ``auto`` (or the configured provider) would activate now; a failure is reported, not raised."""
    try:
        from oneiric_memory.adapters.embedders.selection import describe_embedder
    except ImportError:  # an older package layout without the selection report
        return {"available": False, "note": "embedder selection report not available in this version"}
    try:
        selection = await describe_embedder(settings)
    except Exception as exc:  # the report must still print: the reason is the answer
        return {"available": False, "note": f"no embedder can be activated: {type(exc).__name__}: {exc}"[:500]}
    return {"available": True, **selection.as_dict()}


def _print_tables(document: dict[str, Any]) -> None:
    from rich.table import Table

    root = document["settings_root"]
    console.print(f"settings root: {root['path']} (from {root['from']})", highlight=False)
    mahavishnu = document["mahavishnu"]
    installed = mahavishnu["installed_version"] or "not installed"
    follows = "follows" if mahavishnu["follows_llm_ollama_base_url"] else "ignores (removed in 0.36)"
    console.print(f"Mahavishnu: {installed}; llm.ollama_base_url: {follows}", highlight=False)
    files = Table(title="files looked at (lowest first)", title_justify="left")
    for column in ("layer", "path", "present"):
        files.add_column(column)
    for entry in document["files"]:
        files.add_row(entry["layer"], entry["path"], "yes" if entry["exists"] else "no")
    console.print(files)
    for note in document["notes"]:
        console.print(f"note: {note}", highlight=False)
    values = Table(title="effective settings", title_justify="left")
    values.add_column("key", no_wrap=True)
    values.add_column("value", overflow="fold")
    values.add_column("layer", no_wrap=True)
    values.add_column("from", overflow="fold")
    for key, row in document["values"].items():
        values.add_row(key, _shown(row["value"]), row["layer"], row["from"])
    console.print(values)
    selection = document.get("embedder_selection")
    if selection:
        console.print(f"embedder: {selection.get('note', '')}", highlight=False)
        for skipped in selection.get("skipped", []):
            console.print(f"  skipped {skipped['provider']}: {skipped['reason']}", highlight=False)


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel=_PANEL)(config)
