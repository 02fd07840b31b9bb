"""Project groups and shares: the SQL behind cross-project memory (revision 0007).

* A *group* is a named set of projects (``project_groups`` + ``project_group_members``).
* A *share* is an entry in the memory's own ``shared_with`` array: ``p:<project>`` or ``g:<group>``. The read
  rule (:func:`.search_sql.scope_clause`) needs nothing but the row and the entries resolved here for the
  caller (:meth:`SharingRepository.resolve`), so it holds for every statement that filters memories.
* Shared insights reach Session-Buddy as *target copies*: outbox rows whose ``project`` is the target,
  ``memory_id`` the shared memory and ``source_project`` its owner, keyed ``insight_id(target, content)`` so each
  target gets its own, project-tagged Session-Buddy entry. After every change (share, un-share, membership,
  group deletion) :func:`reconcile` makes the copies match the shares in the same transaction: missing copies are
  queued, surplus ones become tombstones (or vanish when never attempted), so un-sharing propagates like
  forgetting does.

Every value is a bind parameter; names are data, never identifiers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from oneiric_memory.adapters.pgvector.connection import run_with_retries
from oneiric_memory.errors import InvalidInput
from oneiric_memory.insights import insight_id
from oneiric_memory.records import ProjectGroup

if TYPE_CHECKING:
    from oneiric_memory.adapters.pgvector.store import PgvectorMemoryStore

__all__ = ["MemoryKey", "ShareChange", "SharingRepository", "group_target", "project_target", "reconcile",
           "restore_copies", "split_targets"]

MemoryKey = tuple[str, uuid.UUID]
"""``(project, id)``: the primary key of a memory."""

_PROJECT, _GROUP = "p:", "g:"


def project_target(project: str) -> str:
    """The ``shared_with`` entry that makes a memory readable by ``project``."""
    return _PROJECT + project


def group_target(group: str) -> str:
    """The ``shared_with`` entry that makes a memory readable by every member of ``group``."""
    return _GROUP + group


def split_targets(entries: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``shared_with`` entries as (projects, groups)."""
    projects = tuple(e[len(_PROJECT):] for e in entries if e.startswith(_PROJECT))
    groups = tuple(e[len(_GROUP):] for e in entries if e.startswith(_GROUP))
    return projects, groups


@dataclass(frozen=True, slots=True)
class ShareChange:
    """How many memories a share or un-share changed (0 when it was already so: both are idempotent)."""

    memories: int
    copies_queued: int
    copies_withdrawn: int


