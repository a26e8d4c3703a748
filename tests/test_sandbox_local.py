"""The local sandbox, against the real bubblewrap, prlimit and (as root) setpriv of this host.

Nothing is mocked: every command really runs under `bwrap`, and every claim (no network, no host
files, no leaked processes, limits) is checked from the host side as well as from inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from backspace.orchestrator.sandboxes.base import SandboxError, SandboxUnavailable
from backspace.orchestrator.sandboxes.bwrap import SYSTEM_DIRS
from backspace.orchestrator.sandboxes.local import (
    HOME,
    WORKDIR,
    LocalLimits,
    LocalSandbox,
    LocalSandboxProvider,
    sandbox_environment,
)
from tests.helpers import processes_running

# Variables bash itself adds to the environment of `bash -c env`.
BASH_OWN_VARIABLES = {"PWD", "SHLVL", "_", "OLDPWD"}


# --- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture
def sandbox_root() -> Iterator[Path]:
    """A provider root that uid 65534 can traverse.

    pytest's `tmp_path` lives below /tmp/pytest-of-root, which pytest keeps at mode 0700; when the
    tests run as root, bubblewrap runs as uid 65534 and could not reach a root below it. So the
    root is below a fresh directory directly under /tmp (mode 0711, like the provider's root),
    the same place as the server's own `default_root`.
    """
    parent = Path(tempfile.mkdtemp(prefix="backspace-test-sandboxes-"))
    parent.chmod(0o711)
    try:
        yield parent / "root"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def provider(sandbox_root: Path) -> LocalSandboxProvider:
    provider = LocalSandboxProvider(sandbox_root)
    usable, message = provider.check()
    assert usable, message
    assert provider.isolated, message
    return provider


@pytest.fixture
async def sandbox(provider: LocalSandboxProvider) -> AsyncIterator[LocalSandbox]:
    sandbox = await provider.create("run-x")
    try:
        yield sandbox
    finally:
        await sandbox.close()


def marker() -> str:
    """A unique number, usable as a `sleep` duration and findable in /proc/*/cmdline."""
    return str(uuid.uuid4().int % 10**9).rjust(9, "1")


async def wait_for_host_process(needle: str, deadline: float = 5.0) -> list[int]:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        pids = processes_running(needle)
        if pids:
            return pids
        await asyncio.sleep(0.02)
    return []


# --- exec basics ------------------------------------------------------------------------------
async def test_output_merges_stdout_and_stderr_and_keeps_the_exit_code(
    sandbox: LocalSandbox,
) -> None:
    result = await sandbox.exec("echo out; echo err >&2; echo out2; exit 3")
    assert result.exit_code == 3
    assert result.output == "out\nerr\nout2\n"
    assert not result.truncated and not result.timed_out

    ok = await sandbox.exec("true")
    assert ok.exit_code == 0 and ok.output == ""
    assert (await sandbox.exec("exit 0")).exit_code == 0


async def test_cwd_defaults_to_the_workdir_and_can_be_chosen(sandbox: LocalSandbox) -> None:
    assert sandbox.workdir == WORKDIR == "/workspace"
    assert (await sandbox.exec("pwd")).output == "/workspace\n"
    assert (await sandbox.exec("pwd", cwd="/tmp")).output == "/tmp\n"
    await sandbox.exec("mkdir -p sub/dir")
    assert (await sandbox.exec("pwd", cwd="/workspace/sub/dir")).output == "/workspace/sub/dir\n"
    # The workdir is the host's per-run directory.
    await sandbox.exec("echo hi > made-here.txt")
    assert (sandbox.base / "workspace" / "made-here.txt").read_text() == "hi\n"


async def test_stdin_is_passed(sandbox: LocalSandbox) -> None:
    result = await sandbox.exec("cat", stdin=b"hello\nworld\n")
    assert result.output == "hello\nworld\n"
    big = await sandbox.exec("wc -c", stdin=b"x" * (3 * 1024 * 1024))
    assert big.output.strip() == str(3 * 1024 * 1024)
    # Without stdin, a command reading it gets EOF at once instead of hanging.
    empty = await sandbox.exec("cat; echo done", timeout=10)
    assert empty.output == "done\n" and not empty.timed_out


async def test_on_output_streams_chunks_before_the_command_ends(sandbox: LocalSandbox) -> None:
    chunks: list[tuple[float, str]] = []
    result = await sandbox.exec(
        "for i in 1 2 3; do echo $i; sleep 0.2; done",
        on_output=lambda text: chunks.append((time.monotonic(), text)),
    )
    returned = time.monotonic()
    assert result.exit_code == 0
    assert result.output == "1\n2\n3\n"
    assert "".join(text for _, text in chunks) == result.output
    assert len(chunks) >= 2
    first_callback = chunks[0][0]
    # The first line arrived while the command still had >= 0.4 s of sleeping ahead of it.
    assert returned - first_callback > 0.3, (returned - first_callback, chunks)


# --- isolation --------------------------------------------------------------------------------
async def test_no_network_even_to_a_host_listener_on_loopback(sandbox: LocalSandbox) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        # The listener is reachable from the host itself ...
        with socket.create_connection(("127.0.0.1", port), 2):
            conn, _ = listener.accept()
            conn.close()
        # ... but not from inside the sandbox.
        result = await sandbox.exec(
            f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2)\"",
            timeout=20,
        )
        assert result.exit_code != 0, result.output
        assert "Error" in result.output, result.output
        listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()

    # No interface other than loopback exists in the sandbox's network namespace.
    interfaces = await sandbox.exec("ls /sys/class/net 2>/dev/null || cat /proc/net/dev")
    assert "eth" not in interfaces.output and "ens" not in interfaces.output, interfaces.output


async def test_the_root_is_read_only(sandbox: LocalSandbox) -> None:
    name = f"backspace-{marker()}"
    for path in (f"/{name}", f"/usr/{name}", f"/etc/{name}", f"/opt/{name}", f"/usr/bin/{name}"):
        result = await sandbox.exec(f"touch {path}")
        assert result.exit_code != 0, (path, result.output)
        assert any(
            words in result.output
            for words in ("Read-only file system", "denied", "No such file")  # no /opt at all
        ), result.output
        assert not Path(path).exists()
    # ... while the workspace, /tmp and home are writable.
    writable = await sandbox.exec(f"touch /workspace/a /tmp/b {HOME}/c && echo ok")
    assert writable.output == "ok\n"


async def test_tmp_is_private(sandbox: LocalSandbox) -> None:
    host_file = Path(tempfile.gettempdir()) / f"backspace-host-only-{marker()}"
    host_file.write_text("host secret")
    try:
        result = await sandbox.exec(
            f"test -e {host_file} && echo visible || echo absent; ls -A /tmp"
        )
        assert result.output == "absent\n", result.output
        # And what the sandbox writes to its /tmp stays in its own directory.
        await sandbox.exec("echo inner > /tmp/inner.txt")
        assert not (Path(tempfile.gettempdir()) / "inner.txt").exists()
        assert (sandbox.base / "tmp" / "inner.txt").read_text() == "inner\n"
    finally:
        host_file.unlink()


async def test_own_pid_namespace(sandbox: LocalSandbox) -> None:
    result = await sandbox.exec(
        "ls /proc | grep -E '^[0-9]+$' | wc -l; cat /proc/1/comm; "
        "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"
    )
    lines = result.output.splitlines()
    count = int(lines[0])
    host_count = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit())
    assert 1 <= count <= 6, result.output
    assert host_count > count
    assert lines[1] == "bwrap"  # PID 1 is bubblewrap's init, not the host's
    assert "pytest" not in result.output


async def test_nothing_of_the_host_but_system_dirs_is_visible(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    (tmp_path / "host.txt").write_text("host")
    cwd = os.getcwd()
    checks = [str(tmp_path), str(tmp_path / "host.txt"), "/root", "/root/.bashrc", cwd, "/var"]
    script = "; ".join(f"test -e '{p}' && echo 'VISIBLE {p}'" for p in checks) + "; true"
    result = await sandbox.exec(script)
    assert result.output == "", result.output

    listing = (await sandbox.exec("ls -A /")).output.split()
    allowed = {d.lstrip("/") for d in SYSTEM_DIRS} | {
        "etc",
        "proc",
        "dev",
        "tmp",
        "home",
        "workspace",
    }
    assert set(listing) <= allowed, listing
    assert "usr" in listing and "workspace" in listing
    home = (await sandbox.exec("ls -A /home")).output.split()
    assert home == ["agent"]


async def test_runs_unprivileged(sandbox: LocalSandbox) -> None:
    result = await sandbox.exec("id -u; cat /etc/shadow >/dev/null 2>&1 && echo READABLE; true")
    assert result.output.splitlines()[0] != "0"
    assert "READABLE" not in result.output


async def test_environment_is_the_allowlist_only(
    sandbox: LocalSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-123456")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secrettoken987654")
    result = await sandbox.exec("env")
    assert result.exit_code == 0
    for leaked in ("ANTHROPIC_API_KEY", "sk-ant-secret-123456", "GITHUB_TOKEN", "ghp_secret"):
        assert leaked not in result.output
    variables = dict(line.split("=", 1) for line in result.output.splitlines())
    allowlist = sandbox_environment(HOME)
    assert set(variables) - BASH_OWN_VARIABLES == set(allowlist), variables
    for key, value in allowlist.items():
        assert variables[key] == value


# --- files and symlinks -----------------------------------------------------------------------
async def test_write_and_read_round_trip(sandbox: LocalSandbox) -> None:
    data = bytes(range(256)) * 8 + b"\x00\xff\n\r"
    await sandbox.write_file("a/b/c/file.bin", data)
    assert await sandbox.read_file("a/b/c/file.bin") == data
    assert await sandbox.read_file("/workspace/a/b/c/file.bin") == data
    assert (sandbox.base / "workspace" / "a" / "b" / "c" / "file.bin").read_bytes() == data

    await sandbox.write_file("/workspace/deep/er/x.txt", "héllo\n".encode())
    assert (await sandbox.exec("cat deep/er/x.txt")).output == "héllo\n"
    await sandbox.write_file("/workspace/deep/er/x.txt", b"")  # overwrite, also empty
    assert await sandbox.read_file("deep/er/x.txt") == b""

    with pytest.raises(SandboxError):
        await sandbox.read_file("a/b/c/file.bin", max_bytes=100)


async def test_missing_files_and_directories(sandbox: LocalSandbox) -> None:
    with pytest.raises(FileNotFoundError):
        await sandbox.read_file("nope.txt")
    with pytest.raises(FileNotFoundError):
        await sandbox.read_file("/workspace/no/such/dir/file")
    await sandbox.exec("mkdir -p dir/sub")
    with pytest.raises(IsADirectoryError):
        await sandbox.read_file("dir")
    with pytest.raises(IsADirectoryError):
        await sandbox.read_file("/workspace")
    with pytest.raises(IsADirectoryError):
        await sandbox.write_file("dir/sub", b"x")


async def test_symlinks_to_host_files_cannot_be_read(sandbox: LocalSandbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("HOST-SECRET-CONTENT")
    bashrc = Path("/root/.bashrc")
    planted = await sandbox.exec(
        f"ln -s {secret} to-secret && ln -s {bashrc} to-bashrc && ln -s /root to-root-dir && "
        f"ln -s {tmp_path} to-tmp-path && ln -s /etc/shadow to-shadow"
    )
    assert planted.exit_code == 0, planted.output

    for link in (
        "to-secret",
        "/workspace/to-bashrc",
        "to-root-dir/.bashrc",
        "to-tmp-path/secret.txt",
    ):
        with pytest.raises(FileNotFoundError):
            await sandbox.read_file(link)
    with pytest.raises(FileNotFoundError):  # /etc/shadow is not in the sandbox's view at all
        await sandbox.read_file("to-shadow")

    # Even a symlink planted on the host side is resolved in the sandbox's view.
    os.symlink(secret, sandbox.base / "workspace" / "host-planted")
    with pytest.raises(FileNotFoundError):
        await sandbox.read_file("host-planted")
    assert secret.read_text() == "HOST-SECRET-CONTENT"


async def test_writes_through_symlinks_never_touch_the_host(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("original")
    outside_stat = outside.stat()
    not_yet = tmp_path / "not-yet.txt"
    hostname = Path("/etc/hostname")
    hostname_before = (
        (hostname.read_bytes(), hostname.stat().st_mtime_ns) if hostname.exists() else None
    )

    planted = await sandbox.exec(
        f"ln -s {outside} to-outside && ln -s {not_yet} to-not-yet && "
        f"ln -s {hostname} to-hostname && ln -s /etc to-etc && ln -s {tmp_path} to-tmp-path"
    )
    assert planted.exit_code == 0, planted.output

    for link in ("to-outside", "to-not-yet", "to-hostname", "to-etc/backspace-planted"):
        with contextlib.suppress(SandboxError):
            await sandbox.write_file(link, b"pwned")
    # Through a symlinked directory the write lands in the sandbox's private /tmp, not the host.
    with contextlib.suppress(SandboxError):
        await sandbox.write_file("to-tmp-path/sub/new.txt", b"pwned")

    assert outside.read_text() == "original"
    assert outside.stat().st_mtime_ns == outside_stat.st_mtime_ns
    assert not not_yet.exists()
    assert not (tmp_path / "sub").exists()
    assert not Path("/etc/backspace-planted").exists()
    if hostname_before is not None:
        assert (hostname.read_bytes(), hostname.stat().st_mtime_ns) == hostname_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside.txt"]


async def test_dot_dot_paths_cannot_escape(sandbox: LocalSandbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("HOST-SECRET-CONTENT")
    up = "../" * 12
    with pytest.raises(FileNotFoundError):
        await sandbox.read_file(up + str(secret).lstrip("/"))
    with pytest.raises(FileNotFoundError):
        await sandbox.read_file("/workspace/../root/.bashrc")
    with pytest.raises(FileNotFoundError):
        await sandbox.read_file(f"/workspace/../../..{secret}")

    for path in (up + str(tmp_path / "escaped.txt").lstrip("/"), "../escaped.txt"):
        with contextlib.suppress(SandboxError):
            await sandbox.write_file(path, b"pwned")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (sandbox.base / "escaped.txt").exists()
    assert not (sandbox.base.parent / "escaped.txt").exists()
    assert secret.read_text() == "HOST-SECRET-CONTENT"


# --- limits -----------------------------------------------------------------------------------
async def test_timeout_kills_the_whole_tree(sandbox: LocalSandbox) -> None:
    mark = marker()
    command = f"sleep 301.{mark} & sleep 302.{mark} & echo started; wait"
    started = time.monotonic()
    task = asyncio.create_task(sandbox.exec(command, timeout=1.5))
    # While it runs the processes are visible from the host (so the scan below can see them).
    assert await wait_for_host_process(f"301.{mark}"), "background sleep not found on the host"
    assert processes_running(f"302.{mark}")
    result = await task
    elapsed = time.monotonic() - started

    assert result.timed_out
    assert result.exit_code == 124
    assert result.output.startswith("started\n")
    assert "timed out after 1.5 s" in result.output
    assert 1.4 <= elapsed < 4.0, elapsed
    assert 1400 <= result.duration_ms < 4000
    assert processes_running(mark) == []
    assert processes_running(str(sandbox.base)) == []


async def test_long_output_is_cut_in_the_middle(sandbox: LocalSandbox) -> None:
    script = "import sys; sys.stdout.write('HEAD-MARK' + 'x' * 200000 + 'TAIL-MARK')"
    result = await sandbox.exec(f'python3 -c "{script}"', max_output=2000)
    assert result.exit_code == 0
    assert result.truncated
    assert result.output.startswith("HEAD-MARK")
    assert result.output.endswith("TAIL-MARK")
    assert "characters cut" in result.output
    assert f"{200018 - 2000} characters cut" in result.output
    assert len(result.output) < 2600

    small = await sandbox.exec("echo short", max_output=2000)
    assert not small.truncated and small.output == "short\n"


async def test_file_size_limit(sandbox_root: Path) -> None:
    provider = LocalSandboxProvider(sandbox_root, LocalLimits(max_file_mb=1))
    sandbox = await provider.create("run-fsize")
    try:
        big = await sandbox.exec("head -c 700M /dev/zero > big")
        assert big.exit_code != 0, big.output
        assert (sandbox.base / "workspace" / "big").stat().st_size <= 1024 * 1024
        small = await sandbox.exec("head -c 500K /dev/zero > small && stat -c %s small")
        assert small.exit_code == 0 and small.output == f"{500 * 1024}\n"
        with pytest.raises(SandboxError):
            await sandbox.write_file("too-big.bin", b"y" * (2 * 1024 * 1024))
    finally:
        await sandbox.close()


async def test_memory_limit(sandbox_root: Path) -> None:
    provider = LocalSandboxProvider(sandbox_root, LocalLimits(memory_mb=256))
    sandbox = await provider.create("run-mem")
    try:
        small = await sandbox.exec("python3 -c \"b = bytearray(50 * 1024**2); print('ok')\"")
        assert small.exit_code == 0 and small.output == "ok\n", small.output
        big = await sandbox.exec("python3 -c \"b = bytearray(2 * 1024**3); print('ok')\"")
        assert big.exit_code != 0
        assert "MemoryError" in big.output
    finally:
        await sandbox.close()


# --- close and orphans ------------------------------------------------------------------------
async def test_close_deletes_the_directory_and_is_idempotent(
    provider: LocalSandboxProvider,
) -> None:
    sandbox = await provider.create("run-close")
    await sandbox.write_file("some/file.txt", b"data")
    assert (sandbox.base / "workspace" / "some" / "file.txt").exists()
    await sandbox.close()
    assert not sandbox.base.exists()
    await sandbox.close()
    assert not sandbox.base.exists()
    with pytest.raises(SandboxError):
        await sandbox.exec("true")


async def test_close_kills_a_running_command(provider: LocalSandboxProvider) -> None:
    sandbox = await provider.create("run-kill")
    mark = marker()
    task = asyncio.create_task(sandbox.exec(f"sleep 100.{mark}", timeout=60))
    try:
        assert await wait_for_host_process(f"100.{mark}")
        started = time.monotonic()
        await sandbox.close()
        result = await asyncio.wait_for(task, 5)
        assert time.monotonic() - started < 3
        assert result.exit_code != 0
        assert processes_running(mark) == []
        assert not sandbox.base.exists()
    finally:
        task.cancel()
        await sandbox.close()


async def test_cleanup_orphans_keeps_live_runs(provider: LocalSandboxProvider) -> None:
    live = await provider.create("live")
    verifying = await provider.create("live-verify")  # the live run's verification sandbox
    dead = [await provider.create(name) for name in ("dead-1", "dead-2", "dead-3-verify")]
    try:
        await live.write_file("keep.txt", b"keep")
        assert await provider.cleanup_orphans({"live"}) == 3
        assert live.base.exists() and verifying.base.exists()
        assert await live.read_file("keep.txt") == b"keep"
        assert (await verifying.exec("true")).exit_code == 0
        for sandbox in dead:
            assert not sandbox.base.exists()
        assert sorted(p.name for p in provider.root.iterdir()) == ["live", "live-verify"]
        assert await provider.cleanup_orphans({"live"}) == 0
    finally:
        await live.close()
        await verifying.close()
        for sandbox in dead:
            await sandbox.close()


async def test_cleanup_orphans_kills_what_still_runs_in_them(
    provider: LocalSandboxProvider,
) -> None:
    """A crashed server's sandbox processes are killed, not only their directories removed."""
    orphan = await provider.create("orphan-with-a-process")
    survivor = subprocess.Popen(
        ["bash", "-c", "sleep 60; true", "bash", str(orphan.base / "workspace")],
        start_new_session=True,
    )
    try:
        assert await provider.cleanup_orphans(set()) == 1
        assert survivor.wait(5) == -signal.SIGKILL
        assert not orphan.base.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(survivor.pid, signal.SIGKILL)  # its own `sleep` too
        survivor.wait()
        await orphan.close()


async def test_cleanup_orphans_without_a_root(tmp_path: Path) -> None:
    assert await LocalSandboxProvider(tmp_path / "never-created").cleanup_orphans(set()) == 0


# --- availability -----------------------------------------------------------------------------
async def test_without_bubblewrap_the_provider_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("bwrap") is None

    provider = LocalSandboxProvider(tmp_path / "root")
    usable, message = provider.check()
    assert not usable
    assert "bubblewrap" in message
    assert "BACKSPACE_ALLOW_UNSANDBOXED" in message
    with pytest.raises(SandboxUnavailable):
        await provider.create("run-x")
    assert not (tmp_path / "root" / "run-x").exists()

    unsafe = LocalSandboxProvider(tmp_path / "root", allow_unsandboxed=True)
    usable, message = unsafe.check()
    assert usable
    assert message.startswith("UNSANDBOXED")
    assert not unsafe.isolated


async def test_unsandboxed_mode_still_scrubs_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only prlimit, bash and a few tools on PATH, no bwrap: commands run on the host."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("prlimit", "bash", "env", "cat", "mkdir", "dirname", "pwd"):
        found = shutil.which(tool)
        assert found is not None, tool
        (tools / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-123456")

    provider = LocalSandboxProvider(tmp_path / "root", allow_unsandboxed=True)
    sandbox = await provider.create("run-unsafe")
    try:
        assert not sandbox.isolated
        assert sandbox.workdir == str(sandbox.base / "workspace")
        result = await sandbox.exec("pwd; env")
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[0] == sandbox.workdir
        assert "sk-ant-secret-123456" not in result.output
        assert "ANTHROPIC_API_KEY" not in result.output
        await sandbox.write_file("/workspace/x/y.txt", b"data")
        assert (sandbox.base / "workspace" / "x" / "y.txt").read_bytes() == b"data"
        assert await sandbox.read_file("x/y.txt") == b"data"
    finally:
        await sandbox.close()
    assert not sandbox.base.exists()
