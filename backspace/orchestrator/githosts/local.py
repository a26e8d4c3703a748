"""Git repositories on this machine, under BACKSPACE_LOCAL_REPOS only.

The branch is fetched into the origin repository (from its side, so none of its hooks run); the
"pull request" is a record in the store, served by backspace itself at /prs/{id}. Host-side git
runs in the origin (the operator's own repository, always its top level, which the agent never
touches) and in host-owned bare repositories, never in a directory that came from the sandbox.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from backspace.orchestrator.errors import RunFailure
from backspace.orchestrator.githosts.base import (
    GitHostError,
    PullRequest,
    PullRequestDraft,
    PullRequestState,
    RepoRef,
    RepoRefError,
    ResolvedRepo,
    what_the_server_said,
)
from backspace.orchestrator.githosts.base_payload import BasePayload, BasePayloads, PayloadKey
from backspace.orchestrator.githosts.gitcmd import GitError, git
from backspace.orchestrator.githosts.references import check_branch_name
from backspace.orchestrator.store import RunStore

PREFIX = "local:"


class LocalGitHost:
    name = "local"

    def __init__(
        self, root: Path | None, store: RunStore, public_url: str, payloads: BasePayloads
    ) -> None:
        self.root = root.resolve() if root else None
        self.store = store
        self.public_url = public_url.rstrip("/")
        self.payloads = payloads

    def check(self) -> tuple[bool, str]:
        if self.root is None:
            return False, "off: set BACKSPACE_LOCAL_REPOS to a directory of git repositories"
        if not self.root.is_dir():
            return False, f"BACKSPACE_LOCAL_REPOS={self.root} is not a directory"
        return True, f"repositories under {self.root}"

    @contextlib.asynccontextmanager
    async def run_access(self, ref: RepoRef) -> AsyncIterator[None]:
        """Local repositories need no credentials."""
        yield

    async def author(self) -> tuple[str, str] | None:
        return None

    # --- references -----------------------------------------------------------------------------
    def parse(self, reference: str) -> RepoRef | None:
        """Accept an absolute path or `local:<path below the root>`."""
        if reference.startswith(PREFIX):
            relative = reference[len(PREFIX) :]
        elif reference.startswith("/"):
            relative = None
        else:
            return None
        if self.root is None:
            raise RepoRefError(
                "local repositories are off on this server: set BACKSPACE_LOCAL_REPOS to the "
                "directory that holds them"
            )
        if any(ord(c) < 32 for c in reference):
            raise RepoRefError("the repository path contains control characters")
        if relative is not None:
            if not relative or relative.startswith(("/", "-")):
                raise RepoRefError("use local:<name>, a path below BACKSPACE_LOCAL_REPOS")
            candidate = self.root / relative
        else:
            candidate = Path(reference)
        resolved = Path(os.path.realpath(candidate))
        if resolved == self.root or not resolved.is_relative_to(self.root):
            raise RepoRefError(
                f"{reference} is not inside BACKSPACE_LOCAL_REPOS ({self.root}); only "
                "repositories below it can be used"
            )
        _check_top_level(reference, resolved, self.root)
        name = resolved.relative_to(self.root).as_posix()
        return RepoRef(host=self.name, name=name, location=str(resolved))

    # --- the base, in and out -------------------------------------------------------------------
    async def resolve(self, ref: RepoRef, base_branch: str | None = None) -> ResolvedRepo:
        origin = Path(ref.location)
        branch = base_branch or ref.branch
        try:
            if branch is None:
                branch = (
                    await git("symbolic-ref", "--short", "HEAD", git_dir=git_dir_of(origin))
                ).strip()
            check_branch_name(branch)
            sha = (
                await git(
                    "rev-parse",
                    "--verify",
                    "--end-of-options",
                    f"refs/heads/{branch}^{{commit}}",
                    git_dir=git_dir_of(origin),
                )
            ).strip()
        except GitError as exc:
            raise GitHostError(
                "branch_not_found",
                f"{ref.name} has no branch {branch!r}"
                if branch
                else f"{ref.name} has no commits yet",
            ) from exc
        return ResolvedRepo(ref=ref, base_branch=branch, base_sha=sha, web_url=None)

    async def base_payload(self, repo: ResolvedRepo, scratch: Path) -> BasePayload:
        """The base's shallow payload, fetched by commit from the origin (its upload-pack only)
        into the cache's own temp directory when no earlier run made it."""
        origin = git_dir_of(Path(repo.ref.location))

        async def source() -> Path:
            return origin

        key = PayloadKey(self.name, str(origin), repo.base_sha, repo.base_branch)
        try:
            return await self.payloads.get(key, source)
        except GitError as exc:
            raise RunFailure(
                "clone_failed",
                f"the base {repo.base_sha[:12]} of {repo.ref.name} could not be read: "
                f"{what_the_server_said(exc.stderr)}",
                retryable=True,
            ) from exc

    async def prepare(self, repo: ResolvedRepo, dest: Path) -> Path:
        """A bare repository that borrows the origin's objects (alternates): instant, no copy."""
        git_dir = dest / "host.git"
        await git("init", "--quiet", "--bare", str(git_dir))
        objects = git_dir_of(Path(repo.ref.location)) / "objects"
        (git_dir / "objects" / "info" / "alternates").write_text(f"{objects}\n")
        return git_dir

    async def push(self, repo: ResolvedRepo, git_dir: Path, sha: str, branch: str) -> None:
        """Fetch the branch into the origin from its side, rather than push into it.

        A push into a local path runs `git receive-pack` there, and receive-pack runs the
        origin's hooks whatever `-c core.hooksPath` the pushing side sets (local transport drops
        it). A fetch runs in a process started here, so hooks, maintenance and fsck settings are
        the ones backspace chose; the only process on the other side is upload-pack, in
        backspace's own bare repository.
        """
        published = "refs/backspace/publish"
        try:
            await git("update-ref", published, sha, git_dir=git_dir)
            await git(
                "-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "fetch.writeCommitGraph=false",
                "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                "--end-of-options", str(git_dir), f"{published}:refs/heads/{branch}",
                git_dir=git_dir_of(Path(repo.ref.location)), allow_file=True,
            )  # fmt: skip
        except GitError as exc:
            raise GitHostError(
                "push_rejected",
                f"the push to {repo.ref.name} was rejected: {what_the_server_said(exc.stderr)}",
            ) from exc

    async def open_pull_request(self, repo: ResolvedRepo, draft: PullRequestDraft) -> PullRequest:
        pr_id = await self.store.create_pull_request(
            run_id=draft.run_id,
            repo=repo.ref.name,
            title=draft.title,
            body=draft.body,
            branch=draft.branch,
            base=repo.base_branch,
            base_sha=repo.base_sha,
            head_sha=draft.head_sha,
            files=[f.to_json() for f in draft.files],
            additions=draft.additions,
            deletions=draft.deletions,
            diff=draft.diff,
        )
        return PullRequest(url=f"{self.public_url}/prs/{pr_id}", number=pr_id, draft=draft.draft)

    async def branch_head(self, repo: ResolvedRepo, branch: str) -> str | None:
        origin = git_dir_of(Path(repo.ref.location))
        try:
            out = await git(
                "rev-parse",
                "--verify",
                "--quiet",
                f"refs/heads/{branch}^{{commit}}",
                git_dir=origin,
            )
        except GitError:
            return None
        return out.strip() or None

    async def pull_request(self, repo: ResolvedRepo, number: int) -> PullRequestState:
        """A local PR is merged once its branch's head is in its base branch (people merge
        with git); closed when its record says so."""
        record = await self.store.get_pull_request(number)
        if record is None or record.repo != repo.ref.name:
            raise GitHostError("pr_not_found", f"{repo.ref.name} has no pull request #{number}")
        state = record.state
        if state == "open":
            head = await self.branch_head(repo, record.branch)
            base = await self.branch_head(repo, record.base)
            if head and base and head != base and await self._is_ancestor(repo, head, base):
                state = "merged"
                await self.store.update_pull_request(number, state=state)
        return PullRequestState(
            url=f"{self.public_url}/prs/{number}", number=number, state=state, body=record.body
        )

    async def _is_ancestor(self, repo: ResolvedRepo, ancestor: str, of: str) -> bool:
        origin = git_dir_of(Path(repo.ref.location))
        try:
            await git("merge-base", "--is-ancestor", ancestor, of, git_dir=origin)
        except GitError:
            return False
        return True

    async def update_pull_request(
        self, repo: ResolvedRepo, number: int, *, body: str, comment: str
    ) -> PullRequest:
        record = await self.store.get_pull_request(number)
        if record is None:
            raise GitHostError("pr_not_found", f"{repo.ref.name} has no pull request #{number}")
        head = await self.branch_head(repo, record.branch)
        await self.store.update_pull_request(
            number, body=body, **({"head_sha": head} if head else {})
        )
        await self.store.add_pull_request_comment(number, comment)
        return PullRequest(url=f"{self.public_url}/prs/{number}", number=number)


