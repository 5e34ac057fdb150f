"""${NAME} resolution (keyring, environment, AWS Secrets Manager), redaction, and the keyring
management behind `loom secrets`."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import termios
import fcntl
from pathlib import Path

import keyring
import pytest
from keyring.backends.fail import Keyring as FailKeyring

from core import cli
from core.api import Workspace
from core.config import CredentialsConfig, load_config, store_url
from core.credentials import KeyringSecrets, SecretResolver, placeholder_names
from core.errors import SecretError

ROOT = Path(__file__).resolve().parents[2]
LOOM = [sys.executable, "-c", "import sys; from loom_tui.cli import main; sys.exit(main())"]


@pytest.fixture
def broken_keyring():
    previous = keyring.get_keyring()
    keyring.set_keyring(FailKeyring())
    try:
        yield
    finally:
        keyring.set_keyring(previous)


# ---------------------------------------------------------------- resolution


def test_environment_then_error_naming_the_secret(monkeypatch):
    monkeypatch.setenv("LOOM_TEST_TOKEN", "from-env-1234")
    resolver = SecretResolver()
    assert resolver.resolve("Bearer ${LOOM_TEST_TOKEN}", where="transform.api_key") == \
        "Bearer from-env-1234"
    assert resolver.resolve("$${LITERAL} stays", where="x") == "${LITERAL} stays"
    with pytest.raises(SecretError) as missing:
        resolver.resolve("${NOT_SET_ANYWHERE}", where="transform.api_key")
    text = str(missing.value)
    assert text.startswith("transform.api_key: secret NOT_SET_ANYWHERE is not set")
    assert "keyring service 'loom'" in text and "loom secrets set NOT_SET_ANYWHERE" in text
    assert SecretError.exit_code == 2
    with pytest.raises(SecretError, match="not a valid secret name"):
        resolver.resolve("${bad name}", where="x")


def test_the_keyring_comes_before_the_environment(file_keyring, monkeypatch):
    keyring.set_password("loom", "LOOM_TEST_TOKEN", "from-keyring-5678")
    monkeypatch.setenv("LOOM_TEST_TOKEN", "from-env-1234")
    assert SecretResolver().lookup("LOOM_TEST_TOKEN") == "from-keyring-5678"


def test_an_unusable_keyring_falls_back_to_the_environment_with_one_warning(
        broken_keyring, monkeypatch):
    warnings: list[str] = []
    monkeypatch.setenv("A_TOKEN", "aaaa-1111")
    monkeypatch.setenv("B_TOKEN", "bbbb-2222")
    resolver = SecretResolver(on_warning=warnings.append)
    assert resolver.resolve("${A_TOKEN} ${B_TOKEN}", where="x") == "aaaa-1111 bbbb-2222"
    assert len(warnings) == 1
    assert "no usable keyring" in warnings[0] and "keyrings.alt" in warnings[0]
    assert "PYTHON_KEYRING_BACKEND" in warnings[0]
    with pytest.raises(SecretError, match="the keyring is unusable"):
        resolver.resolve("${C_TOKEN}", where="x")


def test_values_in_a_urls_password_are_percent_encoded(monkeypatch):
    monkeypatch.setenv("PG_PASSWORD", "p@ss:w/rd#?%")
    monkeypatch.setenv("PG_HOST", "db.example")
    resolver = SecretResolver()
    url = resolver.resolve("postgres://loom:${PG_PASSWORD}@${PG_HOST}:5432/x", where="k", url=True)
    assert url == "postgres://loom:p%40ss%3Aw%2Frd%23%3F%25@db.example:5432/x"
    assert resolver.resolve("${PG_PASSWORD}", where="k") == "p@ss:w/rd#?%"  # elsewhere: as is


def test_redact_scrubs_every_form_a_value_was_given_in(monkeypatch):
    monkeypatch.setenv("PG_PASSWORD", "p@ss/word-42")
    resolver = SecretResolver()
    resolver.resolve("postgres://u:${PG_PASSWORD}@h/db", where="k", url=True)
    resolver.resolve("${PG_PASSWORD}", where="k")
    text = "failed for p@ss/word-42 at postgres://u:p%40ss%2Fword-42@h/db"
    assert resolver.redact(text) == "failed for *** at postgres://u:***@h/db"


# ---------------------------------------------------------------- AWS Secrets Manager


@pytest.fixture
def aws_secrets(s3):
    client = s3.client("secretsmanager")
    client.create_secret(Name="prod/db", SecretString=json.dumps(
        {"password": "from-aws-9999", "port": 5432}))
    client.create_secret(Name="OPENAI_API_KEY_AWS", SecretString="sk-from-aws-0000")
    return CredentialsConfig(provider="aws_secrets", region="us-east-1")


def test_aws_secrets_manager_after_keyring_and_environment(aws_secrets, monkeypatch):
    resolver = SecretResolver(credentials=aws_secrets)
    assert resolver.resolve("${aws:prod/db#password}", where="k") == "from-aws-9999"
    assert resolver.resolve("${aws:prod/db#port}", where="k") == "5432"
    assert json.loads(resolver.resolve("${aws:prod/db}", where="k"))["port"] == 5432
    assert resolver.resolve("${OPENAI_API_KEY_AWS}", where="k") == "sk-from-aws-0000"
    monkeypatch.setenv("OPENAI_API_KEY_AWS", "env-wins-1111")
    assert SecretResolver(credentials=aws_secrets).lookup("OPENAI_API_KEY_AWS") == "env-wins-1111"

    with pytest.raises(SecretError, match=r"has no key 'user' \(its keys: password, port\)"):
        resolver.resolve("${aws:prod/db#user}", where="k")
    with pytest.raises(SecretError, match="AWS Secrets Manager has no such secret"):
        resolver.resolve("${aws:prod/nothing#password}", where="k")
    with pytest.raises(SecretError, match="and AWS Secrets Manager"):
        resolver.resolve("${NOT_IN_AWS_EITHER}", where="k")


def test_aws_is_asked_only_when_configured(aws_secrets):
    with pytest.raises(SecretError) as missing:
        SecretResolver().resolve("${OPENAI_API_KEY_AWS}", where="k")
    assert "AWS Secrets Manager" not in str(missing.value)


def test_aws_provider_in_config_yaml(aws_secrets, loom_home):
    (loom_home / "config.yaml").write_text(
        "credentials:\n  provider: aws_secrets\n  region: us-east-1\n", encoding="utf-8")
    config = load_config()
    assert config.credentials.provider == "aws_secrets"
    assert SecretResolver(credentials=config.credentials).lookup("OPENAI_API_KEY_AWS") == \
        "sk-from-aws-0000"


# ---------------------------------------------------------------- the store URL


def test_storage_url_placeholders_resolve_and_a_missing_one_names_the_file(loom_home, monkeypatch):
    (loom_home / "config.yaml").write_text(
        "storage:\n  url: postgresql://loom:${STORE_PW}@db.example/loom\n", encoding="utf-8")
    config = load_config()
    with pytest.raises(SecretError) as missing:
        store_url(config)
    assert str(missing.value).startswith(f"{loom_home / 'config.yaml'}: storage.url: secret STORE_PW")
    monkeypatch.setenv("STORE_PW", "a/b@c")
    assert store_url(config) == "postgresql://loom:a%2Fb%40c@db.example/loom"
    monkeypatch.setenv("LOOM_STORE_URL", "postgresql://u:${STORE_PW}@elsewhere/x")
    assert store_url(config) == "postgresql://u:a%2Fb%40c@elsewhere/x"


# ---------------------------------------------------------------- managing the keyring


def test_set_list_delete_keep_names_only(file_keyring):
    secrets = KeyringSecrets()
    secrets.set("OPENAI_API_KEY", "sk-value-1")
    secrets.set("PG_PASSWORD", "pw-value-2")
    secrets.set("OPENAI_API_KEY", "sk-value-3")  # replaced, listed once
    assert secrets.names() == ["OPENAI_API_KEY", "PG_PASSWORD"]
    assert keyring.get_password("loom", "OPENAI_API_KEY") == "sk-value-3"
    secrets.delete("PG_PASSWORD")
    assert secrets.names() == ["OPENAI_API_KEY"]
    with pytest.raises(SecretError, match="secret PG_PASSWORD is not in the keyring"):
        secrets.delete("PG_PASSWORD")
    with pytest.raises(SecretError, match="is not a secret name"):
        secrets.set("aws:thing", "x")
    with pytest.raises(SecretError, match="the value is empty"):
        secrets.set("EMPTY", "")
    # removed behind Loom's back: not listed
    keyring.delete_password("loom", "OPENAI_API_KEY")
    assert secrets.names() == []
    assert secrets.backend() == "keyrings.alt.file.PlaintextKeyring"


def test_workspace_secrets_for_the_workbench(file_keyring, tmp_path):
    workspace = Workspace(tmp_path)
    workspace.set_secret("TOKEN", "t-0001")
    assert workspace.secret_names() == ["TOKEN"]
    assert workspace.secrets_backend().endswith("PlaintextKeyring")
    workspace.delete_secret("TOKEN")
    assert workspace.secret_names() == []


def test_which_pipelines_ask_for_which_secret(tmp_path):
    from tests.pipelines import write_pipeline

    assert placeholder_names({"a": ["x ${ONE}", {"b": "${TWO} $${LITERAL} ${aws:prod/db#pw}"}],
                              "c": 3, "d": "${ bad name }"}) == {"ONE", "TWO"}
    write_pipeline(tmp_path / "a", rows=[], transform={"api_key": "${OPENAI_API_KEY}"})
    path = write_pipeline(tmp_path / "b", rows=[], transform={"api_key": "${OPENAI_API_KEY}"},
                          load={"destination": "postgres://loom:${PG_PASSWORD}@db/shop",
                                "table": "t"})
    path.write_text(path.read_text().replace("name: test_pipeline", "name: second"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "pipeline.yaml").write_text("extract: {source: '${NOT_VALID'}\ntransform: 1\n")
    assert Workspace(tmp_path).secret_references() == {
        "OPENAI_API_KEY": ["second", "test_pipeline"], "PG_PASSWORD": ["second"]}


def test_no_usable_keyring_is_a_clear_error(broken_keyring):
    with pytest.raises(SecretError) as failed:
        KeyringSecrets().set("TOKEN", "value")
    text = str(failed.value)
    assert "no usable keyring (NoKeyringError" in text and "keyrings.alt" in text
    assert "export TOKEN instead" in text and "\n" not in text


# ---------------------------------------------------------------- `loom secrets`


def loom(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOOM, *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ), timeout=60)


def test_secrets_commands_read_stdin_and_never_print_values(file_keyring, capsys, monkeypatch):
    # A real pipe into a real `loom` process...
    done = loom("secrets", "set", "OPENAI_API_KEY", stdin="sk-piped-value-77\n")
    assert done.returncode == 0, done.stderr
    assert "stored OPENAI_API_KEY in the keyring (keyrings.alt.file.PlaintextKeyring)" in done.stdout
    assert keyring.get_password("loom", "OPENAI_API_KEY") == "sk-piped-value-77"  # newline off

    # ...and the rest in this process, which is quicker.
    def run(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        assert "sk-piped-value-77" not in out + err
        return code, out, err

    assert run("secrets", "set", "WINDOWS_LINE", stdin="value-88\r\n")[0] == 0
    assert keyring.get_password("loom", "WINDOWS_LINE") == "value-88"
    code, out, _ = run("secrets", "list")
    assert code == 0 and out.split() == ["OPENAI_API_KEY", "WINDOWS_LINE"]
    assert json.loads(run("secrets", "list", "--json")[1]) == ["OPENAI_API_KEY", "WINDOWS_LINE"]

    assert run("secrets", "delete", "OPENAI_API_KEY")[0] == 0
    code, _, err = run("secrets", "delete", "OPENAI_API_KEY")
    assert code == 2 and err.startswith("error: secret OPENAI_API_KEY is not in the keyring")
    code, _, err = run("secrets", "set", "has space", stdin="x")
    assert code == 2 and "is not a secret name" in err
    code, _, err = run("secrets", "set", "EMPTY", stdin="")
    assert code == 2 and "the value is empty" in err


def test_secrets_set_at_a_terminal_asks_without_echo(file_keyring):
    master, slave = pty.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    process = subprocess.Popen([*LOOM, "secrets", "set", "TTY_SECRET"], stdin=slave, stdout=slave,
                               stderr=slave, cwd=ROOT, env=dict(os.environ),
                               preexec_fn=controlling_terminal, pass_fds=(slave,))
    os.close(slave)
    seen = b""

    def read_until(marker: bytes) -> None:
        nonlocal seen
        while marker not in seen:
            # poll, not select: a worker that has run many tests may hold descriptors past
            # select()'s 1024.
            poller = select.poll()
            poller.register(master, select.POLLIN)
            ready = poller.poll(30_000)
            assert ready, f"no {marker!r} from the terminal: {seen!r}"
            try:
                chunk = os.read(master, 1024)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk

    try:
        read_until(b"(hidden): ")
        os.write(master, b"typed-at-the-tty-42\n")
        read_until(b"stored TTY_SECRET")
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        os.close(master)
    assert b"typed-at-the-tty-42" not in seen  # the terminal did not echo it
    assert keyring.get_password("loom", "TTY_SECRET") == "typed-at-the-tty-42"


def test_a_password_written_into_a_uri_is_masked_in_what_is_stored_and_shown(tmp_path, capsys):
    from core.spec import snapshot
    from tests.pipelines import connector_spec

    loaded = connector_spec(tmp_path, "postgres://loom:literal-pw-123@db.example/x",
                            "postgres://loom:${PG_PASSWORD}@db.example/y",
                            extract={"table": "t"}, load={"table": "out"})
    stored = snapshot(loaded)
    assert stored["extract"]["source"] == "postgres://loom:***@db.example/x"
    assert stored["load"]["destination"] == "postgres://loom:${PG_PASSWORD}@db.example/y"
    # --no-data: db.example cannot be reached to render the prompt against its records.
    assert cli.main(["validate", str(tmp_path / "pipeline.yaml"), "--no-data"]) == 0
    out = capsys.readouterr().out
    assert "literal-pw-123" not in out and "loom:***@db.example/x" in out


def test_a_backend_that_keeps_nothing_is_refused_when_setting() -> None:
    from keyring.backends.null import Keyring as NullKeyring

    previous = keyring.get_keyring()
    keyring.set_keyring(NullKeyring())
    try:
        with pytest.raises(SecretError, match="did not keep it"):
            KeyringSecrets().set("SOME_KEY", "value-1234")
        assert "SOME_KEY" not in KeyringSecrets().names()
    finally:
        keyring.set_keyring(previous)
