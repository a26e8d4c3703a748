"""Attacks through repositories and git (security issue 12, items 1, 5 and 9).

1. Repository content that is shaped like a bare repository (with hooks) is not accepted as a
   repository, the origin's own hooks never run when backspace publishes into it,
   ALLOWED_REPOS' `*` does not cross `/`, and imported objects are fsck'd (`.git` in a tree).
5. A huge file in the change never reaches Python's memory: sizes are checked before any diff,
   and a clear error names the file.
9. What the test command saw is what is published: no agent-controlled git config, attributes
   or index flags take part in the commit.

Real git, real bubblewrap, the real server; the model is the loopback fake.
"""

from __future__ import annotations

import json
import resource
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from backspace.orchestrator.githosts.references import RepoAllowlist
from backspace.orchestrator.publish import Identity, Policy, PolicyError, import_change
from tests.conftest import GIT_ENV, git, make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, ToolCall
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import Server, start_server
from tests.sse import collect, events_of, of_type, post_run
from tests.tls import TLS

pytestmark = pytest.mark.timeout(120)

ORIGIN_HOOKS = (
    "pre-receive", "update", "post-receive", "post-update", "reference-transaction",
    "push-to-checkout", "proc-receive", "post-checkout", "post-merge",
)  # fmt: skip
IDENTITY = Identity("backspace-bot", "bot@example.com")