def git_dir_of(top: Path) -> Path:
    """The git directory of a repository's top level: `top/.git`, or `top` when it is bare.

    Every host-side git call names it with --git-dir (with safe.bareRepository=explicit, git
    never discovers a repository on its own).
    """
    dot_git = top / ".git"
    return dot_git if dot_git.is_dir() else top


def _looks_like_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def _check_top_level(reference: str, resolved: Path, root: Path) -> None:
    """Only a repository's own top level: never a directory inside another repository.

    A repository's tracked content can contain a directory shaped like a bare repository (with
    its own config and hooks); accepting it would let repository content choose what host git
    runs.
    """
    for parent in resolved.parents:
        if not parent.is_relative_to(root):
            break
        if (parent / ".git").exists() or _looks_like_git_dir(parent) or parent.name == ".git":
            raise RepoRefError(
                f"{reference} is inside the repository {parent}: use the top level of a "
                "repository below BACKSPACE_LOCAL_REPOS, not a directory inside one"
            )
    dot_git = resolved / ".git"
    if dot_git.is_symlink() or dot_git.is_file():
        raise RepoRefError(
            f"{reference} is a linked work tree or submodule (its .git is a file): use the top "
            "level of the main repository"
        )
    if not dot_git.is_dir() and not _looks_like_git_dir(resolved):
        raise RepoRefError(
            f"{reference} is not a git repository: give the top level of one (a directory with a "
            ".git directory, or a bare repository)"
        )
