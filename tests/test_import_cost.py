"""Taking a change out costs what the change costs, not what the tree costs.

A repository of 20,000 small files (generated once per module with `git fast-import`) is checked
out in a real bubblewrap sandbox the way the pipeline does it; the agent's part is a handful of
shell commands. The observable is which files git opened: inotify watches on the work tree's
directories (from the host) report every file opened in them; listing and stat-ing report nothing,
so the files opened during the commit step are the files it hashed.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shlex
import struct
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from backspace.orchestrator.publish import (
    Identity,
    Policy,
    commit_in_sandbox,
    import_change,
    prepare_index,
)
from backspace.orchestrator.sandboxes.local import LocalSandbox
from tests.conftest import GIT_ENV, git

FILES = 20_000
FILE_BYTES = 2_000
IDENTITY = Identity("backspace-bot", "bot@example.com")
OUT = "/tmp/backspace-cost-out.bundle"  # in the sandbox: its own /tmp


IN_OPEN, IN_Q_OVERFLOW, IN_ISDIR = 0x20, 0x4000, 0x40000000
EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


class Opened:
    """The files opened below a work tree (its .git aside), by inotify, from the host; read
    by the event loop as they come, so the kernel's queue (16384 events) never overflows."""

    def __init__(self, tree: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.dirs: dict[int, str] = {}
        for path in [tree, *(p for p in tree.rglob("*") if p.is_dir() and ".git" not in p.parts)]:
            wd = libc.inotify_add_watch(self.fd, bytes(path), IN_OPEN)
            assert wd >= 0, os.strerror(ctypes.get_errno())
            self.dirs[wd] = str(path.relative_to(tree))
        self.opened: set[str] = set()
        asyncio.get_running_loop().add_reader(self.fd, self._read)

    def take(self) -> set[str]:
        """The files opened since the last call; an overflowing queue fails the test."""
        self._read()
        opened, self.opened = self.opened, set()
        return opened

    def _read(self) -> None:
        opened = self.opened
        while True:
            try:
                data = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return
            at = 0
            while at < len(data):
                wd, mask, _, size = EVENT.unpack_from(data, at)
                name = data[at + EVENT.size : at + EVENT.size + size].rstrip(b"\0").decode()
                at += EVENT.size + size
                assert not mask & IN_Q_OVERFLOW, "more than 16384 files opened"
                if not mask & IN_ISDIR:
                    opened.add(f"{self.dirs[wd]}/{name}".removeprefix("./"))

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


@pytest.fixture(scope="module")
def big_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, Path]]:
    """A bundle of one commit with FILES files of FILE_BYTES each, in 200 directories; its
    commit, and the bare repository it came from."""
    root = tmp_path_factory.mktemp("big")
    origin = root / "origin"
    git(root, "init", "-q", "--bare", "-b", "main", str(origin))
    stream = bytearray()
    for i in range(FILES):
        body = (f"file {i} " * 400).encode()[:FILE_BYTES]
        stream += b"blob\nmark :%d\ndata %d\n%s\n" % (i + 1, len(body), body)
    stream += b"commit refs/heads/main\ncommitter Test <test@example.com> 1700000000 +0000\n"
    stream += b"data 5\nbase\n"
    for i in range(FILES):
        stream += b"M 100644 :%d d%03d/f%05d.txt\n" % (i + 1, i % 200, i)
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=origin, env=GIT_ENV, input=bytes(stream), check=True
    )
    bundle = root / "base.bundle"
    git(origin, "bundle", "create", "-q", str(bundle), "main")
    yield bundle, git(origin, "rev-parse", "main").strip(), origin


async def _run(sandbox: LocalSandbox, script: str) -> str:
    result = await sandbox.exec(script, timeout=120, max_output=100_000)
    assert result.exit_code == 0, result.output[-2000:]
    return result.output


@pytest.fixture
async def checkout(
    sandbox: LocalSandbox, big_origin: tuple[Path, str, Path]
) -> AsyncIterator[tuple[LocalSandbox, str, str]]:
    """The sandbox with the base checked out as the pipeline's `_clone` does it, and
    backspace's index prepared as the pipeline does next; yields the index's fingerprint."""
    bundle, sha, _ = big_origin
    remote = f"{sandbox.tmpdir}/base.bundle"
    await sandbox.upload(bundle, remote)
    await _run(
        sandbox,
        f"git init --quiet -b main . && git fetch --quiet --no-tags {remote} main"
        " && git -c core.hooksPath=/dev/null checkout --quiet --force -B main FETCH_HEAD"
        f" && rm -f {remote}"
        # As setup or any later step would: the checkout's files are older than this second,
        # so git's racy-entry rule (timestamps in seconds) does not ask to read them again.
        " && sleep 1",
    )
    opened = Opened(sandbox.base / "workspace")
    try:
        index = await prepare_index(sandbox, sha, OUT)
        prepared = opened.take()
    finally:
        opened.close()
    assert index is not None
    assert prepared == set(), f"preparing the index read {len(prepared)} files"
    yield sandbox, sha, index


