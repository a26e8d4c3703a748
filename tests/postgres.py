"""A private PostgreSQL server for tests and benchmarks: one per process, in a temp directory.

Unix socket only (`listen_addresses=''`), so no port is taken and nothing is reachable from the
network; fsync off, since the data dies with the directory. PostgreSQL refuses to run as root, so
as root initdb and pg_ctl run as Debian's `postgres` user (`runuser`). The socket's directory is
world-readable, so the test's child processes (`backspace serve` replicas, a benchmark's
writers) reach it with the same URL.

`BACKSPACE_REQUIRE_POSTGRES=1` (CI sets it) turns a missing server into a failure: the tests
that need one are then never skipped.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg

REQUIRE = "BACKSPACE_REQUIRE_POSTGRES"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries here (scripts/bootstrap --dev installs Debian's `postgresql`)."""


def required() -> bool:
    return os.environ.get(REQUIRE, "") not in ("", "0", "false")


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # Debian keeps them here
    if versions:
        return versions[-1]
    raise PostgresUnavailable(
        f"PostgreSQL's {name} is not installed: run scripts/bootstrap --dev (it installs "
        "Debian's postgresql), or apt-get install postgresql"
    )


class PostgresServer:
    """One running server; `database()` makes a fresh database and gives its URL."""

    def __init__(self) -> None:
        self.initdb = _binary("initdb")
        self.pg_ctl = _binary("pg_ctl")
        self.root = Path(tempfile.mkdtemp(prefix="backspace-pg-"))
        self.root.chmod(0o755)  # the socket is reached by the tests' child processes too
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb: "cannot be run as root"
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.started = False

    def start(self) -> PostgresServer:
        self._run(
            self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--no-sync", "--no-instructions",
        )  # fmt: skip
        options = (
            f"-c listen_addresses='' -k {self.root} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=300"
        )
        self._run(
            self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start"
        )
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop", check=False)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        """A URL any local process can use (`password`: ignored by the server, which trusts
        local connections; for tests that check it is never shown)."""
        secret = f":{quote(password, safe='')}" if password else ""
        return f"postgresql://postgres{secret}@/{dbname}?host={quote(str(self.root), safe='')}"

    def database(self, prefix: str = "t") -> str:
        """A fresh, empty database; its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop(self, url: str) -> None:
        name = url.split("?")[0].rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _run(self, *args: str, check: bool = True) -> None:
        done = subprocess.run(
            [*self._as, *args], capture_output=True, text=True, cwd=self.root, check=False
        )
        if check and done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:1])} failed ({done.returncode}): {done.stderr.strip()}\n{log}"
            )
