"""Set-up layers of the local backend: directories in a cache the sandbox user cannot reach.

A layer is `<cache dir>/<key>/` holding `workspace/`, `home/` and `manifest.json` (written by
the host: the LayerManifest, the size, when it was made). Its last use is the manifest's mtime,
for LRU eviction past the size limit. A new layer is copied (`cp -a`, ownership kept) into
`<cache dir>/.tmp-<random>/` and renamed into place, so a layer is either whole or absent; an
evicted one is renamed away before it is deleted, for the same reason.

Sandboxes lease the layer they start from, and a leased layer is never evicted. Leases are
counted in this process only: they do not cross processes, so one cache directory serves one
server (the default is keyed by the server's database, like the sandbox root).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from backspace.orchestrator.environment.layer import Layer, LayerManifest, LayerStoreFull
from backspace.orchestrator.errors import SandboxError

if TYPE_CHECKING:
    from backspace.orchestrator.sandboxes.base import Sandbox

KEY_PATTERN = re.compile(r"[0-9a-f]{1,64}")
LAYER_DIRS = ("workspace", "home")
MANIFEST = "manifest.json"
COPY_TIMEOUT = 600.0
MB = 1024 * 1024


def check_key(key: str) -> str:
    """A key names a directory: lower-case hex, at most 64 characters, nothing else."""
    if not KEY_PATTERN.fullmatch(key):
        raise ValueError(
            f"invalid layer key {key[:80]!r}: a layer key is 1 to 64 lower-case hex digits"
        )
    return key


def disk_usage(path: Path) -> int:
    """Bytes `path` takes on disk (blocks, each inode once), never following a symlink."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            info = current.lstat()
        except FileNotFoundError:
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        total += info.st_blocks * 512
        if current.is_dir() and not current.is_symlink():
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                stack.extend(entry for entry in current.iterdir())
    return total


