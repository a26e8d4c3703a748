"""Big repositories (issue 15): the sandbox gets what a shallow clone would give, once per base.

A generated repository with a long, heavy history (3,000 commits, about 200 MB of incompressible
blobs, 300 files at the head) is made once with `git fast-import` and kept across sessions under
the user's cache directory; each test borrows its objects (alternates) instead of copying them.
Both hosts are real: the local host, and the fake GitHub over git smart HTTP. Real server, real
bubblewrap, real git; the model is the loopback fake.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backspace.app import check_outside_sandbox_view
from backspace.config import SettingsError, load_settings
from backspace.orchestrator.errors import GitError, GitHostError
from backspace.orchestrator.githosts.base_payload import BasePayloads, PayloadKey
from tests.conftest import GIT_ENV
from tests.fakes.anthropic import FakeAnthropic, Reply, ToolCall
from tests.fakes.github import FakeGitHub
from tests.helpers import shared_server, workdir
from tests.scenarios import finish
from tests.server import Server
from tests.sse import of_type, post_run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

DEPTH = 20  # not the default: the setting is what the agent sees
COMMITS = 3000
SMALL_FILES = 280
HEAVY_FILES = 20
HEAVY_BYTES = 32 * 1024
TOKEN = "ghp_BIGREPOSTOKEN0123456789abcdefghijklmno"
ANTHROPIC_KEY = "sk-ant-api03-big-repos-key-000111"
LOOK = "git log --oneline | wc -l; git rev-parse HEAD; git ls-files | wc -l; cat .git/shallow"


# --- the heavy repository ---------------------------------------------------------------------
def _fast_import_stream(out: Any) -> None:
    """3,000 commits on main: the first writes every file, each later one rewrites two heavy
    files with fresh random bytes (so the history is big and does not compress) and one line."""
    rng = random.Random(15)
    when = 1_600_000_000

    def commit(n: int, files: dict[str, bytes]) -> None:
        message = f"commit {n}\n".encode()
        out.write(b"commit refs/heads/main\n")
        out.write(f"committer Test <test@example.com> {when + n * 60} +0000\n".encode())
        out.write(b"data %d\n%s" % (len(message), message))
        for path, data in files.items():
            out.write(f"M 100644 inline {path}\n".encode())
            out.write(b"data %d\n%s\n" % (len(data), data))

    first = {f"src/module_{i:03}.py": f"VALUE = {i}\n".encode() for i in range(SMALL_FILES)}
    first.update({f"data/blob_{i:02}.bin": rng.randbytes(HEAVY_BYTES) for i in range(HEAVY_FILES)})
    first["README.md"] = b"# Heavy\n"
    commit(0, first)
    for n in range(1, COMMITS):
        commit(
            n,
            {
                f"data/blob_{n % HEAVY_FILES:02}.bin": rng.randbytes(HEAVY_BYTES),
                f"data/blob_{(n * 7 + 3) % HEAVY_FILES:02}.bin": rng.randbytes(HEAVY_BYTES),
                f"src/module_{n % SMALL_FILES:03}.py": f"VALUE = {n}\n".encode(),
            },
        )


def heavy_repository() -> Path:
    """The bare heavy repository, built once (in a temp dir, renamed into place) and reused."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "backspace-tests"
    path = cache / "heavy-v1"
    if (path / "complete").is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="heavy-", dir=cache))
    try:
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(building)], check=True)
        with subprocess.Popen(
            ["git", "--git-dir", str(building), "fast-import", "--quiet", "--depth=0"],
            stdin=subprocess.PIPE,
            env=GIT_ENV,
        ) as proc:
            assert proc.stdin is not None
            _fast_import_stream(proc.stdin)
            proc.stdin.close()
            assert proc.wait() == 0
        (building / "complete").write_text("")
        try:
            building.rename(path)
        except OSError:  # another session finished first
            shutil.rmtree(building, ignore_errors=True)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return path


def git(git_dir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), *args],
        env=GIT_ENV,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def borrow(heavy: Path, dest: Path) -> Path:
    """A bare repository of its own at the heavy one's head, sharing its objects (no copy)."""
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(dest)], check=True)
    (dest / "objects" / "info" / "alternates").write_text(f"{heavy / 'objects'}\n")
    git(dest, "update-ref", "refs/heads/main", git(heavy, "rev-parse", "main"))
    return dest


