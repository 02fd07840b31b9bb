"""The row type of the hostile-input tables (API: ``test_hostile_input.py``; CLI: ``test_hostile_input_cli.py``).

One row = one public entry point, one field (argument, record field or filter field) under attack, one hostile
value, and a regex the error must match. Imported explicitly by the table modules; no hidden fixtures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["HostileCase", "case_id"]


@dataclass(frozen=True, slots=True)
class HostileCase:
    """``entry``: the public entry point (``"remember"``; CLI rows: ``"cli remember"``); ``field``: what is
    attacked; ``value``: the hostile value (CLI rows: the argv list); ``match``: a regex on the error message."""

    entry: str
    field: str
    value: object
    match: str


def case_id(case: HostileCase) -> str:
    """A short, printable pytest id: ``entry:field:value``; the same in every process (pytest-xdist workers each
    collect the ids and refuse to run if they differ), so object addresses are left out of it."""
    shown = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(case.value))
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{case.entry}:{case.field}:{shown}".encode("ascii", "backslashreplace").decode("ascii")
