"""What a sandbox starts from: a shallow base payload, made once per base commit and cached.

Git 2.39 cannot bundle a shallow history, so the sandbox receives a tar of a small bare shallow
repository made on the host: one pack (with its index) holding the base commit and `depth`
commits of its history, its `shallow` file and the base branch's ref. The sandbox moves the pack
into its repository as it is (nothing is re-indexed there), so the cost of a run follows the
size of the tree and of the recent history, never the whole history.

Payloads are kept in a directory, keyed by (host, repository, base commit, depth), and reused by
later runs on the same base. Past the size limit the least recently used ones are deleted, never
one a running upload is still using. A payload is published atomically (a temp file renamed into
place), and concurrent runs on one base build it once (a lock per key). Host git only runs in the
source repository (the operator's origin, or the GitHub host's own cache) and in a temp directory
of this cache: never in a directory a sandbox could write.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shlex
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from backspace.orchestrator.errors import GitHostError, RunFailure
from backspace.orchestrator.githosts.gitcmd import git

if TYPE_CHECKING:
    from backspace.orchestrator.sandboxes.base import Sandbox

log = logging.getLogger(__name__)

MB = 1024 * 1024
SUFFIX = ".tar"
LEFTOVER_AGE = 3600.0  # a build or temp file this old belongs to no live build: a killed server's


def default_base_cache(db_path: Path) -> Path:
    """The payload cache per server database, under the system temp dir like the others."""
    key = hashlib.sha256(str(db_path.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"backspace-base-cache-{key}"


@dataclass(frozen=True)
class BasePayload:
    """The tar the sandbox starts from: `branch` in it points at `sha`, the real base commit.

    `cached` says whether an earlier run had made it; `release` ends this run's use of it (until
    then the cache never deletes it).
    """

    path: Path
    sha: str
    branch: str
    depth: int
    cached: bool
    size: int = 0
    seconds: float = 0.0
    release: Callable[[], None] = field(default=lambda: None, compare=False, repr=False)

    def describe(self) -> str:
        """The `cloning` stage's line: what a repeated base costs is visibly nothing."""
        size = f"{self.size / MB:.1f} MB"
        if self.cached:
            return f"Using the prepared base {self.sha[:12]} ({size})"
        return f"Prepared the base {self.sha[:12]} ({size}, {self.depth} commits) in {self.seconds:.1f} s"


@dataclass(frozen=True)
class PayloadKey:
    host: str
    repository: str
    sha: str
    branch: str

    def file_name(self, depth: int) -> str:
        digest = hashlib.sha256(
            "\0".join((self.host, self.repository.lower(), self.sha, str(depth))).encode()
        ).hexdigest()[:32]
        return f"{self.sha[:12]}-{digest}{SUFFIX}"


