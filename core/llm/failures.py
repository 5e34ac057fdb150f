"""What a failed call says about the run: stop it, wait, or blame the record.

- **Fatal for the run** (`FailureClass.fatal`): bad credentials, no money or quota left, a model
  the endpoint does not have, a parameter it refuses (after Loom adapted what it could), an
  endpoint that cannot be reached once retries are spent. The next record would fail the same
  way: the circuit breaker (`core.llm.breaker`) stops the run, and no record is quarantined for
  it — records not processed are skipped, resumable once the cause is fixed.
- **Passing** (`THROTTLED`, `SERVER`): retried with backoff; a server that keeps failing the
  same way record after record trips the breaker too.
- **The record's own** (`RECORD`): a prompt too long for the model, a content filter, the
  model's refusal; the record is quarantined and the run goes on.
- `REQUEST`: another 4xx. The record's own, unless it repeats identically, which the breaker
  treats as the endpoint's.
"""

from __future__ import annotations

import re
from enum import StrEnum

from core.errors import CassetteMiss, ProviderError


class FailureClass(StrEnum):
    AUTH = "auth"
    BILLING = "billing"
    UNKNOWN_MODEL = "unknown_model"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    UNREACHABLE = "unreachable"
    THROTTLED = "throttled"
    SERVER = "server"
    REQUEST = "request"
    RECORD = "record"

    @property
    def fatal(self) -> bool:
        return self in _FATAL

    @property
    def fix(self) -> str:
        """What the user can do about it, in a few words."""
        return _FIX.get(self, "")


_FATAL = frozenset({FailureClass.AUTH, FailureClass.BILLING, FailureClass.UNKNOWN_MODEL,
                    FailureClass.UNSUPPORTED_PARAMETER, FailureClass.UNREACHABLE})
_FIX = {
    FailureClass.AUTH: "check the API key (loom secrets set NAME, or the provider's variable)",
    FailureClass.BILLING: "add credit or raise the quota with the provider",
    FailureClass.UNKNOWN_MODEL: "check transform.model against the models the endpoint serves",
    FailureClass.UNSUPPORTED_PARAMETER: "remove or change the parameter in transform.params",
    FailureClass.UNREACHABLE: "check transform.base_url and that the server is up",
    FailureClass.SERVER: "the provider keeps failing: try again later",
    FailureClass.REQUEST: "the endpoint refuses every request the same way",
}

_BILLING_CODES = frozenset({"insufficient_quota", "billing_error", "billing_hard_limit_reached",
                            "payment_required", "credit_balance_too_low"})
_BILLING_WORDS = re.compile(r"credit balance|insufficient[_ ]quota|exceeded your current quota|"
                            r"billing|payment required|out of credits|no credits", re.I)
_AUTH_CODES = frozenset({"invalid_api_key", "authentication_error", "permission_error",
                         "permission_denied", "unauthorized", "no_api_key", "invalid_x_api_key"})
_AUTH_WORDS = re.compile(r"api[ _-]?key|unauthori[sz]ed|authentication|no auth|missing auth|"
                         r"invalid token|forbidden", re.I)
_MODEL_CODES = frozenset({"model_not_found", "not_found_error", "invalid_model"})
_MODEL_WORDS = re.compile(r"model[^.]{0,60}(does not exist|not found|not exist|invalid|unknown|"
                          r"not available|not supported)|(invalid|unknown|no such) model|"
                          r"invalid model name|no (deployment|endpoint)s? (found|for)", re.I)
_PARAMETER_CODES = frozenset({"unsupported_parameter", "unsupported_value", "unknown_parameter"})
_PARAMETER_WORDS = re.compile(r"unsupported (parameter|value)|unrecognized request argument|"
                              r"extra inputs are not permitted|does not support parameters|"
                              r"unknown parameter|unexpected keyword", re.I)
_RECORD_CODES = frozenset({"context_length_exceeded", "content_filter", "content_policy_violation",
                           "invalid_prompt", "string_above_max_length",
                           "exceed_context_size_error"})
_RECORD_WORDS = re.compile(r"context[_ ](length|window|size)|maximum context|too many tokens|prompt is "
                           r"too long|too large|content (filter|policy|management)|safety system|"
                           r"refused", re.I)


def classify(error: ProviderError) -> FailureClass:
    """The failure class of a call that failed (after its retries)."""
    if isinstance(error, CassetteMiss):
        return FailureClass.RECORD  # the cassette has no answer for this record's prompt
    status = error.status
    code = (error.code or "").lower()
    text = f"{error.message} {error.param or ''}"
    if status is None:
        # No HTTP answer at all: a closed port, DNS, TLS, a reset, a timeout.
        return FailureClass.UNREACHABLE if "connection" in error.message.lower() \
            and "failed" in error.message.lower() else FailureClass.SERVER
    if status == 200:
        # A body without an answer (an error event, no choices, not JSON) is the endpoint's,
        # once its retries are spent; the model's refusal, or an answer too large, the record's.
        return FailureClass.SERVER if error.retryable else FailureClass.RECORD
    if code in _BILLING_CODES or status == 402 or (status in (400, 403, 429) and _BILLING_WORDS.search(text)):
        return FailureClass.BILLING
    if status in (401, 403) or code in _AUTH_CODES:
        return FailureClass.AUTH
    if status == 413 or code in _RECORD_CODES or (400 <= status < 500 and _RECORD_WORDS.search(text)):
        return FailureClass.RECORD
    if code in _MODEL_CODES or (400 <= status < 500 and _MODEL_WORDS.search(text)) or status == 404:
        return FailureClass.UNKNOWN_MODEL
    if code in _PARAMETER_CODES or (400 <= status < 500 and _PARAMETER_WORDS.search(text)):
        return FailureClass.UNSUPPORTED_PARAMETER
    if status == 429:
        return FailureClass.THROTTLED
    if status >= 500:
        # A gateway that has no key configured for its upstream answers 500 saying so.
        if _AUTH_WORDS.search(text) and re.search(r"api[ _-]?key|auth", text, re.I):
            return FailureClass.AUTH
        return FailureClass.SERVER
    if status in (400, 422) and _AUTH_WORDS.search(text) and "key" in text.lower():
        return FailureClass.AUTH
    return FailureClass.REQUEST


def signature(error: ProviderError) -> str:
    """The failure without what varies per call (numbers, ids, the attempt count), so that the
    same failure on two records compares equal (and `same_failure` tells near ones apart)."""
    text = re.sub(r"\(gave up after \d+ attempts?\)", "", error.message)
    # Any word holding a digit (a request id req_1a2b…, a count, a port) varies per call.
    text = re.sub(r"[\w.-]*\d[\w.-]*", "#", text)
    # A load balancer answers 500, 502 and 503 in turn for one outage: a 5xx is a 5xx.
    status = "5xx" if error.status is not None and error.status >= 500 else error.status
    return f"{status}:{' '.join(text.split())[:200]}"


def same_failure(a: str, b: str) -> bool:
    """Whether two signatures are one failure: equal, or the same words but for a few that vary
    per call without a digit in them (a pod `inference-xkzqp`, a host name)."""
    if a == b:
        return True
    status_a, _, text_a = a.partition(":")
    status_b, _, text_b = b.partition(":")
    if status_a != status_b:
        return False
    words_a, words_b = text_a.split(), text_b.split()
    if len(words_a) != len(words_b) or len(words_a) < 3:
        return False
    differ = sum(1 for x, y in zip(words_a, words_b) if x != y)
    return differ <= max(1, len(words_a) // 5)
