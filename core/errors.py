"""One hierarchy for everything Loom can fail with.

A user error (a bad pipeline, a missing file, a missing secret) becomes one line at the
command-line edge: `str(error)` is that line. Failures keep their type and their cause so
that the quarantine and the history can say what really happened.
"""

from __future__ import annotations

from core.terminal_text import printable


def one_line(text: str) -> str:
    """`text` with control characters escaped, so that an error is always one line even when it
    quotes a key or a value someone typed (C1, DEL and bidi controls too)."""
    return printable(text)


class LoomError(Exception):
    """Base of every error Loom raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(LoomError):
    """A bad command line or option."""

    exit_code = 2


class PipelineError(LoomError):
    """A pipeline file the user can fix: names the file, the line (when known) and the key."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        message = one_line(message)
        key = one_line(key) if key else key
        self.file = file
        self.line = line
        self.key = key
        self.detail = message
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        what = f"{key}: " if key else ""
        super().__init__(f"{where}{what}{message}")


class TemplateError(PipelineError):
    """A prompt template that does not parse or does not render."""


class SecurityError(TemplateError):
    """A prompt template that reaches for something the sandbox forbids."""


class RenderLimitError(SecurityError):
    """A prompt template that would go past its render budget (time, output size, recursion):
    the template's own fault, so the run stops with exit 2 like a sandbox refusal."""


class SecretError(LoomError):
    """A `${NAME}` placeholder that resolves nowhere."""

    exit_code = 2


class ConnectorError(LoomError):
    """A source or a sink that cannot be read or written."""


class LoadError(ConnectorError):
    """A batch the sink refused."""


class DestinationBusy(ConnectorError):
    """Another writer got in the way (it held the destination past `load.lock_timeout_s`, or
    its replace deleted this run's staged S3 parts): nothing was published, and the run's
    records stay resumable (they are skipped, not quarantined)."""


class ProviderError(LoomError):
    """An LLM call that failed after its retries."""

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None,
                 retry_after: float | None = None, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.param = param  # the request parameter the API blamed (OpenAI's error.param)
        self.code = code  # the API's error code or type (insufficient_quota, billing_error, ...)


class CassetteMiss(ProviderError):
    """The replay provider has no recorded answer for this request. A record's result keeps
    the type (error_type "CassetteMiss"), so a UI can say what would answer instead."""

    def __init__(self, message: str, *, cassette: object = None, key: str | None = None,
                 retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.cassette = cassette  # the cassette's path
        self.key = key  # the request's key (LLMRequest.key())


class EvaluatorError(LoomError):
    """An evaluator that could not score a record."""


class StoreError(LoomError):
    """The history store cannot be opened or written."""


class StoreUrlError(StoreError):
    """The history store's URL itself is wrong (LOOM_STORE_URL, storage.url): the user's to
    fix, like a bad pipeline, so exit 2."""

    exit_code = 2


class ResumeError(LoomError):
    """A run that cannot be resumed: none unfinished, still running, or its pipeline changed."""

    exit_code = 2


class BudgetExceeded(LoomError):
    """The next call would pass budget.max_cost_usd."""

    exit_code = 3
