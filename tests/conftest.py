"""Shared fixtures: real git repositories, the fake model, the real server."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from backspace.orchestrator.sandboxes.local import LocalSandbox, LocalSandboxProvider
from tests import server as server_module
from tests.fakes.anthropic import FakeAnthropic
from tests.postgres import PostgresServer, PostgresUnavailable, required
from tests.server import Server, start_server

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
    "PATH": "/usr/bin:/bin",
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True
    ).stdout


def make_repo(
    root: Path, name: str, files: dict[str, str] | None = None, branch: str = "main"
) -> Path:
    """A real git repository with one commit on `branch`."""
    path = root / name
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", branch)
    for rel, text in (
        files or {"app.py": "def signup(name):\n    return name\n", "README.md": "# Widgets\n"}
    ).items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial commit")
    return path


@pytest.fixture
def repos(tmp_path: Path) -> Path:
    root = tmp_path / "repos"
    root.mkdir()
    return root


@pytest.fixture
def fake_model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(scenarios={}) as fake:
        yield fake


ServerFactory = Callable[..., Server]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    started: list[Server] = []

    def start(env: dict[str, str], name: str = "server") -> Server:
        server = start_server(tmp_path / name, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalSandboxProvider]:
    """A local sandbox provider for a module's tests.

    When the tests run as root, bubblewrap runs as `nobody`, which cannot enter pytest's 0700
    `tmp_path`; so the root lives in a fresh 0711 directory directly under /tmp.
    """
    parent = Path(tempfile.mkdtemp(prefix="backspace-test-"))
    parent.chmod(0o711)
    try:
        provider = LocalSandboxProvider(parent / "root")
        usable, message = provider.check()
        assert usable and provider.isolated, message
        yield provider
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
async def sandbox(provider: LocalSandboxProvider) -> AsyncIterator[LocalSandbox]:
    sandbox = await provider.create(f"t-{uuid.uuid4().hex[:10]}")
    try:
        yield sandbox
    finally:
        await sandbox.close()


# --- PostgreSQL: one private server per pytest process, a fresh database per module -----------
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL (tests/postgres.py), started on first use; skipped where PostgreSQL
    is not installed, unless BACKSPACE_REQUIRE_POSTGRES=1 (CI), which makes that a failure."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        if required():
            pytest.fail(f"BACKSPACE_REQUIRE_POSTGRES=1 but {exc}")
        pytest.skip(str(exc))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database for this module; its URL (usable by child processes too)."""
    url = postgres_server.database()
    yield url
    postgres_server.drop(url)


# --- counting servers, also across pytest-xdist workers ---------------------------------------
# (scripts/test runs `--dist loadfile`: a module's tests stay on one worker, so a module-scoped
# server starts once. `loadgroup` would not work with pytest 9: xdist 3.8 renames `item._nodeid`,
# which pytest 9 no longer reads.)
SERVERS_ON_WORKERS: list[int] = []  # on the xdist controller: each worker's count


# The longest modules first (wall time on one of four workers, measured): `--dist loadfile`
# hands whole modules to the workers in collection order (scripts/test passes
# `--no-loadscope-reorder`: xdist would otherwise order them by their number of tests, and a
# module of two long tests started last), so a long one started last would keep one worker busy
# while the others sit idle at the end.
LONGEST_FIRST = (
    "test_fleet",
    "test_faults",
    "test_hostile",
    "test_schemathesis",
    "test_daytona_e2e",
    "test_api_e2e",
    "test_store_contract",  # mostly waiting (leases expiring): about 45 s, little CPU
    "test_telemetry",
    "test_slack_fleet",
    "test_followups",
    "test_github_app",
    "test_github_e2e",
    "test_claude_code_daytona",
    "test_bench",
    "test_import_cost",
    "test_slack_e2e",
    "test_big_repos",
    "test_web_ui",
    "test_environments",
    "test_cli",
    "test_drain",
    "test_web_followups",
    "test_claude_code",
    "test_runner_fleet",
    "test_slack_followups",
    "test_github_webhook",
    "test_fake_github_app",  # its JWT key parsed once: about 15 s, from 25
    "test_attack_git",
    "test_slack_socket_mode",
    "test_attack_limits",
)


# The serial phase (`-m serial`) imports only the modules that say `mark.serial`: importing all
# of them costs about 10 s of CPU (and of wall time, with nothing else running) to deselect 895
# tests. The check below keeps that honest: every other run (the parallel phase too) fails if a
# test is marked serial in a module without those words, which that phase would skip.
SERIAL_MARK = "mark.serial"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if str(config.option.markexpr).strip() != "serial":
        return None
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return SERIAL_MARK not in collection_path.read_text(errors="replace") or None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects any
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    hidden = sorted(
        {
            str(item.path)
            for item in items
            if item.get_closest_marker("serial") is not None
            and SERIAL_MARK not in item.path.read_text(errors="replace")
        }
    )
    if hidden:
        raise pytest.UsageError(
            f"{', '.join(hidden)}: a test is marked serial without the words {SERIAL_MARK!r} in "
            "its module, so the serial phase would not collect it: mark it `pytest.mark.serial`"
        )
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(LONGEST_FIRST)))


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the count to the controller
        workeroutput["servers_started"] = len(server_module.STARTED)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    output = getattr(node, "workeroutput", {})
    SERVERS_ON_WORKERS.append(int(output.get("servers_started", 0)))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(
        f"backspace serve processes started: {len(server_module.STARTED) + sum(SERVERS_ON_WORKERS)}"
    )