def add_commit(bare: Path, files: dict[str, str], message: str = "move the base") -> str:
    """One more commit on main, made with plumbing in the bare repository; its sha."""
    index = bare / "test-index"
    env = {**GIT_ENV, "GIT_INDEX_FILE": str(index)}

    def run(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(
            ["git", "--git-dir", str(bare), *args],
            env=env,
            input=stdin,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    parent = run("rev-parse", "main")
    run("read-tree", parent)
    for path, text in files.items():
        blob = run("hash-object", "-w", "--stdin", stdin=text)
        run("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}")
    tree = run("write-tree")
    commit = run("commit-tree", tree, "-p", parent, stdin=message)
    run("update-ref", "refs/heads/main", commit)
    index.unlink()
    return commit


# --- what a run shows -------------------------------------------------------------------------
def look(events: list[dict[str, Any]]) -> tuple[int, str, int, str]:
    """(commits in `git log`, HEAD, tracked files, the shallow file) as the agent saw them."""
    (seen,) = [e for e in of_type(events, "Tool: Bash") if e["command"] == LOOK]
    lines = seen["output"].split()
    return int(lines[0]), lines[1], int(lines[2]), " ".join(lines[3:])


def cloning(events: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in of_type(events, "progress") if e["stage"] == "cloning"]


def scenario(model: FakeAnthropic, note: str) -> str:
    key = f"big-{uuid.uuid4().hex[:8]}"
    model.scenarios[key] = [
        Reply([ToolCall("bash", {"command": LOOK})]),
        Reply([ToolCall("bash", {"command": f"echo {note} >> README.md"})]),
        finish(title=f"Note {note}"),
    ]
    return f"{key}: add a note"


def published(origin: Path, events: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The published branch's parent, and the files its one commit changes."""
    branch = of_type(events, "pr_created")[0]["branch"]
    parent = git(origin, "rev-parse", f"refs/heads/{branch}^")
    files = git(origin, "diff", "--name-only", f"refs/heads/{branch}^", f"refs/heads/{branch}")
    return parent, files.split()


@pytest.fixture(scope="module")
def heavy() -> Path:
    return heavy_repository()


@pytest.fixture(scope="module")
def model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(scenarios={}) as fake:
        yield fake


# --- the local host -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local(model: FakeAnthropic) -> Iterator[tuple[Server, Path, Path]]:
    """A server on local repositories, with a small payload cache it evicts from."""
    repos = workdir("big-repos-local")
    cache = workdir("big-repos-base-cache")
    env = {
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": model.url,
        "BACKSPACE_LOCAL_REPOS": str(repos),
        "BACKSPACE_CLONE_DEPTH": str(DEPTH),
        "BACKSPACE_BASE_CACHE_DIR": str(cache),
        "BACKSPACE_BASE_CACHE_MB": "5",
    }
    try:
        with shared_server("big-repos", env) as server:
            yield server, repos, cache
    finally:
        shutil.rmtree(repos, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)


async def test_the_local_agent_sees_the_base_and_the_depth_and_a_repeat_reuses_it(
    heavy: Path, model: FakeAnthropic, local: tuple[Server, Path, Path]
) -> None:
    server, repos, cache = local
    origin = borrow(heavy, repos / "heavy-a.git")
    base = git(origin, "rev-parse", "main")
    first = await post_run(
        server.url, {"repo_url": "local:heavy-a.git", "prompt": scenario(model, "one")}
    )
    assert first[-1]["status"] == "succeeded", first[-3:]
    commits, head, tracked, shallow = look(first)
    assert (commits, head, tracked) == (DEPTH, base, SMALL_FILES + HEAVY_FILES + 1)
    assert shallow == git(origin, "rev-parse", f"main~{DEPTH - 1}")  # git clone --depth's boundary
    assert any(m.startswith(f"Prepared the base {base[:12]}") for m in cloning(first))
    assert published(origin, first) == (base, ["README.md"])
    (payload,) = list(cache.glob("*.tar"))
    assert payload.stat().st_size < 10 * 1024 * 1024  # the history is ~200 MB
    made = payload.stat().st_ino

    second = await post_run(
        server.url, {"repo_url": "local:heavy-a.git", "prompt": scenario(model, "two")}
    )
    assert second[-1]["status"] == "succeeded", second[-3:]
    assert look(second)[:2] == (DEPTH, base)
    assert any(m.startswith(f"Using the prepared base {base[:12]}") for m in cloning(second))
    assert not any(m.startswith("Prepared the base") for m in cloning(second))
    assert [p.stat().st_ino for p in cache.glob("*.tar")] == [made]  # not made again
    assert published(origin, second) == (base, ["README.md"])


async def test_a_moved_base_is_picked_up_and_the_oldest_payload_is_evicted(
    heavy: Path, model: FakeAnthropic, local: tuple[Server, Path, Path]
) -> None:
    server, repos, cache = local
    origin = borrow(heavy, repos / "heavy-b.git")
    payloads: list[set[str]] = []
    bases = []
    for n in range(4):  # each payload is ~2 MB, the limit 5 MB
        if n:
            add_commit(origin, {f"moved-{n}.txt": f"moved {n}\n"})
        bases.append(git(origin, "rev-parse", "main"))
        events = await post_run(
            server.url, {"repo_url": "local:heavy-b.git", "prompt": scenario(model, f"b{n}")}
        )
        assert events[-1]["status"] == "succeeded", events[-3:]
        assert look(events)[:2] == (DEPTH, bases[-1])
        assert any(m.startswith(f"Prepared the base {bases[-1][:12]}") for m in cloning(events))
        assert published(origin, events) == (bases[-1], ["README.md"])
        payloads.append({p.name for p in cache.glob("*.tar")})
    total = sum(p.stat().st_size for p in cache.glob("*.tar"))
    assert total <= 5 * 1024 * 1024, total
    assert not any(name.startswith(bases[0][:12]) for name in payloads[-1]), payloads
    assert any(name.startswith(bases[-1][:12]) for name in payloads[-1])
    # An evicted base still works: it is made again.
    git(origin, "update-ref", "refs/heads/main", bases[0])
    again = await post_run(
        server.url, {"repo_url": "local:heavy-b.git", "prompt": scenario(model, "b-again")}
    )
    assert again[-1]["status"] == "succeeded", again[-3:]
    assert any(m.startswith(f"Prepared the base {bases[0][:12]}") for m in cloning(again))
    assert look(again)[:2] == (DEPTH, bases[0])


REPO_FILE = """\
[setup]
run = "echo ready > .setup-done"
[verify]
run = ["test -f .setup-done && git log --oneline | wc -l && tail -n 1 README.md"]
"""


async def test_a_cached_environment_layer_takes_the_payload_and_verification_checks_out(
    heavy: Path, model: FakeAnthropic, local: tuple[Server, Path, Path]
) -> None:
    server, repos, _ = local
    origin = borrow(heavy, repos / "heavy-c.git")
    add_commit(origin, {".backspace.toml": REPO_FILE})
    runs = []
    for n in range(2):
        if n:  # the layer holds the repository at the first base: the second base is new
            add_commit(origin, {"moved.txt": "moved\n"})
        base = git(origin, "rev-parse", "main")
        events = await post_run(
            server.url, {"repo_url": "local:heavy-c.git", "prompt": scenario(model, f"c{n}")}
        )
        assert events[-1]["status"] == "succeeded", events[-3:]
        assert look(events)[:2] == (DEPTH, base)
        assert published(origin, events) == (base, ["README.md"])
        (receipt,) = of_type(events, "verification")
        assert receipt["passed"], str(receipt)
        # The published tree on the base's history: the base's DEPTH commits and the change.
        assert receipt["commands"][0]["output_tail"].split() == [str(DEPTH + 1), f"c{n}"]
        runs.append(events)
    setup = [e["message"] for e in of_type(runs[1], "progress") if e["stage"] == "setup"]
    assert any("cached" in m.lower() for m in setup), setup


# --- the fake GitHub over git smart HTTP --------------------------------------------------------
@pytest.fixture(scope="module")
def github(heavy: Path) -> Iterator[FakeGitHub]:
    with FakeGitHub(token=TOKEN, login="backspace-bot") as fake:
        yield fake


@pytest.fixture(scope="module")
def github_cache() -> Iterator[Path]:
    cache = workdir("big-repos-github-cache")
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="module")
def on_github(github: FakeGitHub, model: FakeAnthropic, github_cache: Path) -> Iterator[Server]:
    env = {
        "BACKSPACE_BASE_CACHE_DIR": str(github_cache),
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": model.url,
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_API_URL": github.api_url,
        "GITHUB_WEB_HOST": "github.com",
        "BACKSPACE_CLONE_DEPTH": str(DEPTH),
    }
    with shared_server("big-repos-github", env) as server:
        yield server


def upload_packs(github: FakeGitHub, name: str) -> int:
    """git-upload-pack POSTs for `name`: each is a fetch."""
    paths = {f"/{name}.git/git-upload-pack", f"/{name}/git-upload-pack"}
    return sum(1 for r in list(github.requests) if r["method"] == "POST" and r["path"] in paths)


def holds(path: Path, needles: list[bytes]) -> bool:
    """Whether the file holds any needle: read in chunks (a payload is never read whole)."""
    overlap = max(len(n) for n in needles)
    tail = b""
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            window = tail + chunk
            if any(n in window for n in needles):
                return True
            tail = window[-overlap:]
    return False


async def test_github_hands_the_real_base_at_depth_fetches_once_and_follows_a_moved_base(
    heavy: Path, github: FakeGitHub, model: FakeAnthropic, on_github: Server, github_cache: Path
) -> None:
    name = "acme/heavy"
    github.create_repo(name, files={"README.md": "# x\n"})
    bare = github.bare_path(name)
    (bare / "objects" / "info" / "alternates").write_text(f"{heavy / 'objects'}\n")
    git(bare, "update-ref", "refs/heads/main", git(heavy, "rev-parse", "main"))
    base = git(bare, "rev-parse", "main")
    url = f"https://github.com/{name}"

    first = await post_run(on_github.url, {"repo_url": url, "prompt": scenario(model, "g1")})
    assert first[-1]["status"] == "succeeded", first[-3:]
    commits, head, tracked, shallow = look(first)
    assert (commits, head, tracked) == (DEPTH, base, SMALL_FILES + HEAVY_FILES + 1)
    assert shallow == git(bare, "rev-parse", f"main~{DEPTH - 1}")
    fetched = upload_packs(github, name)
    assert fetched >= 1
    assert published(bare, first) == (base, ["README.md"])  # on the real base, no snapshot
    # The token rule: the payload the sandbox receives holds no credential, in any form.
    secret = [TOKEN.encode(), base64.b64encode(f"x-access-token:{TOKEN}".encode())]
    (payload,) = list(github_cache.glob("*.tar"))
    assert not holds(payload, secret)

    second = await post_run(on_github.url, {"repo_url": url, "prompt": scenario(model, "g2")})
    assert second[-1]["status"] == "succeeded", second[-3:]
    assert look(second)[:2] == (DEPTH, base)
    assert upload_packs(github, name) == fetched, "the second run on one base fetched again"
    assert any(m.startswith(f"Using the prepared base {base[:12]}") for m in cloning(second))
    assert published(bare, second) == (base, ["README.md"])

    moved = github.commit_files(name, "main", {"moved.txt": "moved\n"})
    third = await post_run(on_github.url, {"repo_url": url, "prompt": scenario(model, "g3")})
    assert third[-1]["status"] == "succeeded", third[-3:]
    assert look(third)[:2] == (DEPTH, moved)
    assert upload_packs(github, name) > fetched
    assert any(m.startswith(f"Prepared the base {moved[:12]}") for m in cloning(third))
    assert published(bare, third) == (moved, ["README.md"])


# --- the cache itself, and attacks on it ----------------------------------------------------------
async def test_a_payload_in_use_is_never_evicted_under_its_upload(
    heavy: Path, tmp_path: Path
) -> None:
    payloads = BasePayloads(tmp_path / "cache", limit_mb=1, depth=DEPTH)  # each is ~2 MB

    async def source() -> Path:
        return heavy

    def key(n: int) -> PayloadKey:
        return PayloadKey("local", "heavy", git(heavy, "rev-parse", f"main~{n}"), "main")

    first = await payloads.get(key(0), source)
    second = await payloads.get(key(1), source)  # past the limit, but both are in use
    assert first.path.is_file() and second.path.is_file()
    with first.path.open("rb") as held:  # what an upload reads
        assert held.read(512)
    first.release()
    first.release()  # a second release changes nothing
    third = await payloads.get(key(2), source)
    assert not first.path.exists(), "the least recently used payload no run uses is evicted"
    assert second.path.is_file() and third.path.is_file()
    again = await payloads.get(key(1), source)
    assert again.cached and again.path == second.path
    for payload in (second, third, again):
        payload.release()


async def test_concurrent_runs_on_one_base_make_its_payload_once(
    heavy: Path, model: FakeAnthropic, local: tuple[Server, Path, Path]
) -> None:
    server, repos, _ = local
    origin = borrow(heavy, repos / "heavy-d.git")
    base = add_commit(origin, {"concurrent.txt": "both at once\n"})
    both = await asyncio.gather(
        *(
            post_run(
                server.url, {"repo_url": "local:heavy-d.git", "prompt": scenario(model, f"d{n}")}
            )
            for n in range(2)
        )
    )
    for events in both:
        assert events[-1]["status"] == "succeeded", events[-3:]
        assert look(events)[:2] == (DEPTH, base)
    said = sorted(m.split(" (")[0] for events in both for m in cloning(events) if "base " in m)
    assert said == [f"Prepared the base {base[:12]}", f"Using the prepared base {base[:12]}"]


async def test_a_failed_build_leaves_nothing_in_the_cache(heavy: Path, tmp_path: Path) -> None:
    """A payload is published whole or not at all: a build that fails leaves no file behind."""
    cache = tmp_path / "cache"
    payloads = BasePayloads(cache, limit_mb=100, depth=DEPTH)

    async def source() -> Path:
        return heavy

    missing = PayloadKey("local", "heavy", "1" * 40, "main")  # no such commit in the origin
    with pytest.raises(GitError):
        await payloads.get(missing, source)
    assert list(cache.iterdir()) == []


def test_a_base_cache_inside_the_sandboxs_view_is_refused_at_start(tmp_path: Path) -> None:
    """Host git builds payloads in the cache: never where every sandboxed command can read."""
    settings = load_settings(
        BACKSPACE_DB=str(tmp_path / "backspace.db"),
        BACKSPACE_SANDBOX="local",
        BACKSPACE_BASE_CACHE_DIR="/usr/lib/backspace-attack-base-cache",
    )
    with pytest.raises(SettingsError, match="BACKSPACE_BASE_CACHE_DIR /usr/lib/backspace-attack"):
        check_outside_sandbox_view(settings)
    assert not Path("/usr/lib/backspace-attack-base-cache").exists()


def test_the_clone_depth_must_be_at_least_one(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="BACKSPACE_CLONE_DEPTH"):
        load_settings(BACKSPACE_DB=str(tmp_path / "b.db"), BACKSPACE_CLONE_DEPTH="0")


async def test_what_a_killed_build_left_is_swept_but_not_a_live_one(
    heavy: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    old_dir, old_part = cache / "build-dead", cache / "payload-dead.part"
    live_dir = cache / "build-live"
    for directory in (old_dir, live_dir):
        (directory / "base.git").mkdir(parents=True)
    old_part.write_bytes(b"half a tar")
    hour_ago = time.time() - 2 * 3600
    for entry in (old_dir, old_part):
        os.utime(entry, (hour_ago, hour_ago))
    payloads = BasePayloads(cache, limit_mb=100, depth=DEPTH)

    async def source() -> Path:
        return heavy

    made = await payloads.get(
        PayloadKey("local", "heavy", git(heavy, "rev-parse", "main"), "main"), source
    )
    made.release()
    assert sorted(p.name for p in cache.iterdir()) == sorted(["build-live", made.path.name])


async def test_a_base_that_is_not_a_commit_id_names_no_file(heavy: Path, tmp_path: Path) -> None:
    """The GitHub host takes the base commit from the API's answer: a hostile or broken answer
    (a path, an option) never becomes a file name or a git argument."""
    payloads = BasePayloads(tmp_path / "cache", limit_mb=100, depth=DEPTH)

    async def source() -> Path:
        return heavy

    for bad in ("../../../../tmp/escape-payload", "--upload-pack=touch /tmp/x", "main", ""):
        with pytest.raises(GitHostError, match="not a commit id"):
            await payloads.get(PayloadKey("github", "acme/x", bad, "main"), source)
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []
    assert not Path("/tmp/escape-payload.tar").exists()
