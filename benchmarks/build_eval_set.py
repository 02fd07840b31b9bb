"""Build the labelled retrieval evaluation set from the Python standard library that ships here.

Why the standard library: it is real, varied, English-and-code text that exists on every machine
running this project, so the set needs no download and anyone can rebuild and audit it. The source
files are parsed with :mod:`ast` (never imported, so no module side effects) and walked in a fixed
order; every "random" choice is a sha256 ordering, so running this script again rewrites
``benchmarks/data/eval_set.json`` byte for byte on the same Python version (recorded in the file).

Documents (the kinds this store holds):

* ``rag`` code chunks: a function's source, ``repo_id`` = module name;
* ``rag`` docs chunks: ``module.name(signature)`` followed by the docstring;
* ``rag`` class and module doc chunks;
* ``agent`` notes: one real docstring sentence wrapped as ``Agent note: ...``;
* ``workflow`` summaries: a module ingestion summary (file, counts, public names).

Queries and graded relevance:

* natural-language queries: a docstring's first line. That line is removed from every document
  derived from the docstring, so a match is never a verbatim copy. Relevant: the function's code
  chunk and docs chunk (grade 2); the agent note about the function, its class's doc chunk and
  its module's doc chunk (grade 1);
* identifier queries: class name, function name and parameter names, as a developer types them.
  Same grades;
* module queries: a module docstring's first line. Relevant: the rest of the module docstring
  (grade 2) and the module's workflow summary (grade 1).

Everything not listed in a query's ``relevant`` map is a distractor for it; a few modules (mail
and network clients, archives) carry no queries at all and exist only as distractors.

Run: ``uv run python benchmarks/build_eval_set.py`` (``--check`` verifies the committed file).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
import sysconfig
import textwrap
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_OUTPUT", "build_eval_set", "main", "render_eval_set"]

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "data" / "eval_set.json"
FORMAT_VERSION = 1

# Modules that receive queries, in a fixed order (pure-Python source files in Python 3.13).
QUERY_MODULES: tuple[str, ...] = (
    "argparse", "ast", "base64", "bdb", "bisect", "calendar", "cmd", "code", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "difflib", "dis", "doctest", "enum", "filecmp",
    "fileinput", "fnmatch", "fractions", "functools", "getopt", "gettext", "glob", "graphlib",
    "gzip", "heapq", "hmac", "html.parser", "http.cookies", "inspect", "ipaddress", "json",
    "json.decoder", "json.encoder", "linecache", "locale", "logging", "logging.handlers",
    "mimetypes", "numbers", "operator", "pickletools", "pkgutil", "platform", "plistlib",
    "pprint", "queue", "quopri", "random", "sched", "secrets", "selectors", "shlex", "shutil",
    "socketserver", "statistics", "string", "subprocess", "tempfile", "textwrap", "threading",
    "timeit", "tokenize", "trace", "traceback", "types", "typing", "unittest.case",
    "urllib.parse", "uuid", "warnings", "weakref", "asyncio.queues", "asyncio.locks",
    "asyncio.tasks", "email.utils", "importlib.metadata", "concurrent.futures._base",
)
# Modules that only contribute distractors: many similar-sounding functions, no queries.
DISTRACTOR_MODULES: tuple[str, ...] = (
    "ftplib", "imaplib", "mailbox", "poplib", "smtplib", "tarfile", "zipfile", "http.client",
    "urllib.request", "email.message",
)

MAX_FUNCTIONS_PER_MODULE = 16
MAX_NL_QUERIES_PER_MODULE = 2
NL_QUERY_TARGET = 110
IDENTIFIER_QUERY_TARGET = 35
MAX_CODE_CHARS = 1400
MAX_DOC_CHARS = 1200
MAX_MODULE_DOC_CHARS = 1600
MAX_PUBLIC_NAMES = 30
MIN_BODY_CHARS = 80

# Code identifiers inside prose: snake_case, calls, camelCase/CamelCase, dotted names (not e.g./i.e.),
# *param* emphasis and 'quoted' names.
_IDENTIFIER_RE = re.compile(
    r"\b[A-Za-z]\w*_\w+|\w\(|\b[a-z]+[A-Z]\w*|\b[A-Z][a-z]+[A-Z]\w*"
    r"|\b(?!e\.g\b|i\.e\b)[A-Za-z_]\w*\.[A-Za-z_]\w*|\*\w+\*|'\w+'"
)
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


@dataclass(slots=True)
class _Function:
    module: str
    path: str
    qualname: str
    class_name: str | None
    node: ast.FunctionDef | ast.AsyncFunctionDef
    docstring: str
    summary: str | None  # the docstring's first line when it is a one-line first paragraph
    body: str  # the docstring without that line


@dataclass(slots=True)
class _Module:
    name: str
    path: str
    source_lines: list[str]
    docstring: str | None
    functions: list[_Function] = field(default_factory=list)
    classes: list[tuple[str, ast.ClassDef, str]] = field(default_factory=list)
    public_names: list[str] = field(default_factory=list)
    documented_functions: int = 0  # before the per-module cap


def _stable_key(*parts: str) -> str:
    """A deterministic pseudo-random ordering key; no RNG state, so the output never drifts."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def _norm(text: str) -> str:
    """The store's dedup form (NFC, unified newlines, stripped), so duplicates are caught here."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _module_file(root: Path, name: str) -> Path:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"standard-library module {name!r} has no source file under {root}")


def _split_docstring(doc: str) -> tuple[str | None, str]:
    """(first line, rest) when the first paragraph is a single line; (None, whole) otherwise."""
    lines = doc.strip().splitlines()
    if not lines:
        return None, ""
    if len(lines) == 1 or not lines[1].strip():
        return lines[0].strip(), "\n".join(lines[1:]).strip()
    return None, doc.strip()


def _truncate(text: str, limit: int) -> str:
    """Cut on a line boundary so chunks look like what a chunker produces."""
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    return text[: cut if cut > limit // 2 else limit].rstrip()


def _parse_module(root: Path, name: str) -> _Module:
    file = _module_file(root, name)
    source = file.read_text(encoding="utf-8")
    tree = ast.parse(source)
    module = _Module(
        name=name,
        path=f"Lib/{file.relative_to(root).as_posix()}",
        source_lines=source.splitlines(),
        docstring=ast.get_docstring(tree),
    )

    def add_function(node: ast.FunctionDef | ast.AsyncFunctionDef, class_name: str | None) -> None:
        doc = ast.get_docstring(node)
        if not doc or node.name.startswith("_"):
            return
        summary, body = _split_docstring(doc)
        qualname = f"{class_name}.{node.name}" if class_name else node.name
        module.functions.append(_Function(name, module.path, qualname, class_name, node, doc, summary, body))

    for item in tree.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not item.name.startswith("_"):
                module.public_names.append(item.name)
            add_function(item, None)
        elif isinstance(item, ast.ClassDef) and not item.name.startswith("_"):
            module.public_names.append(item.name)
            class_doc = ast.get_docstring(item)
            if class_doc and len(class_doc) >= 40:
                module.classes.append((item.name, item, class_doc))
            for member in item.body:
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    add_function(member, item.name)
    return module


def _signature(fn: _Function) -> str:
    args = ast.unparse(fn.node.args)
    if fn.class_name:
        for first in ("self", "cls"):
            if args == first:
                return ""
            if args.startswith(first + ", "):
                return args[len(first) + 2:]
    return args


def _parameter_names(fn: _Function) -> list[str]:
    args = fn.node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    if fn.class_name and names and names[0] in ("self", "cls"):
        names = names[1:]
    return names


def _code_chunk(module: _Module, fn: _Function, *, strip_summary: bool) -> str:
    """The function's source; with ``strip_summary`` its docstring loses the first line."""
    node = fn.node
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
    end = node.end_lineno or node.lineno
    lines = module.source_lines[start:end]
    doc_node = node.body[0]
    if strip_summary and fn.summary is not None:
        doc_start = doc_node.lineno - 1 - start
        doc_end = (doc_node.end_lineno or doc_node.lineno) - start
        original = lines[doc_start]
        indent = original[: len(original) - len(original.lstrip())]
        replacement: list[str] = []
        if fn.body:
            body_lines = fn.body.splitlines()
            replacement = [f'{indent}"""{body_lines[0]}']
            replacement += [f"{indent}{line}" if line else "" for line in body_lines[1:]]
            replacement.append(f'{indent}"""')
        lines = lines[:doc_start] + replacement + lines[doc_end:]
    code = textwrap.dedent("\n".join(lines))
    header = f"# {module.path} (lines {start + 1}-{end})\n"
    return _truncate(header + code, MAX_CODE_CHARS)


