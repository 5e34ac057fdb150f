"""Shared fixtures: an isolated LOOM_HOME per test, the loopback LLM server, a throwaway
PostgreSQL, an S3 API server (moto) and a file keyring, all started by the tests themselves."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:  # the servers' modules are imported by the fixtures that start them
    from tests.support.litellm_proxy import LiteLLMProxy
    from tests.support.llama_server import LlamaServer
    from tests.support.llm_server import LLMServer
    from tests.support.postgres import Database, PostgresCluster
    from tests.support.s3 import S3Server

_PROVIDER_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
                 "LOOM_STORE_URL")
T = TypeVar("T")


@pytest.fixture(autouse=True)
def loom_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own history store and no credentials from the machine."""
    home = tmp_path_factory.mktemp("loom_home")
    monkeypatch.setenv("LOOM_HOME", str(home))
    # The null keyring answers "not set" at once: tests never touch a desktop keyring.
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    # Tests read stderr line by line: no plain progress lines unless a test asks for them
    # (tests/unit/test_progress_lines.py does).
    monkeypatch.setenv("LOOM_PROGRESS_INTERVAL_S", "off")
    for name in _PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)
    # Nothing from the machine's AWS set-up: no profile, no keys, no instance metadata calls.
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name, raising=False)
    nowhere = home / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return home


@pytest.fixture(params=["loom", "httpx"])
def http_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The provider tests run once on each HTTP transport (transform.http_transport): Loom's
    own and httpx's, which a proxy or the setting selects."""
    from core.llm import transport
    from core.llm.transport import HttpTransport

    monkeypatch.setattr(transport, "DEFAULT_HTTP_TRANSPORT", HttpTransport(request.param))
    return str(request.param)


@pytest.fixture
def llm_server() -> Iterator["LLMServer"]:
    from tests.support.llm_server import LLMServer

    # Strict: it refuses what the real OpenAI and Anthropic APIs refuse (tests/support/llm_rules.py).
    with LLMServer(latency_s=0.0, seed=7, strict=True) as server:
        yield server


@pytest.fixture(scope="session")
def certificate_authority() -> Any:
    import trustme

    return trustme.CA()


@pytest.fixture
def https_server(certificate_authority: Any) -> Iterator["LLMServer"]:
    """The loopback server over TLS, with a certificate for 127.0.0.1 from a CA of the test's."""
    import ssl

    from tests.support.llm_server import LLMServer

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with LLMServer(latency_s=0.0, seed=5, ssl_context=context) as server:
        yield server


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator["PostgresCluster"]:
    """One throwaway cluster for the session. A test that needs it FAILS when it cannot start:
    a missing PostgreSQL is never a silent skip."""
    from tests.support.postgres import PostgresCluster, PostgresUnavailable

    try:
        cluster = PostgresCluster.start()
    except PostgresUnavailable as exc:
        pytest.fail(f"this test needs PostgreSQL and none could be started: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_database(postgres_cluster: "PostgresCluster", request: pytest.FixtureRequest
                ) -> Iterator["Database"]:
    """A fresh, empty database for one test, owned by the password-authenticated role."""
    database = postgres_cluster.create_database(request.node.name)
    try:
        yield database
    finally:
        database.drop()


# ---------------------------------------------------------------- S3 (moto) and keyring


@pytest.fixture(scope="session")
def s3_server() -> Iterator["S3Server"]:
    from tests.support.s3 import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture
def s3(s3_server: "S3Server", monkeypatch: pytest.MonkeyPatch) -> "S3Server":
    """The S3 API on 127.0.0.1, empty, with the standard AWS variables pointing at it."""
    s3_server.reset()
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def file_keyring(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[Path]:
    """keyrings.alt's plaintext file keyring in a temp dir (outside LOOM_HOME), for this process
    and for the `loom` processes a test starts. Yields the keyring's data folder."""
    import keyring
    from keyrings.alt.file import PlaintextKeyring

    data = tmp_path_factory.mktemp("keyring_data")
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    previous = keyring.get_keyring()
    keyring.set_keyring(PlaintextKeyring())
    try:
        yield data
    finally:
        keyring.set_keyring(previous)


# ---------------------------------------------------------------- third-party LLM servers


def _third_party(start: "Callable[[], T]") -> "T":
    """Start a third-party test server. Not installed: a skip on a developer's machine (the
    message says how to install it), a failure under CI. Installed but not starting: a failure."""
    from tests.support.server_process import NotInstalled, ServerUnavailable

    try:
        return start()
    except NotInstalled as exc:
        if in_ci():
            pytest.fail(f"this test needs a third-party server and it is missing: {exc}",
                        pytrace=False)
        pytest.skip(str(exc))
    except ServerUnavailable as exc:
        pytest.fail(f"this test needs a third-party server and it did not start: {exc}",
                    pytrace=False)


@pytest.fixture(scope="session")
def litellm_upstream() -> Iterator["LLMServer"]:
    """The loopback server the LiteLLM proxies forward to. Shared by the session: a test that
    reads `.requests` calls `.reset()` first."""
    from tests.support.litellm_proxy import UPSTREAM_KEY
    from tests.support.llm_server import LLMServer

    with LLMServer(latency_s=0.0, seed=11, api_key=UPSTREAM_KEY) as server:
        yield server


@pytest.fixture(scope="session")
def litellm_proxies(litellm_upstream: "LLMServer") -> Iterator["Callable[..., LiteLLMProxy]"]:
    """`litellm_proxies(extra_models=[...], router_settings={...}, ...)`: a LiteLLM proxy with
    that configuration (see tests.support.litellm_proxy.proxy_config), started once per
    session and configuration, all forwarding to `litellm_upstream`."""
    from tests.support.litellm_proxy import LiteLLMProxy

    started: dict[str, LiteLLMProxy] = {}

    def proxy(**config: Any) -> LiteLLMProxy:
        key = repr(sorted(config.items()))
        if key not in started:
            started[key] = _third_party(lambda: LiteLLMProxy.start(litellm_upstream, **config))
        return started[key]

    try:
        yield proxy
    finally:
        for each in started.values():
            each.stop()


@pytest.fixture(scope="session")
def litellm_proxy(litellm_proxies: "Callable[..., LiteLLMProxy]") -> "LiteLLMProxy":
    """The LiteLLM proxy with the default model list (tests.support.litellm_proxy.DEFAULT_MODELS)."""
    return litellm_proxies()


@pytest.fixture
def proxy_upstream(litellm_proxy: "LiteLLMProxy") -> "LLMServer":
    """The default proxy's upstream, emptied for this test: its `.requests` and `.headers`
    are what LiteLLM sent on during this test only."""
    server = litellm_proxy.upstream
    server.reset()
    server.responder = None
    return server


@pytest.fixture(scope="session")
def llama_server() -> Iterator["LlamaServer"]:
    """The llama-cpp-python server with a generated tiny random-weight GGUF."""
    from tests.support.llama_server import LlamaServer

    server = _third_party(LlamaServer.start)
    try:
        yield server
    finally:
        server.stop()
