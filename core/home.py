"""Where Loom keeps its own files ($LOOM_HOME, default ~/.loom), apart from core.config so that
finding them imports no pydantic (`loom runs` with no config.yaml reads the default store)."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_FILE = "config.yaml"


def loom_home() -> Path:
    return Path(os.environ.get("LOOM_HOME") or Path.home() / ".loom").expanduser()


def default_store_url(home: Path | None = None) -> str:
    """The SQLite store in LOOM_HOME, used when neither LOOM_STORE_URL nor storage.url is set."""
    return f"sqlite:///{(home or loom_home()) / 'loom.db'}"
