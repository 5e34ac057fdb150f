"""Loom's own settings: `$LOOM_HOME/config.yaml` (default `~/.loom`), with defaults.

    storage:
      url: postgresql://loom:${PG_PASSWORD}@db/loom   # default: sqlite at $LOOM_HOME/loom.db
    credentials:                                      # optional: ${NAME} also from AWS
      provider: aws_secrets
      region: eu-west-1
    cache:
      ttl_days: 30
    pricing:                                          # per 1M tokens, USD; wins over the genai-prices data
      my-finetune: {input: 0.5, output: 1.5, cache_read: 0.25, cache_write: 0.625}
    workbench:                                        # the `loom` TUI
      theme: loom-light
      keymap: {quarantine.approve: y}                 # binding id -> key
      confirm_run_above:                              # F5 asks first above any of these
        cost_usd: 0.10                                #   (projected from 20 records;
        duration_s: 120                               #   these are the defaults)
        records: 1000

`LOOM_STORE_URL` overrides storage.url. `${NAME}` placeholders in either resolve like a
pipeline's (core.credentials), when the store is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import LoomError
from core.home import CONFIG_FILE, default_store_url, loom_home
from core.safe_yaml import YamlError, load_yaml


class ConfigError(LoomError):
    exit_code = 2


class _Strict(BaseModel):
    # a price or limit of 1e309 (infinity) or .nan would switch off the bound it sets: refused
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class StorageConfig(_Strict):
    url: str | None = None


class CacheConfig(_Strict):
    ttl_days: float | None = Field(30, gt=0)  # None: answers never expire


class CredentialsConfig(_Strict):
    """Where ${NAME} looks after the keyring and the environment."""

    provider: Literal["aws_secrets"] | None = None
    region: str | None = None  # default: the AWS chain's (AWS_REGION, ~/.aws/config)
    endpoint_url: str | None = None  # default: AWS_ENDPOINT_URL_SECRETS_MANAGER, else AWS


class ModelPrice(_Strict):
    """A model's price in USD per 1M tokens (`pricing:` here, `transform.price` and a judge's
    `price` in a pipeline). Cache prices not given cost as ordinary input."""

    input: float = Field(ge=0, description="USD per 1M input tokens.")
    output: float = Field(ge=0, description="USD per 1M output tokens.")
    cache_read: float | None = Field(None, ge=0,  # prompt-cache reads
                                     description="USD per 1M prompt-cache read tokens.")
    cache_write: float | None = Field(None, ge=0,  # 5-minute cache writes
                                      description="USD per 1M 5-minute cache write tokens.")
    cache_write_1h: float | None = Field(  # 1-hour cache writes (None: as cache_write)
        None, ge=0, description="USD per 1M 1-hour cache write tokens; default: as cache_write.")
    cached_input: float | None = Field(None, ge=0,  # the older name of cache_read
                                       description="The older name of cache_read.")


class ConfirmRunAbove(_Strict):
    """When the workbench asks before a run (F5, r): a run whose estimate stays under all
    three starts at once; above any one (or over its budget, or with no known price) it shows
    the estimate and asks."""

    cost_usd: float = Field(0.10, ge=0)
    duration_s: float = Field(120.0, ge=0)
    records: int = Field(1000, ge=0)


class WorkbenchConfig(_Strict):
    """The `loom` workbench: its theme, keys remapped by binding id, and when a run asks."""

    theme: str | None = None  # loom-dark | loom-light | any Textual theme
    keymap: dict[str, str] = Field(default_factory=dict)  # binding id -> key(s), e.g. {quarantine.approve: y}
    confirm_run_above: ConfirmRunAbove = Field(default_factory=ConfirmRunAbove)


class LoomConfig(_Strict):
    storage: StorageConfig = Field(default_factory=StorageConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    pricing: dict[str, ModelPrice] = Field(default_factory=dict)
    credentials: CredentialsConfig = Field(default_factory=CredentialsConfig)
    workbench: WorkbenchConfig = Field(default_factory=WorkbenchConfig)


def load_config(home: Path | None = None) -> LoomConfig:
    home = home or loom_home()
    path = home / CONFIG_FILE
    if not path.is_file():
        return LoomConfig()
    try:
        raw: Any = load_yaml(path.read_text(encoding="utf-8")) or {}
        return LoomConfig.model_validate(raw)
    except YamlError as exc:
        line = f":{exc.line}" if exc.line else ""
        raise ConfigError(f"{path}{line}: {exc.message}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}".splitlines()[0]) from None
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"])
        raise ConfigError(f"{path}: {key}: {error['msg']}") from None


def store_url(config: LoomConfig, home: Path | None = None) -> str:
    """Where the history lives: LOOM_STORE_URL, then storage.url, then SQLite in LOOM_HOME.

    `${NAME}` placeholders are resolved here (a missing one is a SecretError, exit 2): the
    result may hold a password, so show it only through `StoreTarget.display`.
    """
    from_env = os.environ.get("LOOM_STORE_URL")
    url = from_env or config.storage.url
    if not url:
        return default_store_url(home)
    if "${" not in url:
        return url
    from core.credentials import SecretResolver

    resolver = SecretResolver(credentials=config.credentials)
    where = "LOOM_STORE_URL" if from_env else f"{(home or loom_home()) / 'config.yaml'}: storage.url"
    return resolver.resolve(url, where=where, url=True)
