"""A third-party server as a child process on 127.0.0.1: started, waited for, stopped.

The LiteLLM proxy and the llama-cpp-python server are other people's programs, installed in
venvs of their own (tools/install_test_servers.sh). This is what the two have in common: a
free port, a log file instead of a pipe (a chatty server would fill a pipe and hang), a
readiness probe, and a stop that leaves no process behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "install them with: bash tools/install_test_servers.sh"


class ServerUnavailable(RuntimeError):
    """The server is not installed, or it did not come up; the message says which and why."""


class NotInstalled(ServerUnavailable):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def executable(env_name: str, default: Path, what: str) -> Path:
    """The program named by `env_name`, else the repo's default venv path; NotInstalled if absent."""
    path = Path(os.environ.get(env_name) or default)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise NotInstalled(f"{what} is not installed ({path} not found; {env_name} can point "
                           f"elsewhere); {INSTALL_HINT}")
    return path


class ServerProcess:
    """`argv` started in its own process group, its output in `log`; `wait_ready(url)` polls."""

    def __init__(self, argv: list[str], *, log: Path, env: dict[str, str], cwd: Path,
                 name: str) -> None:
        self.name = name
        self.log = log
        self._handle = log.open("wb")
        # Its own session: stop() can end the server and any worker it forked, and nothing else.
        self.proc = subprocess.Popen(argv, stdout=self._handle, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                     start_new_session=True)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, url: str, timeout_s: float) -> None:
        """Until GET `url` answers 200. Generous timeouts: LiteLLM imports for a minute or more
        on a busy 2-core machine. Raises ServerUnavailable with the log when it dies or stalls."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerUnavailable(f"{self.name} exited with {self.proc.returncode} before it "
                                        f"was ready; its log ends:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerUnavailable(f"{self.name} was not ready at {url} within {timeout_s:.0f} s; "
                                f"its log ends:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)
            except ProcessLookupError:
                pass
        self._handle.close()


def clean_environment(**extra: str) -> dict[str, str]:
    """The test process's environment without credentials or endpoints a server could pick up
    (a real key must never reach a test server, nor a test server a real endpoint)."""
    drop = ("OPENAI_", "ANTHROPIC_", "AZURE_", "LITELLM_", "AWS_", "DATABASE_URL", "REDIS_",
            "HF_", "HUGGING")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env
