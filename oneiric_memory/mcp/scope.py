"""Which projects a tool call may touch: the server's project pin, enforced in this one place.

A pinned server (``--project`` / ``mcp.projects``) reads, writes and forgets only inside its pin, so an agent
cannot reach another tenant's memories, whatever arguments it sends. An unpinned server has no default:
every call names its project(s), so nothing ever silently means "all projects".

Reads go to the store as ``acting_for`` these projects, so they follow the store's one read rule (docs/groups.md):
the projects' own memories plus what is shared with them or with their groups, nothing else. Writes and forgets
stay inside the pin: a memory shared with a project is readable there, never deletable.
"""

from __future__ import annotations

from collections.abc import Sequence

from oneiric_memory.errors import InvalidInput

__all__ = ["ProjectScope"]

_MAX_PROJECTS = 100


class ProjectScope:
    """The pin (possibly empty) and the rules that resolve a call's ``project`` argument against it."""

    __slots__ = ("_pinned",)

    def __init__(self, pinned: Sequence[str] = ()) -> None:
        if isinstance(pinned, str):
            raise InvalidInput("the project pin must be a list of project names", field="projects")
        self._pinned: tuple[str, ...] = tuple(dict.fromkeys(pinned))

    @property
    def pinned(self) -> tuple[str, ...]:
        return self._pinned

    @property
    def is_pinned(self) -> bool:
        return bool(self._pinned)

    def describe(self) -> str:
        if not self._pinned:
            return "not pinned: every call must name its project"
        return "pinned to " + ", ".join(repr(p) for p in self._pinned)

    def readable(self, project: str | Sequence[str] | None) -> list[str]:
        """The projects a read (search, get, forget, stats) may touch; never empty, never "all"."""
        requested = _names(project)
        if not requested:
            if self._pinned:
                return list(self._pinned)
            raise InvalidInput("project is required: this server is not pinned to a project, so name the "
                               "project (or a list of projects) to use", field="project")
        self._check_inside(requested)
        return requested

    def writable(self, project: str | None) -> str:
        """The one project a write goes to."""
        if project is None or project == "":
            if len(self._pinned) == 1:
                return self._pinned[0]
            if self._pinned:
                raise InvalidInput("project is required: this server is pinned to several projects "
                                   f"({', '.join(repr(p) for p in self._pinned)}); name the one to write to",
                                   field="project")
            raise InvalidInput("project is required: this server is not pinned to a project, so name the "
                               "project to write to", field="project")
        if not isinstance(project, str):
            raise InvalidInput("project must be a string", field="project")
        self._check_inside([project])
        return project

    def _check_inside(self, requested: list[str]) -> None:
        if not self._pinned:
            return
        outside = [p for p in requested if p not in self._pinned]
        if outside:
            raise InvalidInput(f"project {outside[0][:80]!r} is outside this server's scope; it is "
                               f"{self.describe()}", field="project")


def _names(project: str | Sequence[str] | None) -> list[str]:
    if project is None:
        return []
    if isinstance(project, str):
        return [project] if project else []
    names = list(project)
    if len(names) > _MAX_PROJECTS:
        raise InvalidInput(f"at most {_MAX_PROJECTS} projects per call", field="project")
    for name in names:
        if not isinstance(name, str) or not name:
            raise InvalidInput("every project must be a non-empty string", field="project")
    return list(dict.fromkeys(names))
