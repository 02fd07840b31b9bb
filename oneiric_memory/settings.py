"""Typed, layered settings for oneiric-memory (``MemorySettings``).

Layers, lowest first (later wins, deep-merged; the full rules are in ``settings_sources``):

1. code defaults;
2. Mahavishnu's own keys, followed where they exist (``pools.session_buddy_url``, ``MAHAVISHNU_DB_*``; and
   ``llm.ollama_base_url`` / ``llm.model`` for a Mahavishnu older than 0.36);
3. the ``oneiric_memory:`` block of ``<root>/settings/mahavishnu.yaml``, then ``<root>/settings/local.yaml``;
4. the same block in ``$XDG_CONFIG_HOME/mahavishnu/config.yaml``, then ``local.yaml``;
5. env ``MAHAVISHNU_ONEIRIC_MEMORY__<SECTION>__<FIELD>``;
6. the block in the file named by ``MAHAVISHNU_CONFIG``;
7. explicit arguments to :func:`load_settings`.

Env values stay strings and pydantic converts them per field, so a numeric password stays a string.
A validation error names the key and the layer (file or env variable) that supplied it, never the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from oneiric_memory.errors import ConfigurationError
from oneiric_memory.settings_sources import (
    DB_ENV_TARGETS,
    DEFAULT,
    ENV_PREFIX,
    FOLLOWED_KEYS,
    SETTINGS_BLOCK,
    SettingsFile,
    Source,
    collect_layers,
    installed_mahavishnu_version,
    split_branch_candidates,
)

__all__ = [
    "CoordinatorSettings",
    "DEFAULT_OLLAMA_URL",
    "DEFAULT_OPENAI_URL",
    "EmbedderSettings",
    "IDENTIFIER_PATTERN",
    "MahavishnuSettings",
    "MaintenanceSettings",
    "McpSettings",
    "MemorySettings",
    "PostgresSettings",
    "SearchSettings",
    "SessionBuddySettings",
    "TaskPrefixes",
    "EffectiveValue",
    "ResolvedSettings",
    "default_cache_dir",
    "defaults_document",
    "load_settings",
    "reference_markdown",
    "resolve_settings",
    "settings_reference",
    "validate_identifier",
]

IDENTIFIER_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")


def validate_identifier(value: str, *, what: str = "identifier") -> str:
    """Accept only lower-case SQL identifiers; they are interpolated into DDL, never input."""
    if not IDENTIFIER_PATTERN.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a safe SQL identifier: use lower-case letters, digits and "
            "underscores, starting with a letter or underscore, at most 48 characters"
        )
    return value


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/oneiric-memory`` (or ``~/.cache/oneiric-memory``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "oneiric-memory"


class _Section(BaseModel):
    # hide_input_in_errors: a rejected value may be a password, so pydantic must never echo it.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, validate_assignment=True,
                              hide_input_in_errors=True)


class PostgresSettings(_Section):
    """Connection, pool and schema settings. No ``dsn`` and no ``host`` means the embedded server."""

    dsn: SecretStr | None = Field(default=None, description="libpq URI; may hold a password, so kept secret")
    read_dsn: SecretStr | None = Field(default=None, description="optional replica URI used for searches")
    host: str | None = None
    port: int = 5432
    user: str = "postgres"
    password: SecretStr | None = None
    database: str = "oneiric_memory"
    ssl: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] | None = None
    db_schema: str = "oneiric_memory"
    embedded_data_dir: Path | None = Field(
        default=None, description="data folder of the embedded server; default <cache>/pgdata"
    )
    min_connections: int = Field(default=1, ge=0)
    max_connections: int = Field(default=8, ge=1, le=200)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    acquire_timeout_s: float = Field(default=10.0, gt=0)
    command_timeout_s: float = Field(default=60.0, gt=0)
    statement_timeout_ms: int = Field(default=30_000, ge=0)
    max_inactive_connection_lifetime_s: float = Field(default=300.0, ge=0)
    max_queries_per_connection: int = Field(default=50_000, ge=1)
    statement_cache_size: int = Field(default=256, ge=0, description="0 behind PgBouncer (transaction mode)")
    auto_migrate: bool = True
    create_extension: bool = True
    vector_dimension: int = Field(default=768, ge=1, le=4000)
    vector_type: Literal["halfvec", "vector"] = "halfvec"
    index_type: Literal["hnsw", "ivfflat"] = "hnsw"
    hnsw_m: int = Field(default=16, ge=2, le=100)
    hnsw_ef_construction: int = Field(default=64, ge=4, le=1000)
    ivfflat_lists: int | None = Field(default=None, ge=1)
    text_search_config: str = "english"
    on_conflict: Literal["keep_first", "refresh"] = "keep_first"
    max_content_bytes: int = Field(default=1_000_000, ge=1)
    retry_attempts: int = Field(default=4, ge=1)
    retry_base_delay_s: float = Field(default=0.05, ge=0)
    retry_max_delay_s: float = Field(default=2.0, ge=0)
    bulk_maintenance_work_mem: str = "1GB"

    @field_validator("db_schema", "text_search_config")
    @classmethod
    def _safe_identifier(cls, value: str) -> str:
        return validate_identifier(value)

    @model_validator(mode="after")
    def _indexable_dimension(self) -> PostgresSettings:
        """pgvector indexes (HNSW, IVFFlat) take at most 2,000 ``vector`` or 4,000 ``halfvec`` dimensions."""
        limit = 2000 if self.vector_type == "vector" else 4000
        if self.vector_dimension > limit:
            raise ValueError(
                f"vector_dimension {self.vector_dimension} is too large for an indexed {self.vector_type} column "
                f"(at most {limit}): use vector_type halfvec (up to 4000) or a smaller embedding dimension")
        return self

    @property
    def embedded(self) -> bool:
        """True when neither a DSN nor a host is configured."""
        return self.dsn is None and not self.host


class TaskPrefixes(_Section):
    """Instruction prefixes a model expects for stored text and for queries."""

    document: str = ""
    query: str = ""


def _default_prefixes() -> dict[str, TaskPrefixes]:
    return {
        "nomic-embed-text": TaskPrefixes(document="search_document: ", query="search_query: "),
    }


DEFAULT_OLLAMA_URL = "http://localhost:11434"
DEFAULT_OPENAI_URL = "http://localhost:8080/v1"
"""llama-server's OpenAI-compatible endpoint, as Mahavishnu and Session-Buddy default it
(``MAHAVISHNU__LLAMA_SERVER_URL``)."""


class EmbedderSettings(_Section):
    """Which embedder to use and how to call it (Ollama, an OpenAI-compatible server, or a local model)."""

    provider: Literal["auto", "ollama", "openai", "local", "hashing"] = Field(
        default="auto", description="auto tries ollama, openai, local, then hashing (lexical only)")
    base_url: str | None = Field(
        default=None, description="server of the chosen provider (with or without /v1 for openai); under auto it "
                                  "replaces both ollama_url and openai_url")
    ollama_url: str = Field(default=DEFAULT_OLLAMA_URL, description="Ollama's URL; follows llm.ollama_base_url")
    openai_url: str = Field(default=DEFAULT_OPENAI_URL,
                            description="OpenAI-compatible server (llama-server, vLLM, TEI, OpenAI, Ollama /v1); "
                                        "follows MAHAVISHNU__LLAMA_SERVER_URL")
    model: str = "nomic-embed-text"
    api_key: SecretStr | None = Field(default=None, description="bearer token for the OpenAI-compatible server")
    model_path: Path | None = Field(
        default=None, description="local provider: folder with model.onnx + tokenizer.json (Hugging Face layout)")
    local_pooling: Literal["auto", "cls", "mean"] = Field(
        default="auto", description="local provider: how token vectors become one (auto: from the model)")
    local_threads: int | None = Field(default=None, ge=1, description="local provider: ONNX intra-op threads")
    local_download: bool = Field(default=True,
                                 description="local provider: download a named model once into <cache>/models")
    probe_timeout_s: float = Field(default=2.0, gt=0, description="auto: deadline of each provider's probe")
    batch_size: int = Field(default=64, ge=1, le=4096)
    max_concurrency: int = Field(default=4, ge=1, le=256)
    request_timeout_s: float = Field(default=30.0, gt=0)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    total_timeout_s: float = Field(default=60.0, gt=0, description="bound on one call including retries")
    retry_attempts: int = Field(default=4, ge=1)
    retry_base_delay_s: float = Field(default=0.2, ge=0)
    retry_max_delay_s: float = Field(default=5.0, ge=0)
    keep_alive: str | None = "5m"
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1, description="Matryoshka truncation, if the model supports it; "
                                                                   "sent as the dimensions parameter")
    normalize: bool = True
    task_prefixes: dict[str, TaskPrefixes] = Field(default_factory=_default_prefixes)
    query_cache_size: int = Field(default=2048, ge=0)

    def url_for(self, provider: str) -> str:
        """The server URL ``provider`` (``ollama`` or ``openai``) calls: ``base_url`` if set, else its own."""
        if self.base_url:
            return self.base_url
        return self.openai_url if provider == "openai" else self.ollama_url


class SessionBuddySettings(_Section):
    """Delivery of insights to Session-Buddy."""

    enabled: bool = True
    mode: Literal["auto", "in_process", "mcp"] = "auto"
    database_path: Path | None = Field(default=None, description="default ~/.claude/data/reflection.duckdb")
    mcp_url: str = "http://localhost:8678/mcp"
    timeout_s: float = Field(default=5.0, gt=0)
    enable_embeddings: bool = False
    relay_enabled: bool = True
    relay_interval_s: float = Field(default=2.0, gt=0)
    relay_batch_size: int = Field(default=50, ge=1)
    max_attempts: int = Field(default=25, ge=1)
    retry_base_delay_s: float = Field(default=1.0, ge=0)
    retry_max_delay_s: float = Field(default=600.0, ge=0)
    degraded_backlog_age_s: float = Field(default=600.0, ge=0)


class SearchSettings(_Section):
    """Search defaults and tuning knobs (applied with SET LOCAL per query)."""

    @model_validator(mode="before")
    @classmethod
    def _split_branch_candidates(cls, data: Any) -> Any:
        """A section built directly (not through the layers) also takes the earlier ``branch_candidates``."""
        if isinstance(data, dict) and "branch_candidates" in data:
            return split_branch_candidates(data)
        return data

    default_mode: Literal["vector", "text", "hybrid"] = "hybrid"
    default_limit: int = Field(default=10, ge=1)
    max_limit: int = Field(default=1000, ge=1, le=10_000)
    ef_search: int = Field(
        default=200, ge=1, le=1000, description="HNSW candidate list per search (raised to at least the rows a "
        "branch returns): measured at 150k rows, 200 gives recall@20 0.98 where 100 gives 0.97, for ~0.3-0.5 ms "
        "of server CPU (docs/benchmarks.md, store-search)")
    iterative_scan: Literal["off", "relaxed_order", "strict_order"] = "relaxed_order"
    max_scan_tuples: int = Field(default=40_000, ge=1)
    exact_search_max_rows: int = Field(
        default=15_000, ge=0, description="upper bound of the exact-path line: a filtered vector/hybrid search "
        "reads every matching row (B-tree filter + sort: complete, no index recall loss) when the filter matches at "
        "most min(this, max(1000, sqrt(15 x limit x table rows))) rows, and uses the HNSW/IVFFlat index otherwise "
        "(6.7k rows at 150k rows and limit 20); 0 = always the index"
    )
    ivfflat_probes: int | None = Field(default=None, ge=1)
    fusion: Literal["convex", "rrf"] = Field(
        default="convex", description="hybrid fusion: convex = weighted min-max-normalised scores, rrf = weighted "
        "reciprocal ranks (docs/benchmarks.md compares them)")
    rrf_k: int = Field(default=60, ge=1)
    vector_weight: float = Field(default=1.0, ge=0)
    text_weight: float = Field(
        default=0.875, ge=0, description="lexical branch's weight in hybrid fusion (vector_weight is the other): "
        "0.875 with 80 vector and 40 text candidates is the measured setting that beats vector-only on LoCoMo and "
        "the stdlib set with both a real model and the hashing embedder (docs/benchmarks.md, the LoCoMo section's "
        "fusion note)")
    vector_candidates: int = Field(
        default=80, ge=1, le=1000, description="rows the vector branch hands to hybrid fusion (at least the "
        "search's limit); deeper than the text branch, so min-max normalisation measures vector scores against a "
        "lower floor, which narrows the gaps among the best vector hits and lets a strong lexical match reorder them")
    text_candidates: int = Field(default=40, ge=1, le=1000, description="rows the lexical branch hands to hybrid "
                                 "fusion (at least the search's limit)")
    lexical_candidates: int = Field(
        default=2000, ge=1, le=100_000, description="most rows the lexical branch considers per query: it admits "
        "rows through the query's rarest terms first, so words found everywhere cannot make a search slow; each "
        "gets a BM25 score at tf = 1 and the best 2 x the branch's rows are rescored with their term frequencies")
    unified_timeout_s: float = Field(default=2.0, gt=0)


class MaintenanceSettings(_Section):
    """Maintenance and monitoring thresholds."""

    auto_enabled: bool = False
    auto_interval_s: float = Field(default=3600.0, gt=0)
    dead_tuple_ratio: float = Field(default=0.10, ge=0, le=1)
    reindex_growth_ratio: float = Field(default=0.5, ge=0)
    recall_floor: float = Field(default=0.90, ge=0, le=1)
    canary_queries: int = Field(default=10, ge=1)
    canary_k: int = Field(default=10, ge=1)
    expire_batch_size: int = Field(default=5000, ge=1)
    maintenance_work_mem: str = "1GB"
    pool_busy_ratio: float = Field(default=0.8, ge=0, le=1)
    outbox_backlog_age_s: float = Field(default=900.0, ge=0)
    slow_query_ms: float = Field(default=100.0, ge=0)
    health_cache_s: float = Field(default=60.0, ge=0, description="how long health reuses the last doctor findings")


class CoordinatorSettings(_Section):
    """Backpressure and background tasks of the unified-memory coordinator."""

    max_in_flight: int = Field(default=256, ge=1)
    admission_timeout_s: float = Field(default=10.0, gt=0)
    embed_timeout_s: float = Field(default=10.0, gt=0, description="longest a write waits for the embedder")
    backfill_enabled: bool = True
    backfill_interval_s: float = Field(default=30.0, gt=0)
    backfill_batch_size: int = Field(default=256, ge=1)
    health_timeout_s: float = Field(default=3.0, gt=0, description="per-part bound of the aggregated health check")


class McpSettings(_Section):
    """The MCP server (``oneiric-memory mcp``): its project pin and its HTTP listener."""

    projects: list[str] = Field(
        default_factory=list,
        description="pin: the only projects the server reads and writes (env: comma-separated); empty = unpinned, "
                    "and every tool call must name its project")
    host: str = Field(default="127.0.0.1", description="HTTP bind address; anything but loopback needs mcp.token")
    port: int = Field(default=8686, ge=1, le=65535)
    path: str = Field(default="/mcp", description="HTTP endpoint path")
    token: SecretStr | None = Field(default=None, description="bearer token HTTP clients must send (32+ chars)")

    @field_validator("projects", mode="before")
    @classmethod
    def _split_projects(cls, value: Any) -> Any:
        """Env values arrive as one string: ``alpha,beta``."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("projects")
    @classmethod
    def _valid_projects(cls, value: list[str]) -> list[str]:
        for project in value:
            if not project.strip() or "\x00" in project or len(project) > 512:
                raise ValueError("each pinned project must be a non-empty name of at most 512 characters")
        return list(dict.fromkeys(value))

    @field_validator("path")
    @classmethod
    def _valid_path(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError("the HTTP path must start with '/' and hold no spaces")
        return value


class MahavishnuSettings(_Section):
    """How the memory shows up in a Mahavishnu app (``oneiric_memory.mahavishnu.attach``)."""

    degraded_status: Literal["healthy", "degraded"] = Field(
        default="healthy",
        description="get_health()['status'] while only optional parts (embedder, Session-Buddy, maintenance) are "
                    "down; Mahavishnu counts 'degraded' as unhealthy and alerts on it (see docs/mahavishnu.md)")


class MemorySettings(BaseModel):
    """The whole settings tree; see the module docstring for the layering."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, validate_assignment=True,
                              hide_input_in_errors=True)

    cache_dir: Path = Field(default_factory=default_cache_dir)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    embedder: EmbedderSettings = Field(default_factory=EmbedderSettings)
    session_buddy: SessionBuddySettings = Field(default_factory=SessionBuddySettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)
    coordinator: CoordinatorSettings = Field(default_factory=CoordinatorSettings)
    mcp: McpSettings = Field(default_factory=McpSettings)
    mahavishnu: MahavishnuSettings = Field(default_factory=MahavishnuSettings)

    @property
    def embedded_data_dir(self) -> Path:
        return self.postgres.embedded_data_dir or (self.cache_dir / "pgdata")


# --- layering (the layers themselves are read by settings_sources) -------------------------------


@dataclass(frozen=True, slots=True)
class EffectiveValue:
    """One effective setting for ``oneiric-memory config``: secrets masked, with the layer it came from."""

    key: str
    value: Any
    layer: str
    origin: str
    secret: bool = False


@dataclass(frozen=True, slots=True)
class ResolvedSettings:
    """:class:`MemorySettings` together with where each value came from (see ``settings_sources``)."""

    settings: MemorySettings
    sources: Mapping[tuple[str, ...], Source]
    root: Path
    root_source: str
    files: tuple[SettingsFile, ...]
    mahavishnu_version: str | None
    legacy_llm_keys: bool
    notes: tuple[str, ...] = ()

    def source_of(self, key: str) -> Source:
        """The layer that set ``key`` (dotted), or the default."""
        path = tuple(key.split("."))
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.sources:
                return self.sources[path[:cut]]
        return DEFAULT

    def values(self) -> list[EffectiveValue]:
        """Every leaf setting, in model order; secret values masked (a DSN keeps its host, never its password)."""
        rows: list[EffectiveValue] = []
        for key, value in _leaves(self.settings.model_dump(mode="python"), ()):
            source = self.source_of(key)
            secret = isinstance(value, SecretStr)
            rows.append(EffectiveValue(key, _masked(key, value), source.layer, source.origin, secret))
        return rows

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the settings root, the files looked at, Mahavishnu's generation and every value."""
        return {
            "settings_root": {"path": str(self.root), "from": self.root_source},
            "files": [{"layer": f.layer, "path": str(f.path), "exists": f.exists} for f in self.files],
            "mahavishnu": {"installed_version": self.mahavishnu_version,
                           "follows_llm_ollama_base_url": self.legacy_llm_keys},
            "notes": list(self.notes),
            "values": {row.key: {"value": row.value, "layer": row.layer, "from": row.origin}
                       for row in self.values()},
        }


def _leaves(value: Any, prefix: tuple[str, ...]) -> list[tuple[str, Any]]:
    if isinstance(value, dict) and (value or not prefix):
        out: list[tuple[str, Any]] = []
        for key, inner in value.items():
            out += _leaves(inner, (*prefix, str(key)))
        return out
    return [(".".join(prefix), value)]


def _masked(key: str, value: Any) -> Any:
    """JSON-ready and safe to print: secrets become ``**********``; a DSN shows where it points, not its password."""
    if isinstance(value, SecretStr):
        raw = value.get_secret_value()
        if key.endswith("dsn"):
            try:
                parts = urlsplit(raw)
                host = parts.hostname or ""
                port = f":{parts.port}" if parts.port else ""
                user = f"{parts.username}:**********@" if parts.username else ""
                return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))
            except ValueError:
                return "**********"
        return "**********"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_masked(key, item) for item in value]
    return value


