"""Where settings come from: the files and env variables read the way Oneiric 0.33 and Mahavishnu 0.36 read theirs.

Mahavishnu 0.36 loads its settings with Oneiric's ``load_settings(project_name="mahavishnu")`` and then drops
blocks it does not declare, such as ``oneiric_memory:``. So this module reads the same places itself and takes the
``oneiric_memory:`` block from each. Layers, lowest first (later wins, deep-merged key by key):

1. code defaults (the model's);
2. Mahavishnu's own keys, followed (:data:`FOLLOWED_KEYS`): any ``oneiric_memory`` value beats them;
3. ``<root>/settings/mahavishnu.yml`` and ``mahavishnu.yaml`` (the project's committed settings);
4. ``<root>/settings/local.yaml`` (machine-local, not committed);
5. ``$XDG_CONFIG_HOME/mahavishnu/config.yaml`` (``$XDG_CONFIG_HOME`` defaults to ``$HOME/.config``);
6. ``$XDG_CONFIG_HOME/mahavishnu/local.yaml``;
7. env ``MAHAVISHNU_ONEIRIC_MEMORY__<SECTION>__<FIELD>``;
8. the file named by ``MAHAVISHNU_CONFIG`` (Oneiric's explicit override, above env as in Oneiric);
9. explicit arguments.

``<root>`` is explicit: the ``root`` argument (``--settings-root``; Mahavishnu 0.36's own anchor when attached),
else ``ONEIRIC_MEMORY_SETTINGS_ROOT``, and only as the last fallback the working directory. The user layers are
found from the given environment alone (``XDG_CONFIG_HOME``, else ``HOME``), so an empty environment reads no
user file. Every value keeps the layer it came from (:class:`Source`), for error messages and
``oneiric-memory config``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from oneiric_memory.errors import ConfigurationError

__all__ = [
    "CONFIG_ENV",
    "DB_ENV_TARGETS",
    "DEFAULT",
    "ENV_PREFIX",
    "FOLLOWED_KEYS",
    "LEGACY_LLM_KEYS_UNTIL",
    "MAHAVISHNU_DB_DEFAULTS",
    "ROOT_ENV",
    "SETTINGS_BLOCK",
    "FollowedKey",
    "LayeredValues",
    "SettingsFile",
    "Source",
    "collect_layers",
    "follows_legacy_llm_keys",
    "installed_mahavishnu_version",
    "is_mahavishnu_036_or_newer",
    "mahavishnu_settings_root",
    "merge_into",
    "resolve_root",
    "split_branch_candidates",
]

ENV_PREFIX = "MAHAVISHNU_ONEIRIC_MEMORY__"
SETTINGS_BLOCK = "oneiric_memory"
ROOT_ENV = "ONEIRIC_MEMORY_SETTINGS_ROOT"
CONFIG_ENV = "MAHAVISHNU_CONFIG"
LEGACY_LLM_KEYS_UNTIL = (0, 36)
"""Mahavishnu's ``llm.ollama_base_url`` (and an embedding model in ``llm.model``) exist up to 0.35.1; 0.36 removed
them (``LLMConfig`` became a llama-server chat model), and its loader silently drops a stale one."""

MAHAVISHNU_DB_DEFAULTS: dict[str, str] = {"PORT": "5432", "NAME": "mahavishnu", "USER": "mahavishnu",
                                          "SSL_MODE": "prefer"}
"""What Mahavishnu's ``DatabaseConfig.from_env`` uses for an unset ``MAHAVISHNU_DB_*`` (0.17 … 0.36)."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where one value came from: a stable ``layer`` id and a human ``origin`` (a path or an env variable)."""

    layer: str
    origin: str

    def __str__(self) -> str:
        return self.origin


DEFAULT = Source("default", "default")


@dataclass(frozen=True, slots=True)
class SettingsFile:
    """One settings file this load looked at, and whether it was there."""

    layer: str
    path: Path
    exists: bool


@dataclass(frozen=True, slots=True)
class FollowedKey:
    """One of Mahavishnu's own settings that serves as a default for one of ours."""

    target: tuple[str, str]
    mahavishnu_key: str
    env: str
    legacy_only: bool = False
    """True for keys Mahavishnu 0.36 removed: followed only while the installed Mahavishnu is older (or absent)."""
    aliases: tuple[str, ...] = ()
    """Other places the same value is read from (later wins)."""