async def _tree_of(sandbox: LocalSandbox, start: str, exclude: tuple[str, ...] = ()) -> str:
    """The work tree's tree id computed from scratch (a fresh index, every file hashed)."""
    q = shlex.quote
    specs = " ".join(q(f":(top,literal,exclude){path}") for path in exclude)
    out = await _run(
        sandbox,
        "export GIT_INDEX_FILE=/tmp/reference-index GIT_CONFIG_NOSYSTEM=1 "
        "GIT_CONFIG_GLOBAL=/dev/null\n"
        f"rm -f $GIT_INDEX_FILE && git read-tree {start} && git add --all -- . {specs}"
        " && git write-tree",
    )
    return out.split()[-1]


THREE_FILES = (
    "printf 'changed\\n' >> d007/f00007.txt && rm d010/f00010.txt && printf 'new\\n' > d011/new.txt"
)


@pytest.mark.timeout(120)
async def test_committing_a_three_file_change_reads_the_change_not_the_tree(
    checkout: tuple[LocalSandbox, str, str],
) -> None:
    sandbox, start, index = checkout
    await _run(sandbox, THREE_FILES)
    opened = Opened(sandbox.base / "workspace")
    try:
        opened.take()
        tree = await commit_in_sandbox(sandbox, start, IDENTITY, "three files", OUT, index=index)
        read = opened.take()
    finally:
        opened.close()
    assert tree == await _tree_of(sandbox, start)
    assert read <= {"d007/f00007.txt", "d011/new.txt"}, (
        f"the commit step opened {len(read)} of {FILES} files for a 3-file change "
        f"({sorted(read)[:5]}...): it re-hashed files the change did not touch"
    )


async def test_the_observable_sees_a_file_opened_in_the_sandbox(
    checkout: tuple[LocalSandbox, str, str],
) -> None:
    sandbox, _, _ = checkout
    opened = Opened(sandbox.base / "workspace")
    try:
        await _run(sandbox, "cat d000/f00000.txt d001/f00001.txt > /dev/null && ls -lR > /dev/null")
        assert opened.take() == {"d000/f00000.txt", "d001/f00001.txt"}
    finally:
        opened.close()


EVERY_KIND = (
    "printf 'more\\n' >> d001/f00001.txt"  # modified
    " && rm d002/f00002.txt"  # deleted
    " && mv d003/f00003.txt d003/renamed.txt"  # renamed
    " && chmod +x d004/f00004.txt"  # mode changed
    " && ln -s ../d005/f00005.txt d006/link"  # symbolic link added
    " && mkdir -p brand/new && printf 'x\\n' > brand/new/file.txt"  # added in a new directory
    # the same size and the same mtime: only its ctime (which no process can set) tells
    " && head -c 2000 /dev/zero | tr '\\0' 'z' > d007/f00007.txt.new"
    " && touch -r d007/f00007.txt d007/f00007.txt.new && mv d007/f00007.txt.new d007/f00007.txt"
    " && touch -r d008/f00008.txt d008/f00008.txt.ref && printf 'y' | dd of=d008/f00008.txt"
    " conv=notrunc status=none && touch -r d008/f00008.txt.ref d008/f00008.txt"
    " && rm d008/f00008.txt.ref"
)


async def test_the_published_tree_is_exactly_the_work_tree(
    checkout: tuple[LocalSandbox, str, str],
) -> None:
    sandbox, start, index = checkout
    await _run(sandbox, EVERY_KIND)
    tree = await commit_in_sandbox(sandbox, start, IDENTITY, "every kind", OUT, index=index)
    assert tree == await _tree_of(sandbox, start)
    listing = await _run(
        sandbox, f"git --git-dir=/tmp/backspace-cost-out.git ls-tree -r {tree} -- d00[1-8] brand"
    )
    entries = {line.split("\t")[1]: line.split()[0] for line in listing.splitlines()}
    assert "d002/f00002.txt" not in entries and "d003/f00003.txt" not in entries
    assert entries["d003/renamed.txt"] == "100644" and entries["d004/f00004.txt"] == "100755"
    assert entries["d006/link"] == "120000" and entries["brand/new/file.txt"] == "100644"
    changed = await _run(
        sandbox, f"git --git-dir=/tmp/backspace-cost-out.git diff --name-only {start} {tree}"
    )
    assert {"d007/f00007.txt", "d008/f00008.txt", "d001/f00001.txt"} <= set(changed.split())


SETUP_WRITES = "printf 'setup\\n' >> d009/f00009.txt && mkdir -p env && printf 'e\\n' > env/lib.txt"


