"""Set-up layers of the local backend, attacked for real: real bubblewrap, overlayfs, tmpfs, cp.

A layer is kept in a cache directory; sandboxes start from it under an overlay. Each test is
an attack on that: a sandbox that writes, deletes or wipes what it started from, a cache too
small for a layer, a disk that fills mid-copy, two runs saving one key, a crash that leaves
overlays mounted, and the sandbox user reaching for the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from backspace.app import check_outside_sandbox_view
from backspace.config import SettingsError, load_settings
from backspace.orchestrator.environment.layer import Layer, LayerManifest, LayerStoreFull
from backspace.orchestrator.environment.local_layers import LocalLayerStore
from backspace.orchestrator.sandboxes.local import (
    UNPRIVILEGED_UID,
    LocalSandbox,
    LocalSandboxProvider,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlays and tmpfs need root")


@pytest.fixture(scope="module")
def parent() -> Iterator[Path]:
    """A fresh 0711 directory directly under /tmp (uid 65534 must reach the sandbox root)."""
    path = Path(tempfile.mkdtemp(prefix="backspace-test-layers-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        for point in mounts_under(path):
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def provider(parent: Path) -> LocalSandboxProvider:
    provider = LocalSandboxProvider(
        parent / "root", layers=LocalLayerStore(parent / "cache", limit_mb=1024)
    )
    usable, message = provider.check()
    assert usable and provider.isolated, message
    return provider


@pytest.fixture
def store(provider: LocalSandboxProvider) -> LocalLayerStore:
    assert isinstance(provider.layers, LocalLayerStore)
    return provider.layers


@pytest.fixture
async def sandbox(provider: LocalSandboxProvider) -> AsyncIterator[LocalSandbox]:
    sandbox = await provider.create(run_id())
    try:
        yield sandbox
    finally:
        await sandbox.close()


def run_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def key() -> str:
    return uuid.uuid4().hex


def manifest(name: str) -> LayerManifest:
    return LayerManifest(key=name, base_sha="0" * 40, environment_paths=(".venv",))


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, read from /proc/self/mountinfo by the test itself."""
    top = str(path)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split(" ")[4].replace("\\040", " ")
        if point == top or point.startswith(top + "/"):
            points.append(point)
    return points


def tree_digest(path: Path) -> str:
    """Every name, mode, owner, link target and content below `path`."""
    digest = hashlib.sha256()
    for entry in sorted(path.rglob("*")):
        info = entry.lstat()
        digest.update(f"{entry.relative_to(path)}|{info.st_mode}|{info.st_uid}|".encode())
        if entry.is_symlink():
            digest.update(os.readlink(entry).encode())
        elif entry.is_file():
            digest.update(entry.read_bytes())
    return digest.hexdigest()


async def run(sandbox: LocalSandbox, command: str) -> str:
    result = await sandbox.exec(command, timeout=60)
    assert result.exit_code == 0, result.output
    return result.output


async def layer_of(
    provider: LocalSandboxProvider, store: LocalLayerStore, name: str, setup: str
) -> Layer:
    """A layer saved from a real sandbox after `setup` ran in it."""
    sandbox = await provider.create(run_id())
    try:
        await run(sandbox, setup)
        return await store.save(sandbox, manifest(name))
    finally:
        await sandbox.close()


SETUP = (
    "mkdir -p .venv/lib && echo installed > .venv/lib/dep.py && echo base > app.py "
    "&& mkdir -p ~/.cache/pip && echo wheel > ~/.cache/pip/w && ln -s app.py link.py"
)


# --- a layer and the sandboxes started from it -------------------------------------------------
async def test_a_sandbox_from_a_layer_sees_what_setup_left(
    provider: LocalSandboxProvider, store: LocalLayerStore
) -> None:
    name = key()
    saved = await layer_of(provider, store, name, SETUP)
    assert saved.key == name and saved.size_bytes > 0
    found = await store.find(name)
    assert found == saved
    sandbox = await provider.create(run_id(), layer=found)
    try:
        out = await run(
            sandbox,
            "cat .venv/lib/dep.py app.py ~/.cache/pip/w && readlink link.py && id -u "
            "&& echo new > app.py && touch ~/.cache/more ~/top new.py && cat app.py",
        )
        assert out.split() == ["installed", "base", "wheel", "app.py", "1000", "new"]
    finally:
        await sandbox.close()
    assert (Path(saved.location) / "workspace" / "app.py").read_text() == "base\n"
    assert not (Path(saved.location) / "home" / ".cache" / "more").exists()