FOLLOWED_KEYS: tuple[FollowedKey, ...] = (
    FollowedKey(("session_buddy", "mcp_url"), "pools.session_buddy_url", "MAHAVISHNU_POOLS__SESSION_BUDDY_URL"),
    FollowedKey(("embedder", "ollama_url"), "llm.ollama_base_url", "MAHAVISHNU_LLM__OLLAMA_BASE_URL",
                legacy_only=True),
    FollowedKey(("embedder", "openai_url"), "llama_server_url", "MAHAVISHNU__LLAMA_SERVER_URL",
                aliases=("llm.llama_server_url",)),
    FollowedKey(("embedder", "model"), "llm.model", "MAHAVISHNU_LLM__MODEL", legacy_only=True),
)
"""Mahavishnu keys read from the same files (and their env forms). ``MAHAVISHNU_DB_*`` is handled beside them."""

DB_ENV_TARGETS: tuple[tuple[str, str], ...] = (
    ("HOST", "host"), ("PORT", "port"), ("NAME", "database"), ("USER", "user"), ("PASSWORD", "password"),
    ("SSL_MODE", "ssl"),
)


@dataclass(slots=True)
class LayeredValues:
    """The merged values of every layer above the defaults, and the provenance of each leaf."""

    values: dict[str, Any]
    sources: dict[tuple[str, ...], Source]
    root: Path
    root_source: str
    files: list[SettingsFile] = field(default_factory=list)
    mahavishnu_version: str | None = None
    legacy_llm_keys: bool = True
    notes: list[str] = field(default_factory=list)


@cache
def installed_mahavishnu_version() -> str | None:
    """The installed Mahavishnu's version, from its metadata (Mahavishnu itself is never imported here)."""
    try:
        return version("mahavishnu")
    except PackageNotFoundError:
        return None


def is_mahavishnu_036_or_newer(mahavishnu_version: str | None) -> bool:
    """True for the Mahavishnu generation that loads settings through Oneiric and dropped the ``llm`` Ollama keys."""
    if mahavishnu_version is None:
        return False
    numbers = [int(part) for part in re.findall(r"\d+", mahavishnu_version)[:2]]
    return tuple(numbers) >= LEGACY_LLM_KEYS_UNTIL


def follows_legacy_llm_keys(mahavishnu_version: str | None) -> bool:
    """Keys removed in 0.36 are followed for an older Mahavishnu, and when none is installed (the file is the
    user's own then, and nothing else reads it)."""
    return not is_mahavishnu_036_or_newer(mahavishnu_version)


def mahavishnu_settings_root() -> Path | None:
    """Where an imported Mahavishnu 0.36 looks for ``settings/``: the folder above its package (its
    ``load_config`` anchors Oneiric's ``project_root`` there). None for older or absent Mahavishnu."""
    module = sys.modules.get("mahavishnu")
    if module is None or not getattr(module, "__file__", None):
        return None
    if not is_mahavishnu_036_or_newer(installed_mahavishnu_version()):
        return None
    return Path(str(module.__file__)).resolve().parent.parent


def resolve_root(root: Path | None, environ: Mapping[str, str]) -> tuple[Path, str]:
    """The folder holding ``settings/``: explicit, then ``ONEIRIC_MEMORY_SETTINGS_ROOT``, then the working dir."""
    if root is not None:
        return Path(root), "argument"
    if environ.get(ROOT_ENV):
        return Path(environ[ROOT_ENV]).expanduser(), f"env {ROOT_ENV}"
    return Path.cwd(), "working directory"


def user_config_dir(environ: Mapping[str, str]) -> Path | None:
    """``$XDG_CONFIG_HOME/mahavishnu`` (default ``$HOME/.config/mahavishnu``), from ``environ`` only."""
    if environ.get("XDG_CONFIG_HOME"):
        return Path(environ["XDG_CONFIG_HOME"]).expanduser() / "mahavishnu"
    if environ.get("HOME"):
        return Path(environ["HOME"]) / ".config" / "mahavishnu"
    return None


