"""What the end-to-end tests share: environments, a shared server, pollers, `/proc` scanners.

One place, so a test module never imports another test module (and pytest-xdist never runs a
module's tests twice through such an import).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from backspace.orchestrator.sandboxes.local import ROOT_MARK_VARIABLE, default_root, root_mark
from tests.fakes.anthropic import FakeAnthropic
from tests.server import ROOT, Server, start_server
from tests.tls import TLS


def base_env(repos: Path, fake: FakeAnthropic, **extra: str) -> dict[str, str]:
    """A server on the local repositories below `repos`, the fake model behind it."""
    return {
        "ANTHROPIC_API_KEY": "sk-ant-api03-test-key-0123456789",
        "ANTHROPIC_BASE_URL": fake.url,
        "BACKSPACE_LOCAL_REPOS": str(repos),
        **extra,
    }


def workdir(prefix: str) -> Path:
    """A module's own directory, not under pytest's basetemp, which a concurrent pytest session
    on a shared machine may prune while the module's long-lived server still uses it."""
    return Path(tempfile.mkdtemp(prefix=f"backspace-{prefix}-"))


def stop_and_remove(server: Server, root: Path) -> None:
    """Stop a module's server; remove its directory `root` and its (thawed) sandbox root."""
    server.stop()
    sandbox_root = default_root(server.db_path)
    if sandbox_root.exists():  # a test may have made it immutable, to inject a fault
        subprocess.run(["chattr", "-i", str(sandbox_root)], check=False, capture_output=True)
        shutil.rmtree(sandbox_root, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)


@contextmanager
def shared_server(prefix: str, env: dict[str, str]) -> Iterator[Server]:
    """One real server for a module's tests of one settings group; its directory and sandbox
    root go with it."""
    root = workdir(prefix)
    server = start_server(root / "server", env)
    try:
        yield server
    finally:
        stop_and_remove(server, root)


@dataclass
class Shared:
    """A module's server for the tests that need no fresh process, its fake model and the
    directory of its local repositories: each test makes its own repository there, uses its own
    scenario keys, and looks only at its own runs."""

    server: Server
    model: FakeAnthropic
    repos: Path


@contextmanager
def shared_rig(
    prefix: str, env: Callable[[Path, FakeAnthropic], dict[str, str]]
) -> Iterator[Shared]:
    """A `Shared` whose server has the settings `env(repos, model)`."""
    repos = workdir(f"{prefix}-repos")
    try:
        with (
            FakeAnthropic(scenarios={}) as model,
            shared_server(prefix, env(repos, model)) as server,
        ):
            yield Shared(server, model, repos)
    finally:
        shutil.rmtree(repos, ignore_errors=True)


# --- shared cases -------------------------------------------------------------------------------
# Repository references the parser refuses, and a fragment of why (test_references.py checks the
# parser, test_hostile.py the API, with the same list).
REFUSED: list[tuple[str, str]] = [
    ("https://x-access-token:ghp_secret@github.com/acme/widgets", "credentials"),
    ("https://user@github.com/acme/widgets", "credentials"),
    ("https://github.com@evil.com/acme/widgets", "credentials"),
    ("https://evil.com#@github.com/acme/widgets", "evil.com is not a GitHub host"),
    ("https://github.com.evil.com/acme/widgets", "not a GitHub host"),
    ("https://gitlab.com/acme/widgets", "not a GitHub host"),
    ("https://github.com:8443/acme/widgets", "port 8443"),
    ("https://github.com:99999/acme/widgets", "invalid port"),
    ("git@evil.com:acme/widgets.git", "not a GitHub host"),
    ("ssh://root@github.com/acme/widgets", "git user"),
    ("ext::sh -c touch% /tmp/pwned", "spaces"),
    ("ext::sh", "ext::"),
    ("file:///etc/passwd", "file://"),
    ("FILE:///etc/passwd", "file://"),
    ("ftp://github.com/acme/widgets", "ftp://"),
    ("--upload-pack=touch /tmp/x", "cannot start with '-'"),
    ("-oProxyCommand=x", "cannot start with '-'"),
    ("ssh://-oProxyCommand=x/acme/widgets", "not a GitHub host"),
    ("https://github.com/acme", "owner and a repository"),
    ("https://github.com/-acme/widgets", "not a valid GitHub owner"),
    ("https://github.com/acme-/widgets", "not a valid GitHub owner"),
    ("https://github.com/acme/..", "not a valid GitHub repository"),
    ("https://github.com/acme/wid%2Fgets", "percent-encoded"),
    ("acme/wid gets", "spaces"),
    ("acme/widgets\n", "acme/widgets"),  # a trailing newline is trimmed, so this one is fine...
    ("acme/../etc", "not a repository reference"),
    ("https://github.com/acme/widgets/tree/--exec=id", "not a valid branch"),
    ("https://github.com/acme/widgets/tree/a..b", "not a valid branch"),
    ("https://github.com/acme/widgets/pull/abc", "/pull/<number>"),
    ("", "empty"),
    ("<>", "empty"),
    ("a" * 40 + "/widgets", "not a valid GitHub owner"),
    ("acme/" + "r" * 101, "not a valid GitHub repository"),
    ("acme/widgets\x00", "control characters"),
]


