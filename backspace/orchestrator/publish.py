"""Taking the agent's work out of the sandbox and making it safe to push.

Inside the sandbox the orchestrator commits the work tree with a git directory of its own
(none of the agent's config, attributes, index flags or hooks take part, so the commit holds the
bytes the test command sees) and writes `git bundle start..commit`. On the host that bundle is
untrusted input: its pack is indexed with fsck into a host-owned bare repository (plumbing only,
no checkout, no hooks), checked to descend from the base, re-committed as one commit with
backspace's identity (agent-made commits and their metadata are discarded), its blob sizes
checked before any diff is computed, and its diff checked against policy before anything is
pushed.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from backspace.orchestrator.errors import GitError, GitHostError
from backspace.orchestrator.errors import PolicyError as PolicyError
from backspace.orchestrator.githosts.base import FileChange
from backspace.orchestrator.githosts.gitcmd import FSCK_ERRORS, git, git_capped
from backspace.orchestrator.protected_paths import ProtectedPaths, under_github
from backspace.orchestrator.sandboxes.base import Sandbox

JUNK = re.compile(
    r"(^|/)(node_modules|__pycache__|\.pytest_cache|\.mypy_cache|\.venv|\.tox|\.DS_Store)(/|$)"
    r"|\.py[co]$|(^|/)\.env(\..*)?$"
)
SECRET_PATTERNS = re.compile(
    r"(sk-ant-[A-Za-z0-9_-]{20,}|ghp_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}"
    r"|xox[bap]-[A-Za-z0-9-]{20,}|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----)"
)
DIFF_TEXT_LIMIT = 2_000_000
BUNDLE_HEADER_LIMIT = 1 << 20
MB = 1024 * 1024


@dataclass(frozen=True)
class Identity:
    name: str
    email: str


@dataclass
class Change:
    """The agent's change, re-committed on the host and ready to push."""

    head_sha: str
    files: list[FileChange]
    additions: int
    deletions: int
    diff: str
    tree: str = ""  # the published tree's id, to compare with what the test command saw


def owned_git_dir(bundle: str) -> str:
    """The sandbox path of backspace's own git directory for a run (next to its bundle)."""
    return bundle.removesuffix(".bundle") + ".git"


def _owned_git(git_dir: str) -> str:
    """Shell lines defining `g`: git on the work tree with backspace's git directory and index.

    No system, global or repository config, no hooks, no fsmonitor, and attributes that switch
    every content conversion off (info/attributes outranks the tree's .gitattributes), so what
    is committed is the bytes in the work tree. A prepared index is trusted only as far as full
    stat checks go (ctime included: no process can set it), so those are pinned too.
    """
    q = shlex.quote
    return f"""
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES \
  GIT_CONFIG GIT_CONFIG_PARAMETERS GIT_CONFIG_COUNT GIT_COMMON_DIR GIT_NAMESPACE GIT_ATTR_SOURCE
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_INDEX_FILE={q(git_dir)}/index
g() {{
  git --git-dir={q(git_dir)} --work-tree=. -c core.hooksPath=/dev/null -c core.fsmonitor=false \
    -c core.autocrlf=false -c core.safecrlf=false -c core.excludesFile=/dev/null \
    -c core.attributesFile=/dev/null -c core.untrackedCache=false -c commit.gpgsign=false \
    -c core.trustctime=true -c core.checkStat=default -c core.ignoreStat=false \
    -c core.splitIndex=false -c index.sparse=false "$@"
}}
"""


def _fresh_git_dir(git_dir: str) -> str:
    """Shell lines (re)making backspace's git directory, without the index: its objects are the
    checkout's (alternates), attributes switch every conversion off, nothing else is there."""
    q = shlex.quote
    no_conversion = "* -text -eol -crlf -filter -ident -working-tree-encoding -export-subst"
    return f"""
rm -rf {q(git_dir)}
git init --quiet --bare --template= {q(git_dir)}
git --git-dir={q(git_dir)} config core.bare false
mkdir -p {q(git_dir)}/info {q(git_dir)}/objects/info
printf '%s\n' "$PWD/.git/objects" > {q(git_dir)}/objects/info/alternates
printf '%s\n' {q(no_conversion)} > {q(git_dir)}/info/attributes
"""


