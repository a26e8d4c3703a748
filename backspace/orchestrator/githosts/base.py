"""The `GitHost` protocol: resolve a reference, hand out the base, push a branch, open a PR.

The host is the only place a git credential exists. The sandbox receives the base as a shallow
payload (base_payload.py: the base commit and a few of its ancestors, cached by commit) and gives
back a bundle; everything that talks to a remote runs here, on the host.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from backspace.orchestrator.errors import GitHostError as GitHostError
from backspace.orchestrator.errors import RepoRefError as RepoRefError
from backspace.orchestrator.githosts.base_payload import BasePayload as BasePayload


def what_the_server_said(stderr: str, limit: int = 500) -> str:
    """The server's own words (`remote:` lines) and git's verdict, not the lines naming URLs.

    A long branch name and URL would otherwise push the reason (a hook's message) out of view.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = [line.removeprefix("remote:").strip() for line in lines if line.startswith("remote:")]
    verdict = [line for line in lines if line.startswith(("!", "fatal:", "error:"))]
    picked = [line for line in said + verdict[:1] if line]
    return ("; ".join(picked) if picked else stderr.strip())[:limit]


@dataclass(frozen=True)
class RepoRef:
    host: str  # the GitHost.name that accepted it
    name: str  # how people see it: "widgets", "acme/widgets"
    location: str  # where the host finds it: a path, an API name
    branch: str | None = None  # a base branch named in the reference


@dataclass
class ResolvedRepo:
    """A repository a run works on, as its host found it; `head_owner` is set on push."""

    ref: RepoRef
    base_branch: str
    base_sha: str
    can_push: bool = True  # False: the host pushes to a fork of it
    web_url: str | None = None  # its page: links to it in the agent's text are kept
    clone_url: str | None = None  # where git fetches and pushes, for a host with a remote
    head_owner: str | None = None  # who owns the pushed branch, when a fork does


@dataclass
class FileChange:
    path: str
    status: str  # A, M, D, R...
    additions: int
    deletions: int

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "additions": self.additions,
            "deletions": self.deletions,
        }


@dataclass
class PullRequestDraft:
    run_id: str
    title: str
    body: str
    branch: str
    head_sha: str
    files: list[FileChange]
    additions: int
    deletions: int
    diff: str
    draft: bool = True


@dataclass
class PullRequest:
    url: str
    number: int
    draft: bool = False


@dataclass
class PullRequestState:
    """An existing PR as a follow-up finds it: open, closed or merged, and its body."""

    url: str
    number: int
    state: str  # "open", "closed" or "merged"
    body: str
    draft: bool = False


class GitHost(Protocol):
    name: str

    def parse(self, reference: str) -> RepoRef | None:
        """A RepoRef when the reference is this host's; None when it is not; RepoRefError when
        it is this host's but not acceptable."""
        ...

    def check(self) -> tuple[bool, str]:
        """(usable, a sentence for /health and `backspace doctor`)."""
        ...

    def run_access(self, ref: RepoRef) -> AbstractAsyncContextManager[None]:
        """Around a whole run: the credentials of that run alone (a GitHub App's token for the
        one repository, revoked at the end); nothing for a host with standing credentials."""
        ...

    async def author(self) -> tuple[str, str] | None:
        """(name, email) the host wants commits authored as (a GitHub App's bot), or None for
        the configured GITHUB_USERNAME/GITHUB_EMAIL."""
        ...

    async def resolve(self, ref: RepoRef, base_branch: str | None = None) -> ResolvedRepo: ...

    async def base_payload(self, repo: ResolvedRepo, scratch: Path) -> BasePayload:
        """The shallow payload of the real base commit for the sandbox, cached by commit; the
        caller calls its `release` once the run no longer uploads it."""
        ...

    async def prepare(self, repo: ResolvedRepo, dest: Path) -> Path:
        """A host-owned bare repository with the base commit (and its shallow boundary), to
        read the repository's file from and import the sandbox's result into."""
        ...

    async def push(self, repo: ResolvedRepo, git_dir: Path, sha: str, branch: str) -> None: ...

    async def open_pull_request(
        self, repo: ResolvedRepo, draft: PullRequestDraft
    ) -> PullRequest: ...

    async def branch_head(self, repo: ResolvedRepo, branch: str) -> str | None:
        """The commit a branch points at now (someone may have pushed), or None when gone."""
        ...

    async def pull_request(self, repo: ResolvedRepo, number: int) -> PullRequestState:
        """An existing pull request: whether it is still open, and its body."""
        ...

    async def update_pull_request(
        self, repo: ResolvedRepo, number: int, *, body: str, comment: str
    ) -> PullRequest:
        """A follow-up's update: the new body (its Runs section gained a row) and a comment."""
        ...