class LocalLayerStore:
    """The LayerStore of local sandboxes: see the module's docstring."""

    def __init__(self, directory: Path, limit_mb: int) -> None:
        self.directory = directory
        self.limit_bytes = limit_mb * MB
        self._lock = threading.Lock()
        self._leases: dict[str, int] = {}
        self._identity: str | None = None
        self._prepared = False

    # --- the LayerStore protocol --------------------------------------------------------------
    def identity(self) -> str:
        """What local sandboxes start from: this host's OS, architecture, bubblewrap and python3."""
        if self._identity is None:
            parts = [platform.machine()]
            try:
                parts.append(Path("/etc/os-release").read_text(errors="replace"))
            except OSError:
                parts.append("no /etc/os-release")
            for argv in (["bwrap", "--version"], ["/usr/bin/python3", "--version"]):
                parts.append(_output(argv))
            digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
            self._identity = f"local-{digest[:16]}"
        return self._identity

    async def find(self, key: str) -> Layer | None:
        return await asyncio.to_thread(self._find, check_key(key))

    async def save(self, sandbox: Sandbox, manifest: LayerManifest) -> Layer:
        check_key(manifest.key)
        base = getattr(sandbox, "base", None)
        if not isinstance(base, Path):
            raise SandboxError("a local layer can only be saved from a local sandbox")
        return await asyncio.to_thread(self._save, base, manifest)

    # --- leases -------------------------------------------------------------------------------
    def lease(self, key: str) -> None:
        """A sandbox starts from this layer: it is not evicted until `release`."""
        with self._lock:
            self._leases[key] = self._leases.get(key, 0) + 1

    def release(self, key: str) -> None:
        with self._lock:
            count = self._leases.get(key, 0) - 1
            if count > 0:
                self._leases[key] = count
            else:
                self._leases.pop(key, None)

    def leased(self, key: str) -> bool:
        with self._lock:
            return key in self._leases

    # --- the directory ------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Make the cache directory (root's alone when run as root) and clear a crash's leftovers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        if not self._prepared:
            for entry in self.directory.iterdir():
                if entry.name.startswith((".tmp-", ".evict-")):
                    _remove(entry)
            self._prepared = True

    def _layer(self, key: str) -> Layer | None:
        path = self.directory / key
        try:
            data = json.loads((path / MANIFEST).read_text())
            manifest = LayerManifest(
                key=data["key"],
                base_sha=data["base_sha"],
                environment_paths=tuple(data["environment_paths"]),
            )
            size = int(data["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if manifest.key != key:
            return None
        return Layer(manifest, str(path), size)

    def _find(self, key: str) -> Layer | None:
        with self._lock:
            layer = self._layer(key)
            if layer is not None:
                with contextlib.suppress(OSError):
                    _mark_used(Path(layer.location) / MANIFEST)
            return layer

    def _layers(self) -> list[tuple[float, Layer]]:
        """Every layer in place, least recently used first."""
        found = []
        for entry in self.directory.iterdir():
            if entry.name.startswith(".") or not KEY_PATTERN.fullmatch(entry.name):
                continue
            layer = self._layer(entry.name)
            if layer is None:
                continue
            with contextlib.suppress(OSError):
                found.append(((entry / MANIFEST).stat().st_mtime_ns, layer))
        return sorted(found, key=lambda pair: pair[0])

    def _save(self, base: Path, manifest: LayerManifest) -> Layer:
        with self._lock:
            self._prepare()
            existing = self._layer(manifest.key)
        if existing is not None:  # saved by another run already: that one is the layer
            return self._find(manifest.key) or existing
        needed = sum(disk_usage(base / name) for name in LAYER_DIRS)
        if needed > self.limit_bytes:
            raise self._too_big(needed)
        with self._lock:  # room for the copy first, so that it does not fill the disk
            if not self._evict(needed, keep=None):
                raise self._too_big(needed, in_use=True)
        temp = self.directory / f".tmp-{secrets.token_hex(8)}"
        try:
            temp.mkdir(mode=0o700)
            for name in LAYER_DIRS:
                _copy(base / name, temp / name)
            size = disk_usage(temp)
            record = {
                "key": manifest.key,
                "base_sha": manifest.base_sha,
                "environment_paths": list(manifest.environment_paths),
                "size": size,
                "created": time.time(),
            }
            (temp / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
            _mark_used(temp / MANIFEST)
            if size > self.limit_bytes:  # larger on this disk than it was in the sandbox
                raise self._too_big(size)
        except LayerStoreFull:
            _remove(temp)
            raise
        except OSError as exc:
            _remove(temp)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise LayerStoreFull(
                    f"the environment cache directory {self.directory} "
                    "(BACKSPACE_ENV_CACHE_DIR) ran out of disk space while saving a layer of "
                    f"{_mb(needed)}: free space there or lower BACKSPACE_ENV_CACHE_MB"
                ) from exc
            raise SandboxError(f"could not save the set-up layer: {exc}") from exc
        with self._lock:
            target = self.directory / manifest.key
            try:
                temp.rename(target)
            except OSError as exc:
                _remove(temp)
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise SandboxError(f"could not save the set-up layer: {exc}") from exc
                # Another run saved this key meanwhile: theirs stays, and is the layer.
            layer = self._layer(manifest.key)
            if layer is None:
                raise SandboxError(f"the set-up layer {manifest.key} vanished while saving it")
            if not self._evict(0, keep=manifest.key):  # layers in use took the room meanwhile
                if not self._leases.get(manifest.key):
                    self._drop(target)
                raise self._too_big(layer.size_bytes, in_use=True)
            return layer

    def _evict(self, extra: int, keep: str | None) -> bool:
        """Remove unused layers, least recently used first, until all of them and `extra`
        bytes fit in the limit; False when they cannot (the rest are in use). Under the lock."""
        layers = self._layers()
        total = extra + sum(layer.size_bytes for _, layer in layers)
        for _, layer in layers:
            if total <= self.limit_bytes:
                break
            if layer.key == keep or layer.key in self._leases:
                continue
            if self._drop(Path(layer.location)):
                total -= layer.size_bytes
        return total <= self.limit_bytes

    def _drop(self, path: Path) -> bool:
        """Rename a layer away, then delete it: a reader finds it whole or not at all."""
        away = self.directory / f".evict-{secrets.token_hex(8)}"
        try:
            path.rename(away)
        except OSError:
            return False
        _remove(away)
        return True

    def _too_big(self, size: int, *, in_use: bool = False) -> LayerStoreFull:
        reason = (
            "even after evicting every layer not in use by a running sandbox"
            if in_use
            else "the whole limit"
        )
        return LayerStoreFull(
            f"the set-up layer takes {_mb(size)}, more than fits in the environment cache "
            f"{self.directory} ({reason}; BACKSPACE_ENV_CACHE_MB={self.limit_bytes // MB}): "
            "raise BACKSPACE_ENV_CACHE_MB, or make setup leave less in the work tree and home"
        )


def _copy(source: Path, target: Path) -> None:
    """`cp -a`: ownership, modes, links and sparseness kept; symlinks copied, never followed."""
    try:
        done = subprocess.run(
            ["cp", "-a", "--", str(source), str(target)],
            capture_output=True,
            timeout=COPY_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise OSError(errno.ETIMEDOUT, f"cp -a took more than {COPY_TIMEOUT:g} s") from exc
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()
        code = errno.ENOSPC if "No space left on device" in err else errno.EIO
        if "Disk quota exceeded" in err:
            code = errno.EDQUOT
        raise OSError(code, f"cp -a failed: {err[-300:]}")


def _mark_used(manifest: Path) -> None:
    """Set the manifest's mtime to now, to the nanosecond: the kernel stamps a write with its
    coarse clock (a few milliseconds), so two layers used in a row could tie and evict in
    either order."""
    now = time.time_ns()
    os.utime(manifest, ns=(now, now))


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _mb(size: int) -> str:
    return f"{size / MB:.1f} MB"


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return f"{argv[0]}: absent"
    return (done.stdout + done.stderr).strip()
