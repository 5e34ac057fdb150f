"""The store's fixtures: an isolated LOOM_HOME, and a store on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.store import Store


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOOM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LOOM_STORE_URL", raising=False)
    return tmp_path / "home"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The same tests against the default SQLite file and a real PostgreSQL (LOOM_STORE_URL)."""
    if request.param == "postgres":
        database = request.getfixturevalue("pg_database")
        monkeypatch.setenv("LOOM_STORE_URL", database.url)
    return request.param


async def _opened() -> AsyncIterator[Store]:
    store = await Store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(backend: str) -> AsyncIterator[Store]:
    async for opened in _opened():
        yield opened


@pytest.fixture
async def sqlite_store(home: Path) -> AsyncIterator[Store]:
    async for opened in _opened():
        yield opened
