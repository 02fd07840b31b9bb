"""``groups create | list | show | add | remove | delete | share | unshare | search``: cross-project memory.

A group is a named set of projects; sharing a memory with projects or groups makes it readable by them (and
delivers its insights to Session-Buddy tagged for each target); ``groups search`` reads as a group, or as a
project (its own memories plus what is shared with it or its groups). See ``docs/groups.md``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from oneiric_memory.cli._runtime import console, hits_table, invalid, open_memory, parse_ids, print_json, run

__all__ = ["ORDER", "register"]

ORDER = 25

groups_app = typer.Typer(help="Project groups, shared memories and cross-project search.", no_args_is_help=True)

_Json = Annotated[bool, typer.Option("--json")]
_MODES = ("vector", "text", "hybrid")


def _name(value: str, field: str = "group") -> str:
    """A group or project name, checked before anything opens (the API's own rule)."""
    from oneiric_memory.records import check_name

    return check_name(field, value)


def _names(values: list[str] | None, field: str) -> list[str]:
    return [_name(value, field) for value in values or ()]


def _group_dict(group: Any) -> dict[str, Any]:
    return {"name": group.name, "description": group.description, "projects": list(group.projects),
            "created_at": group.created_at.isoformat()}


def _print_groups(groups: list[Any], as_json: bool) -> None:
    if as_json:
        print_json([_group_dict(group) for group in groups])
        return
    table = Table(title="project groups", title_justify="left")
    for column in ("group", "projects", "description"):
        table.add_column(column, overflow="fold")
    for group in groups:
        table.add_row(group.name, ", ".join(group.projects), group.description)
    console.print(table)


@groups_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The group's name.")],
    projects: Annotated[list[str] | None, typer.Argument(metavar="[PROJECT]...", help="Its first projects.")] = None,
    description: Annotated[str, typer.Option(help="What the group is for.")] = "",
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Add the projects if the group exists.")] = False,
    as_json: _Json = False,
) -> None:
    """Create a project group."""
    _name(name)
    members = _names(projects, "project")
    if len(description) > 1000 or "\x00" in description:
        raise invalid("--description must be at most 1000 characters, without NUL", field="description")

    async def work() -> Any:
        async with open_memory() as memory:
            return await memory.create_group(name, members, description=description, exist_ok=exist_ok)

    _print_groups([run(work)], as_json)


@groups_app.command("list")
def list_groups(
    project: Annotated[str | None, typer.Option(help="Only the groups this project belongs to.")] = None,
    as_json: _Json = False,
) -> None:
    """List the project groups and their projects."""
    if project is not None:
        _name(project, "project")

    async def work() -> list[Any]:
        async with open_memory() as memory:
            return await memory.list_groups(project)

    _print_groups(run(work), as_json)


@groups_app.command("show")
def show(name: Annotated[str, typer.Argument()], as_json: _Json = False) -> None:
    """Show one group."""
    _name(name)

    async def work() -> Any:
        async with open_memory() as memory:
            return await memory.get_group(name)

    group = run(work)
    if group is None:
        raise invalid(f"there is no project group {name[:80]!r}", field="group")
    _print_groups([group], as_json)


def _change_members(name: str, projects: list[str], add: bool, as_json: bool) -> None:
    _name(name)
    members = _names(projects, "project")

    async def work() -> Any:
        async with open_memory() as memory:
            if add:
                return await memory.add_to_group(name, members)
            return await memory.remove_from_group(name, members)

    _print_groups([run(work)], as_json)


@groups_app.command("add")
def add(name: Annotated[str, typer.Argument()],
        projects: Annotated[list[str], typer.Argument(metavar="PROJECT...")], as_json: _Json = False) -> None:
    """Add projects to a group: what is shared with the group reaches them too."""
    _change_members(name, projects, True, as_json)


@groups_app.command("remove")
def remove(name: Annotated[str, typer.Argument()],
           projects: Annotated[list[str], typer.Argument(metavar="PROJECT...")], as_json: _Json = False) -> None:
    """Remove projects from a group: what was shared with the group is withdrawn from them."""
    _change_members(name, projects, False, as_json)


