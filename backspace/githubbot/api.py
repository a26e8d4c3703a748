"""The few GitHub calls the webhook front end makes, through PyGithub on a worker thread.

Lazy objects: a reaction, a permission, a comment is one request each (no GET of the
repository or the issue first). Short retries only: a GitHub error must never hold the front
end for long, and it never reaches a run. The calls have threads of their own: the runs' work
fills the loop's default executor, and an acknowledgement must not wait behind it.

With a GitHub App, each call uses the installation token of its repository (issues: write,
pull_requests: read, metadata: read: the front end never pushes), minted on the loop and kept
until a few minutes before it expires (github_app.InstallationTokens); backspace's own login is
the App's bot user.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from github import Github

    from backspace.orchestrator.githosts.github_app import InstallationTokens

T = TypeVar("T")


class GitHubApi:
    def __init__(
        self,
        token: str,
        api_url: str,
        timeout: float = 15.0,
        threads: int = 8,
        tokens: InstallationTokens | None = None,
    ) -> None:
        self._token = token
        self._tokens = tokens
        self.api_url = api_url
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="github-webhook")
        self._acks = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="github-ack")
        """Reactions and the checks before them: never queued behind status comments."""

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._acks.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        self.close()
        if self._tokens is not None:
            await self._tokens.aclose()

    def _client(self, token: str) -> Github:
        from github import Auth, Github, GithubRetry

        return Github(
            auth=Auth.Token(token) if token else None,
            base_url=self.api_url,
            timeout=int(self.timeout),
            retry=GithubRetry(total=2, backoff_factor=0.2, secondary_rate_wait=5),
            seconds_between_requests=None,
            seconds_between_writes=None,
            lazy=True,
        )

    async def _call(self, work: Callable[[Github], T], *, repo: str, ack: bool = False) -> T:
        token = self._token if self._tokens is None else await self._tokens.get(repo)

        def run() -> T:  # a client per call: no kept-alive socket that may have gone stale
            with self._client(token) as client:
                return work(client)

        pool = self._acks if ack else self._pool
        return await asyncio.get_running_loop().run_in_executor(pool, run)

    async def own_login(self) -> str:
        """The token's own login (``GET /user``), or the App's bot user: its comments never
        trigger."""
        if self._tokens is not None:
            return f"{await self._tokens.app.slug()}[bot]"

        def work() -> str:
            with self._client(self._token) as client:
                return str(client.get_user().login)

        return await asyncio.get_running_loop().run_in_executor(self._acks, work)

    async def permission(self, repo: str, login: str) -> str:
        """``login``'s permission on ``repo`` as GitHub sums it up: admin, write, read or none
        (maintain counts as write, triage as read)."""
        return await self._call(
            lambda g: g.get_repo(repo).get_collaborator_permission(login), repo=repo, ack=True
        )

    async def react(self, repo: str, target: tuple[str, int], number: int, content: str) -> None:
        """Add a reaction to an issue comment, a review comment or an issue/pull request."""
        kind, ident = target

        def work(g: Github) -> None:
            repository = g.get_repo(repo)
            if kind == "issue_comment":
                repository.get_issue(number).get_comment(ident).create_reaction(content)
            elif kind == "review_comment":
                repository.get_pull(number).get_review_comment(ident).create_reaction(content)
            else:
                repository.get_issue(ident).create_reaction(content)

        await self._call(work, repo=repo, ack=True)

    async def comment(self, repo: str, number: int, body: str) -> int:
        """Post a comment on issue or pull request ``number``; its id."""
        return await self._call(
            lambda g: g.get_repo(repo).get_issue(number).create_comment(body).id, repo=repo
        )

    async def edit_comment(self, repo: str, number: int, comment_id: int, body: str) -> None:
        await self._call(
            lambda g: g.get_repo(repo).get_issue(number).get_comment(comment_id).edit(body),
            repo=repo,
        )