def read_yaml(path: Path) -> dict[str, Any]:
    """A settings file as a mapping; ``{}`` when it is absent or empty."""
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: is not valid YAML ({exc.__class__.__name__}); fix the file") from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigurationError(f"{path}: the top level must be a mapping")
    return loaded


def merge_into(base: dict[str, Any], overlay: Mapping[str, Any], sources: dict[tuple[str, ...], Source],
               source: Source, prefix: tuple[str, ...] = ()) -> None:
    """Deep-merge ``overlay`` into ``base``, recording ``source`` for every leaf it sets."""
    if prefix == ("search",) and "branch_candidates" in overlay:
        overlay = split_branch_candidates(overlay)
    for key, value in overlay.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            if not isinstance(base.get(key), dict):
                base[key] = {}
            merge_into(base[key], value, sources, source, path)
        else:
            base[key] = value
            # A leaf replaces whatever was below it: forget the provenance of the replaced sub-keys.
            for stale in [known for known in sources if known[:len(path)] == path and known != path]:
                del sources[stale]
            sources[path] = source


def split_branch_candidates(search: Mapping[str, Any]) -> dict[str, Any]:
    """``search.branch_candidates`` (earlier releases: one count for both hybrid branches) sets both new counts,
    unless the same layer sets them itself, so settings files and env written for those releases keep working."""
    out = {key: value for key, value in search.items() if key != "branch_candidates"}
    out.setdefault("vector_candidates", search["branch_candidates"])
    out.setdefault("text_candidates", search["branch_candidates"])
    return out


def _dig(document: Mapping[str, Any], dotted: str) -> Any:
    value: Any = document
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _followed_from_document(document: Mapping[str, Any], legacy: bool) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key in FOLLOWED_KEYS:
        if key.legacy_only and not legacy:
            continue
        found = [_dig(document, path) for path in (key.mahavishnu_key, *key.aliases)]
        value = next((v for v in reversed(found) if isinstance(v, str)), None)
        if value is None:
            continue
        if key.mahavishnu_key == "llm.model" and "embed" not in value:
            continue  # llm.model names a chat model unless it is an embedding model
        section, name = key.target
        out.setdefault(section, {})[name] = value
    return out


def _block(document: Mapping[str, Any], path: Path) -> Mapping[str, Any] | None:
    block = document.get(SETTINGS_BLOCK)
    if block is None:
        return None
    if not isinstance(block, Mapping):
        raise ConfigurationError(f"{path}: '{SETTINGS_BLOCK}' must be a mapping")
    return block


def _env_layers(environ: Mapping[str, str]) -> list[tuple[dict[str, Any], str]]:
    layers: list[tuple[dict[str, Any], str]] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        layer: dict[str, Any] = {}
        cursor = layer
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = environ[name]
        layers.append((layer, name))
    return layers


