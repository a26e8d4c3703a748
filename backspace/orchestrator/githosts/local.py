"""Git repositories on this machine, under BACKSPACE_LOCAL_REPOS only.

The branch is pushed into the origin repository; the "pull request" is a record in the store,
served by backspace itself at /prs/{id}. Host-side git runs in the origin (the operator's own
repository, which the agent never touches) and in host-owned bare repositories, never in a
directory that came from the sandbox.
"""

from __future__ import annotations

import os
from pathlib import Path

from backspace.orchestrator.githosts.base import (
    BaseBundle,
    GitHostError,
    PullRequest,
    PullRequestDraft,
    RepoRef,
    RepoRefError,
    ResolvedRepo,
    what_the_server_said,
)
from backspace.orchestrator.githosts.gitcmd import GitError, git
from backspace.orchestrator.githosts.references import check_branch_name
from backspace.orchestrator.store import Store

PREFIX = "local:"


class LocalGitHost:
    name = "local"

    def __init__(self, root: Path | None, store: Store, public_url: str) -> None:
        self.root = root.resolve() if root else None
        self.store = store
        self.public_url = public_url.rstrip("/")

    def check(self) -> tuple[bool, str]:
        if self.root is None:
            return False, "off: set BACKSPACE_LOCAL_REPOS to a directory of git repositories"
        if not self.root.is_dir():
            return False, f"BACKSPACE_LOCAL_REPOS={self.root} is not a directory"
        return True, f"repositories under {self.root}"

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
        if not (resolved / "HEAD").is_file() and not (resolved / ".git").exists():
            raise RepoRefError(f"{reference} is not a git repository")
        name = resolved.relative_to(self.root).as_posix()
        return RepoRef(host=self.name, name=name, location=str(resolved))

    # --- the base, in and out -------------------------------------------------------------------
    async def resolve(self, ref: RepoRef, base_branch: str | None = None) -> ResolvedRepo:
        origin = Path(ref.location)
        branch = base_branch or ref.branch
        try:
            if branch is None:
                branch = (await git("symbolic-ref", "--short", "HEAD", cwd=origin)).strip()
            check_branch_name(branch)
            sha = (
                await git(
                    "rev-parse",
                    "--verify",
                    "--end-of-options",
                    f"refs/heads/{branch}^{{commit}}",
                    cwd=origin,
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

    async def bundle_base(self, repo: ResolvedRepo, dest: Path) -> BaseBundle:
        bundle = dest / "base.bundle"
        await git(
            "bundle",
            "create",
            str(bundle),
            f"refs/heads/{repo.base_branch}",
            cwd=Path(repo.ref.location),
        )
        return BaseBundle(bundle, f"refs/heads/{repo.base_branch}", repo.base_sha)

    async def prepare(self, repo: ResolvedRepo, dest: Path) -> Path:
        """A bare repository that borrows the origin's objects (alternates): instant, no copy."""
        git_dir = dest / "host.git"
        await git("init", "--quiet", "--bare", str(git_dir))
        objects = (
            await git(
                "rev-parse",
                "--path-format=absolute",
                "--git-common-dir",
                cwd=Path(repo.ref.location),
            )
        ).strip()
        (git_dir / "objects" / "info" / "alternates").write_text(f"{objects}/objects\n")
        return git_dir

    async def push(self, repo: ResolvedRepo, git_dir: Path, sha: str, branch: str) -> None:
        try:
            await git(
                "push", "--quiet", "--end-of-options", repo.ref.location, f"{sha}:refs/heads/{branch}",
                git_dir=git_dir, allow_file=True,
            )  # fmt: skip
        except GitError as exc:
            raise GitHostError(
                "push_rejected",
                f"the push to {repo.ref.name} was rejected: {what_the_server_said(exc.stderr)}",
            ) from exc

    async def open_pull_request(self, repo: ResolvedRepo, draft: PullRequestDraft) -> PullRequest:
        pr_id = self.store.create_pull_request(
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
