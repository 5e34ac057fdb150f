"""Attacks on "secrets are never stored": every known secret value (a provider key from the
environment, a resolved ${NAME}, a literal key, a header value of transform.headers) must
appear nowhere under $LOOM_HOME (the store's bytes, WAL included), in outputs, stdout/--json,
stderr or the quarantine, even when the endpoint echoes what it was sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from tests.adversary.hostile import ROOT
from tests.pipelines import write_pipeline

# (status, body bytes) from (request headers, request body bytes)
EchoHandler = Callable[[dict[str, str], bytes], tuple[int, bytes]]


class Echo:
    """A hostile OpenAI-style server that sees the request's headers (Hostile sees bodies)."""

    def __init__(self, handler: EchoHandler) -> None:
        outer = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                outer.requests += 1
                status, data = handler({k.lower(): v for k, v in self.headers.items()}, raw)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (a timeout, a stop): nothing to tell it

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Echo":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def completion(content: str) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def dotnet_json(payload: Any) -> bytes:
    """JSON as .NET's System.Text.Json writes it by default (JavaScriptEncoder.Default escapes
    `+`, `<`, `>`, `&`, `'` as \\uXXXX): the same JSON, but no longer the key's bytes."""
    text = json.dumps(payload)
    for char in "+<>&'":
        text = text.replace(char, "\\u%04X" % ord(char))
    return text.encode()


ROWS = [{"id": "r1", "text": "hello", "reply": "-", "expected": "positive"},
        {"id": "r2", "text": "world", "reply": "-", "expected": "positive"}]


def places_holding(secret: str, home: Path, folder: Path, *texts: str,
                   skip: tuple[Path, ...] = ()) -> list[str]:
    """Every file under LOOM_HOME and the pipeline folder (outputs), and every text, holding
    `secret` as written."""
    needle = secret.encode()
    found = []
    for root in (home, folder):
        for path in root.rglob("*"):
            if path.is_file() and path not in skip and needle in path.read_bytes():
                found.append(str(path))
    found += [f"text #{i}" for i, text in enumerate(texts) if secret in text]
    return found


def run_json(pipeline: Path) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "loom_tui.cli", "--run", str(pipeline), "--json"],
                          cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_a_literal_gateway_header_value_is_stored_in_the_history_store(tmp_path):
    """Promise 2 ("header values in transform.headers" are secrets; docs/explanation/guarantees.md: literal secrets are
    *** in everything Loom stores). A pipeline sends its gateway key as a literal header,
    `headers: {Helicone-Auth: "Bearer sk-helicone-..."}` (Helicone's own header name; Azure
    APIM's `Ocp-Apim-Subscription-Key` does the same). The value is sent, and Loom treats it as
    a secret when it masks answers (the Exchange gets every header value), but the pipeline
    stored in loom.db (pipelines.definition, pipeline_runs.config) keeps it as written: the
    store redacts a literal only under a key whose name matches SECRET_KEY (api_key, token,
    authorization, ...), and `Helicone-Auth` does not (core/connectors/registry.py:98,
    redact_tree)."""
    secret = "sk-helicone-literal-4f1c2a9d7e"

    def handler(headers, raw):
        return 200, json.dumps(completion('{"sentiment": "positive"}')).encode()

    with Echo(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=ROWS, base_url=server.base_url,
                                  prompt="Classify.\n{{ input.text }}\n",
                                  transform={"headers": {"Helicone-Auth": f"Bearer {secret}"}},
                                  evaluate={"evaluators": []})
        code, out, err = run_json(pipeline)
    assert code == 0, err
    home = Path(os.environ["LOOM_HOME"])
    leaks = places_holding(secret, home, tmp_path / "p", out, err, skip=(pipeline,))
    assert not leaks, f"the literal header value is stored in {leaks}"


def test_an_environment_key_the_server_echoes_json_escaped_reaches_the_output(tmp_path,
                                                                               monkeypatch):
    """Promise 2. `provider: openai`, OPENAI_API_KEY from the environment (a key holding `+`),
    `base_url` at a gateway that echoes the Authorization header into its 200 answer, writing
    its JSON as .NET's System.Text.Json does by default (`+` as `\\u002B`: the same JSON
    string). Loom masks the key in the answer's raw bytes before decoding them
    (core/llm/transport.py:186, Exchange._masked), so the escaped form passes, decodes to the
    key, and the key is written to the destination and to loom.db (record_results, llm_cache)."""
    secret = "sk-proj-Qm9vYmFy+ZW52aXJvbm1lbnQ+a2V5"
    monkeypatch.setenv("OPENAI_API_KEY", secret)

    def handler(headers, raw):
        echo = {"sentiment": "positive", "seen": headers.get("authorization", "")}
        return 200, dotnet_json(completion(json.dumps(echo)))

    with Echo(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=ROWS, base_url=server.base_url,
                                  prompt="Classify.\n{{ input.text }}\n",
                                  transform={"provider": "openai", "api_key": None},
                                  evaluate={"evaluators": []})
        code, out, err = run_json(pipeline)
    assert code == 0, err
    home = Path(os.environ["LOOM_HOME"])
    leaks = places_holding(secret, home, tmp_path / "p", out, err)
    assert not leaks, f"the API key is stored in {leaks}"