def resolve_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    root: Path | None = None,
    environ: Mapping[str, str] | None = None,
    mahavishnu_config: Mapping[str, Any] | None = None,
    mahavishnu_version: str | EllipsisType | None = ...,
) -> ResolvedSettings:
    """Build :class:`MemorySettings` from the layers of ``settings_sources`` and keep each value's layer.

    ``root`` holds ``settings/`` (else ``ONEIRIC_MEMORY_SETTINGS_ROOT``, else the working directory).
    ``mahavishnu_config`` is the running app's already-parsed config (Mahavishnu's keys are followed from it).
    ``mahavishnu_version`` decides which of Mahavishnu's keys exist; default: the installed Mahavishnu's.
    """
    environ = os.environ if environ is None else environ
    version = installed_mahavishnu_version() if mahavishnu_version is ... else mahavishnu_version
    # Start from the code defaults so that dict-valued settings (embedder.task_prefixes) are deep-merged
    # with their defaults instead of being replaced by the first layer that names one entry.
    merged: dict[str, Any] = MemorySettings().model_dump(exclude={"cache_dir"})
    layered = collect_layers(merged, root=root, environ=environ, mahavishnu_config=mahavishnu_config,
                             mahavishnu_version=version, overrides=overrides)
    try:
        settings = MemorySettings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc, layered.sources), errors=len(exc.errors())) from None
    return ResolvedSettings(settings=settings, sources=dict(layered.sources), root=layered.root,
                            root_source=layered.root_source, files=tuple(layered.files),
                            mahavishnu_version=version, legacy_llm_keys=layered.legacy_llm_keys,
                            notes=tuple(layered.notes))


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    root: Path | None = None,
    environ: Mapping[str, str] | None = None,
    mahavishnu_config: Mapping[str, Any] | None = None,
    mahavishnu_version: str | EllipsisType | None = ...,
) -> MemorySettings:
    """:class:`MemorySettings` from the layers in the module docstring (see :func:`resolve_settings`)."""
    return resolve_settings(overrides, root=root, environ=environ, mahavishnu_config=mahavishnu_config,
                            mahavishnu_version=mahavishnu_version).settings


