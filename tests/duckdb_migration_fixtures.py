"""Session-Buddy DuckDB files for the migration tests.

The v2 and hostile files and the knowledge graph are written by the **real session-buddy package's own API**
(``ReflectionDatabaseAdapterOneiric`` and ``KnowledgeGraphDatabaseAdapterOneiric``). That runs in a child
process (``python tests/duckdb_migration_fixtures.py OUT_DIR``) because importing Session-Buddy creates folders
under ``~/.claude`` and takes seconds: the child gets ``HOME`` pointed at a folder that does not exist (fast,
offline ``initialize()``), and the files are built once per test session. The legacy-only file is hand-built
with the DDL of Session-Buddy's older ``ReflectionDatabase`` (``session_buddy/reflection/schema.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import duckdb

__all__ = ["CONVERSATIONS", "HOSTILE", "INSIGHTS", "KG_ENTITIES", "KG_RELATIONS", "LEGACY_CONVERSATIONS",
           "LEGACY_REFLECTIONS", "REFLECTIONS", "build_legacy_file", "build_session_buddy_files", "has_insight_column"]

# (content, project) written with store_conversation(metadata={"project": ...}).
CONVERSATIONS: list[tuple[str, str | None]] = [
    ("We chose PostgreSQL with pgvector for the memory store.", "alpha"),
    ("Ollama serves nomic-embed-text on port 11434.", "beta"),
    ("He said \"don't\" -- quotes ' and ; DROP TABLE memories; --", None),
]
# (content, tags, project) written with store_reflection. The first two rows share their content on purpose.
REFLECTIONS: list[tuple[str, list[str], str | None]] = [
    ("Batch upserts are faster through COPY.", ["perf", "postgres"], "alpha"),
    ("Batch upserts are faster through COPY.", ["dup"], "alpha"),
    ("Always pass use_cache=False to the reflection search.", [], None),
]
# (content, insight_type, topics) written with store_insight on Session-Buddy 0.23 (which drops projects: a known
# defect); 0.36 has no store_insight: store_reflection with the sink's tags, project "alpha" and provenance.
INSIGHTS: list[tuple[str, str, list[str]]] = [
    ("Fuse rankings by rank, not by raw score.", "pattern", ["search"]),
    ("DuckDB allows one process per file.", "architecture", ["duckdb", "locking"]),
]
KG_ENTITIES: list[tuple[str, str, list[str]]] = [
    ("oneiric-memory", "project", ["stores memories in PostgreSQL"]),
    ("session-buddy", "project", []),
    ("duckdb", "library", ["embedded analytics database", "one writer process per file"]),
]
KG_RELATIONS: list[tuple[str, str, str]] = [
    ("oneiric-memory", "depends_on", "session-buddy"),
    ("session-buddy", "uses", "duckdb"),
]
HUGE_BYTES = 120_000
HOSTILE = {
    "nul": "NUL\x00byte inside a reflection",
    "quotes": "Robert'); DROP TABLE students;-- \U0001f389 \"quoted\" \\ backslash",
    "huge": ("lorem ipsum " * (HUGE_BYTES // 12 + 1))[:HUGE_BYTES],
    "bad_json": "conversation whose metadata is not JSON",
    "nan_json": "conversation whose metadata holds NaN and an escaped NUL",
}

LEGACY_CONVERSATIONS: list[tuple[str, str, str | None, datetime]] = [
    ("a3f1c2d4e5b6a7980112233445566778", "Legacy conversation about Alembic migrations.", "legacy-proj",
     datetime(2024, 3, 1, 12, 0, 0)),
    ("b3f1c2d4e5b6a7980112233445566778", "Legacy conversation without a project.", None,
     datetime(2024, 3, 2, 8, 30, 0)),
]
# (id, content, project, tags column, rows of reflection_tags, timestamp)
LEGACY_REFLECTIONS: list[tuple[str, str, str | None, list[str] | None, list[str], datetime]] = [
    ("c3f1c2d4e5b6a7980112233445566778", "Legacy reflection: keep migrations reversible.", "legacy-proj",
     ["alembic"], ["alembic", "schema"], datetime(2024, 4, 5, 10, 0, 0)),
    ("d3f1c2d4e5b6a7980112233445566778", "Legacy reflection with tags only in reflection_tags.", None,
     None, ["tagged"], datetime(2024, 4, 6, 11, 0, 0)),
]


def build_legacy_file(path: Path) -> None:
    """A file with only the legacy tables (the older ``ReflectionDatabase`` DDL), built by hand."""
    connection = duckdb.connect(str(path))
    try:
        connection.execute("""
            CREATE TABLE conversations (id VARCHAR PRIMARY KEY, content TEXT NOT NULL, embedding FLOAT[384],
                                        project VARCHAR, timestamp TIMESTAMP, metadata JSON)""")
        connection.execute("""
            CREATE TABLE reflections (id VARCHAR PRIMARY KEY, content TEXT NOT NULL, embedding FLOAT[384],
                                      project VARCHAR, tags VARCHAR[], timestamp TIMESTAMP, metadata JSON)""")
        connection.execute("CREATE TABLE reflection_tags (reflection_id VARCHAR, tag VARCHAR, "
                           "PRIMARY KEY (reflection_id, tag))")
        connection.execute("CREATE TABLE project_groups (id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, "
                           "projects VARCHAR[] NOT NULL, description TEXT, created_at TIMESTAMP)")
        vector = [0.5] * 384
        for cid, content, project, ts in LEGACY_CONVERSATIONS:
            connection.execute("INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
                               [cid, content, vector, project, ts, json.dumps({"origin": "legacy"})])
        for rid, content, project, tags, extra_tags, ts in LEGACY_REFLECTIONS:
            connection.execute("INSERT INTO reflections VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [rid, content, vector, project, tags, ts, None])
            for tag in extra_tags:
                connection.execute("INSERT INTO reflection_tags VALUES (?, ?)", [rid, tag])
        connection.execute("INSERT INTO project_groups VALUES ('g1', 'group', ['a', 'b'], NULL, NULL)")
    finally:
        connection.close()


def has_insight_column(path: Path) -> bool:
    """Whether the file's ``reflections_v2`` has 0.23's ``insight_type`` (0.36 dropped it): the file says which
    API wrote it, without importing Session-Buddy in the test process."""
    connection = duckdb.connect(str(path), read_only=True)
    try:
        return connection.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = "
                                  "'reflections_v2' AND column_name = 'insight_type'").fetchone() == (1,)
    finally:
        connection.close()


def build_session_buddy_files(*, timeout_s: float = 300.0) -> dict[str, Path]:
    """The real-API files, built by a child process with an isolated HOME; returns their paths.

    Importing Session-Buddy costs about ten seconds of CPU, so the files are cached in the temp folder under a
    key made of the session-buddy and duckdb versions and this module's source: a change to any of them
    rebuilds. Callers must copy the files before use (the tests do), never write to them.
    """
    key = hashlib.sha256("|".join((version("session-buddy"), duckdb.__version__,
                                   Path(__file__).read_text())).encode()).hexdigest()[:16]
    root = Path(tempfile.gettempdir()) / "oneiric-memory-test-fixtures"
    final = root / f"session-buddy-{key}"
    names = {"reflection": "reflection.duckdb", "knowledge_graph": "knowledge_graph.duckdb",
             "hostile": "hostile.duckdb"}
    if not all((final / name).is_file() for name in names.values()):
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="building-", dir=root))
        env = {**os.environ, "HOME": str(work / "home-that-does-not-exist")}
        try:
            # -P: the script's folder (tests/) is not put on sys.path, where tests/mcp/ would shadow the mcp package
            subprocess.run([sys.executable, "-P", __file__, str(work)], env=env, check=True, timeout=timeout_s,
                           capture_output=True)
            with contextlib.suppress(OSError):  # atomic: a concurrent session that finished first keeps its copy
                work.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {role: final / name for role, name in names.items()}


async def _build(out_dir: Path) -> None:  # runs in the child process only
    from session_buddy.adapters.knowledge_graph_adapter_oneiric import KnowledgeGraphDatabaseAdapterOneiric
    from session_buddy.adapters.reflection_adapter_oneiric import ReflectionDatabaseAdapterOneiric
    from session_buddy.adapters.settings import KnowledgeGraphAdapterSettings, ReflectionAdapterSettings

    def adapter(path: Path) -> ReflectionDatabaseAdapterOneiric:
        return ReflectionDatabaseAdapterOneiric(settings=ReflectionAdapterSettings(
            database_path=path, enable_embeddings=False, enable_hnsw_index=False))

    async with adapter(out_dir / "reflection.duckdb") as db:
        for content, project in CONVERSATIONS:
            await db.store_conversation(content, metadata={"project": project} if project else None)
        for content, tags, project in REFLECTIONS:
            await db.store_reflection(content, tags=tags, project=project)
        for content, insight_type, topics in INSIGHTS:
            if hasattr(db, "store_insight"):  # Session-Buddy 0.23
                await db.store_insight(content, insight_type=insight_type, topics=topics, projects=["alpha"])
            else:  # 0.36 removed it: an insight is a reflection tagged the way our sink writes one (tags.tags_for)
                await db.store_reflection(content, tags=["insight", insight_type, *topics, f"om:{insight_type}-id",
                                                           "project:alpha"],
                                          project="alpha", source_session_id="session-1",
                                          source_artifact_uri=f"oneiric-memory://{insight_type}")

    async with KnowledgeGraphDatabaseAdapterOneiric(
            settings=KnowledgeGraphAdapterSettings(database_path=out_dir / "knowledge_graph.duckdb")) as kg:
        for name, kind, observations in KG_ENTITIES:
            await kg.create_entity(name, kind)  # observations added below: no embedding attempt
            for observation in observations:
                await kg.add_observation(name, observation)
        for source, relation, target in KG_RELATIONS:
            await kg.create_relation(source, target, relation)

    hostile = out_dir / "hostile.duckdb"
    async with adapter(hostile) as db:
        await db.store_reflection(HOSTILE["nul"], tags=["nul\x00tag"])
        await db.store_reflection(HOSTILE["quotes"], tags=["quotes"])
        await db.store_reflection(HOSTILE["huge"], tags=["huge"])
        bad = await db.store_conversation(HOSTILE["bad_json"])
        nan = await db.store_conversation(HOSTILE["nan_json"])
    # Metadata a real file can hold but the API never writes: conversations_v2.metadata is a VARCHAR.
    connection = duckdb.connect(str(hostile))
    try:
        connection.execute("UPDATE conversations_v2 SET metadata = ? WHERE id = ?", ['{"project": "x", oops', bad])
        connection.execute("UPDATE conversations_v2 SET metadata = ? WHERE id = ?",
                           ['{"v": NaN, "nul": "a\\u0000b", "deep": [[[1]]]}', nan])
        connection.execute("INSERT INTO reflections_v2 (id, content, category) VALUES ('blank-row', '   ', 'context')")
    finally:
        connection.close()


if __name__ == "__main__":
    asyncio.run(_build(Path(sys.argv[1])))