async def test_writes_deletions_and_a_wipe_never_reach_the_layer_nor_a_sibling(
    provider: LocalSandboxProvider, store: LocalLayerStore
) -> None:
    layer = await layer_of(provider, store, key(), SETUP)
    before = tree_digest(Path(layer.location))
    attacker, sibling = await asyncio.gather(
        provider.create(run_id(), layer=layer), provider.create(run_id(), layer=layer)
    )
    try:
        await run(
            attacker,
            "echo evil > .venv/lib/dep.py; rm app.py; echo planted > ~/.cache/pip/w; "
            "chmod 000 .venv/lib/dep.py; mv ~/.cache ~/moved; ln -sf /etc/passwd link.py; "
            "rm -rf /workspace/* /workspace/.[!.]* ~/* ~/.[!.]* 2>/dev/null; "
            'test -z "$(ls -A /workspace)" && test -z "$(ls -A ~)"',
        )
        out = await run(sibling, "cat .venv/lib/dep.py app.py ~/.cache/pip/w; readlink link.py")
        assert out.split() == ["installed", "base", "wheel", "app.py"]
    finally:
        await asyncio.gather(attacker.close(), sibling.close())
    assert tree_digest(Path(layer.location)) == before
    again = await provider.create(run_id(), layer=layer)
    try:
        assert (await run(again, "cat .venv/lib/dep.py")).strip() == "installed"
    finally:
        await again.close()


async def test_the_overlay_names_no_host_path_and_allows_no_setuid(
    provider: LocalSandboxProvider, store: LocalLayerStore
) -> None:
    """The sandbox reads its mount table: the overlay's options must not reveal the cache or
    the run directory; a setuid file kept in a layer must not run setuid."""
    layer = await layer_of(provider, store, key(), "cp /usr/bin/id myid && chmod u+s myid")
    assert os.stat(Path(layer.location) / "workspace" / "myid").st_mode & 0o4000
    sandbox = await provider.create(run_id(), layer=layer)
    try:
        table = await run(sandbox, "cat /proc/self/mountinfo")
        assert "overlay" in table
        assert str(provider.root) not in table and str(store.directory) not in table
        assert "lowerdir=/proc/self/fd/" in table
        host = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        overlays = [line for line in host if str(sandbox.base) in line and "overlay" in line]
        assert len(overlays) == 2 and all("nosuid" in line.split()[5] for line in overlays)
    finally:
        await sandbox.close()


async def test_a_symlink_planted_in_the_workspace_is_kept_as_a_link_never_followed(
    provider: LocalSandboxProvider, store: LocalLayerStore
) -> None:
    secret = store.directory.parent / "host-secret"
    secret.write_text("host secret\n")
    layer = await layer_of(
        provider, store, key(), f"ln -s {secret} leak && ln -s /etc/shadow ~/shadow"
    )
    kept = Path(layer.location)
    assert (kept / "workspace" / "leak").is_symlink()
    assert (kept / "home" / "shadow").is_symlink()
    assert b"host secret" not in b"".join(
        p.read_bytes() for p in kept.rglob("*") if p.is_file() and not p.is_symlink()
    )


# --- the cache's size ----------------------------------------------------------------------------
MB = 1024 * 1024


def blob(megabytes: float) -> str:
    return f"head -c {int(megabytes * MB)} /dev/urandom > blob"


async def test_the_least_recently_used_layer_goes_first(
    provider: LocalSandboxProvider, parent: Path
) -> None:
    store = LocalLayerStore(parent / f"lru-{uuid.uuid4().hex[:6]}", limit_mb=3)
    first, second, third = key(), key(), key()
    await layer_of(provider, store, first, blob(1.2))
    await layer_of(provider, store, second, blob(1.2))
    assert await store.find(first) is not None  # used: now the second is the oldest
    await layer_of(provider, store, third, blob(1.2))
    assert await store.find(second) is None
    assert await store.find(first) is not None and await store.find(third) is not None
    assert sorted(p.name for p in store.directory.iterdir()) == sorted([first, third])


async def test_a_layer_in_use_is_never_evicted(
    provider: LocalSandboxProvider, parent: Path
) -> None:
    store = LocalLayerStore(parent / f"lease-{uuid.uuid4().hex[:6]}", limit_mb=3)
    leasing = LocalSandboxProvider(provider.root, layers=store)
    assert leasing.check()[0]
    used, other, newest, last = key(), key(), key(), key()
    layer = await layer_of(provider, store, used, blob(1.2) + " && echo mine > mine")
    sandbox = await leasing.create(run_id(), layer=layer)
    try:
        await layer_of(provider, store, other, blob(1.2))
        await layer_of(provider, store, newest, blob(1.2))  # the oldest is in use: `other` goes
        assert await store.find(other) is None
        assert (await run(sandbox, "cat mine")).strip() == "mine"
    finally:
        await sandbox.close()
    assert (store.directory / used).is_dir()  # (find would count as a use)
    await layer_of(provider, store, last, blob(1.2))  # released: now it can go
    assert await store.find(used) is None
    assert await store.find(newest) is not None and await store.find(last) is not None


