"""A run that cannot work stops: each fatal failure class ends a 1,000-record run within its
first calls, with exit 1, one line naming the cause and the fix, nothing quarantined, the
destination byte-for-byte as it was, and `--resume` after the fix loading every record once.

The failing endpoint here answers every request with one vendor's real error shape (status,
body, headers); the same classes through the LiteLLM proxy are in test_provider_matrix.py.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from core import cli
from core.errors import ProviderError
from core.llm.failures import FailureClass, classify
from tests.pipelines import read_jsonl, reply, write_pipeline
from tests.support.threaded_app import ThreadedApp

RECORDS = 1000
CONCURRENCY = 4
RETRIES = 2


class FailingEndpoint(ThreadedApp):
    """An OpenAI-style endpoint answering every request with one fixed error, on 127.0.0.1."""

    def __init__(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}
        self.requests = 0
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        super().__init__(app)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.read()
        return web.Response(status=self.status, body=json.dumps(self.body).encode(),
                            content_type="application/json", headers=self.headers)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def openai_error(message: str, *, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# (status, body, headers, the class, words the one-line error must hold)
FATAL = {
    "unknown_model": (400, openai_error("litellm.BadRequestError: Invalid model name passed in "
                                        "model=gpt-4o-mini. Call `/v1/models` to view available models"),
                      {}, FailureClass.UNKNOWN_MODEL, "transform.model"),
    "no_database": (400, openai_error("No connected db."), {}, FailureClass.REQUEST, "No connected db"),
    "gateway_without_key": (500, openai_error("litellm.AuthenticationError: Missing Anthropic API "
                                              "Key - A call is being made to anthropic but no key is set"),
                            {}, FailureClass.AUTH, "API key"),
    "credit_balance": (400, {"type": "error", "error": {"type": "invalid_request_error", "message":
                             "Your credit balance is too low to access the Anthropic API. Please go "
                             "to Plans & Billing to upgrade or purchase credits."}},
                       {}, FailureClass.BILLING, "credit"),
    "billing_error": (402, {"type": "error", "error": {"type": "billing_error",
                                                       "message": "Payment required."}},
                      {}, FailureClass.BILLING, "quota"),
    "insufficient_quota": (429, openai_error("You exceeded your current quota, please check your "
                                             "plan and billing details.", kind="insufficient_quota",
                                             code="insufficient_quota"),
                           {"retry-after": "1"}, FailureClass.BILLING, "quota"),
    "unsupported_parameter": (400, openai_error("Unrecognized request argument supplied: service_tier",
                                                param="service_tier"),
                              {}, FailureClass.UNSUPPORTED_PARAMETER, "transform.params"),
    "bad_key": (401, openai_error("Incorrect API key provided: sk-te***key.", code="invalid_api_key"),
                {}, FailureClass.AUTH, "API key"),
}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(capsys, *argv: str) -> tuple[int, dict, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else {}, captured.err


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Path]:
    rows = [{"id": f"r{i:04d}", "text": f"review {i}", "expected": "positive",
             "reply": reply("positive")} for i in range(RECORDS)]
    path = write_pipeline(tmp_path / "p", rows=rows,
                          transform={"concurrency": CONCURRENCY, "max_retries": RETRIES},
                          load={"destination": "jsonl://out/results.jsonl", "mode": "replace"})
    out = path.parent / "out" / "results.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('{"id": "good", "sentiment": "positive"}\n', encoding="utf-8")
    yield path


def point_at(pipeline: Path, base_url: str) -> None:
    text = pipeline.read_text(encoding="utf-8")
    import re

    pipeline.write_text(re.sub(r"base_url: \S+", f"base_url: {base_url}", text), encoding="utf-8")


@pytest.mark.parametrize("case", sorted(FATAL))
def test_a_fatal_failure_stops_the_run_and_resume_finishes_it(case, pipeline, capsys, llm_server):
    status, body, headers, expected, words = FATAL[case]
    assert classify(ProviderError(f"x: HTTP {status} from u: {json.dumps(body)}", status=status,
                                  code=(body.get("error") or {}).get("code"))) is expected
    out = pipeline.parent / "out" / "results.jsonl"
    before = digest(out)
    with FailingEndpoint(status, body, headers) as endpoint:
        point_at(pipeline, endpoint.base_url)
        if case == "unsupported_parameter":
            text = pipeline.read_text(encoding="utf-8")
            pipeline.write_text(text.replace("transform:\n", "transform:\n  params: {service_tier: flex}\n"),
                                encoding="utf-8")
        code, summary, err = run_cli(capsys, "--run", str(pipeline), "--json")
        calls = endpoint.requests
    assert code == 1, err
    assert summary["status"] == "failed"
    assert summary["records"]["quarantined"] == 0 and summary["records"]["loaded"] == 0
    # Within the first few calls: what was in flight, with its retries, never the whole source.
    assert calls <= CONCURRENCY * (RETRIES + 1) + CONCURRENCY, calls
    reason = summary["status_reason"]
    assert f"({expected.value})" in reason and expected.fix in reason and words in reason + expected.fix
    assert digest(out) == before  # the good destination is untouched
    # The cause fixed: --resume loads every record once.
    if case == "unsupported_parameter":
        text = pipeline.read_text(encoding="utf-8")
        pipeline.write_text(text.replace("  params: {service_tier: flex}\n", ""), encoding="utf-8")
    point_at(pipeline, llm_server.base_url)
    # Another endpoint is operational; removing a parameter changes the pipeline (--force).
    force = ["--force"] if case == "unsupported_parameter" else []
    code, resumed, err = run_cli(capsys, "--run", str(pipeline), "--resume", *force, "--json")
    assert code == 0, err
    rows = read_jsonl(out)
    assert sorted(row["id"] for row in rows) == sorted(f"r{i:04d}" for i in range(RECORDS))


def test_a_closed_port_stops_the_run(pipeline, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    point_at(pipeline, f"http://127.0.0.1:{port}/v1")
    before = digest(pipeline.parent / "out" / "results.jsonl")
    code, summary, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 1 and summary["records"]["quarantined"] == 0, err
    assert "(unreachable)" in summary["status_reason"] and "base_url" in summary["status_reason"]
    assert digest(pipeline.parent / "out" / "results.jsonl") == before


def test_insufficient_quota_is_not_retried():
    from core.llm.transport import _out_of_quota, ApiError

    assert _out_of_quota(ApiError("You exceeded your current quota", code="insufficient_quota"))
    assert not _out_of_quota(ApiError("Rate limit reached for requests", code="rate_limit_exceeded"))


def test_sporadic_failures_do_not_trip_the_breaker(tmp_path, capsys, llm_server):
    # One record's call fails for good among successes: the run goes on, the record waits.
    rows = [{"id": f"r{i}", "text": f"t{i}", "expected": "positive", "reply": reply("positive")}
            for i in range(20)]
    pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url,
                              transform={"concurrency": 1, "max_retries": 0})
    llm_server.script(["ok", "ok", "500", "ok", "ok"])
    code, summary, _ = run_cli(capsys, "--run", str(pipeline), "--json")
    assert summary["records"] == {"extracted": 20, "loaded": 19, "quarantined": 0, "skipped": 1}
    assert code == 3 and "--resume" in summary["status_reason"]
    assert len(read_jsonl(pipeline.parent / "out" / "results.jsonl")) == 19


# ---------------------------------------------------------------- through the LiteLLM proxy


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", ["unknown_model", "upstream_refuses_the_key"])
def test_through_the_proxy_a_fatal_failure_stops_the_run(case, tmp_path, capsys, litellm_proxy,
                                                         proxy_upstream):
    rows = [{"id": f"r{i:03d}", "text": f"review {i}", "expected": "positive",
             "reply": reply("positive")} for i in range(200)]
    model = "gpt-4o-mini"
    if case == "unknown_model":
        model = "gpt-4o-mini-typo"  # not in the proxy's model list: LiteLLM answers 400
    else:
        proxy_upstream.script(["401"] * 50)  # the upstream refuses the proxy's key
    pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=litellm_proxy.base_url,
                              transform={"model": model, "api_key": litellm_proxy.api_key,
                                         "concurrency": CONCURRENCY, "max_retries": RETRIES})
    code, summary, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 1 and summary["status"] == "failed", err
    assert summary["records"]["quarantined"] == 0 and summary["records"]["loaded"] == 0
    assert "stopped after" in summary["status_reason"]
    assert proxy_upstream.count <= CONCURRENCY * (RETRIES + 1) + CONCURRENCY
