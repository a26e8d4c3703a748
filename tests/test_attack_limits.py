"""Attacks on what sandboxes share: memory, /dev/shm, disk, the process table, the CPU.

Security issue item 4: the limits were per-process rlimits, so a sandbox held far more memory
than its limit across processes, filled the host disk and /dev/shm, and (all sandboxes share
one uid) one run's processes stopped another run's sandbox from starting. Each test below is
the attack, run for real: real bubblewrap, real cgroups (the tests run as root), real tmpfs.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from backspace.app import build_service
from backspace.config import load_settings
from backspace.orchestrator.events import RunStatus, Stage, now_iso
from backspace.orchestrator.sandboxes.local import LocalLimits, LocalSandbox, LocalSandboxProvider
from backspace.orchestrator.store import NewEvent, Run, RunEnd, SqliteStore, StoreFull
from tests.conftest import ServerFactory, make_repo
from tests.fakes.anthropic import FakeAnthropic
from tests.helpers import backspace, cli_env
from tests.records import start

MB = 1024 * 1024
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and tmpfs mounts need root")

# Small limits, so that the attacks are quick.
DISK_MB = 48
SHM_MB = 16
LIMITS = LocalLimits(
    memory_mb=256, max_processes=40, max_file_mb=32, disk_mb=DISK_MB, shm_mb=SHM_MB
)


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    parent = Path(tempfile.mkdtemp(prefix="backspace-test-limits-"))
    parent.chmod(0o711)
    try:
        yield parent / "root"
    finally:
        subprocess.run(["umount", "-R", "-l", str(parent / "root")], capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def provider(root: Path) -> Iterator[LocalSandboxProvider]:
    provider = LocalSandboxProvider(root, LIMITS)
    usable, message = provider.check()
    assert usable and provider.isolated, message
    yield provider
    asyncio.run(provider.aclose())


# `sandbox` (tests/conftest.py) makes each test's sandbox from this module's provider.


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as info:
        return [line.split()[4] for line in info]


# --- memory -----------------------------------------------------------------------------------
async def test_memory_is_limited_for_the_sandbox_as_a_whole(sandbox: LocalSandbox) -> None:
    """Four processes of 100 MB each (each under the per-process limit) exceed 256 MB together."""
    hold = "import time; b = bytearray(100 * 2**20); print('held', flush=True); time.sleep(5)"
    result = await sandbox.exec(
        f"for i in 1 2 3 4; do python3 -c {hold!r} & done; wait", timeout=60
    )
    held = result.output.splitlines().count("held")
    assert held < 4 and "Killed" in result.output, result.output


async def test_shm_is_small_and_bounded(sandbox: LocalSandbox) -> None:
    """/dev/shm was the host's RAM without a limit: 300 MB went in (files under 32 MB each)."""
    result = await sandbox.exec(
        "for i in $(seq 10); do head -c 30M /dev/zero > /dev/shm/f$i || break; done; cat /dev/shm/f* | wc -c",
        timeout=60,
    )
    written = int(result.output.strip().splitlines()[-1])
    assert written <= SHM_MB * MB, result.output
    assert "No space left on device" in result.output


async def test_tmpfs_writes_count_toward_the_memory_limit(provider: LocalSandboxProvider) -> None:
    """A workspace bigger than the memory limit still cannot hold more than the memory limit."""
    wide = LocalSandboxProvider(
        provider.root, replace(LIMITS, memory_mb=64, disk_mb=256), cgroup_root=provider.cgroup_root
    )
    assert wide.check()[0]
    sandbox = await wide.create(f"t-{uuid.uuid4().hex[:10]}")
    try:
        result = await sandbox.exec(
            "for i in $(seq 12); do head -c 10M /dev/zero > f$i || break; done; du -sm .",
            timeout=60,
        )
        used = sum(f.stat().st_size for f in (sandbox.base / "workspace").iterdir())
        assert used <= 64 * MB, result.output
    finally:
        await sandbox.close()


# --- disk -------------------------------------------------------------------------------------
async def test_the_workspace_is_size_limited_and_never_touches_the_host_disk(
    sandbox: LocalSandbox, root: Path
) -> None:
    """333 MB of files under a 32 MB per-file limit went to the disk the database is on."""
    before = shutil.disk_usage(root.parent).free
    result = await sandbox.exec(
        "for i in $(seq 10); do head -c 10M /dev/zero > /workspace/f$i || break; done;"
        "for i in $(seq 10); do head -c 10M /dev/zero > /tmp/g$i || break; done",
        timeout=60,
    )
    assert "No space left on device" in result.output, result.output
    base = sandbox.base
    used = sum(f.stat().st_size for d in ("workspace", "tmp") for f in (base / d).iterdir())
    assert used <= DISK_MB * MB
    # The run's files live on their own filesystem, not the host disk.
    assert os.stat(base).st_dev != os.stat(root.parent).st_dev
    assert str(base) in mount_points()
    assert before - shutil.disk_usage(root.parent).free < 16 * MB


