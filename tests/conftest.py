"""Shared fixtures: an isolated LOOM_HOME per test, and the loopback LLM server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_PROVIDER_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
                 "LOOM_STORE_URL")


@pytest.fixture(autouse=True)
def loom_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own history store and no provider credentials from the machine."""
    home = tmp_path_factory.mktemp("loom_home")
    monkeypatch.setenv("LOOM_HOME", str(home))
    # The null keyring answers "not set" at once: tests never touch a desktop keyring.
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    for name in _PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def llm_server() -> Iterator["LLMServer"]:
    from tests.support.llm_server import LLMServer

    with LLMServer(latency_s=0.0, seed=7) as server:
        yield server


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