def _describe(exc: ValidationError, sources: Mapping[tuple[str, ...], Source]) -> str:
    lines = ["invalid oneiric_memory settings:"]
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple(str(part) for part in error["loc"])
        source = "defaults"
        for cut in range(len(loc), 0, -1):
            if loc[:cut] in sources:
                source = str(sources[loc[:cut]])
                break
        else:  # a section-level error (model validator): name the layers that set keys inside it
            inside = sorted({str(label) for path, label in sources.items() if path[:len(loc)] == loc})
            source = ", ".join(inside) or source
        lines.append(f"  {SETTINGS_BLOCK}.{'.'.join(loc)}: {error['msg']} (from {source})")
    return "\n".join(lines)


# Keys whose defaults follow Mahavishnu's own settings; writing them into the block would override those.
MAHAVISHNU_FOLLOWED_KEYS: tuple[tuple[str, str, str], ...] = (
    *((key.target[0], key.target[1], key.mahavishnu_key) for key in FOLLOWED_KEYS),
    *(("postgres", target, f"MAHAVISHNU_DB_{suffix}") for suffix, target in DB_ENV_TARGETS),
)


def defaults_document() -> dict[str, Any]:
    """Every setting with its default, as the ``oneiric_memory:`` YAML block.

    Machine paths are left out, and so are the keys that follow Mahavishnu's own settings
    (``MAHAVISHNU_FOLLOWED_KEYS``): listing them would override ``llm.ollama_base_url`` and friends.
    """
    document = MemorySettings().model_dump(mode="json")
    document.pop("cache_dir", None)
    for section, key, _ in MAHAVISHNU_FOLLOWED_KEYS:
        document[section].pop(key, None)
    return document