# --- pollers -------------------------------------------------------------------------------------
async def wait_status(server: Server, run_id: str, *, timeout: float = 30) -> dict[str, Any]:
    """The run, once it has ended."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(verify=TLS) as client:
        while time.monotonic() < deadline:
            run: dict[str, Any] = (await client.get(f"{server.url}/api/runs/{run_id}")).json()
            if run["status"] not in ("queued", "running"):
                return run
            await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


# --- /proc ---------------------------------------------------------------------------------------
def _processes() -> Iterator[tuple[int, bytes, set[bytes]]]:
    """(pid, command line, environment) of every other process this user may read."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            try:
                environ = set((proc / "environ").read_bytes().split(b"\0"))
            except OSError:  # another user's process
                environ = set()
            yield int(proc.name), cmdline, environ


def processes_running(fragment: str) -> list[int]:
    """Processes whose command line holds `fragment` (make it unique to the test: another test
    on another worker may run a command of the same shape)."""
    return [pid for pid, cmdline, _ in _processes() if fragment.encode() in cmdline]


async def wait_for_process(fragment: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if processes_running(fragment):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no process running {fragment!r}")


def sandbox_processes(root: Path) -> list[int]:
    """Processes of any sandbox below `root`, also of one whose directory is gone: marked in
    bubblewrap's environment by the root's digest (its command line no longer names the
    directory), or with a command line naming the root."""
    mark = f"{ROOT_MARK_VARIABLE}={root_mark(root)}".encode()
    return [
        pid
        for pid, cmdline, environ in _processes()
        if str(root).encode() in cmdline or mark in environ
    ]


def assert_clean(server: Server) -> None:
    """No sandbox directory and no process of any sandbox of this server is left."""
    root = default_root(server.db_path)
    assert not root.exists() or list(root.iterdir()) == []
    assert sandbox_processes(root) == []


# --- the CLI, as a person runs it ------------------------------------------------------------------
def cli_env(workdir: Path, **settings: str) -> dict[str, str]:
    """The whole environment of one command: nothing of the test process's own."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "PYTHONPATH": str(ROOT),
        "BACKSPACE_DB": str(workdir / "backspace.db"),
        **settings,
    }


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class Command:
    """One `python -m backspace ...` started now, in `workdir` (so no stray .env is read)."""

    def __init__(self, workdir: Path, args: list[str], env: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "backspace", *args],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._result: Result | None = None

    def result(self, timeout: float = 45) -> Result:
        if self._result is None:
            try:
                out, err = self.process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                out, err = self.process.communicate()
                raise AssertionError(f"still running after {timeout} s:\n{out}\n{err}") from None
            seconds = time.monotonic() - self.started
            self._result = Result(self.process.returncode, out, err, seconds)
        return self._result


def backspace(workdir: Path, *args: str, env: dict[str, str]) -> Result:
    return Command(workdir, list(args), env).result(timeout=20)