# --- processes --------------------------------------------------------------------------------
async def test_processes_of_one_run_do_not_stop_another_run_from_starting(
    provider: LocalSandboxProvider,
) -> None:
    """A fork bomb in run A (bounded by its own limit) leaves run B able to start and run."""
    a = await provider.create(f"a-{uuid.uuid4().hex[:10]}")
    b = await provider.create(f"b-{uuid.uuid4().hex[:10]}")
    try:
        bomb = asyncio.create_task(
            a.exec("for i in $(seq 100); do sleep 20 & done 2>/dev/null; wait", timeout=30)
        )
        await asyncio.sleep(2)  # A now holds every process it may have
        result = await b.exec("echo B runs; ( sleep 0.1 & wait ); echo B forks", timeout=20)
        assert result.exit_code == 0 and "B forks" in result.output, result.output
        bomb.cancel()
    finally:
        await a.close()
        await b.close()


async def test_processes_of_one_run_are_invisible_and_unreachable_from_another(
    provider: LocalSandboxProvider,
) -> None:
    a = await provider.create(f"a-{uuid.uuid4().hex[:10]}")
    b = await provider.create(f"b-{uuid.uuid4().hex[:10]}")
    mark = str(uuid.uuid4().int % 10**9).rjust(9, "1")
    try:
        task = asyncio.create_task(a.exec(f"sleep {mark}", timeout=30))
        await asyncio.sleep(1)
        seen = await b.exec("cat /proc/[0-9]*/cmdline | tr '\\0' ' '; pkill -9 sleep; echo done")
        assert mark not in seen.output
        assert not task.done()  # B could not kill it either
        task.cancel()
    finally:
        await a.close()
        await b.close()


# --- the cgroup's life ------------------------------------------------------------------------
async def test_every_command_runs_in_the_runs_cgroup_which_is_gone_after_close(
    provider: LocalSandboxProvider,
) -> None:
    sandbox = await provider.create(f"t-{uuid.uuid4().hex[:10]}")
    group = sandbox.cgroup
    assert group is not None and group.dirs
    task = asyncio.create_task(sandbox.exec("sleep 30 & sleep 30 & wait", timeout=40))
    await asyncio.sleep(1)
    for directory in group.dirs:
        assert len((directory / "cgroup.procs").read_text().split()) >= 3, directory
    await sandbox.close()
    task.cancel()
    for directory in group.dirs:
        assert not directory.exists(), directory
        assert not directory.parent.exists(), "the last run out leaves no empty parent group"
    assert str(sandbox.base) not in mount_points()
    assert not sandbox.base.exists()


async def test_the_orphan_sweep_removes_leftover_cgroups_and_mounts(root: Path) -> None:
    first = LocalSandboxProvider(root, LIMITS)
    assert first.check()[0]
    sandbox = await first.create(f"t-{uuid.uuid4().hex[:10]}")
    task = asyncio.create_task(sandbox.exec("sleep 60", timeout=70))
    await asyncio.sleep(1)
    group = sandbox.cgroup
    assert group is not None
    # The server "crashed": a new provider on the same root sweeps what it left.
    second = LocalSandboxProvider(root, LIMITS)
    assert second.check()[0]
    assert await second.cleanup_orphans(set()) >= 1
    for directory in group.dirs:
        assert not directory.exists(), directory
    assert str(sandbox.base) not in mount_points()
    await asyncio.wait_for(task, 10)  # its command was killed
    await sandbox.close()


# --- reporting --------------------------------------------------------------------------------
def test_without_cgroups_the_degraded_limits_are_reported(tmp_path: Path, root: Path) -> None:
    """A cgroup root with no cgroup file system (say, no delegation): every lost limit is named."""
    nowhere = tmp_path / "no-cgroups"
    nowhere.mkdir()
    nowhere.chmod(0o555)
    # Without a pids cgroup the process limit is RLIMIT_NPROC, which counts every process of the
    # sandbox user on the machine: other tests' sandboxes running meanwhile must not make the
    # probe's own fork fail, so this provider's limit is as high as this process may set it.
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    limits = replace(LIMITS, max_processes=hard if hard != resource.RLIM_INFINITY else 1 << 22)
    provider = LocalSandboxProvider(root, limits, cgroup_root=nowhere)
    usable, message = provider.check()
    assert usable, message
    assert "degraded" in message and "memory" in message
    report = provider.limits_report()
    assert report["cgroup"] == "none"
    assert {"memory", "processes", "cpu"} <= set(report["degraded"])
    settings = load_settings(BACKSPACE_DB=str(tmp_path / "b.db"), BACKSPACE_SANDBOX="local")
    services = replace(build_service(settings), sandboxes=provider)
    try:
        health = asyncio.run(services.health())
        assert health["sandbox"]["limits"]["degraded"]["memory"]
        assert "cgroup" in health["sandbox"]["limits"]["degraded"]["memory"]
    finally:
        asyncio.run(services.store.aclose())