@groups_app.command("delete")
def delete(name: Annotated[str, typer.Argument()],
           yes: Annotated[bool, typer.Option("--yes", help="Confirm: shares to the group are withdrawn.")] = False
           ) -> None:
    """Delete a group; every share to it is withdrawn (Session-Buddy copies included)."""
    _name(name)
    if not yes:
        raise invalid("deleting a group withdraws everything shared with it: add --yes to confirm", field="yes")

    async def work() -> bool:
        async with open_memory() as memory:
            return await memory.delete_group(name)

    if not run(work):
        raise invalid(f"there is no project group {name[:80]!r}", field="group")
    console.print(f"deleted {name}", highlight=False, markup=False)


def _share(ids: list[str], projects: list[str] | None, groups: list[str] | None, add: bool, as_json: bool) -> None:
    parse_ids(ids)
    targets, circles = _names(projects, "project"), _names(groups, "group")
    if add and not (targets or circles):
        raise invalid("name at least one --project or --group to share with", field="project")

    async def work() -> Any:
        async with open_memory() as memory:
            call = memory.share if add else memory.unshare
            return await call(ids, projects=targets or None, groups=circles or None)

    change = run(work)
    values = {"memories": change.memories, "copies_queued": change.copies_queued,
              "copies_withdrawn": change.copies_withdrawn}
    if as_json:
        print_json(values)
    else:
        console.print(" ".join(f"{key}={value}" for key, value in values.items()), highlight=False)


_Projects = Annotated[list[str] | None, typer.Option("--project", help="A target project (repeatable).")]
_Groups = Annotated[list[str] | None, typer.Option("--group", help="A target group (repeatable).")]


@groups_app.command("share")
def share(ids: Annotated[list[str], typer.Argument(metavar="ID...")], project: _Projects = None,
          group: _Groups = None, as_json: _Json = False) -> None:
    """Share memories (insights) with projects and/or groups (idempotent)."""
    _share(ids, project, group, True, as_json)


@groups_app.command("unshare")
def unshare(ids: Annotated[list[str], typer.Argument(metavar="ID...")], project: _Projects = None,
            group: _Groups = None, as_json: _Json = False) -> None:
    """Withdraw shares (every share of the memories when no target is named)."""
    _share(ids, project, group, False, as_json)


@groups_app.command("search")
def search(
    query: Annotated[str, typer.Argument()],
    group: Annotated[str | None, typer.Option(help="Search as this group's projects, ranked together.")] = None,
    acting_for: Annotated[list[str] | None, typer.Option(
        "--as", help="Search as this project: its own memories plus what is shared with it (repeatable).")] = None,
    mode: Annotated[str | None, typer.Option(help="vector | text | hybrid (default from settings)")] = None,
    unified: Annotated[bool, typer.Option("--unified", help="Session-Buddy's insights too.")] = False,
    limit: Annotated[int, typer.Option()] = 10,
    as_json: _Json = False,
) -> None:
    """Search across projects: as a group, or as a project (each hit names its project)."""
    from oneiric_memory.records import check_query

    check_query(query)
    if (group is None) == (not acting_for):
        raise invalid("name either --group or --as", field="group")
    if group is not None:
        _name(group)
    scope = _names(acting_for, "acting_for") or None
    if mode is not None and mode not in _MODES:
        raise invalid(f"--mode {mode!r} is unknown; use vector, text or hybrid", field="mode")
    if not 1 <= limit <= 1000:
        raise invalid(f"--limit {limit} is out of range; use 1 to 1000", field="limit")

    async def work() -> list[Any]:
        overrides = None if unified else {"session_buddy": {"enabled": False}}
        async with open_memory(overrides) as memory:
            if unified:
                return (await memory.unified_search(query, limit=limit, mode=mode, group=group,  # type: ignore[arg-type]
                                                    acting_for=scope)).hits
            return list(await memory.search(query, mode=mode, limit=limit, group=group,  # type: ignore[arg-type]
                                            acting_for=scope))

    hits = run(work)
    if as_json:
        print_json([{"id": str(hit.id), "project": hit.project, "score": hit.score, "source": hit.source,
                     "memory_type": hit.memory_type, "content": hit.content} for hit in hits])
    else:
        console.print(hits_table(f"search as {'group ' + group if group else ', '.join(scope or ())}: {query!r}",
                                 hits))


def register(app: typer.Typer) -> None:
    app.add_typer(groups_app, name="groups", rich_help_panel="Memories")