def _doc_chunk(fn: _Function, *, strip_summary: bool) -> str | None:
    text = fn.body if strip_summary else fn.docstring
    if not text.strip():
        return None
    return _truncate(f"{fn.module}.{fn.qualname}({_signature(fn)})\n\n{text.strip()}", MAX_DOC_CHARS)


def _first_sentence(text: str) -> str | None:
    paragraph = text.strip().split("\n\n", 1)[0]
    joined = " ".join(line.strip() for line in paragraph.splitlines())
    if not joined:
        return None
    sentence = _SENTENCE_END_RE.split(joined, maxsplit=1)[0].strip()
    return sentence if 30 <= len(sentence) <= 300 else None


def _agent_note(fn: _Function, sentence: str) -> str:
    return f"Agent note: looked at {fn.qualname} in {fn.module}. {sentence}"


def _workflow_summary(module: _Module, *, include_summary: bool) -> str:
    names = module.public_names[:MAX_PUBLIC_NAMES]
    more = len(module.public_names) - len(names)
    parts = [
        f"Workflow execution summary: stdlib-ingest/{module.name} completed.",
        f"Ingested {module.path} ({len(module.source_lines)} lines): {module.documented_functions} documented "
        f"public functions and methods, {len(module.classes)} documented classes.",
    ]
    if include_summary and module.docstring:
        summary, _ = _split_docstring(module.docstring)
        if summary:
            parts.append(f"Module summary: {summary}")
    if names:
        parts.append("Public names: " + ", ".join(names) + (f" and {more} more." if more else "."))
    return " ".join(parts)