async def test_a_layer_bigger_than_the_cache_is_refused_and_leaves_nothing(
    provider: LocalSandboxProvider, parent: Path
) -> None:
    store = LocalLayerStore(parent / f"big-{uuid.uuid4().hex[:6]}", limit_mb=1)
    small = await layer_of(provider, store, key(), "echo small > s")
    with pytest.raises(LayerStoreFull) as caught:
        await layer_of(provider, store, key(), blob(2))
    assert "BACKSPACE_ENV_CACHE_MB" in str(caught.value)
    assert [p.name for p in store.directory.iterdir()] == [small.key]
    assert await store.find(small.key) == small


@pytest.fixture
def small_disk(parent: Path) -> Iterator[Path]:
    """A cache directory on a 4 MB tmpfs: the disk fills long before the 100 MB limit."""
    path = parent / f"disk-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "small", str(path)], check=True)
    try:
        yield path / "cache"
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_a_disk_that_fills_mid_copy_leaves_nothing_and_breaks_nothing(
    provider: LocalSandboxProvider, small_disk: Path
) -> None:
    store = LocalLayerStore(small_disk, limit_mb=100)
    kept = await layer_of(provider, store, key(), "echo kept > k")
    sandbox = await provider.create(run_id())
    try:
        await run(sandbox, blob(6) + " && sha256sum blob > sum")
        with pytest.raises(LayerStoreFull) as caught:
            await store.save(sandbox, manifest(key()))
        message = str(caught.value)
        assert "BACKSPACE_ENV_CACHE_DIR" in message and str(small_disk) in message
        assert [p.name for p in small_disk.iterdir()] == [kept.key]  # no temp dir
        assert shutil.disk_usage(small_disk).used < 1 * MB
        await run(sandbox, "sha256sum -c sum && echo still > fine")  # the sandbox goes on
    finally:
        await sandbox.close()
    found = await store.find(kept.key)
    assert found is not None
    other = await provider.create(run_id(), layer=found)
    try:
        assert (await run(other, "cat k")).strip() == "kept"
    finally:
        await other.close()


async def test_two_runs_saving_one_key_leave_one_whole_layer(
    provider: LocalSandboxProvider, store: LocalLayerStore
) -> None:
    name = key()
    one, two = await asyncio.gather(provider.create(run_id()), provider.create(run_id()))
    try:
        await asyncio.gather(
            run(one, blob(3) + " && echo one > who && echo one > ~/who"),
            run(two, blob(3) + " && echo two > who && echo two > ~/who"),
        )
        first, second = await asyncio.gather(
            store.save(one, manifest(name)), store.save(two, manifest(name))
        )
    finally:
        await asyncio.gather(one.close(), two.close())
    assert first.location == second.location == str(store.directory / name)
    kept = Path(first.location)
    who = (kept / "workspace" / "who").read_text()
    assert who in ("one\n", "two\n") and (kept / "home" / "who").read_text() == who
    assert not [p for p in store.directory.iterdir() if p.name.startswith(".")]


# --- mounts ------------------------------------------------------------------------------------
async def test_close_leaves_no_mount_below_the_sandbox_root(
    provider: LocalSandboxProvider, store: LocalLayerStore
) -> None:
    layer = await layer_of(provider, store, key(), SETUP)
    sandbox = await provider.create(run_id(), layer=layer)
    await run(sandbox, "sleep 30 & echo x > new")
    assert len(mounts_under(sandbox.base)) == 3  # the run's tmpfs, two overlays
    await sandbox.close()
    assert mounts_under(provider.root) == []
    assert not sandbox.base.exists()
    assert not store.leased(layer.key)


async def test_cleanup_orphans_unmounts_a_crashed_runs_overlays(
    provider: LocalSandboxProvider, store: LocalLayerStore
) -> None:
    layer = await layer_of(provider, store, key(), SETUP)
    before = tree_digest(Path(layer.location))
    crashed = await provider.create(run_id(), layer=layer)
    await run(crashed, "echo upper > new && rm app.py")
    assert mounts_under(crashed.base)
    # The server dies: a new one on the same root sweeps what no live run owns.
    restarted = LocalSandboxProvider(provider.root, layers=store)
    assert restarted.check()[0]
    assert await restarted.cleanup_orphans(set()) >= 1
    assert mounts_under(provider.root) == []
    assert not crashed.base.exists()
    assert tree_digest(Path(layer.location)) == before
    await crashed.close()  # the old object's close is harmless, and releases its lease
    assert not store.leased(layer.key)


