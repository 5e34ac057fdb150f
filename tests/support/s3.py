"""An S3 (and Secrets Manager) API server on 127.0.0.1 for the tests: moto in server mode.

Loom talks to it over real HTTP through aioboto3 and boto3, exactly as it would talk to AWS or
MinIO; only the endpoint differs (AWS_ENDPOINT_URL_S3, or `endpoint_url:` in a pipeline).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import httpx

ACCESS_KEY = "loom-test-access-key"
SECRET_KEY = "loom-test-secret-key"
REGION = "us-east-1"


class S3Server:
    """moto's ThreadedMotoServer on 127.0.0.1 and a port the OS picks."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint = ""

    def start(self) -> "S3Server":
        # werkzeug logs every request on stderr; only its errors are worth seeing.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def reset(self) -> None:
        """Forget every bucket, object and secret (moto's own reset endpoint)."""
        httpx.post(f"{self.endpoint}/moto-api/reset", timeout=30).raise_for_status()

    def client(self, service: str = "s3"):  # -> a boto3 client, for setting up and checking
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def environment(self) -> dict[str, str]:
        """The standard AWS variables pointing the SDK at this server."""
        return {"AWS_ENDPOINT_URL_S3": self.endpoint,
                "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.endpoint,
                "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION}

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class S3ServerProcess(S3Server):
    """The same server in a process of its own, for measuring the client's memory alone."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self.endpoint = ""

    def start(self) -> "S3ServerProcess":
        self._process = subprocess.Popen(
            [sys.executable, __file__], stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the S3 server process did not start: {line!r}")
        self.endpoint = line
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._process = None


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = S3Server().start()
    print(server.endpoint, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