def _looks_like_identifiers(text: str) -> bool:
    return bool(_IDENTIFIER_RE.search(text))


def _select_functions(module: _Module) -> list[_Function]:
    """At most MAX_FUNCTIONS_PER_MODULE documented functions, chosen by stable hash, in source order."""
    chosen = sorted(module.functions, key=lambda f: _stable_key("fn", f.module, f.qualname))
    keep = {id(f) for f in chosen[:MAX_FUNCTIONS_PER_MODULE]}
    return [f for f in module.functions if id(f) in keep]


def build_eval_set(root: Path | None = None) -> dict[str, Any]:
    """Return the evaluation set as a JSON-ready dict (see the module docstring for the rules)."""
    root = root or _stdlib_root()
    modules: list[_Module] = []
    for name in (*QUERY_MODULES, *DISTRACTOR_MODULES):
        module = _parse_module(root, name)
        module.documented_functions = len(module.functions)
        module.functions = _select_functions(module)
        modules.append(module)
    query_module_names = set(QUERY_MODULES)

    # First lines that occur once only: a shared line ("Return self.") cannot single out a function.
    line_counts: dict[str, int] = {}
    for module in modules:
        for fn in module.functions:
            for line in fn.docstring.splitlines():
                key = line.strip().lower()
                if key:
                    line_counts[key] = line_counts.get(key, 0) + 1
        if module.docstring:
            for line in module.docstring.splitlines():
                key = line.strip().lower()
                if key:
                    line_counts[key] = line_counts.get(key, 0) + 1

    def nl_candidate(fn: _Function) -> bool:
        if fn.summary is None or len(fn.body) < MIN_BODY_CHARS:
            return False
        words = fn.summary.split()
        if not 4 <= len(words) <= 20 or line_counts.get(fn.summary.lower(), 0) != 1:
            return False
        return fn.summary.lower() not in fn.body.lower() and len(fn.node.body) > 1

    # Natural-language targets: up to MAX_NL_QUERIES_PER_MODULE per query module, by stable hash.
    nl_targets: set[tuple[str, str]] = set()
    pool: list[tuple[str, _Function]] = []
    for module in modules:
        if module.name not in query_module_names:
            continue
        candidates = [f for f in module.functions if nl_candidate(f)]
        candidates.sort(key=lambda f: _stable_key("nl", f.module, f.qualname))
        pool.extend((_stable_key("nl-pool", f.module, f.qualname), f)
                    for f in candidates[:MAX_NL_QUERIES_PER_MODULE])
    pool.sort(key=lambda item: item[0])
    for _, fn in pool[:NL_QUERY_TARGET]:
        nl_targets.add((fn.module, fn.qualname))

    # Identifier targets: other functions with a distinctive name or parameters, one per module.
    id_targets: dict[tuple[str, str], str] = {}
    id_pool: list[tuple[str, _Function, str]] = []
    for module in modules:
        if module.name not in query_module_names:
            continue
        options = []
        for fn in module.functions:
            if (fn.module, fn.qualname) in nl_targets:
                continue
            params = [p for p in _parameter_names(fn) if len(p) > 1][:2]
            tokens = [t for t in (fn.class_name, fn.node.name, *params) if t]
            if len(fn.node.name) < 5 or len(tokens) < 2:
                continue
            options.append((_stable_key("id", fn.module, fn.qualname), fn, " ".join(tokens)))
        options.sort(key=lambda item: item[0])
        if options:
            id_pool.append(options[0])
    id_pool.sort(key=lambda item: _stable_key("id-pool", item[1].module, item[1].qualname))
    seen_texts: set[str] = set()
    for _, fn, text in id_pool:
        if len(id_targets) >= IDENTIFIER_QUERY_TARGET or text.lower() in seen_texts:
            continue
        seen_texts.add(text.lower())
        id_targets[(fn.module, fn.qualname)] = text

    # Module targets: query modules whose docstring opens with a one-line summary and says more.
    module_targets: set[str] = set()
    for module in modules:
        if module.name not in query_module_names or not module.docstring:
            continue
        summary, body = _split_docstring(module.docstring)
        if (summary and len(summary.split()) >= 3 and len(body) >= 100
                and line_counts.get(summary.lower(), 0) == 1 and summary.lower() not in body.lower()):
            module_targets.add(module.name)

    documents: list[dict[str, Any]] = []
    doc_ids: set[str] = set()
    seen_content: set[tuple[str, str]] = set()

    def add_doc(doc_id: str, content: str, memory_type: str, module: _Module,
                metadata: dict[str, Any]) -> str | None:
        """Append a document unless its id or (memory_type, content) is taken: the store dedups."""
        key = (memory_type, _norm(content))
        if doc_id in doc_ids or key in seen_content or not key[1]:
            return None
        doc_ids.add(doc_id)
        seen_content.add(key)
        documents.append({
            "id": doc_id,
            "content": content,
            "memory_type": memory_type,
            "repo_id": module.name,
            "metadata": {"kind": metadata.pop("kind"), "module": module.name, "path": module.path, **metadata},
        })
        return doc_id

    queries: list[dict[str, Any]] = []
    for module in modules:
        module_is_target = module.name in module_targets
        module_doc_id: str | None = None
        if module.docstring:
            summary, body = _split_docstring(module.docstring)
            text = body if module_is_target else module.docstring
            module_doc_id = add_doc(f"module:{module.name}",
                                    _truncate(f"Module {module.name}\n\n{text}", MAX_MODULE_DOC_CHARS),
                                    "rag", module, {"kind": "module_doc"})
        workflow_id = add_doc(f"workflow:{module.name}",
                              _workflow_summary(module, include_summary=not module_is_target),
                              "workflow", module, {"kind": "workflow_summary",
                                                   "workflow_id": f"stdlib-ingest/{module.name}"})
        class_doc_ids: dict[str, str] = {}
        for class_name, node, class_doc in module.classes:
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            content = _truncate(f"class {module.name}.{class_name}({bases})\n\n{class_doc}", MAX_DOC_CHARS)
            added = add_doc(f"class:{module.name}.{class_name}", content, "rag", module,
                            {"kind": "class_doc", "qualname": class_name, "line": node.lineno})
            if added:
                class_doc_ids[class_name] = added

        for fn in module.functions:
            target = (fn.module, fn.qualname)
            is_nl = target in nl_targets
            base_meta = {"qualname": fn.qualname, "line": fn.node.lineno}
            code_id = add_doc(f"code:{fn.module}.{fn.qualname}", _code_chunk(module, fn, strip_summary=is_nl),
                              "rag", module, {"kind": "code", **base_meta})
            doc_text = _doc_chunk(fn, strip_summary=is_nl)
            docs_id = (add_doc(f"doc:{fn.module}.{fn.qualname}", doc_text, "rag", module,
                               {"kind": "doc", **base_meta}) if doc_text else None)
            sentence = _first_sentence(fn.body) if is_nl else (fn.summary or _first_sentence(fn.docstring))
            note_id = (add_doc(f"note:{fn.module}.{fn.qualname}", _agent_note(fn, sentence), "agent", module,
                               {"kind": "agent_note", **base_meta}) if sentence else None)
            if not (is_nl or target in id_targets) or code_id is None:
                continue
            relevant: dict[str, int] = {code_id: 2}
            if docs_id:
                relevant[docs_id] = 2
            for extra in (note_id, class_doc_ids.get(fn.class_name or ""), module_doc_id):
                if extra:
                    relevant[extra] = 1
            if is_nl:
                assert fn.summary is not None
                text, style = fn.summary, ("mixed" if _looks_like_identifiers(fn.summary) else "natural")
                if any(text.lower() in _content(documents, d).lower() for d, g in relevant.items() if g == 2):
                    continue
            else:
                text, style = id_targets[target], "identifier"
            queries.append({
                "id": f"q:{fn.module}.{fn.qualname}" + ("" if is_nl else "#id"),
                "text": text,
                "relevant": relevant,
                "metadata": {"style": style, "target": "function", "source": "docstring_first_line"
                             if is_nl else "identifiers"},
            })

        if module_is_target and module_doc_id and module.docstring:
            summary, _ = _split_docstring(module.docstring)
            assert summary is not None
            relevant = {module_doc_id: 2}
            if workflow_id:
                relevant[workflow_id] = 1
            queries.append({
                "id": f"q:module:{module.name}",
                "text": summary,
                "relevant": relevant,
                "metadata": {"style": "natural", "target": "module", "source": "module_docstring_first_line"},
            })

    return {
        "format_version": FORMAT_VERSION,
        "source": {
            "generator": "benchmarks/build_eval_set.py",
            "python": ".".join(str(part) for part in sys.version_info[:3]),
            "query_modules": list(QUERY_MODULES),
            "distractor_modules": list(DISTRACTOR_MODULES),
            "grades": {
                "2": "the function's own code chunk or docs chunk; for module queries the module doc chunk",
                "1": "the agent note on the function, its class doc chunk, its module doc chunk; "
                     "for module queries the module's workflow summary",
            },
        },
        "counts": {
            "documents": len(documents),
            "queries": len(queries),
            "by_memory_type": _count(documents, lambda d: d["memory_type"]),
            "by_kind": _count(documents, lambda d: d["metadata"]["kind"]),
            "queries_by_style": _count(queries, lambda q: q["metadata"]["style"]),
            "queries_by_target": _count(queries, lambda q: q["metadata"]["target"]),
        },
        "documents": documents,
        "queries": queries,
    }


def _content(documents: list[dict[str, Any]], doc_id: str) -> str:
    for doc in reversed(documents):
        if doc["id"] == doc_id:
            return str(doc["content"])
    raise KeyError(doc_id)


def _count(items: list[dict[str, Any]], key: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[key(item)] = counts.get(key(item), 0) + 1
    return dict(sorted(counts.items()))


def render_eval_set(data: dict[str, Any]) -> str:
    """Serialize deterministically: fixed key order, one indent level, LF endings, trailing newline."""
    return json.dumps(data, ensure_ascii=False, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the JSON")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when the file differs from a fresh build")
    args = parser.parse_args(argv)
    rendered = render_eval_set(build_eval_set())
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
        if current != rendered:
            print(f"{args.output} differs from a fresh build; rerun without --check", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(rendered, encoding="utf-8", newline="\n")
    data = json.loads(rendered)
    print(f"wrote {args.output}: {data['counts']['documents']} documents, {data['counts']['queries']} queries, "
          f"{len(rendered.encode('utf-8')) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