async def test_the_environment_paths_stay_as_in_start(
    checkout: tuple[LocalSandbox, str, str],
) -> None:
    sandbox, start, _ = checkout
    await _run(sandbox, SETUP_WRITES)
    index = await prepare_index(sandbox, start, OUT)  # as the pipeline does, after setup
    await _run(
        sandbox,
        "printf 'agent\\n' >> d009/f00009.txt && printf 'a\\n' > env/agent.txt"
        " && printf 'change\\n' >> d010/f00010.txt",
    )
    exclude = ("d009/f00009.txt", "env")
    tree = await commit_in_sandbox(
        sandbox, start, IDENTITY, "with setup", OUT, exclude=exclude, index=index
    )
    assert tree == await _tree_of(sandbox, start, exclude)
    changed = await _run(
        sandbox, f"git --git-dir=/tmp/backspace-cost-out.git diff --name-only {start} {tree}"
    )
    assert changed.split() == ["d010/f00010.txt"]


async def test_an_index_the_agent_rewrote_is_dropped(
    checkout: tuple[LocalSandbox, str, str],
) -> None:
    """The agent stages an environment path in backspace's index and hides a change behind an
    assume-unchanged flag; the commit notices the index is not the prepared one and starts
    from `start`: the environment path stays out, the hidden change is published."""
    sandbox, start, index = checkout
    await _run(
        sandbox,
        "mkdir -p env && printf 'e\\n' > env/lib.txt && printf 'hidden\\n' >> d012/f00012.txt"
        " && export GIT_INDEX_FILE=/tmp/backspace-cost-out.git/index"
        " && git --git-dir=/tmp/backspace-cost-out.git --work-tree=. add -f env"
        " && git --git-dir=/tmp/backspace-cost-out.git --work-tree=. update-index"
        " --assume-unchanged d012/f00012.txt",
    )
    exclude = ("env",)
    tree = await commit_in_sandbox(
        sandbox, start, IDENTITY, "forged", OUT, exclude=exclude, index=index
    )
    assert tree == await _tree_of(sandbox, start, exclude)
    changed = await _run(
        sandbox, f"git --git-dir=/tmp/backspace-cost-out.git diff --name-only {start} {tree}"
    )
    assert changed.split() == ["d012/f00012.txt"]


def _rchar() -> int:
    """Bytes read so far by this process (pipes included) and the children it has reaped."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def _change_bundle(origin: Path, work: Path, entries: list[tuple[str, str, str]]) -> Path:
    """A bundle of one commit on main setting (mode, path, content) entries, made with plumbing."""
    env = {**GIT_ENV, "GIT_INDEX_FILE": str(work / "index")}

    def plumb(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(
            ["git", *args], cwd=origin, env=env, input=stdin, check=True, capture_output=True,
            text=True,
        ).stdout.strip()  # fmt: skip

    plumb("read-tree", "main")
    for mode, path, content in entries:
        blob = plumb("hash-object", "-w", "--stdin", stdin=content)
        plumb("update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}")
    commit = plumb("commit-tree", plumb("write-tree"), "-p", "main", stdin="change\n")
    plumb("update-ref", "refs/heads/change", commit)
    bundle = work / "change.bundle"
    plumb("bundle", "create", "-q", str(bundle), "main..change")
    return bundle


async def test_importing_a_three_file_change_reads_the_change_not_the_tree(
    big_origin: tuple[Path, str, Path], tmp_path: Path
) -> None:
    """The host's import of a change adding a symbolic link, editing and adding a file, in the
    20,000-file repository: what git and this process read stays far below one listing of the
    tree (about 1.2 MB here), so no step reads the whole tree."""
    _, base, origin = big_origin
    bundle = _change_bundle(
        origin,
        tmp_path,
        [
            ("120000", "d020/link", "../d021/f00021.txt"),
            ("100644", "d022/f00022.txt", "edited\n"),
            ("100644", "d023/new.txt", "new\n"),
        ],
    )
    host = tmp_path / "host.git"
    git(tmp_path, "init", "-q", "--bare", str(host))
    (host / "objects" / "info" / "alternates").write_text(f"{origin / 'objects'}\n")
    listing = len(git(origin, "ls-tree", "-r", "-z", "main"))
    before = _rchar()
    change = await import_change(
        host, bundle, base_sha=base, identity=IDENTITY, message="m", policy=Policy()
    )
    read = _rchar() - before
    assert change is not None
    assert sorted(f.path for f in change.files) == ["d020/link", "d022/f00022.txt", "d023/new.txt"]
    assert read < listing / 4, (
        f"importing a 3-file change read {read / 1e6:.2f} MB; one listing of the tree is "
        f"{listing / 1e6:.2f} MB"
    )
