"""Fixtures of the Session-Buddy sink tests (pytest loads this file; nothing imports it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.adapters.session_buddy.sb_helpers import insight_api


@pytest.fixture(params=["as-installed", "reflections-only"])
def api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Session-Buddy as installed, and with only reflections (0.36's shape: no insight methods).

    Returns what the sink will meet: ``"insights"`` (the insight API) or ``"reflections"``.
    """
    if request.param == "reflections-only":
        from session_buddy.adapters.reflection_adapter_oneiric import ReflectionDatabaseAdapterOneiric

        monkeypatch.delattr(ReflectionDatabaseAdapterOneiric, "store_insight", raising=False)
        monkeypatch.delattr(ReflectionDatabaseAdapterOneiric, "search_insights", raising=False)
    return "insights" if insight_api() else "reflections"


@pytest.fixture(autouse=True)
def no_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HOME at a folder that does not exist: nothing lands in ~/.claude and DuckDB skips downloads."""
    monkeypatch.setenv("HOME", str(tmp_path / "no-home"))