def test_an_environment_key_json_escaped_in_a_401_reaches_the_json_summary(tmp_path,
                                                                           monkeypatch):
    """Promise 2 (docs/how-to/secrets.md: every value is masked in errors and the --json summary). The same
    gateway refuses the key with 401 and quotes it, JSON-escaped as System.Text.Json writes
    `+` (`Incorrect API key provided: Bearer sk-...\\u002B...`). api_error masks the
    response's raw text, then decodes it (core/llm/transport.py:295-297), so the message holds
    the key: it is the --json `status_reason`, and pipeline_runs in loom.db. The environment
    key is not known to the run's resolver either, so nothing masks it later."""
    secret = "sk-proj-Qm9vYmFy+ZW52aXJvbm1lbnQ+a2V5"
    monkeypatch.setenv("OPENAI_API_KEY", secret)

    def handler(headers, raw):
        return 401, dotnet_json({"error": {
            "message": "Incorrect API key provided: " + headers.get("authorization", ""),
            "type": "invalid_request_error", "code": "invalid_api_key", "param": None}})

    with Echo(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=ROWS, base_url=server.base_url,
                                  prompt="Classify.\n{{ input.text }}\n",
                                  transform={"provider": "openai", "api_key": None},
                                  evaluate={"evaluators": []})
        code, out, err = run_json(pipeline)
    assert code == 1, err
    home = Path(os.environ["LOOM_HOME"])
    leaks = places_holding(secret, home, tmp_path / "p", out, err)
    assert not leaks, f"the API key is in {leaks}: {out[-600:]}"


def test_a_resolved_secret_in_base_url_is_stored_in_skipped_records_reasons(tmp_path,
                                                                           monkeypatch):
    """Promise 2 (docs/how-to/secrets.md: "every resolved value is masked in errors, warnings, the
    quarantine"). A gateway that takes its key in the query string,
    `base_url: http://…/v1?key=${GATEWAY_KEY}` (as Azure's `?api-version=` shows the query is
    kept), answers 500. The run fails and its --json is clean, but each skipped record's
    reason in loom.db (record_results.reason: `not processed: … HTTP 500 from
    http://…/chat/completions?key=<the key>`) holds the resolved value: _settle masks a
    skipped record's reason only into tally.last_provider_failure and stores result.reason as
    it is (core/engine.py:950-953); the Exchange masks only api_key and header values."""
    secret = "gwk-7d1e0c5b9a3f4e2d8c6b"
    monkeypatch.setenv("GATEWAY_KEY", secret)

    def handler(headers, raw):
        return 500, json.dumps({"error": {"message": "upstream exploded"}}).encode()

    with Echo(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=ROWS,
                                  base_url=server.base_url + "?key=${GATEWAY_KEY}",
                                  prompt="Classify.\n{{ input.text }}\n",
                                  transform={"max_retries": 0}, evaluate={"evaluators": []})
        code, out, err = run_json(pipeline)
    assert code == 1, err
    home = Path(os.environ["LOOM_HOME"])
    leaks = places_holding(secret, home, tmp_path / "p", out, err)
    assert not leaks, f"the resolved ${{GATEWAY_KEY}} is stored in {leaks}"


def test_a_resolved_secret_the_model_echoes_is_kept_in_the_quarantine(tmp_path, monkeypatch):
    """Promise 2 (docs/how-to/secrets.md: every resolved value is masked in … the quarantine). A pipeline sends
    a secret in the body, `params: {user: ${END_USER_TOKEN}}`; the model's answer (not JSON)
    quotes the request it got. The record is quarantined, its raw answer stored as it came:
    quarantined_records.raw_output (and `loom quarantine show`) hold the resolved value. The
    Exchange masks only api_key and header values in answers (core/llm/transport.py:159), and
    the engine masks a quarantined record's reason but not its raw output
    (core/engine.py:944-945)."""
    secret = "eut-3b8f1d6a0c9e7b2f4a5d"
    monkeypatch.setenv("END_USER_TOKEN", secret)

    def handler(headers, raw):
        return 200, json.dumps(completion("I cannot classify this: " + raw.decode())).encode()

    with Echo(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=ROWS, base_url=server.base_url,
                                  prompt="Classify.\n{{ input.text }}\n",
                                  transform={"max_retries": 0,
                                             "params": {"user": "${END_USER_TOKEN}"}},
                                  evaluate={"evaluators": []})
        code, out, err = run_json(pipeline)
        shown = subprocess.run([sys.executable, "-m", "loom_tui.cli", "quarantine", "show", "1"],
                               cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True,
                               timeout=60)
    assert code == 1, err
    home = Path(os.environ["LOOM_HOME"])
    leaks = places_holding(secret, home, tmp_path / "p", out, err, shown.stdout, shown.stderr)
    assert not leaks, f"the resolved ${{END_USER_TOKEN}} is in {leaks}"


def test_a_short_resolved_key_the_server_echoes_is_written_to_the_destination(tmp_path,
                                                                              monkeypatch):
    """Promise 2 (a resolved ${NAME} never appears in outputs or under $LOOM_HOME).
    `api_key: ${LOCAL_KEY}` with a 7-character key (a local server's token); the endpoint's
    200 answer quotes the Authorization header in a field of its JSON. A long key is masked
    there; this one is written to the destination and to loom.db: the Exchange masks only
    values of 8 characters or more (core/llm/transport.py:159, "real keys are long"), while
    the run's resolver masks from 4 (core/credentials.py:230); nothing documents a minimum."""
    secret = "Zq7xK2p"
    monkeypatch.setenv("LOCAL_KEY", secret)

    def handler(headers, raw):
        echo = {"sentiment": "positive", "seen": headers.get("authorization", "")}
        return 200, json.dumps(completion(json.dumps(echo))).encode()

    with Echo(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=ROWS, base_url=server.base_url,
                                  prompt="Classify.\n{{ input.text }}\n",
                                  transform={"api_key": "${LOCAL_KEY}"},
                                  evaluate={"evaluators": []})
        code, out, err = run_json(pipeline)
    assert code == 0, err
    home = Path(os.environ["LOOM_HOME"])
    leaks = places_holding(secret, home, tmp_path / "p", out, err)
    assert not leaks, f"the 7-character key is stored in {leaks}"