def settings_reference() -> list[tuple[str, str, str, str]]:
    """(key, default, env variable, description) for every setting: the source of docs/configuration.md."""
    rows: list[tuple[str, str, str, str]] = []
    defaults = MemorySettings()
    for section_name, section_field in MemorySettings.model_fields.items():
        section = getattr(defaults, section_name)
        if not isinstance(section, BaseModel):
            rows.append((section_name, "<cache dir>" if section_name == "cache_dir" else repr(section),
                         f"{ENV_PREFIX}{section_name.upper()}", section_field.description or ""))
            continue
        for name, field in type(section).model_fields.items():
            value = getattr(section, name)
            if isinstance(value, SecretStr):
                shown = "(secret)"
            elif isinstance(value, dict):
                shown = ", ".join(f"{k}: {v.model_dump() if isinstance(v, BaseModel) else v}"
                                  for k, v in value.items())
            else:
                shown = "null" if value is None else str(value)
            rows.append((f"{section_name}.{name}", shown, f"{ENV_PREFIX}{section_name.upper()}__{name.upper()}",
                         field.description or ""))
    return rows


def reference_markdown() -> str:
    """The "Every key" table of docs/configuration.md, generated from the model (``oneiric-memory config
    --reference`` prints it; a test keeps the doc equal to it)."""
    lines = ["| key | default | env variable | notes |", "|---|---|---|---|"]
    follows: dict[str, str] = {
        f"{k.target[0]}.{k.target[1]}": f"follows Mahavishnu's `{k.mahavishnu_key}`"
        + (" (Mahavishnu < 0.36)" if k.legacy_only else "") for k in FOLLOWED_KEYS}
    for suffix, target in DB_ENV_TARGETS:
        follows[f"postgres.{target}"] = (f"follows `MAHAVISHNU_DB_{suffix}`" if suffix == "HOST" else
                                         f"follows `MAHAVISHNU_DB_{suffix}` when `MAHAVISHNU_DB_HOST` is set")
    for key, default, env, description in settings_reference():
        notes = description.replace("|", "\\|")
        if key in follows:
            notes = f"{notes}; {follows[key]}" if notes else follows[key]
        lines.append(f"| `{key}` | `{default}` | `{env}` | {notes} |")
    return "\n".join(lines) + "\n"
