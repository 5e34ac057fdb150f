"""A hostile OpenAI-style server on 127.0.0.1, in a thread: `handler(n, body)` decides each
answer as (status, headers, body) and every request is counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]

Answer = tuple[int, dict[str, str], Any]


def ok(content: str) -> Answer:
    return 200, {}, {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def openai_error(status: int, message: str, type_: str = "server_error", code: Any = None,
                 headers: dict[str, str] | None = None) -> Answer:
    return status, headers or {}, {"error": {"message": message, "type": type_, "param": None,
                                             "code": code}}


def prompt_text(body: dict[str, Any]) -> str:
    return " ".join(str(m.get("content")) for m in body.get("messages", []))


class Hostile:
    def __init__(self, handler: Callable[[int, dict[str, Any]], Answer]) -> None:
        self.handler = handler
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                with outer._lock:
                    outer.requests += 1
                    n = outer.requests
                    outer.bodies.append(body)
                status, headers, payload = outer.handler(n, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Hostile":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def loom(*args: str, timeout: float = 120, cwd: Path | None = None) -> tuple[int, dict | None, str]:
    """`loom ARGS… --json` in its own process: (exit code, the summary or None, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "loom_tui.cli", *args], cwd=cwd or ROOT,
                          env=os.environ.copy(), capture_output=True, text=True, timeout=timeout)
    summary = None
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            try:
                summary = json.loads(line)
                break
            except ValueError:
                pass
    return proc.returncode, summary, proc.stderr