class SharingRepository:
    """Groups, shares and the scope resolution of one store."""

    def __init__(self, store: PgvectorMemoryStore) -> None:
        self._store = store
        self._groups = store.table("project_groups")
        self._members = store.table("project_group_members")
        self._memories = store.table("memories")
        self._outbox = store.table("insight_outbox")

    async def _run[R](self, action: str, work: Any) -> R:
        async def run() -> R:
            async with self._store.gate.acquire() as connection, connection.transaction():
                result: R = await work(connection)
                return result

        return await run_with_retries(self._store.settings.postgres, action, run)

    # --- scope ---------------------------------------------------------------------------------------

    async def resolve(self, connection: asyncpg.Connection, projects: Sequence[str]) -> list[str]:
        """The ``shared_with`` entries readable by ``projects``: their own ``p:`` entries and their groups'."""
        groups = await connection.fetch(
            f"SELECT DISTINCT group_name FROM {self._members} WHERE project = ANY($1::text[]) ORDER BY 1",
            list(projects))
        return [project_target(p) for p in dict.fromkeys(projects)] + [group_target(r["group_name"]) for r in groups]

    async def group_projects(self, connection: asyncpg.Connection, group: str) -> list[str]:
        """The members of ``group``; :class:`InvalidInput` when there is no such group."""
        rows = await connection.fetch(
            f"SELECT g.name, m.project FROM {self._groups} g LEFT JOIN {self._members} m ON m.group_name = g.name "
            "WHERE g.name = $1 ORDER BY m.project", group)
        if not rows:
            raise InvalidInput(f"there is no project group {group[:80]!r}; create it with `oneiric-memory groups "
                               "create`", field="group")
        return [r["project"] for r in rows if r["project"] is not None]

    async def members(self, group: str) -> list[str]:
        """The projects of ``group`` (:class:`InvalidInput` when there is no such group)."""
        async def work(connection: asyncpg.Connection) -> list[str]:
            return await self.group_projects(connection, group)

        return await self._run("reading a project group", work)

    # --- groups --------------------------------------------------------------------------------------

    async def create_group(self, name: str, projects: Sequence[str], description: str,
                           *, exist_ok: bool) -> ProjectGroup:
        async def work(connection: asyncpg.Connection) -> ProjectGroup:
            created = await connection.fetchval(
                f"INSERT INTO {self._groups} (name, description) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING "
                "RETURNING true", name, description)
            if not created and not exist_ok:
                raise InvalidInput(f"the project group {name[:80]!r} exists already", field="group")
            await self._add(connection, name, projects)
            return await self._read_group(connection, name)

        return await self._run("creating a project group", work)

    async def add_projects(self, name: str, projects: Sequence[str]) -> ProjectGroup:
        async def work(connection: asyncpg.Connection) -> ProjectGroup:
            await self._lock_group(connection, name)
            await self._add(connection, name, projects)
            return await self._read_group(connection, name)

        return await self._run("adding projects to a group", work)

    async def remove_projects(self, name: str, projects: Sequence[str]) -> ProjectGroup:
        async def work(connection: asyncpg.Connection) -> ProjectGroup:
            await self._lock_group(connection, name)
            removed = await connection.fetchval(
                f"WITH d AS (DELETE FROM {self._members} WHERE group_name = $1 AND project = ANY($2::text[]) "
                "RETURNING 1) SELECT count(*) FROM d", name, list(projects))
            if removed:
                await self._touch(connection, name)
                await reconcile(connection, self, await self._shared_with_group(connection, name))
            return await self._read_group(connection, name)

        return await self._run("removing projects from a group", work)

    async def delete_group(self, name: str) -> bool:
        """Delete the group; memories shared with it are no longer shared with it (their copies withdrawn)."""
        async def work(connection: asyncpg.Connection) -> bool:
            if not await connection.fetchval(f"SELECT true FROM {self._groups} WHERE name = $1 FOR UPDATE", name):
                return False
            keys = await self._shared_with_group(connection, name)
            await connection.execute(
                f"UPDATE {self._memories} SET shared_with = array_remove(shared_with, $1), updated_at = now() "
                "WHERE shared_with @> ARRAY[$1::text]", group_target(name))
            await connection.execute(f"DELETE FROM {self._groups} WHERE name = $1", name)
            await reconcile(connection, self, keys)
            return True

        return await self._run("deleting a project group", work)

    async def list_groups(self, project: str | None = None) -> list[ProjectGroup]:
        async def work(connection: asyncpg.Connection) -> list[ProjectGroup]:
            rows = await connection.fetch(
                f"SELECT g.name, g.description, g.created_at, coalesce(array_agg(m.project ORDER BY m.project) "
                f"FILTER (WHERE m.project IS NOT NULL), '{{}}') AS projects FROM {self._groups} g "
                f"LEFT JOIN {self._members} m ON m.group_name = g.name "
                f"WHERE $1::text IS NULL OR EXISTS (SELECT 1 FROM {self._members} x WHERE x.group_name = g.name "
                "AND x.project = $1) GROUP BY g.name ORDER BY g.name", project)
            return [_group(r) for r in rows]

        return await self._run("listing project groups", work)

    async def get_group(self, name: str) -> ProjectGroup | None:
        async def work(connection: asyncpg.Connection) -> ProjectGroup | None:
            if not await connection.fetchval(f"SELECT true FROM {self._groups} WHERE name = $1", name):
                return None
            return await self._read_group(connection, name)

        return await self._run("reading a project group", work)

    async def _lock_group(self, connection: asyncpg.Connection, name: str) -> None:
        if not await connection.fetchval(f"SELECT true FROM {self._groups} WHERE name = $1 FOR UPDATE", name):
            raise InvalidInput(f"there is no project group {name[:80]!r}; create it with `oneiric-memory groups "
                               "create`", field="group")

    async def _add(self, connection: asyncpg.Connection, name: str, projects: Sequence[str]) -> None:
        if not projects:
            return
        added = await connection.fetchval(
            f"WITH i AS (INSERT INTO {self._members} (group_name, project) SELECT $1, p FROM unnest($2::text[]) p "
            "ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM i", name, list(dict.fromkeys(projects)))
        if added:
            await self._touch(connection, name)
            await reconcile(connection, self, await self._shared_with_group(connection, name))

    async def _touch(self, connection: asyncpg.Connection, name: str) -> None:
        await connection.execute(f"UPDATE {self._groups} SET updated_at = now() WHERE name = $1", name)

    async def _read_group(self, connection: asyncpg.Connection, name: str) -> ProjectGroup:
        row = await connection.fetchrow(
            f"SELECT g.name, g.description, g.created_at, coalesce(array_agg(m.project ORDER BY m.project) "
            f"FILTER (WHERE m.project IS NOT NULL), '{{}}') AS projects FROM {self._groups} g "
            f"LEFT JOIN {self._members} m ON m.group_name = g.name WHERE g.name = $1 GROUP BY g.name", name)
        assert row is not None
        return _group(row)

    async def _shared_with_group(self, connection: asyncpg.Connection, name: str) -> list[MemoryKey]:
        rows = await connection.fetch(
            f"SELECT project, id FROM {self._memories} WHERE shared_with @> ARRAY[$1::text] ORDER BY project, id "
            "FOR UPDATE", group_target(name))
        return [(r["project"], r["id"]) for r in rows]

    # --- shares --------------------------------------------------------------------------------------

    async def share(self, ids: Sequence[uuid.UUID], *, projects: Sequence[str], groups: Sequence[str],
                    add: bool) -> ShareChange:
        """Add (``add``) or remove the targets on these memories, then reconcile their Session-Buddy copies.

        Unknown ids change nothing. Sharing with a group needs the group to exist; un-sharing does not. With
        ``add=False`` and no target at all, every share of the memories is removed.
        """
        wanted = [project_target(p) for p in projects] + [group_target(g) for g in groups]

        async def work(connection: asyncpg.Connection) -> ShareChange:
            if add and groups:
                # FOR KEY SHARE: a concurrent delete_group waits for this share to commit (and then withdraws it),
                # so a share never leaves a g: entry behind for a group that is gone (or re-created later)
                wanted_groups = sorted(set(groups))
                found = await connection.fetch(
                    f"SELECT name FROM {self._groups} WHERE name = ANY($1::text[]) ORDER BY name FOR KEY SHARE",
                    wanted_groups)
                missing = sorted(set(wanted_groups) - {row["name"] for row in found})
                if missing:
                    raise InvalidInput(f"there is no project group {missing[0][:80]!r}; create it with "
                                       "`oneiric-memory groups create`", field="group")
            rows = await connection.fetch(
                f"SELECT project, id, shared_with FROM {self._memories} WHERE id = ANY($1::uuid[]) "
                "ORDER BY project, id FOR UPDATE", list(ids))
            changed: list[tuple[str, uuid.UUID, list[str]]] = []
            for row in rows:
                current = list(row["shared_with"])
                if add:
                    own = project_target(row["project"])
                    after = sorted(set(current) | {t for t in wanted if t != own})
                else:
                    after = sorted(set(current) - set(wanted)) if wanted else []
                if after != sorted(current):
                    changed.append((row["project"], row["id"], after))
            if not changed:
                return ShareChange(0, 0, 0)
            await connection.execute(
                f"UPDATE {self._memories} m SET shared_with = ARRAY(SELECT jsonb_array_elements_text(c.after)), "
                "updated_at = now() FROM jsonb_to_recordset($1::text::jsonb) AS c(project text, id uuid, after jsonb) "
                "WHERE m.project = c.project AND m.id = c.id",
                json.dumps([{"project": p, "id": str(i), "after": after} for p, i, after in changed]))
            queued, withdrawn = await reconcile(connection, self, [(p, i) for p, i, _ in changed])
            return ShareChange(len(changed), queued, withdrawn)

        return await self._run("sharing memories" if add else "un-sharing memories", work)