@pytest.mark.e2e  # it starts the real server or the CLI
def test_health_shows_the_limits_in_force(server_factory: ServerFactory) -> None:
    server = server_factory(
        {"BACKSPACE_SANDBOX": "local", "BACKSPACE_SANDBOX_DISK_MB": "100"}, name="limits"
    )
    limits = httpx.get(f"{server.url}/health", timeout=10).json()["sandbox"]["limits"]
    assert limits["cgroup"] in ("v1", "v2")
    assert limits["degraded"] == {}
    assert limits["disk_mb"] == 100 and limits["memory_mb"] == 4096


@pytest.mark.e2e  # it starts the real server or the CLI
def test_doctor_shows_the_limits_in_force(tmp_path: Path) -> None:
    env = cli_env(tmp_path, BACKSPACE_SANDBOX="local", BACKSPACE_SANDBOX_CPUS="1.5", COLUMNS="300")
    result = backspace(tmp_path, "doctor", env=env)
    assert re.search(r"sandbox limits\s+│ ok ", result.stdout), result.stdout
    assert "4096 MB memory" in result.stdout and "1.5 CPUs" in result.stdout


# --- the store's disk -------------------------------------------------------------------------
@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 24 MB file system for the database, so that "nearly full" is quick to reach."""
    where = Path(tempfile.mkdtemp(prefix="backspace-test-small-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.e2e  # it starts the real server or the CLI
def test_a_nearly_full_database_disk_refuses_new_runs_clearly(
    server_factory: ServerFactory, small_disk: Path, repos: Path, fake_model: FakeAnthropic
) -> None:
    """A full disk made the store fail mid-run (events lost); now new runs are refused first."""
    make_repo(repos, "widgets")
    env = {
        "ANTHROPIC_API_KEY": "sk-ant-api03-test-key-0123456789",
        "ANTHROPIC_BASE_URL": fake_model.url,
        "BACKSPACE_LOCAL_REPOS": str(repos),
        "BACKSPACE_DB": str(small_disk / "backspace.db"),
        "BACKSPACE_DB_HEADROOM_MB": "8",
    }
    server = server_factory(env, name="small-disk")
    assert httpx.get(f"{server.url}/health", timeout=10).json()["store"]["ok"]
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"x" * (free - 4 * MB))  # what a sandbox could do
    response = httpx.post(
        f"{server.url}/api/code",
        json={"repo_url": "local:widgets", "prompt": "anything"},
        headers={"accept": "application/json"},
        timeout=30,
    )
    assert response.status_code == 503, response.text
    detail = response.json()["detail"]
    assert "BACKSPACE_DB_HEADROOM_MB" in detail and "free" in detail, detail
    store = httpx.get(f"{server.url}/health", timeout=10).json()["store"]
    assert not store["ok"] and "BACKSPACE_DB_HEADROOM_MB" in store["message"]


async def test_below_the_headroom_running_runs_still_record_their_events(
    small_disk: Path,
) -> None:
    store = SqliteStore(small_disk / "backspace.db", headroom_bytes=8 * MB)
    try:
        now = now_iso()
        running = Run(
            id="r1", created_at=now, updated_at=now, status=RunStatus.RUNNING, stage=Stage.AGENT,
            repo_url="local:widgets", prompt="p", source="api",
        )  # fmt: skip
        fence = await start(store, running, ("start", {}))
        free = shutil.disk_usage(small_disk).free
        (small_disk / "filler").write_bytes(b"x" * (free - 4 * MB))
        with pytest.raises(StoreFull, match="BACKSPACE_DB_HEADROOM_MB=8"):
            await start(store, replace(running, id="r2"), ("start", {}))
        end = RunEnd(status=RunStatus.FAILED, duration_ms=1)
        await store.finish(fence, end, [NewEvent("complete", {"message": "x" * 10_000})])
        assert [e.type for e in await store.events_after("r1")] == ["start", "complete"]
        assert await store.get_run("r2") is None
        assert (await store.get_run("r1")).status == RunStatus.FAILED  # type: ignore[union-attr]
    finally:
        store.close()
