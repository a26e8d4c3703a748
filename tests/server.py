"""Run the real service (`python -m backspace serve`) on a free port, as a subprocess.

The server gets an environment built here (not the test process's), its own database and a
log file, so tests can check what it logs and that it never leaks a secret.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.tls import TLS

ROOT = Path(__file__).resolve().parent.parent
STARTED: list[int] = []  # pids of the servers this test process started (conftest reports them)
BIND_RETRIES = 3  # a port found free can be taken by another test worker before the server binds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    db_path: Path
    env: dict[str, str]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(workdir: Path, env: dict[str, str], *, wait: float = 30) -> Server:
    """Start `backspace serve` and wait for a 200 from /health; another port if its was taken."""
    for attempt in range(BIND_RETRIES):
        try:
            return _start(workdir, env, wait)
        except PortTaken:
            if attempt == BIND_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    """The server could not bind the port chosen for it (another process took it meanwhile)."""


def _start(workdir: Path, env: dict[str, str], wait: float) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    db = workdir / "backspace.db"
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(workdir)),
        "PYTHONPATH": str(ROOT),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "BACKSPACE_DB": str(db),
        "BACKSPACE_MODEL_RETRY_DELAY": "0.01",
        "BACKSPACE_LOG_FORMAT": "json",
        **env,
    }
    log_path = workdir / "server.log"
    log_start = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "backspace", "serve"],
            cwd=workdir,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    STARTED.append(process.pid)
    server = Server(f"http://127.0.0.1:{port}", process, log_path, db, full_env)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if b"address already in use" in log_path.read_bytes()[log_start:].lower():
                with log_path.open("r+b") as log:
                    log.truncate(log_start)  # the next attempt's log, not this one's
                raise PortTaken(f"port {port} was taken before the server could bind it")
            raise RuntimeError(f"the server exited ({process.returncode}):\n{server.logs()}")
        # Only once this process says it listens: another worker's server that won the race
        # for the same port would answer /health too.
        listening = f"running on {server.url}".encode() in log_path.read_bytes()[log_start:]
        try:
            if (
                listening
                and httpx.get(f"{server.url}/health", timeout=1, verify=TLS).status_code == 200
            ):
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"the server did not start in {wait} s:\n{server.logs()}")
