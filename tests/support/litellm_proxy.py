"""The LiteLLM proxy (a pinned release from PyPI) on 127.0.0.1, forwarding to our loopback server.

    upstream = LLMServer(api_key=UPSTREAM_KEY).start()
    proxy = LiteLLMProxy.start(upstream)                      # the default model list
    proxy = LiteLLMProxy.start(upstream, extra_models=[model_entry("gpt-4o", upstream, rpm=5)],
                               router_settings={"routing_strategy": "simple-shuffle"})
    proxy.base_url   # http://127.0.0.1:PORT/v1, for Loom's openai_compatible provider
    proxy.api_key    # the proxy's master key (Loom sends it as a bearer key)
    proxy.upstream   # the LLMServer: what LiteLLM sent on (`upstream.requests`, `.headers`)
    proxy.stop()

Our loopback server accepts any body; LiteLLM does not. Each model is routed the way a user
would route the real one (`openai/<model>` to an OpenAI base URL, `anthropic/<model>` to an
Anthropic one), so LiteLLM applies its own model data (the bundled
model_prices_and_context_window_backup.json: `supports_sampling_params`, reasoning, native
structured output...) and its translation to Anthropic's Messages API before anything reaches
the upstream. `drop_params` stays false, LiteLLM's default, so a parameter a model does not take
is a 400 from the proxy, as from the vendor, not silently dropped.

The proxy runs from its own venv: LOOM_LITELLM_BIN, else .venv-litellm/bin/litellm in the repo.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.llm_server import LLMServer
from tests.support.server_process import ROOT, ServerProcess, clean_environment, executable, free_port

LITELLM_VERSION = "1.108.14"  # what users reported against; tools/test_servers/litellm.txt pins it
MASTER_KEY = "sk-loom-litellm-master"
UPSTREAM_KEY = "sk-loom-upstream"  # what LiteLLM must send on: the upstream checks it
COST_HEADER = "x-litellm-response-cost"

OPENAI_MODELS = ("gpt-4o-mini", "gpt-5-mini", "gpt-6-sol")
ANTHROPIC_MODELS = ("claude-haiku-4-5", "claude-opus-4-7", "claude-sonnet-5-5")
DEFAULT_MODELS = OPENAI_MODELS + ANTHROPIC_MODELS


def model_entry(name: str, upstream: LLMServer, *, provider: str | None = None,
                alias: str | None = None, **params: Any) -> dict[str, Any]:
    """One `model_list` entry forwarding `name` to the upstream. `provider` (openai|anthropic)
    defaults from the name; `alias` is the name clients use (default: `name`); `params` go into
    litellm_params (e.g. `rpm=10`, `tpm=...`, `timeout=...`)."""
    provider = provider or ("anthropic" if name.startswith("claude") else "openai")
    if provider == "anthropic":
        # LiteLLM posts to {api_base}/v1/messages: the base is the server's root.
        api_base = upstream.anthropic_base_url
    elif provider == "openai":
        api_base = upstream.base_url
    else:
        raise ValueError(f"no upstream route for provider {provider!r}")
    return {"model_name": alias or name,
            "litellm_params": {"model": f"{provider}/{name}", "api_base": api_base,
                               "api_key": UPSTREAM_KEY, **params}}


def proxy_config(upstream: LLMServer, *, models: Iterable[str] = DEFAULT_MODELS,
                 extra_models: Iterable[Mapping[str, Any]] = (),
                 router_settings: Mapping[str, Any] | None = None,
                 litellm_settings: Mapping[str, Any] | None = None,
                 general_settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The proxy's YAML config as a dict; every section can be extended by the caller."""
    return {
        "model_list": [model_entry(name, upstream) for name in models] + [dict(e) for e in extra_models],
        # No retries inside the proxy: a fault the upstream is told to make reaches Loom as is.
        "litellm_settings": {"drop_params": False, "num_retries": 0, "telemetry": False,
                             **(litellm_settings or {})},
        "router_settings": {"num_retries": 0, **(router_settings or {})},
        "general_settings": {"master_key": MASTER_KEY, **(general_settings or {})},
    }


def litellm_environment() -> dict[str, str]:
    return clean_environment(
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # the bundled model data, never a download
        LITELLM_TELEMETRY="False",
        LITELLM_DONT_SHOW_FEEDBACK_BOX="True",
        LITELLM_LOG="ERROR",
        NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
    )


def response_cost(headers: Mapping[str, str]) -> float | None:
    """The cost LiteLLM put on a response (`x-litellm-response-cost`), as Loom sees it."""
    value = {k.lower(): v for k, v in headers.items()}.get(COST_HEADER)
    try:
        return float(value) if value not in (None, "", "None") else None
    except ValueError:
        return None


class LiteLLMProxy:
    def __init__(self, process: ServerProcess, port: int, upstream: LLMServer,
                 config: dict[str, Any], folder: tempfile.TemporaryDirectory[str]) -> None:
        self.process = process
        self.port = port
        self.upstream = upstream
        self.config = config
        self._folder = folder

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def api_key(self) -> str:
        return self.config["general_settings"]["master_key"]

    @property
    def models(self) -> list[str]:
        return [entry["model_name"] for entry in self.config["model_list"]]

    @classmethod
    def start(cls, upstream: LLMServer, *, timeout_s: float = 300.0,
              **config: Any) -> "LiteLLMProxy":
        binary = executable("LOOM_LITELLM_BIN", ROOT / ".venv-litellm" / "bin" / "litellm",
                            f"the LiteLLM proxy (litellm=={LITELLM_VERSION})")
        settings = proxy_config(upstream, **config)
        folder = tempfile.TemporaryDirectory(prefix="loom-litellm-")
        path = Path(folder.name) / "config.yaml"
        path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        port = free_port()
        process = ServerProcess(
            [str(binary), "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
             "--num_workers", "1"],
            log=Path(folder.name) / "litellm.log", env=litellm_environment(), cwd=Path(folder.name),
            name=f"the LiteLLM proxy ({binary})")
        proxy = cls(process, port, upstream, settings, folder)
        try:
            process.wait_ready(f"{proxy.url}/health/liveliness", timeout_s)
        except BaseException:
            proxy.stop()
            raise
        return proxy

    def log_tail(self, chars: int = 4000) -> str:
        return self.process.log_tail(chars)

    def stop(self) -> None:
        self.process.stop()
        self._folder.cleanup()
