"""Taking the agent's work out of the sandbox and making it safe to push.

Inside the sandbox the orchestrator commits everything and writes `git bundle base..HEAD`.
On the host that bundle is untrusted input: it is imported into a host-owned bare repository
(plumbing only, no checkout, no hooks), checked to descend from the base, re-committed as one
commit with backspace's identity (agent-made commits and their metadata are discarded), and its
diff checked against policy before anything is pushed.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from backspace.orchestrator.githosts.base import FileChange, GitHostError
from backspace.orchestrator.githosts.gitcmd import GitError, git
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


class PolicyError(GitHostError):
    pass


async def commit_in_sandbox(
    sandbox: Sandbox, start: str, identity: Identity, message: str, bundle: str
) -> bool:
    """Stage and commit everything; bundle `start..HEAD` to `bundle`. False when nothing changed."""
    q = shlex.quote
    script = f"""
set -e
git add -A
if git diff --cached --quiet && [ "$(git rev-parse HEAD)" = {q(start)} ]; then
  echo BACKSPACE_NO_CHANGES; exit 0
fi
git -c user.name={q(identity.name)} -c user.email={q(identity.email)} -c core.hooksPath=/dev/null \\
  -c commit.gpgsign=false commit --quiet --no-verify --allow-empty -m {q(message)}
git bundle create --quiet {q(bundle)} {q(start)}..HEAD
"""
    result = await sandbox.exec(script, timeout=300, max_output=4000)
    if result.exit_code != 0:
        raise GitHostError(
            "commit_failed", f"committing the change in the sandbox failed: {result.output[-400:]}"
        )
    return "BACKSPACE_NO_CHANGES" not in result.output


@dataclass(frozen=True)
class Policy:
    """What a change may contain to be published."""

    max_files: int = 200
    allow_workflow_changes: bool = False  # all of `.github/`, not only its workflows
    protected: ProtectedPaths = field(default_factory=ProtectedPaths)


async def import_change(
    git_dir: Path,
    bundle: Path,
    *,
    start: str,
    base_sha: str,
    identity: Identity,
    message: str,
    policy: Policy,
) -> Change | None:
    """Verify the bundle (`start..tip`) and re-commit its tree as one commit on `base_sha`.

    None when the tree did not change. `start` is the commit the sandbox began at: the base
    itself, or a snapshot of the base's tree (same tree, so the diff is the same).
    """
    try:
        # `unbundle` verifies the bundle (its prerequisites are here) before it reads a pack.
        heads = await git("bundle", "unbundle", str(bundle), git_dir=git_dir)
    except GitError as exc:
        raise PolicyError(
            "bad_bundle", f"the sandbox's change could not be imported: {exc.stderr.strip()[:300]}"
        ) from exc
    tips = [line.split()[0] for line in heads.splitlines() if line.strip()]
    if not tips or not re.fullmatch(r"[0-9a-f]{40,64}", tips[0]):
        raise PolicyError("bad_bundle", "the sandbox's bundle named no commit")
    tip = tips[0]
    try:
        await git("merge-base", "--is-ancestor", start, tip, git_dir=git_dir)
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
    files, links = await _file_changes(git_dir, base_sha, head)
    check_policy(files, policy)
    await _check_symlinks(git_dir, head, links)
    diff = await git(
        "diff", "--no-color", "--no-ext-diff", "--find-renames", base_sha, head, git_dir=git_dir
    )
    if len(diff) > DIFF_TEXT_LIMIT:
        diff = diff[:DIFF_TEXT_LIMIT] + "\n[... diff cut ...]\n"
    return Change(
        head_sha=head,
        files=files,
        additions=sum(f.additions for f in files),
        deletions=sum(f.deletions for f in files),
        diff=diff,
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
    that machine's files.
    """
    if not added:
        return
    listing = await git("ls-tree", "-r", "-z", head, git_dir=git_dir)
    links = {
        entry.partition("\t")[2] for entry in listing.split("\0") if entry.startswith("120000 ")
    }
    outside: list[str] = []
    for path, blob in added:
        target = await git("cat-file", "blob", blob, git_dir=git_dir)
        if _leaves_repository(path, target, links - {path}):
            outside.append(f"{path} -> {target[:200]}")
    if outside:
        raise PolicyError(
            "symlink_outside_repository",
            "the change adds symbolic links that point outside the repository: "
            + ", ".join(outside[:10]),
        )


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
