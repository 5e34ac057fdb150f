"""A throwaway PostgreSQL cluster for the tests.

`PostgresCluster.start()` runs `initdb` into a fresh temp dir and `pg_ctl start` on a free
loopback port, with its unix socket in that dir; `stop()` stops it and removes the dir. Run as
root (as CI does), the cluster belongs to the `postgres` user (`runuser -u postgres --`), since
PostgreSQL refuses to run as root.

Connections over TCP need a password (scram-sha-256), so the connectors' authentication errors
are real; the admin helpers here use the unix socket, where the superuser is trusted. Each test
gets its own database (`create_database`), owned by the password-authenticated role `loom`.

Also runnable on its own, for trying Loom against a real server by hand:
    python tests/support/postgres.py        # prints a URL; ctrl+c (or kill) stops and removes it
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROLE = "loom"
ROLE_PASSWORD = "loom-test-password"
SUPERUSER = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started: the message says what is missing."""


def find_bindir() -> Path:
    """The folder holding initdb, pg_ctl and psql."""
    chosen = os.environ.get("LOOM_TEST_PG_BINDIR")
    if chosen:  # when set, the only place to look
        if all((Path(chosen) / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            return Path(chosen)
        raise PostgresUnavailable(f"PostgreSQL is not installed in LOOM_TEST_PG_BINDIR={chosen}: "
                                  "no initdb, pg_ctl and psql there")
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    # Debian and Ubuntu keep each major version apart; prefer the newest.
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                      reverse=True)
    candidates += versions
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            return folder
    raise PostgresUnavailable(
        "PostgreSQL is not installed: no initdb/pg_ctl/psql found (looked in pg_config --bindir, "
        "/usr/lib/postgresql/*/bin and PATH). Install it "
        "(apt-get install postgresql) or point LOOM_TEST_PG_BINDIR at its bin folder.")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresCluster:
    bindir: Path
    root: Path
    port: int
    as_postgres: bool  # we are root: run the server as the postgres user

    host = "127.0.0.1"

    @property
    def data(self) -> Path:
        return self.root / "data"

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def start(cls) -> "PostgresCluster":
        bindir = find_bindir()
        as_postgres = os.geteuid() == 0
        if as_postgres:
            try:
                owner = pwd.getpwnam(SUPERUSER)
            except KeyError:
                raise PostgresUnavailable("running as root, but there is no `postgres` user to run "
                                          "the test server as (PostgreSQL refuses root)") from None
            if not shutil.which("runuser"):
                raise PostgresUnavailable("running as root, but `runuser` is missing: it is needed "
                                          "to start the test server as the postgres user")
        root = Path(tempfile.mkdtemp(prefix="loom-pg-"))
        cluster = cls(bindir=bindir, root=root, port=0, as_postgres=as_postgres)
        try:
            if as_postgres:
                os.chown(root, owner.pw_uid, owner.pw_gid)
            root.chmod(0o700)
            cluster._initdb()
            cluster._start_server()
            cluster._create_role()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _as_owner(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", SUPERUSER, "--", *command] if self.as_postgres else command

    def _run(self, command: list[str], what: str, timeout: float = 120) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresUnavailable(f"cannot {what}: {exc}") from exc
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()
            raise PostgresUnavailable(f"cannot {what}: {output}")
        return done.stdout

    def _initdb(self) -> None:
        password_file = self.root / "superuser-password"
        self.superuser_password = secrets.token_hex(12)
        password_file.write_text(self.superuser_password + "\n")
        if self.as_postgres:
            owner = pwd.getpwnam(SUPERUSER)
            os.chown(password_file, owner.pw_uid, owner.pw_gid)
        self._run(self._as_owner([
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
            "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C",
            "--no-sync", f"--pwfile={password_file}"]), "initialise a test cluster (initdb)")
        password_file.unlink()

    def _start_server(self) -> None:
        last_error: PostgresUnavailable | None = None
        for _ in range(5):  # another process may take the free port before the server does
            self.port = free_port()
            options = (f"-p {self.port} -k {self.root} -c listen_addresses={self.host} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                       "-c max_connections=300")
            try:
                self._run(self._as_owner([
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                    str(self.root / "server.log"), "-w", "-t", "60", "-o", options, "start"]),
                    "start the test server (pg_ctl start)")
                return
            except PostgresUnavailable as exc:
                last_error = exc
                log = self.root / "server.log"
                if not (log.is_file() and "could not bind" in log.read_text(errors="replace")):
                    break
        assert last_error is not None
        log = self.root / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
        raise PostgresUnavailable(f"{last_error}\n{tail}".strip())

    def _create_role(self) -> None:
        self.psql(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{ROLE_PASSWORD}'")

    def stop(self) -> None:
        if self.data.is_dir() and (self.data / "postmaster.pid").exists():
            subprocess.run(self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data),
                                           "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- use ---------------------------------------------------------------------------------

    def psql(self, sql: str, database: str = "postgres", user: str = SUPERUSER) -> str:
        """Run one statement over the unix socket (trusted); returns unaligned rows."""
        return self._run([str(self.bindir / "psql"), "-h", str(self.root), "-p", str(self.port),
                          "-U", user, "-d", database, "-X", "-q", "-A", "-t",
                          "-v", "ON_ERROR_STOP=1", "-c", sql], f"run {sql[:60]!r}")

    def url(self, database: str, *, user: str = ROLE, password: str | None = ROLE_PASSWORD,
            scheme: str = "postgresql") -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"{scheme}://{auth}@{self.host}:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> "Database":
        name = f"{re.sub(r'[^a-z0-9_]', '_', prefix.lower())[:40]}_{secrets.token_hex(4)}"
        self.psql(f'CREATE DATABASE "{name}" OWNER {ROLE} TEMPLATE template0')
        return Database(self, name)


@dataclass
class Database:
    cluster: PostgresCluster
    name: str

    @property
    def url(self) -> str:
        """A SQLAlchemy-style URL for the history store (postgresql://)."""
        return self.cluster.url(self.name)

    @property
    def dsn(self) -> str:
        """The same, as a pipeline writes it (postgres://)."""
        return self.cluster.url(self.name, scheme="postgres")

    def sql(self, statement: str) -> str:
        """Run a statement as the database's owner (the role the connectors log in as)."""
        return self.cluster.psql(statement, self.name, user=ROLE)

    def rows(self, query: str) -> list[list[str]]:
        out = self.sql(query)
        return [line.split("|") for line in out.splitlines() if line]

    def drop(self) -> None:
        try:
            self.cluster.psql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        except PostgresUnavailable:
            pass  # the whole cluster goes at the end of the session anyway


if __name__ == "__main__":
    import signal

    # Stop and remove the cluster on ctrl+c and on a plain `kill` alike.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    cluster = PostgresCluster.start()
    database = cluster.create_database("loom")
    print(database.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        sys.exit(0)