def _database_env(environ: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    """``MAHAVISHNU_DB_*`` as (field, value, origin); only when ``MAHAVISHNU_DB_HOST`` names a server."""
    if not environ.get("MAHAVISHNU_DB_HOST"):
        return []
    out: list[tuple[str, Any, str]] = []
    for suffix, target in DB_ENV_TARGETS:
        name = f"MAHAVISHNU_DB_{suffix}"
        if environ.get(name):
            out.append((target, environ[name], f"env {name}"))
        elif suffix in MAHAVISHNU_DB_DEFAULTS:
            out.append((target, MAHAVISHNU_DB_DEFAULTS[suffix], f"Mahavishnu's default for {name} (MAHAVISHNU_DB_HOST is set)"))
    return out


def collect_layers(
    base: dict[str, Any],
    *,
    root: Path | None,
    environ: Mapping[str, str],
    mahavishnu_config: Mapping[str, Any] | None,
    mahavishnu_version: str | None,
    overrides: Mapping[str, Any] | None,
) -> LayeredValues:
    """Merge every layer of the module docstring into ``base`` (the code defaults) and record the provenance."""
    settings_root, root_source = resolve_root(root, environ)
    legacy = follows_legacy_llm_keys(mahavishnu_version)
    result = LayeredValues(values=base, sources={}, root=settings_root, root_source=root_source,
                           mahavishnu_version=mahavishnu_version, legacy_llm_keys=legacy)
    sources = result.sources

    documents: list[tuple[str, Path, dict[str, Any]]] = []
    project = settings_root / "settings"
    candidates: list[tuple[str, Path]] = [("project", project / "mahavishnu.yml"),
                                          ("project", project / "mahavishnu.yaml"),
                                          ("project-local", project / "local.yaml")]
    user_dir = user_config_dir(environ)
    if user_dir is not None:
        candidates += [("user", user_dir / "config.yaml"), ("user-local", user_dir / "local.yaml")]
    for layer, path in candidates:
        exists = path.is_file()
        if layer != "project" or exists or path.suffix == ".yaml":  # list the .yml variant only when present
            result.files.append(SettingsFile(layer, path, exists))
        if exists:
            documents.append((layer, path, read_yaml(path)))
    explicit: tuple[Path, dict[str, Any]] | None = None
    if environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV]).expanduser()
        exists = path.is_file()
        result.files.append(SettingsFile("mahavishnu-config", path, exists))
        if exists:
            explicit = (path, read_yaml(path))
        else:
            result.notes.append(f"{CONFIG_ENV} names {path}, which does not exist (ignored, as Mahavishnu does)")

    postgres_defaults = dict(base.get("postgres") or {})
    # 2. Mahavishnu's own keys: the app's effective config, then the files in order, then their env forms.
    followed: list[tuple[Mapping[str, Any], str]] = []
    if mahavishnu_config:
        followed.append((mahavishnu_config, "the Mahavishnu app's config"))
    followed += [(document, str(path)) for _, path, document in documents]
    if explicit is not None:
        followed.append((explicit[1], str(explicit[0])))
    for document, where in followed:
        for section, values in _followed_from_document(document, legacy).items():
            for name, value in values.items():
                key = next(k for k in FOLLOWED_KEYS if k.target == (section, name))
                merge_into(base, {section: {name: value}}, sources,
                           Source("mahavishnu-key", f"Mahavishnu's {key.mahavishnu_key} in {where}"))
    for key in FOLLOWED_KEYS:
        if (key.legacy_only and not legacy) or key.env not in environ:
            continue
        value = environ[key.env]
        if key.mahavishnu_key == "llm.model" and "embed" not in value:
            continue
        merge_into(base, {key.target[0]: {key.target[1]: value}}, sources, Source("mahavishnu-key", f"env {key.env}"))
    for name, value, origin in _database_env(environ):
        merge_into(base, {"postgres": {name: value}}, sources, Source("mahavishnu-key", origin))

    # 3-6. the oneiric_memory block of each file.
    for layer, path, document in documents:
        block = _block(document, path)
        if block is not None:
            merge_into(base, block, sources, Source(layer, str(path)))
    # 7. env.
    for layer_values, name in _env_layers(environ):
        merge_into(base, layer_values, sources, Source("env", f"env {name}"))
    # 8. MAHAVISHNU_CONFIG.
    if explicit is not None:
        block = _block(explicit[1], explicit[0])
        if block is not None:
            merge_into(base, block, sources, Source("mahavishnu-config", f"{explicit[0]} ({CONFIG_ENV})"))
    # 9. explicit arguments.
    if overrides:
        merge_into(base, overrides, sources, Source("explicit", "explicit arguments"))
    _unmix_database(base, sources, postgres_defaults)
    return result


def _unmix_database(base: dict[str, Any], sources: dict[tuple[str, ...], Source],
                    postgres_defaults: Mapping[str, Any]) -> None:
    """``MAHAVISHNU_DB_*`` describes one server as a whole: once our own settings say where the server is
    (``postgres.dsn`` or ``postgres.host``), Mahavishnu's user, database and password must not leak onto it."""
    postgres = base.get("postgres") or {}
    ours = [key for key in (("postgres", "dsn"), ("postgres", "host"))
            if key in sources and sources[key].layer != "mahavishnu-key" and postgres.get(key[1])]
    if not ours:
        return
    for path in [p for p, s in sources.items() if p[:1] == ("postgres",) and s.layer == "mahavishnu-key"]:
        base["postgres"][path[1]] = postgres_defaults.get(path[1])
        del sources[path]