def hook(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$0 $*" > {marker}\nexit 0\n')
    path.chmod(0o755)


@dataclass
class Rig:
    server: Server
    model: FakeAnthropic
    repos: Path
    markers: Path


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("attack-git")
    repos, markers = base / "repos", base / "markers"
    repos.mkdir()
    markers.mkdir()
    widgets = make_repo(repos, "widgets")
    # Tracked content shaped like a bare repository that borrows the outer objects.
    nested = widgets / "vendor" / "lib.git"
    (nested / "objects" / "info").mkdir(parents=True)
    (nested / "objects" / "info" / "alternates").write_text("../../../.git/objects\n")
    (nested / "HEAD").write_text("ref: refs/heads/main\n")
    (nested / "config").write_text("[core]\n\tbare = true\n")
    (nested / "refs" / "heads").mkdir(parents=True)
    (nested / "refs" / "heads" / "main").write_text(git(widgets, "rev-parse", "HEAD"))
    for name in ("pre-receive", "post-receive", "reference-transaction"):
        hook(nested / "hooks" / name, markers / f"nested-{name}")
    git(widgets, "add", "-A")
    git(widgets, "commit", "-q", "-m", "vendor a library")
    # The origin's own hooks (after the commit above, which would run them): never run.
    for name in ORIGIN_HOOKS:
        hook(widgets / ".git" / "hooks" / name, markers / f"origin-{name}")
    with FakeAnthropic(scenarios={}) as model:
        env = {
            "ANTHROPIC_API_KEY": "sk-ant-api03-attack-git-0123456789",
            "ANTHROPIC_BASE_URL": model.url,
            "BACKSPACE_LOCAL_REPOS": str(repos),
            "BACKSPACE_TEST_COMMAND": "grep -q tested app.py && grep -q 'new line' README.md",
        }
        server = start_server(base / "server", env)
        try:
            yield Rig(server, model, repos, markers)
        finally:
            server.stop()


# --- 1. repository content never runs code on the host ---------------------------------------
@pytest.mark.e2e  # it starts the real server or the CLI
@pytest.mark.parametrize(
    "reference",
    ["local:widgets/vendor/lib.git", "local:widgets/.git", "local:widgets/vendor"],
)
async def test_a_path_inside_another_repository_is_refused_and_its_hooks_never_run(
    rig: Rig, reference: str
) -> None:
    rig.model.scenarios["nested-attack"] = [Reply([EDIT_SIGNUP]), finish()]
    async with httpx.AsyncClient(verify=TLS, timeout=60) as client:
        response, frames = await collect(
            client,
            "POST",
            f"{rig.server.url}/api/code",
            json={"repo_url": reference, "prompt": "nested-attack: edit"},
        )
    ran = sorted(p.name for p in rig.markers.iterdir())
    assert ran == [], f"hooks ran on the host: {ran}"
    assert response.status_code == 422, events_of(frames)
    detail = response.json()["detail"]
    assert "repo_url" in detail and "top level" in detail, detail


@pytest.mark.e2e  # it starts the real server or the CLI
async def test_publishing_into_a_local_repository_runs_none_of_its_hooks(rig: Rig) -> None:
    rig.model.scenarios["origin-hooks"] = [Reply([EDIT_SIGNUP]), finish()]
    events = await post_run(
        rig.server.url, {"repo_url": "local:widgets", "prompt": "origin-hooks: edit"}
    )
    assert events[-1]["status"] == "succeeded", events
    branch = of_type(events, "pr_created")[0]["branch"]
    widgets = rig.repos / "widgets"
    assert "raise ValueError" in git(widgets, "show", f"{branch}:app.py")
    ran = sorted(p.name for p in rig.markers.iterdir())
    assert ran == [], f"the origin's hooks ran: {ran}"


def test_allowed_repos_star_stays_within_one_path_segment() -> None:
    allow = RepoAllowlist(["acme/*", "widgets*", "tools/**"])
    assert allow.allows("acme/widgets")
    assert allow.allows("ACME/Widgets")
    assert not allow.allows("acme/widgets/vendor/lib.git")
    assert allow.allows("widgets") and allow.allows("widgets-2")
    assert not allow.allows("widgets/vendor/lib.git")
    assert allow.allows("tools/a/b")  # `**` is the way to say "any depth"
    assert not allow.allows("other/widgets")


def _bundle_with_dotgit(tmp_path: Path) -> tuple[Path, Path, str]:
    """An origin, and a bundle whose commit's tree holds `.git/config` (a crafted tree)."""
    origin = make_repo(tmp_path, "origin")
    base = git(origin, "rev-parse", "HEAD").strip()

    def plumb(*args: str, stdin: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=origin, env=GIT_ENV, input=stdin, check=True,
            capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip

    blob = plumb("hash-object", "-w", "--stdin", stdin="[core]\n\tfsmonitor = touch /tmp/x\n")
    inner = plumb("mktree", stdin=f"100644 blob {blob}\tconfig\n")
    listing = git(origin, "ls-tree", "HEAD")
    tree = plumb("mktree", stdin=listing + f"040000 tree {inner}\t.git\n")
    commit = plumb("commit-tree", tree, "-p", base, stdin="evil\n")
    git(origin, "update-ref", "refs/heads/evil", commit)
    bundle = tmp_path / "evil.bundle"
    git(origin, "bundle", "create", "-q", str(bundle), "main..evil")
    return origin, bundle, base


def host_repo(tmp_path: Path, origin: Path) -> Path:
    host = tmp_path / "host.git"
    git(tmp_path, "init", "-q", "--bare", str(host))
    (host / "objects" / "info" / "alternates").write_text(f"{origin / '.git' / 'objects'}\n")
    return host


async def test_imported_objects_are_fscked_so_a_dotgit_tree_is_refused(tmp_path: Path) -> None:
    origin, bundle, base = _bundle_with_dotgit(tmp_path)
    host = host_repo(tmp_path, origin)
    with pytest.raises(PolicyError) as caught:
        await import_change(
            host, bundle, base_sha=base, identity=IDENTITY, message="m",
            policy=Policy(),
        )  # fmt: skip
    assert caught.value.code == "bad_bundle"
    assert "hasDotgit" in caught.value.message, caught.value.message


# --- 5. a huge change never reaches the server's memory -------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _bundle_with(tmp_path: Path, files: dict[str, int]) -> tuple[Path, Path, str]:
    """An origin, and a bundle adding text files of the given sizes (bytes), made quickly."""
    origin = make_repo(tmp_path, "origin")
    base = git(origin, "rev-parse", "HEAD").strip()
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(origin), str(work))
    chunk = b"a line of text that compresses well\n" * 30_000  # about 1 MB
    for name, size in files.items():
        with (work / name).open("wb") as out:
            for _ in range(size // len(chunk)):
                out.write(chunk)
            out.write(chunk[: size % len(chunk)])
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "big")
    bundle = tmp_path / "big.bundle"
    git(work, "bundle", "create", "-q", str(bundle), f"{base}..HEAD")
    return origin, bundle, base


@pytest.mark.timeout(60)
async def test_a_300_mb_file_is_refused_by_name_without_reading_it_into_memory(
    tmp_path: Path,
) -> None:
    origin, bundle, base = _bundle_with(tmp_path, {"huge.log": 300 * 1024 * 1024})
    assert bundle.stat().st_size < 5 * 1024 * 1024  # a tiny bundle
    before = _peak_rss_mb()
    with pytest.raises(PolicyError) as caught:
        await import_change(
            host_repo(tmp_path, origin), bundle, base_sha=base, identity=IDENTITY,
            message="m", policy=Policy(),
        )  # fmt: skip
    grew = _peak_rss_mb() - before
    assert grew < 60, f"importing raised this process's peak memory by {grew:.0f} MB"
    assert caught.value.code == "file_too_large"
    message = caught.value.message
    assert "huge.log" in message and "BACKSPACE_MAX_FILE_CHANGE_MB" in message, message


@pytest.mark.timeout(60)
async def test_a_big_allowed_change_has_its_diff_text_cut_while_streaming(tmp_path: Path) -> None:
    origin, bundle, base = _bundle_with(tmp_path, {"data.txt": 120 * 1024 * 1024})
    before = _peak_rss_mb()
    change = await import_change(
        host_repo(tmp_path, origin), bundle, base_sha=base, identity=IDENTITY,
        message="m", policy=Policy(max_file_bytes=200 << 20, max_change_bytes=200 << 20),
    )  # fmt: skip
    grew = _peak_rss_mb() - before
    assert change is not None
    assert grew < 60, f"importing raised this process's peak memory by {grew:.0f} MB"
    assert change.diff.endswith("[... diff cut ...]\n")
    assert len(change.diff) < 3_000_000
    assert [f.path for f in change.files] == ["data.txt"]


async def test_a_change_over_the_total_limit_is_refused_with_its_size(tmp_path: Path) -> None:
    origin, bundle, base = _bundle_with(tmp_path, {f"part{i}.txt": 900_000 for i in range(3)})
    with pytest.raises(PolicyError) as caught:
        await import_change(
            host_repo(tmp_path, origin), bundle, base_sha=base, identity=IDENTITY,
            message="m", policy=Policy(max_file_bytes=1 << 20, max_change_bytes=2 << 20),
        )  # fmt: skip
    assert caught.value.code == "change_too_large"
    assert "BACKSPACE_MAX_CHANGE_MB" in caught.value.message, caught.value.message


# --- 9. what was tested is what is published -------------------------------------------------
@pytest.mark.e2e  # it starts the real server or the CLI
async def test_an_agent_set_clean_filter_or_index_flag_never_changes_what_is_published(
    rig: Rig,
) -> None:
    marker = f"m{uuid.uuid4().hex[:8]}"
    script = (
        "printf \"print('tested')\\n\" > app.py"
        " && git config filter.evil.clean 'sed s/tested/evil/'"
        " && echo '* filter=evil' > .git/info/attributes"
        " && printf '# Widgets\\nnew line\\n' > README.md"
        " && git update-index --assume-unchanged README.md"
    )
    rig.model.scenarios[marker] = [Reply([ToolCall("bash", {"command": script})]), finish()]
    events = await post_run(
        rig.server.url, {"repo_url": "local:widgets", "prompt": f"{marker}: tweak"}
    )
    assert events[-1]["status"] == "succeeded", events
    test_run = [e for e in of_type(events, "Tool: Bash") if "grep -q tested" in e["command"]]
    assert test_run and test_run[-1]["exit_code"] == 0, json.dumps(events)[-2000:]
    branch = of_type(events, "pr_created")[0]["branch"]
    widgets = rig.repos / "widgets"
    assert git(widgets, "show", f"{branch}:app.py") == "print('tested')\n"
    assert git(widgets, "show", f"{branch}:README.md") == "# Widgets\nnew line\n"