async def prepare_index(sandbox: Sandbox, start: str, bundle: str) -> str | None:
    """Make backspace's index of `start` right after the checkout (and setup); its fingerprint.

    So that committing later hashes only the files whose stat changed, the index takes the
    stat data of the checkout: the checkout's own `.git/index` is reset to `start` by a one-tree
    `read-tree -m`, which keeps the stat data of every entry equal to `start` and nothing else,
    so nothing is read here. Between the checkout and now only setup wrote the work tree, and
    what it wrote is the environment's paths, which the commit keeps as in `start` whatever the
    index says. Git's racy-entry rule still holds from here on: an entry written in the same
    second as this index is checked by content at the commit (the copy is not back-dated). An
    entry carrying a flag (skip-worktree, assume-unchanged: setup could have set one), a missing
    or unreadable index make it start from `start` alone, every file hashed once here.

    The index lives in the sandbox, so the agent can write it. The sha256 returned here is
    checked by `commit_in_sandbox` before it uses the index: any other index is dropped and the
    commit starts from `start` with every file hashed, as if none had been prepared. An agent
    that swaps the file between that check and git's read (a process left running) gains
    nothing it could not get by writing the work tree: the commit only decides which tree is
    published, and that tree is what the host checks (fsck of the new objects, descent from the
    base, sizes, protected paths, symbolic links, secrets in the diff) and what verification
    checks out, in a fresh sandbox, to run the repository's tests on. At worst such a race
    publishes files under the environment's paths, which then pass the same checks as any file.
    None when the index could not be made (the commit then hashes every file).
    """
    q = shlex.quote
    git_dir = owned_git_dir(bundle)
    index = f"{git_dir}/index"
    script = f"""
set -e
{_fresh_git_dir(git_dir)}
{_owned_git(git_dir)}
if ! {{ cp .git/index {q(index)} 2>/dev/null && g read-tree -m {q(start)} 2>/dev/null \
       && ! g ls-files -v | grep -qv '^H '; }}; then
  rm -f {q(index)}
  g read-tree {q(start)}
  g update-index -q --refresh >/dev/null 2>&1 || :
fi
echo "BACKSPACE_INDEX=$(sha256sum < {q(index)} | cut -c1-64)"
"""
    result = await sandbox.exec(script, timeout=300, max_output=4000)
    found = re.search(r"BACKSPACE_INDEX=([0-9a-f]{64})", result.output)
    return found.group(1) if result.exit_code == 0 and found else None


async def commit_in_sandbox(
    sandbox: Sandbox,
    start: str,
    identity: Identity,
    message: str,
    bundle: str,
    *,
    exclude: tuple[str, ...] = (),
    index: str | None = None,
) -> str | None:
    """Commit the work tree with backspace's own git directory; bundle `start..` it to `bundle`.

    `exclude` are the environment's paths (what setup wrote): they stay as in `start`, whatever
    the work tree or its .gitignore says. `index` is the fingerprint `prepare_index` returned:
    when the index is still that one, only files whose stat changed are hashed; otherwise (none
    prepared, or anyone changed it) the index starts from `start` and every file is hashed.
    The git directory itself is made afresh here, whatever the agent wrote in it. The tree id
    of the commit, or None when the work tree is the start commit's tree.
    """
    q = shlex.quote
    pathspecs = " ".join(q(f":(top,literal,exclude){path}") for path in exclude)
    git_dir = owned_git_dir(bundle)
    kept = git_dir.removesuffix(".git") + ".index"
    script = f"""
set -e
rm -rf {q(kept)}
if [ -n {q(index or "")} ] && [ -f {q(git_dir)}/index ] && [ ! -L {q(git_dir)}/index ]; then
  mv -f {q(git_dir)}/index {q(kept)}
fi
{_fresh_git_dir(git_dir)}
{_owned_git(git_dir)}
if [ -f {q(kept)} ] && [ ! -L {q(kept)} ] \
   && [ "$(sha256sum < {q(kept)} | cut -c1-64)" = {q(index or "none")} ]; then
  mv -f {q(kept)} {q(git_dir)}/index
else
  rm -rf {q(kept)}
  g read-tree {q(start)}
fi
g add --all -- . {pathspecs}
tree=$(g write-tree)
if [ "$tree" = "$(g rev-parse {q(start + "^{tree}")})" ]; then
  echo BACKSPACE_NO_CHANGES; exit 0
fi
commit=$(printf '%s' {q(message)} | GIT_AUTHOR_NAME={q(identity.name)} GIT_AUTHOR_EMAIL={q(identity.email)} \
  GIT_COMMITTER_NAME={q(identity.name)} GIT_COMMITTER_EMAIL={q(identity.email)} \
  g commit-tree "$tree" -p {q(start)})
g update-ref refs/heads/backspace "$commit"
g bundle create --quiet {q(bundle)} {q(start)}..refs/heads/backspace
echo "BACKSPACE_TREE=$tree"
"""
    result = await sandbox.exec(script, timeout=300, max_output=4000)
    if result.exit_code != 0:
        raise GitHostError(
            "commit_failed", f"committing the change in the sandbox failed: {result.output[-400:]}"
        )
    if "BACKSPACE_NO_CHANGES" in result.output:
        return None
    found = re.search(r"BACKSPACE_TREE=([0-9a-f]{40,64})", result.output)
    if not found:
        raise GitHostError(
            "commit_failed", f"committing the change in the sandbox failed: {result.output[-400:]}"
        )
    return found.group(1)