# --- the cache is the host's -------------------------------------------------------------------
def as_sandbox_user(
    *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """A command as the user sandboxes run as on the host, outside bubblewrap (stronger than
    inside: there, the cache is not even in the view)."""
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={UNPRIVILEGED_UID}",
            f"--regid={UNPRIVILEGED_UID}",
            "--clear-groups",
            "--",
            *argv,
        ],
        capture_output=True,
        check=False,
        env=env,
    )


async def test_the_sandbox_user_cannot_touch_the_cache(
    provider: LocalSandboxProvider, store: LocalLayerStore
) -> None:
    layer = await layer_of(provider, store, key(), SETUP)
    workspace = Path(layer.location) / "workspace"
    before = tree_digest(Path(layer.location))
    for argv in (
        ["ls", str(store.directory)],
        ["touch", str(store.directory / "x")],
        ["sh", "-c", f"echo evil > {workspace}/app.py"],
        ["rm", "-rf", str(workspace / ".venv")],
        ["mv", str(workspace), "/tmp/stolen"],
        ["ln", str(workspace / "app.py"), f"/tmp/hard-{uuid.uuid4().hex}"],
    ):
        assert as_sandbox_user(*argv).returncode != 0, argv
    sandbox = await provider.create(run_id(), layer=layer)
    try:
        out = await sandbox.exec(
            f"ls {store.directory} ; mount -t tmpfs x /workspace ; umount /workspace ; "
            "echo evil > app.py ; cat app.py",
            timeout=30,
        )
        assert "cannot access" in out.output  # the cache is not in the sandbox's view
        assert "mount: /workspace:" in out.output and "umount: /workspace:" in out.output
        assert out.output.rstrip().endswith("evil")  # written, to the run's upper directory
    finally:
        await sandbox.close()
    assert tree_digest(Path(layer.location)) == before
    assert os.stat(store.directory).st_mode & 0o777 == 0o700


async def test_keys_are_hex_names_only(store: LocalLayerStore, sandbox: LocalSandbox) -> None:
    for bad in ("../escape", "", "A" * 10, "a" * 65, ".tmp-1", "ab/cd"):
        with pytest.raises(ValueError, match="hex"):
            await store.find(bad)
        with pytest.raises(ValueError, match="hex"):
            await store.save(sandbox, manifest(bad))
    identity = store.identity()
    assert identity == store.identity() and len(identity) <= 32


# --- without root: copied, not overlaid ---------------------------------------------------------
UNPRIVILEGED_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from backspace.orchestrator.environment.layer import LayerManifest
from backspace.orchestrator.environment.local_layers import LocalLayerStore
from backspace.orchestrator.sandboxes.local import LocalSandboxProvider

async def main(parent: Path) -> dict:
    store = LocalLayerStore(parent / "cache", limit_mb=64)
    provider = LocalSandboxProvider(parent / "root", layers=store)
    usable, message = provider.check()
    assert usable and provider.isolated, message
    setup = await provider.create("setup")
    await setup.exec("echo kept > f && echo home > ~/h")
    layer = await store.save(setup, LayerManifest("ab12", "0" * 40, ()))
    await setup.close()
    sandbox = await provider.create("user", layer=layer)
    seen = await sandbox.exec("cat f ~/h && echo changed > f && rm ~/h")
    await sandbox.close()
    return {
        "seen": seen.output,
        "layer": (Path(layer.location) / "workspace" / "f").read_text(),
        "home_kept": (Path(layer.location) / "home" / "h").exists(),
        "degraded": provider.limits_report()["degraded"].get("layers", ""),
    }

print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
"""


def test_without_root_a_layer_is_copied_in_and_said_so(parent: Path) -> None:
    """A server not running as root cannot mount an overlay: the layer is copied in, still
    never reached by the sandbox's writes, and /health says the start is a copy."""
    work = parent / f"unprivileged-{uuid.uuid4().hex[:6]}"
    work.mkdir()
    os.chown(work, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
    env = {"HOME": str(work), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path.cwd())}
    done = as_sandbox_user(sys.executable, "-c", UNPRIVILEGED_SCRIPT, str(work), env=env)
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    assert result["seen"].split() == ["kept", "home"]
    assert result["layer"] == "kept\n" and result["home_kept"] is True
    assert "copied, not overlaid" in result["degraded"]


def test_a_cache_inside_the_sandboxs_view_is_refused_at_start(tmp_path: Path) -> None:
    """A cache under /usr would put every layer where every sandboxed command can read it."""
    settings = load_settings(
        BACKSPACE_DB=str(tmp_path / "backspace.db"),
        BACKSPACE_SANDBOX="local",
        BACKSPACE_ENV_CACHE_DIR="/usr/lib/backspace-attack-cache",
    )
    with pytest.raises(SettingsError, match="BACKSPACE_ENV_CACHE_DIR /usr/lib/backspace-attack"):
        check_outside_sandbox_view(settings)
    assert not Path("/usr/lib/backspace-attack-cache").exists()
