"""The llama-cpp-python server (built from its sdist on PyPI) on 127.0.0.1 with a generated model.

    server = LlamaServer.start()     # generates the tiny GGUF (tests/support/tiny_gguf.py)
    server.base_url                  # http://127.0.0.1:PORT/v1, for Loom's openai_compatible
    server.model                     # the model's name on the server
    server.stop()

The server runs from its own venv: LOOM_LLAMA_PYTHON, else .venv-llama/bin/python in the repo
(tools/install_test_servers.sh builds it and caches the wheel). The same interpreter runs the
GGUF generator, which needs the `gguf` package installed there, not in Loom's venv.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from tests.support.server_process import (ROOT, ServerProcess, ServerUnavailable,
                                          clean_environment, executable, free_port)

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # tools/install_test_servers.sh builds this one
MODEL_ALIAS = "loom-tiny-random"
GENERATOR = Path(__file__).with_name("tiny_gguf.py")


class LlamaServer:
    def __init__(self, process: ServerProcess, port: int,
                 folder: tempfile.TemporaryDirectory[str]) -> None:
        self.process = process
        self.port = port
        self.model = MODEL_ALIAS
        self._folder = folder

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @classmethod
    def start(cls, *, timeout_s: float = 180.0) -> "LlamaServer":
        python = executable("LOOM_LLAMA_PYTHON", ROOT / ".venv-llama" / "bin" / "python",
                            f"the llama-cpp-python server (llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION})")
        folder = tempfile.TemporaryDirectory(prefix="loom-llama-")
        model = Path(folder.name) / "tiny.gguf"
        made = subprocess.run([str(python), str(GENERATOR), str(model)], capture_output=True,
                              text=True, timeout=120)
        if made.returncode != 0:
            folder.cleanup()
            raise ServerUnavailable(f"could not generate the tiny GGUF with {python}:\n"
                                    f"{made.stderr[-3000:]}")
        port = free_port()
        process = ServerProcess(
            [str(python), "-m", "llama_cpp.server", "--model", str(model),
             "--model_alias", MODEL_ALIAS,
             "--host", "127.0.0.1", "--port", str(port),  # its default host is `localhost`
             "--n_ctx", "2048",
             # Its default interrupts a running completion when another request arrives: Loom
             # sends several at once, and each would cut the previous one short.
             "--interrupt_requests", "False",
             "--n_threads", "1", "--n_threads_batch", "1",  # a 2-core machine, shared
             "--verbose", "False"],
            log=Path(folder.name) / "llama.log", env=clean_environment(),
            cwd=Path(folder.name), name=f"the llama-cpp-python server ({python})")
        server = cls(process, port, folder)
        try:
            process.wait_ready(f"{server.base_url}/models", timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def log_tail(self, chars: int = 4000) -> str:
        return self.process.log_tail(chars)

    def stop(self) -> None:
        self.process.stop()
        self._folder.cleanup()