@dataclass(frozen=True)
class Policy:
    """What a change may contain to be published."""

    max_files: int = 200
    allow_workflow_changes: bool = False  # all of `.github/`, not only its workflows
    max_file_bytes: int = 25 * MB
    max_change_bytes: int = 100 * MB
    protected: ProtectedPaths = field(default_factory=ProtectedPaths)


async def import_change(
    git_dir: Path,
    bundle: Path,
    *,
    base_sha: str,
    identity: Identity,
    message: str,
    policy: Policy,
) -> Change | None:
    """Verify the bundle (`base_sha..tip`) and re-commit its tree as one commit on `base_sha`.

    None when the tree did not change. The sandbox starts at the real base commit on every host.
    """
    tip = await _index_bundle(git_dir, bundle)
    try:
        await git("merge-base", "--is-ancestor", base_sha, tip, git_dir=git_dir)
    except GitError as exc:
        raise PolicyError(
            "bad_bundle", "the sandbox's change does not descend from the base commit"
        ) from exc
    trees = await git("rev-parse", f"{tip}^{{tree}}", f"{base_sha}^{{tree}}", git_dir=git_dir)
    tree, base_tree = trees.split()
    if tree == base_tree:
        return None
    env = {
        "GIT_AUTHOR_NAME": identity.name,
        "GIT_AUTHOR_EMAIL": identity.email,
        "GIT_COMMITTER_NAME": identity.name,
        "GIT_COMMITTER_EMAIL": identity.email,
    }
    head = (
        await git(
            "commit-tree", tree, "-p", base_sha, stdin=message.encode(), env=env, git_dir=git_dir
        )
    ).strip()
    await _check_sizes(git_dir, base_sha, head, policy)
    files, links = await _file_changes(git_dir, base_sha, head)
    check_policy(files, policy)
    await _check_symlinks(git_dir, head, links)
    diff, cut = await git_capped(
        "diff", "--no-color", "--no-ext-diff", "--no-textconv", "--find-renames", base_sha, head,
        git_dir=git_dir, limit=DIFF_TEXT_LIMIT,
    )  # fmt: skip
    if cut:
        diff += "\n[... diff cut ...]\n"
    return Change(
        head_sha=head,
        files=files,
        additions=sum(f.additions for f in files),
        deletions=sum(f.deletions for f in files),
        diff=diff,
        tree=tree,
    )


async def _index_bundle(git_dir: Path, bundle: Path) -> str:
    """Index the bundle's pack with fsck (strict: `.git` in a tree is an error); its tip.

    `git bundle unbundle` (before git 2.46) checks no object it receives, so the pack is
    handed to `index-pack --strict` directly; `--fix-thin` completes it from the base, and the
    strict connectivity check proves everything it points at is here.
    """
    header, offset = _bundle_header(bundle)
    tips = [line.split()[0] for line in header if line and line[0] not in "#-@"]
    if not tips or not re.fullmatch(r"[0-9a-f]{40,64}", tips[0]):
        raise PolicyError("bad_bundle", "the sandbox's bundle named no commit")
    strict = ",".join(f"{msg.lower()}=error" for msg in FSCK_ERRORS)
    try:
        await git(
            "index-pack", f"--strict={strict}", "--fix-thin", "--stdin",
            git_dir=git_dir, stdin_path=bundle, stdin_offset=offset,
        )  # fmt: skip
        await git("cat-file", "-e", f"{tips[0]}^{{commit}}", git_dir=git_dir)
    except GitError as exc:
        raise PolicyError(
            "bad_bundle", f"the sandbox's change could not be imported: {exc.stderr.strip()[:300]}"
        ) from exc
    return tips[0]


