"""The structure-aware chunkers (pure functions: no database)."""

from __future__ import annotations

import itertools

from oneiric_memory.rag.chunking import chunk_file, chunk_markdown, chunk_python, chunk_rst, chunk_sized


def test_python_nested_classes_keep_enclosing_names() -> None:
    source = "class A:\n    class B:\n        def m(self):\n            def inner():\n                pass\n"
    symbols = [(c.symbol, c.start_line, c.end_line) for c in chunk_python(source)]
    assert ("A.B.m", 3, 5) in symbols  # the nested function stays inside its parent
    assert not any(s == "A.B.m.inner" for s, _, _ in symbols)


def test_python_that_does_not_parse_is_cut_by_size() -> None:
    chunks = chunk_python("def broken(:\n" + "x = 1\n" * 400, max_chars=500, overlap=50)
    assert len(chunks) > 1 and all(c.symbol is None and c.kind == "text" for c in chunks)


def test_long_function_is_split_and_keeps_its_symbol() -> None:
    body = "".join(f"    value_{n} = {n}\n" for n in range(300))
    chunks = chunk_python(f"def big():\n{body}", max_chars=600, overlap=100)
    parts = [c for c in chunks if c.symbol == "big"]
    assert len(parts) > 3 and all(len(c.text) <= 600 for c in parts)
    assert parts[0].start_line == 1 and parts[-1].end_line == 301
    assert all(b.start_line <= a.end_line for a, b in itertools.pairwise(parts))  # overlap


def test_sized_cut_prefers_a_blank_line_and_covers_every_line() -> None:
    lines = [f"line {n}\n" if n % 10 else "\n" for n in range(1, 200)]
    chunks = chunk_sized(lines, 1, max_chars=300, overlap=0)
    assert chunks[0].end_line % 10 == 0  # ended on a blank line
    covered = {n for c in chunks for n in range(c.start_line, c.end_line + 1)}
    assert covered == set(range(1, 200))


def test_overlong_line_is_hard_split() -> None:
    chunks = chunk_sized(["z" * 5000], 1, max_chars=1000, overlap=0)
    assert [len(c.text) for c in chunks] == [1000] * 5


def test_markdown_headings_paths_and_setext() -> None:
    text = "Title\n=====\n\nintro\n\nPart\n----\n\nbody\n\n### Deep\n\nmore\n\n~~~\n# fenced\n~~~\n"
    symbols = [c.symbol for c in chunk_markdown(text)]
    assert symbols == ["Title", "Title > Part", "Title > Part > Deep"]


def test_rst_levels_follow_first_appearance() -> None:
    text = "=====\nTop\n=====\n\nA\n---\n\nx\n\nB\n---\n\nSub\n~~~\n\ny\n"
    symbols = [c.symbol for c in chunk_rst(text)]
    assert symbols == ["Top", "Top > A", "Top > B", "Top > B > Sub"]


def test_blank_files_give_no_chunks() -> None:
    assert chunk_file("\n\n  \n", "python") == [] and chunk_file("", "markdown") == []
