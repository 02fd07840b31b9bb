"""What the operations' reports share: turning their dataclasses into JSON-ready values."""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` with datetimes as ISO strings and tuples as lists, recursively (for ``to_dict``/``--json``)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value