def _bundle_header(bundle: Path) -> tuple[list[str], int]:
    """The header lines of a v2/v3 bundle and the offset of its pack."""
    with bundle.open("rb") as source:
        head = source.read(BUNDLE_HEADER_LIMIT)
    end = head.find(b"\n\n")
    if not head.startswith((b"# v2 git bundle\n", b"# v3 git bundle\n")) or end < 0:
        raise PolicyError("bad_bundle", "the sandbox's change is not a git bundle")
    return head[:end].decode(errors="replace").splitlines(), end + 2


async def _check_sizes(git_dir: Path, base: str, head: str, policy: Policy) -> None:
    """Refuse a change whose files are too big, from the blobs' sizes, before any diff.

    A diff of a 300 MB file costs git and the server memory several times its size; the sizes
    come from `--raw` (no content read) and `cat-file --batch-check` (object headers only).
    """
    raw = await git(
        "diff", "--raw", "-z", "--no-renames", "--no-abbrev", base, head, git_dir=git_dir
    )
    tokens = iter(raw.split("\0"))
    blobs: dict[str, str] = {}
    for token in tokens:
        if token.startswith(":"):
            fields, path = token[1:].split(), next(tokens, "")
            if len(fields) >= 5 and fields[4] != "D" and fields[1] != "160000":
                blobs[path] = fields[3]
    if not blobs:
        return
    sizes_out = await git(
        "cat-file", "--batch-check=%(objectname) %(objectsize)", git_dir=git_dir,
        stdin="".join(f"{sha}\n" for sha in blobs.values()).encode(),
    )  # fmt: skip
    sizes = {
        line.split()[0]: int(line.split()[1])
        for line in sizes_out.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    too_big = sorted(
        (
            (sizes.get(sha, 0), path)
            for path, sha in blobs.items()
            if sizes.get(sha, 0) > policy.max_file_bytes
        ),
        reverse=True,
    )
    if too_big:
        listed = ", ".join(f"{path} ({size / MB:.1f} MB)" for size, path in too_big[:5])
        raise PolicyError(
            "file_too_large",
            f"the change has files larger than BACKSPACE_MAX_FILE_CHANGE_MB="
            f"{policy.max_file_bytes / MB:g}: {listed}; remove them or raise the limit",
        )
    total = sum(sizes.get(sha, 0) for sha in blobs.values())
    if total > policy.max_change_bytes:
        raise PolicyError(
            "change_too_large",
            f"the changed files add up to {total / MB:.1f} MB, more than "
            f"BACKSPACE_MAX_CHANGE_MB={policy.max_change_bytes / MB:g}; make the change smaller "
            "or raise the limit",
        )


async def _file_changes(
    git_dir: Path, base: str, head: str
) -> tuple[list[FileChange], list[tuple[str, str]]]:
    """The changed files, and the (path, blob) of each symbolic link the change adds or edits.

    One `git diff --raw --numstat`: its raw records (`:modes shas status`, path) come first,
    then the numstat ones (`added<TAB>deleted<TAB>path`).
    """
    out = await git(
        "diff", "--raw", "--numstat", "-z", "--no-renames", "--no-abbrev", base, head,
        git_dir=git_dir,
    )  # fmt: skip
    tokens = iter(out.split("\0"))
    kinds: dict[str, str] = {}
    links: list[tuple[str, str]] = []
    files: list[FileChange] = []
    for token in tokens:
        if token.startswith(":"):
            fields, path = token[1:].split(), next(tokens, "")
            if len(fields) < 5 or not path:
                continue
            kinds[path] = fields[4]
            if fields[1] == "120000" and fields[4] != "D":
                links.append((path, fields[3]))
        elif token.strip():
            added, deleted, path = token.split("\t", 2)
            files.append(
                FileChange(
                    path=path,
                    status=kinds.get(path, "M"),
                    additions=int(added) if added.isdigit() else 0,
                    deletions=int(deleted) if deleted.isdigit() else 0,
                )
            )
    return files, links


def check_policy(files: list[FileChange], policy: Policy) -> None:
    """Refuse a change too large, touching a protected path, or adding junk; say how to allow it."""
    if len(files) > policy.max_files:
        raise PolicyError(
            "diff_too_large",
            f"the change touches {len(files)} files, more than "
            f"BACKSPACE_MAX_DIFF_FILES={policy.max_files}",
        )
    _check_protected(files, policy)
    junk = [f.path for f in files if f.status != "D" and JUNK.search(f.path)]
    if junk:
        raise PolicyError(
            "junk_files",
            "the change adds files that should not be committed: " + ", ".join(junk[:10]),
        )


def _check_protected(files: list[FileChange], policy: Policy) -> None:
    """Added, changed or deleted alike: deleting a security workflow changes CI too."""
    github = [f.path for f in files if under_github(f.path)]
    if github and not policy.allow_workflow_changes:
        raise PolicyError(
            "protected_path",
            "the change touches " + ", ".join(github[:5]) + ": files under .github/ "
            "(workflows, composite actions, CODEOWNERS) run in CI with the repository's "
            "secrets or decide who reviews, so backspace does not publish them; set "
            "BACKSPACE_ALLOW_WORKFLOW_CHANGES=true to allow changes under .github/",
        )
    matched = [(f.path, policy.protected.match(f.path)) for f in files if not under_github(f.path)]
    hits = [(path, pattern) for path, pattern in matched if pattern is not None]
    if hits:
        raise PolicyError(
            "protected_path",
            "the change touches "
            + ", ".join(f"{path} (protected by {pattern!r})" for path, pattern in hits[:5])
            + ": backspace does not publish changes to what CI runs; remove the pattern from "
            "BACKSPACE_PROTECTED_PATHS to allow it",
        )


async def _check_symlinks(git_dir: Path, head: str, added: list[tuple[str, str]]) -> None:
    """Refuse symbolic links the change adds that point outside the repository.

    Nothing on the host follows them (the host never checks the tree out), but whoever checks
    the branch out would: a link to /etc/passwd or ../../.ssh in a build or a web root reads
    that machine's files. Only the paths the links' walks pass through are looked up in the
    tree (not a listing of the whole tree), unless there are more than LINK_LOOKUP_LIMIT bytes
    of them (absurdly deep targets), when the whole tree's links are listed instead.
    """
    if not added:
        return
    targets = []
    for path, blob in added:
        target, _ = await git_capped("cat-file", "blob", blob, git_dir=git_dir, limit=4096)
        targets.append((path, target))
    links = await _links_among(git_dir, head, set().union(*(_walk(p, t) for p, t in targets)))
    outside = [
        f"{path} -> {target[:200]}"
        for path, target in targets
        if _leaves_repository(path, target, links - {path})
    ]
    if outside:
        raise PolicyError(
            "symlink_outside_repository",
            "the change adds symbolic links that point outside the repository: "
            + ", ".join(outside[:10]),
        )


LINK_LOOKUP_LIMIT = 256 * 1024


async def _links_among(git_dir: Path, head: str, paths: set[str]) -> set[str]:
    """Which of `paths` are symbolic links in `head`."""
    if sum(len(path) + 1 for path in paths) > LINK_LOOKUP_LIMIT:
        listing = await git("ls-tree", "-r", "-z", head, git_dir=git_dir)
    elif paths:
        listing = await git(
            "ls-tree", "-z", head, "--", *sorted(paths),
            git_dir=git_dir, env={"GIT_LITERAL_PATHSPECS": "1"},
        )  # fmt: skip
    else:
        return set()
    return {
        entry.partition("\t")[2] for entry in listing.split("\0") if entry.startswith("120000 ")
    }


def _walk(path: str, target: str) -> set[str]:
    """The paths `_leaves_repository` may look up for the link at `path`: each one its walk
    reaches inside the repository, as if none of them were a link."""
    where = [part for part in posixpath.dirname(path).split("/") if part]
    seen: set[str] = set()
    if target.startswith("/"):
        return seen
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not where:
                return seen
            where.pop()
            continue
        where.append(part)
        seen.add("/".join(where))
    return seen


def _leaves_repository(path: str, target: str, links: set[str]) -> bool:
    """Whether the link at `path` can lead out of the repository.

    The target is walked one component at a time, as the kernel would: `a/l/..` is not `a`
    when `a/l` is itself a link, so any walk through another link counts as leaving.
    """
    if target.startswith("/"):
        return True
    where = [part for part in posixpath.dirname(path).split("/") if part]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not where:
                return True
            where.pop()
            continue
        where.append(part)
        if "/".join(where) in links:
            return True
    return False


def find_secrets(diff: str, known: list[str]) -> list[str]:
    """Secrets in the added lines of a diff: values this server knows, and well-known shapes."""
    added = "\n".join(
        line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")
    )
    found = [f"a known secret ({len(s)} characters)" for s in known if s in added]
    found += ["something shaped like a credential" for _ in SECRET_PATTERNS.finditer(added)]
    return found