def _group(row: asyncpg.Record) -> ProjectGroup:
    return ProjectGroup(name=row["name"], description=row["description"], projects=tuple(row["projects"]),
                        created_at=row["created_at"])


async def reconcile(connection: asyncpg.Connection, sharing: SharingRepository,
                    keys: Sequence[MemoryKey]) -> tuple[int, int]:
    """Make the target copies of these memories' insights match their shares; returns (queued, withdrawn).

    The insights of a memory are its own outbox rows (not tombstones); a memory of type ``insight`` without a
    ``★ Insight`` block is shared as itself. A copy whose Session-Buddy delivery was never attempted is simply
    deleted when withdrawn; any other becomes a tombstone (content erased) that the relay carries out.
    """
    if not keys:
        return 0, 0
    projects_, ids = [k[0] for k in keys], [k[1] for k in keys]
    mine = "(x.project, x.id) IN (SELECT * FROM unnest($1::text[], $2::uuid[]))"
    memories = await connection.fetch(
        f"SELECT x.project, x.id, x.memory_type, x.content, x.shared_with FROM {sharing._memories} x WHERE {mine}",
        projects_, ids)
    own = await connection.fetch(
        f"SELECT o.project, o.memory_id, o.content, o.insight_type, o.topics FROM {sharing._outbox} o "
        "WHERE (o.project, o.memory_id) IN (SELECT * FROM unnest($1::text[], $2::uuid[])) "
        "AND o.source_project IS NULL AND o.kind = 'deliver'", projects_, ids)
    existing = await connection.fetch(
        f"SELECT o.project, o.insight_id FROM {sharing._outbox} o "
        "WHERE (o.source_project, o.memory_id) IN (SELECT * FROM unnest($1::text[], $2::uuid[])) "
        "AND o.kind = 'deliver' FOR UPDATE", projects_, ids)
    group_names = sorted({e[len(_GROUP):] for m in memories for e in m["shared_with"] if e.startswith(_GROUP)})
    members: dict[str, list[str]] = {}
    if group_names:
        for row in await connection.fetch(
                f"SELECT group_name, project FROM {sharing._members} WHERE group_name = ANY($1::text[])", group_names):
            members.setdefault(row["group_name"], []).append(row["project"])
    insights: dict[MemoryKey, list[tuple[str, str, list[str]]]] = {}
    for row in own:
        insights.setdefault((row["project"], row["memory_id"]), []).append(
            (row["content"], row["insight_type"], list(row["topics"] or ())))
    desired: dict[tuple[str, str], dict[str, Any]] = {}
    for memory in memories:
        key = (memory["project"], memory["id"])
        items = insights.get(key) or ([(memory["content"], "general", [])] if memory["memory_type"] == "insight"
                                      else [])
        shared_projects, shared_groups = split_targets(memory["shared_with"])
        targets = set(shared_projects) | {p for g in shared_groups for p in members.get(g, ())}
        targets.discard(memory["project"])
        for target in sorted(targets):
            for content, insight_type, topics in items:
                iid = insight_id(target, content)
                desired[(target, iid)] = {"project": target, "insight_id": iid, "memory_id": str(memory["id"]),
                                          "source_project": memory["project"], "content": content,
                                          "insight_type": insight_type, "topics": topics}
    have = {(r["project"], r["insight_id"]) for r in existing}
    missing = [value for key, value in desired.items() if key not in have]
    surplus = sorted(have - desired.keys())
    table = sharing._outbox
    if missing:
        await connection.execute(
            f"INSERT INTO {table} (project, insight_id, memory_id, source_project, content, insight_type, topics) "
            "SELECT x.project, x.insight_id, x.memory_id, x.source_project, x.content, x.insight_type, "
            "ARRAY(SELECT jsonb_array_elements_text(x.topics)) FROM jsonb_to_recordset($1::text::jsonb) AS "
            "x(project text, insight_id text, memory_id uuid, source_project text, content text, insight_type text, "
            "topics jsonb) ON CONFLICT (project, insight_id) DO UPDATE SET kind = 'deliver', "
            "memory_id = EXCLUDED.memory_id, source_project = EXCLUDED.source_project, content = EXCLUDED.content, "
            "insight_type = EXCLUDED.insight_type, topics = EXCLUDED.topics, status = 'pending', attempts = 0, "
            f"last_error = NULL, next_attempt_at = now() WHERE {table}.kind = 'delete'",
            json.dumps(missing))
    if surplus:
        gone = ([p for p, _ in surplus], [i for _, i in surplus])
        pair = "(o.project, o.insight_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
        await connection.execute(
            f"DELETE FROM {table} o WHERE {pair} AND o.status = 'pending' AND o.attempts = 0", *gone)
        await connection.execute(
            f"UPDATE {table} o SET kind = 'delete', content = '', topics = '{{}}', status = 'pending', attempts = 0, "
            f"last_error = NULL, next_attempt_at = now(), delivered_at = NULL WHERE {pair}", *gone)
    return len(missing), len(surplus)