class BasePayloads:
    """The cache of base payloads: a directory, a size limit, one build per key at a time."""

    def __init__(self, directory: Path, limit_mb: int, depth: int) -> None:
        if depth < 1:
            raise ValueError("the clone depth must be at least 1")
        self.directory = directory
        self.limit_bytes = limit_mb * MB
        self.depth = depth
        self._locks: dict[str, asyncio.Lock] = {}
        self._in_use: dict[str, int] = {}
        # Eviction runs on a worker thread: a payload is found and leased, or checked unused and
        # deleted, under this lock, so it is never deleted between the two.
        self._guard = threading.Lock()
        self._swept = False

    async def get(self, key: PayloadKey, source: Callable[[], Awaitable[Path]]) -> BasePayload:
        """The payload of `key`, made from the git directory `source()` gives when not cached.

        `source` is only called on a miss: a GitHub host fetches the base there, if it must.
        """
        if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", key.sha):
            raise GitHostError(
                "github_error" if key.host == "github" else "branch_not_found",
                f"{key.repository}: the base {key.sha[:80]!r} is not a commit id; nothing was "
                "fetched (look the repository up again)",
            )
        name = key.file_name(self.depth)
        path = self.directory / name
        async with self._locks.setdefault(name, asyncio.Lock()):
            with self._guard:
                if path.is_file():
                    os.utime(path)  # the least recently used is evicted first
                    return self._lease(key, path, cached=True, seconds=0.0)
            started = time.monotonic()
            origin = await source()
            await self._build(origin, key, path)
            with self._guard:
                payload = self._lease(key, path, cached=False, seconds=time.monotonic() - started)
        await asyncio.to_thread(self._evict)
        return payload

    def _lease(self, key: PayloadKey, path: Path, *, cached: bool, seconds: float) -> BasePayload:
        name = path.name
        self._in_use[name] = self._in_use.get(name, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            with self._guard:
                if released:
                    return
                released = True
                left = self._in_use.get(name, 1) - 1
                if left > 0:
                    self._in_use[name] = left
                else:
                    self._in_use.pop(name, None)

        return BasePayload(
            path=path,
            sha=key.sha,
            branch=key.branch,
            depth=self.depth,
            cached=cached,
            size=path.stat().st_size,
            seconds=seconds,
            release=release,
        )

    async def _build(self, origin: Path, key: PayloadKey, path: Path) -> None:
        """A shallow fetch of the base from `origin` into a temp bare repository here, one
        pack, then a tar renamed into place."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self._swept:
            self._swept = True
            await asyncio.to_thread(self._sweep)
        work = Path(tempfile.mkdtemp(prefix="build-", dir=self.directory))
        try:
            repo = work / "base.git"
            await git("init", "--quiet", "--bare", str(repo))
            await git(
                "-c", "fetch.unpackLimit=1", "-c", "transfer.unpackLimit=1",
                "-c", "gc.auto=0", "-c", "maintenance.auto=false",
                "fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
                "--no-recurse-submodules", f"--depth={self.depth}", "--end-of-options",
                f"file://{origin}", f"{key.sha}:refs/heads/{key.branch}",
                git_dir=repo, allow_file=True, timeout=1800,
            )  # fmt: skip
            packs = list((repo / "objects" / "pack").glob("*.pack"))
            loose = any(p.is_dir() and len(p.name) == 2 for p in (repo / "objects").iterdir())
            if len(packs) != 1 or loose:
                await git("repack", "-a", "-d", "-q", git_dir=repo, timeout=1800)
            await asyncio.to_thread(_write_tar, repo, key.sha, path)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    def _sweep(self) -> None:
        """Remove what a server killed mid-build left (a build directory, a temp tar)."""
        cutoff = time.time() - LEFTOVER_AGE
        for entry in [*self.directory.glob("build-*"), *self.directory.glob("payload-*.part")]:
            with contextlib.suppress(FileNotFoundError):
                if entry.lstat().st_mtime >= cutoff:
                    continue
                log.info("removing %s, left by an interrupted payload build", entry.name)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()

    def _evict(self) -> None:
        """Delete the least recently used payloads past the limit, none that is in use."""
        entries = []
        for entry in self.directory.glob(f"*{SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                entries.append((stat.st_mtime_ns, stat.st_size, entry))
        total = sum(size for _, size, _ in entries)
        for _, size, entry in sorted(entries, key=lambda e: e[0]):
            if total <= self.limit_bytes:
                break
            with self._guard:
                if self._in_use.get(entry.name):
                    continue
                log.info("evicting the base payload %s (least recently used)", entry.name)
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            total -= size


def _write_tar(repo: Path, sha: str, path: Path) -> None:
    """The tar of the pack, its index, `shallow` and the base commit: streamed, then renamed."""
    shallow = repo / "shallow"
    if not shallow.is_file():  # a history shorter than the depth: nothing is cut off
        shallow.write_bytes(b"")
    (repo / "base").write_text(f"{sha}\n")
    fd, temp = tempfile.mkstemp(prefix="payload-", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as sink, tarfile.open(fileobj=sink, mode="w") as tar:
            for item in sorted((repo / "objects" / "pack").iterdir()):
                if item.suffix in (".pack", ".idx"):
                    tar.add(item, arcname=f"pack/{item.name}")
            tar.add(shallow, arcname="shallow")
            tar.add(repo / "base", arcname="base")
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def install_script(payload: BasePayload, remote: str) -> str:
    """Shell lines that put the uploaded payload at `remote` into the work tree's repository.

    A fresh `git init`, or the repository a cached environment layer already has: the pack and
    its index are moved in as they are (no re-indexing), the shallow boundary is added to the
    repository's own, and the base commit is then in its object store. The caller checks it out.
    """
    q = shlex.quote
    unpacked = q(f"{remote}.d")
    return f"""set -e
rm -rf {unpacked} && mkdir -p {unpacked}
tar -xf {q(remote)} -C {unpacked}
test "$(cat {unpacked}/base)" = {q(payload.sha)}
[ -d .git ] || git init --quiet -b {q(payload.branch)} .
mkdir -p .git/objects/pack
mv -f {unpacked}/pack/* .git/objects/pack/
if [ -s {unpacked}/shallow ]; then
  cat {unpacked}/shallow .git/shallow 2>/dev/null | sort -u > {unpacked}/merged
  mv -f {unpacked}/merged .git/shallow
fi
rm -rf {unpacked} {q(remote)}
"""


async def place(
    sandbox: Sandbox, payload: BasePayload, remote: str, *, layer_base: str | None
) -> bool:
    """Put the base commit into the sandbox's repository; True when the payload was uploaded.

    A sandbox started from a cached environment layer made on this very base commit already
    holds it: nothing crosses (on Daytona, nothing crosses the network), after git confirms the
    commit is there. Otherwise the payload is uploaded and installed (`install_script`).
    """
    q = shlex.quote
    if layer_base == payload.sha:
        found = await sandbox.exec(
            f"git cat-file -e {q(payload.sha + '^{commit}')}", timeout=60, max_output=1000
        )
        if found.exit_code == 0:
            return False
    await sandbox.upload(payload.path, remote)
    result = await sandbox.exec(install_script(payload, remote), timeout=600, max_output=4000)
    if result.exit_code != 0:
        raise RunFailure(
            "clone_failed",
            f"the repository could not be put in the sandbox: {result.output[-300:]}",
            retryable=True,
        )
    return True