async def restore_copies(connection: asyncpg.Connection, sharing: SharingRepository,
                         withdrawn: Sequence[tuple[str, str]]) -> int:
    """A project forgot its own insights ``(project, content)``, which the caller just tombstoned: where a memory
    still shared into that project yields the same insight, the tombstone becomes that share's copy again (the
    copy and the project's own insight are one outbox row, keyed alike). Returns how many memories were
    reconciled."""
    keys: list[MemoryKey] = []
    contents: dict[str, list[str]] = {}
    for project, content in withdrawn:
        if content:
            contents.setdefault(project, []).append(content)
    for project, texts in sorted(contents.items()):
        rows = await connection.fetch(
            f"SELECT m.project, m.id FROM {sharing._memories} m WHERE m.shared_with && $1::text[] "
            "AND m.project <> $2 AND (EXISTS (SELECT 1 FROM "
            f"{sharing._outbox} o WHERE o.project = m.project AND o.memory_id = m.id AND o.source_project IS NULL "
            "AND o.kind = 'deliver' AND o.content = ANY($3::text[])) OR (m.memory_type = 'insight' "
            "AND m.content = ANY($3::text[]))) ORDER BY m.project, m.id FOR UPDATE OF m",
            await sharing.resolve(connection, [project]), project, texts)
        keys += [(row["project"], row["id"]) for row in rows]
    if keys:
        await reconcile(connection, sharing, sorted(set(keys)))
    return len(set(keys))
