"""GitHub (and GitHub Enterprise) through PyGithub, with the token kept on the host.

- PyGithub is synchronous and not thread-safe: every operation builds its own client and runs
  in a worker thread, so the event loop never blocks and no two threads share a client. Its
  retries are short (no sleeping for minutes inside a run); a rate limit is a retryable error.
- The clone and push URLs come from the API's repository object, never from string-building.
- The base commit is the one the API names. The host fetches it (BACKSPACE_CLONE_DEPTH deep)
  into a host-owned cache repository, only when that repository lacks it, and hands the sandbox
  the shallow payload of the real base commit (base_payload.py), made once per base. The token
  reaches git through the environment only (an `http.<url>.extraheader` set with GIT_CONFIG_*),
  never a URL, a file, a command line, the sandbox or the payload.
- Without push access the repository is forked (to the token's account or GITHUB_FORK_OWNER),
  the fork is synced with the base, and the pull request is opened from `owner:branch`.
- With a GitHub App (github_app.py) there is no standing token: `run_access` mints one for the
  run's repository, holds it in a context variable for the run's task, and revokes it when the
  run ends, however it ends. A context variable, not an attribute: concurrent runs share this
  host, and each run's task (and the worker threads `asyncio.to_thread` starts for it, which
  copy the task's context) sees only its own token. Outside a run the App mode has no token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from backspace.orchestrator.githosts.base import (
    GitHostError,
    PullRequest,
    PullRequestDraft,
    PullRequestState,
    RepoRef,
    ResolvedRepo,
    what_the_server_said,
)
from backspace.orchestrator.githosts.base_payload import BasePayload, BasePayloads, PayloadKey
from backspace.orchestrator.githosts.gitcmd import GitError, git
from backspace.orchestrator.githosts.github_app import (
    RUN_PERMISSIONS,
    GitHubApp,
    InstallationToken,
)
from backspace.orchestrator.githosts.references import (
    check_branch_name,
    looks_like_github,
    parse_github_reference,
)
from backspace.orchestrator.redact import Redactor

if TYPE_CHECKING:
    # PyGithub (and requests) is imported where a GitHub call is made, not when the server
    # starts: most servers never call GitHub, and the import takes a good part of a second.
    from github import Github, GithubException

log = logging.getLogger(__name__)

T = TypeVar("T")
FORK_WAIT = 120.0

_RUN_TOKEN: ContextVar[str | None] = ContextVar("backspace_github_run_token", default=None)
"""The App token of the run whose task reads it (see `GitHubHost.run_access`)."""


class GitHubHost:
    name = "github"
    on_api_error: Callable[[str, str], None] | None = None  # telemetry: (operation, error code)

    def __init__(
        self,
        *,
        token: str | None,
        api_url: str,
        web_host: str,
        cache_root: Path,
        redactor: Redactor,
        payloads: BasePayloads,
        fork_owner: str | None = None,
        timeout: int = 30,
        fork_wait: float = FORK_WAIT,
        app: GitHubApp | None = None,
        app_identity: bool = True,
    ) -> None:
        self.app = app
        self.app_identity = app_identity
        self.token = None if app else token
        self._who = "the GitHub App's token for this run" if app else "GITHUB_TOKEN"
        self.api_url = api_url.rstrip("/")
        self.web_host = web_host.lower()
        self.cache_root = cache_root
        self.redactor = redactor
        self.payloads = payloads
        self.fork_owner = fork_owner
        self.timeout = timeout
        self.fork_wait = fork_wait
        self._locks: dict[str, asyncio.Lock] = {}
        # Plain http only when the operator's API URL is plain http (a loopback test server).
        self._allow_http = urlsplit(self.api_url).scheme == "http"

    def check(self) -> tuple[bool, str]:
        if self.app is not None:
            # Usable even when the last JWT was refused: a fixed clock or key must not need a
            # restart, and each run's own attempt fails with the error that says what to do.
            status = self.app.status
            state = {None: "not checked yet", True: "authenticates", False: "cannot authenticate"}
            detail = f": {status.message}" if status.ok is False else ""
            return True, (
                f"GitHub App {self.app.app_id} {state[status.ok]}{detail}; a token per run; "
                f"API at {self.api_url}"
            )
        if not self.token:
            return False, "GITHUB_TOKEN is not set: pull requests on GitHub cannot be opened"
        return True, f"token set; API at {self.api_url}; repositories on {self.web_host}"

    @property
    def mode(self) -> str:
        return "app" if self.app is not None else "token"

    async def probe(self) -> tuple[bool, str]:
        """Ask GitHub now (`backspace doctor`): the App signs in (`GET /app`), or the token."""
        if self.app is None:
            return self.check()
        ok, message = await self.app.probe()
        return ok, f"GitHub App {self.app.app_id}: {message}"

    async def aclose(self) -> None:
        if self.app is not None:
            await self.app.aclose()

    # --- a run's credentials ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def run_access(self, ref: RepoRef) -> AsyncIterator[None]:
        """The run's own App token for `ref` (that repository, `RUN_PERMISSIONS`), revoked when
        the block ends: success, failure or cancellation. Nothing to do with a plain token."""
        if self.app is None:
            yield
            return
        app = self.app
        minting = asyncio.ensure_future(app.mint(ref.location, RUN_PERMISSIONS))
        try:
            # Shielded: a run cancelled while GitHub mints still has its token revoked.
            token = await asyncio.shield(minting)
        except asyncio.CancelledError:
            minting.add_done_callback(lambda done: _revoke_minted(app, done))
            raise
        reset = _RUN_TOKEN.set(token.value)
        try:
            yield
        finally:
            _RUN_TOKEN.reset(reset)
            # Shielded: a cancelled run still revokes (the revocation outlives the cancel).
            await asyncio.shield(self.app.revoke(token))

    async def author(self) -> tuple[str, str] | None:
        """Who commits: the App's bot user (unless GITHUB_USERNAME/GITHUB_EMAIL were set)."""
        if self.app is None or not self.app_identity:
            return None
        return await self.app.bot_identity()

    def _token(self) -> str | None:
        """The credential of the run in progress: its App token, or the configured token."""
        return _RUN_TOKEN.get() if self.app is not None else self.token

    # --- references -----------------------------------------------------------------------------
    def parse(self, reference: str) -> RepoRef | None:
        if not looks_like_github(reference):
            return None
        ref = parse_github_reference(reference, [self.web_host])
        return RepoRef(
            host=self.name, name=ref.full_name, location=ref.full_name, branch=ref.branch
        )

    # --- resolve and fetch the base -------------------------------------------------------------
    async def resolve(self, ref: RepoRef, base_branch: str | None = None) -> ResolvedRepo:
        if base_branch is not None:
            check_branch_name(base_branch)
        info = await self._api(
            f"read {ref.name}", ref.name, lambda g: _repo_info(g, ref, base_branch)
        )
        if info["archived"]:
            raise GitHostError(
                "repo_archived",
                f"{info['full_name']} is archived: it takes no pushes or pull requests",
            )
        repo = ResolvedRepo(
            ref=RepoRef(
                host=self.name,
                name=info["full_name"],
                location=info["full_name"],
                branch=ref.branch,
            ),
            base_branch=info["branch"],
            base_sha=info["sha"],
            # An App token minted with contents: write pushes; the API says nothing of it.
            can_push=info["push"] or self.app is not None,
            web_url=info["html_url"],
            clone_url=info["clone_url"],
        )
        return repo

    async def _ensure_base(self, repo: ResolvedRepo) -> Path:
        """The cache repository, holding the base commit: fetched (shallow) only when it lacks
        it. The base's ref there keeps its objects, which importing the change needs."""
        cache = self._cache(repo)
        sha = repo.base_sha
        async with self._lock(repo.ref.name):
            if not (cache / "HEAD").exists():
                cache.parent.mkdir(parents=True, exist_ok=True)
                await git("init", "--quiet", "--bare", str(cache))
            if await self._has_commit(cache, sha):
                return cache
            branch = repo.base_branch
            depth = f"--depth={self.payloads.depth}"
            # The branch first (any server serves it); the commit itself when the branch moved
            # on since the API named it.
            wanted = [f"+refs/heads/{branch}:refs/backspace/heads/{branch}", sha]
            for refspec in wanted:
                try:
                    await self._git(
                        "-c", "gc.auto=0", "-c", "maintenance.auto=false",
                        "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", depth,
                        "--end-of-options", _clone_url(repo), refspec,
                        git_dir=cache, url=_clone_url(repo),
                    )  # fmt: skip
                except GitError as exc:
                    raise self._push_error(exc, repo.ref.name, "fetch from") from exc
                if await self._has_commit(cache, sha):
                    await git("update-ref", f"refs/backspace/bases/{sha}", sha, git_dir=cache)
                    return cache
        raise GitHostError(
            "branch_not_found",
            f"{repo.ref.name} no longer has the commit {sha[:12]} of {repo.base_branch}; try again",
            retryable=True,
        )

    @staticmethod
    async def _has_commit(cache: Path, sha: str) -> bool:
        try:
            await git("cat-file", "-e", f"{sha}^{{commit}}", git_dir=cache)
        except GitError:
            return False
        return True

    async def base_payload(self, repo: ResolvedRepo, scratch: Path) -> BasePayload:
        """The shallow payload of the real base commit; the cache repository is only fetched
        into when no payload of this base exists and it lacks the commit."""

        async def source() -> Path:
            return await self._ensure_base(repo)

        key = PayloadKey(self.name, repo.ref.name, repo.base_sha, repo.base_branch)
        try:
            return await self.payloads.get(key, source)
        except GitError as exc:
            raise GitHostError(
                "github_error",
                self.redactor.text(
                    f"the base {repo.base_sha[:12]} of {repo.ref.name} could not be prepared: "
                    f"{what_the_server_said(exc.stderr)}"
                ),
            ) from exc

    async def prepare(self, repo: ResolvedRepo, dest: Path) -> Path:
        """A bare repository borrowing the cache's objects, with its shallow boundary."""
        cache = await self._ensure_base(repo)
        git_dir = dest / "host.git"
        await git("init", "--quiet", "--bare", str(git_dir))
        (git_dir / "objects" / "info" / "alternates").write_text(f"{cache / 'objects'}\n")
        shallow = cache / "shallow"
        if shallow.exists():
            (git_dir / "shallow").write_text(shallow.read_text())
        return git_dir

    # --- publish ---------------------------------------------------------------------------------
    async def push(self, repo: ResolvedRepo, git_dir: Path, sha: str, branch: str) -> None:
        url = _clone_url(repo)
        if not repo.can_push:
            url = await self._fork(repo)
        try:
            await self._git(
                "push", "--quiet", "--end-of-options", url, f"{sha}:refs/heads/{branch}",
                git_dir=git_dir, url=url,
            )  # fmt: skip
        except GitError as exc:
            raise self._push_error(exc, repo.ref.name, "push to") from exc

    async def _fork(self, repo: ResolvedRepo) -> str:
        """Fork (idempotent), wait until the fork is usable, sync its base branch; its clone URL."""
        name = repo.ref.name
        fork = await self._api(
            f"fork {name}", name, lambda g: _create_fork(g, name, self.fork_owner)
        )
        deadline = time.monotonic() + self.fork_wait
        delay = 0.2
        while True:
            ready = await self._api(
                f"read the fork {fork}", fork, lambda g: _fork_ready(g, fork, repo.base_branch)
            )
            if ready is not None:
                break
            if time.monotonic() > deadline:
                raise GitHostError(
                    "fork_not_ready",
                    f"GitHub did not finish forking {name} to {fork} in time; try again",
                    retryable=True,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        await self._api(
            f"sync the fork {fork}", fork, lambda g: _sync_fork(g, fork, repo.base_branch)
        )
        repo.head_owner = fork.split("/")[0]
        return str(ready)

    async def open_pull_request(self, repo: ResolvedRepo, draft: PullRequestDraft) -> PullRequest:
        base_owner = repo.ref.name.split("/", 1)[0]
        owner = repo.head_owner or base_owner
        head = draft.branch if owner == base_owner else f"{owner}:{draft.branch}"
        name = repo.ref.name
        return await self._api(
            f"open a pull request on {name}",
            name,
            lambda g: _create_pull(
                g, name, repo.base_branch, head, f"{owner}:{draft.branch}", draft
            ),
        )

    # --- follow-ups ------------------------------------------------------------------------------
    async def branch_head(self, repo: ResolvedRepo, branch: str) -> str | None:
        name = repo.ref.name
        return await self._api(
            f"read the branch {branch} of {name}", name, lambda g: _branch_sha(g, name, branch)
        )

    async def pull_request(self, repo: ResolvedRepo, number: int) -> PullRequestState:
        name = repo.ref.name
        return await self._api(
            f"read pull request #{number} of {name}", name, lambda g: _pull_state(g, name, number)
        )

    async def update_pull_request(
        self, repo: ResolvedRepo, number: int, *, body: str, comment: str
    ) -> PullRequest:
        name = repo.ref.name
        return await self._api(
            f"update pull request #{number} of {name}",
            name,
            lambda g: _update_pull(g, name, number, body, comment),
        )

    # --- plumbing --------------------------------------------------------------------------------
    def _client(self) -> Github:
        from github import Auth, Github, GithubRetry

        retry = GithubRetry(
            total=2, backoff_factor=0.3, secondary_rate_wait=5, max_rate_limit_wait=5
        )
        token = self._token()
        return Github(
            auth=Auth.Token(token) if token else None,
            base_url=self.api_url,
            timeout=self.timeout,
            retry=retry,
            seconds_between_requests=None,
            seconds_between_writes=None,
        )

    async def _api(self, what: str, name: str, call: Callable[[Github], T]) -> T:
        def work() -> T:
            with self._client() as client:
                return call(client)

        try:
            return await asyncio.to_thread(work)
        except GitHostError:
            raise
        except Exception as exc:
            error = self._api_error(exc, what, name)
            if self.on_api_error is not None:  # telemetry: the operation's verb, the error code
                self.on_api_error(what.split(" ", 1)[0], error.code)
            raise error from exc

    def _api_error(self, exc: Exception, what: str, name: str) -> GitHostError:
        import github
        import requests
        from github import GithubException

        if isinstance(exc, github.BadCredentialsException):
            return GitHostError(
                "github_bad_token",
                f"GitHub rejected {self._who} (401 Bad credentials)"
                + ("" if self.app else ": set a valid token"),
            )
        if isinstance(exc, github.RateLimitExceededException):
            return GitHostError(
                "github_rate_limited",
                f"GitHub's API rate limit stopped the attempt to {what}; try again later",
                retryable=True,
            )
        if isinstance(exc, github.UnknownObjectException):
            return GitHostError(
                "repo_not_found",
                f"{name} was not found on GitHub, or {self._who} cannot see it (a private repository needs a token with access)",
            )
        if isinstance(exc, GithubException):
            message = self.redactor.text(_github_message(exc))
            if exc.status == 429:
                return GitHostError(
                    "github_rate_limited",
                    f"GitHub is rate limiting requests to {what}; try again later",
                    retryable=True,
                )
            if exc.status == 403 and self.app is not None and "integration" in message.lower():
                return GitHostError(
                    "github_app_permission",
                    f"the GitHub App may not {what} (403: {message}): its installation lacks a "
                    f"permission this needs; grant it in the App's settings",
                )
            if exc.status == 403:
                return GitHostError(
                    "github_no_access", f"{self._who} may not {what} (403: {message})"
                )
            if exc.status >= 500:
                return GitHostError(
                    "github_unavailable",
                    f"GitHub failed to {what} ({exc.status}); try again",
                    retryable=True,
                )
            return GitHostError(
                "github_rejected", f"GitHub refused to {what} ({exc.status}: {message})"
            )
        if isinstance(exc, requests.exceptions.RetryError):
            # PyGithub retries a 403 only when it is a rate limit (Retry-After, or the message).
            if re.search(r"too many (403|429) error responses", str(exc)):
                return GitHostError(
                    "github_rate_limited",
                    f"GitHub's rate limit kept refusing the attempt to {what}; try again later",
                    retryable=True,
                )
            return GitHostError(
                "github_unavailable",
                f"GitHub kept failing to {what}; try again later",
                retryable=True,
            )
        if isinstance(exc, requests.exceptions.RequestException):
            return GitHostError(
                "github_unreachable",
                f"could not reach GitHub at {self.api_url} to {what}",
                retryable=True,
            )
        return GitHostError("github_error", self.redactor.text(f"could not {what}: {exc}"))

    def _push_error(self, exc: GitError, name: str, verb: str) -> GitHostError:
        stderr = self.redactor.text(exc.stderr).strip()
        lowered = stderr.lower()
        said = what_the_server_said(stderr)
        if "protected branch" in lowered or "gh006" in lowered:
            return GitHostError(
                "branch_protection",
                f"branch protection on {name} refused the push: {said}",
            )
        if re.search(r"\b401\b|authentication failed|could not read username", lowered):
            if not self._token():
                return GitHostError(
                    "github_no_token", f"GITHUB_TOKEN is not set, and {name} needs one to {verb}"
                )
            return GitHostError(
                "github_bad_token", f"GitHub refused {self._who} when trying to {verb} {name}"
            )
        if re.search(r"\b403\b", lowered) or ("permission" in lowered and "denied" in lowered):
            return GitHostError("github_no_access", f"{self._who} may not {verb} {name}: {said}")
        if "workflow" in lowered and "scope" in lowered:
            return GitHostError(
                "github_no_access", f"{self._who} lacks the workflow scope needed to {verb} {name}"
            )
        if re.search(r"\b404\b|not found", lowered):
            return GitHostError("repo_not_found", f"{name} was not found when trying to {verb} it")
        if re.search(r"could not resolve host|connection refused|timed out|\b5\d\d\b", lowered):
            return GitHostError(
                "github_unavailable", f"could not {verb} {name}: {said}", retryable=True
            )
        return GitHostError("push_rejected", f"git could not {verb} {name}: {said}")

    async def _git(self, *args: str, git_dir: Path, url: str) -> str:
        return await git(
            *args,
            git_dir=git_dir,
            env=self._auth_env(url),
            allow_http=self._allow_http,
            redactor=self.redactor,
        )

    def _auth_env(self, url: str) -> dict[str, str]:
        """The token as an HTTP header for exactly this URL's origin, through the environment."""
        token = self._token()
        if not token:
            return {}
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}/"
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{origin}.extraheader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        }

    def _cache(self, repo: ResolvedRepo) -> Path:
        owner, name = repo.ref.name.lower().split("/", 1)
        return self.cache_root / owner / f"{name}.git"

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name.lower(), asyncio.Lock())


_REVOKING: set[asyncio.Task[None]] = set()
"""Revocations of tokens minted for runs cancelled meanwhile (kept until done)."""


def _revoke_minted(app: GitHubApp, minting: asyncio.Future[InstallationToken]) -> None:
    if minting.cancelled() or minting.exception() is not None:
        return
    task = asyncio.ensure_future(app.revoke(minting.result()))
    _REVOKING.add(task)
    task.add_done_callback(_REVOKING.discard)


def _clone_url(repo: ResolvedRepo) -> str:
    """Where git reaches the repository; `resolve` always sets it on this host's repositories."""
    if repo.clone_url is None:
        raise GitHostError("github_error", f"{repo.ref.name} was not resolved by GitHub")
    return repo.clone_url


# --- the synchronous PyGithub calls, each run in a worker thread with its own client ----------
def _repo_info(g: Github, ref: RepoRef, base_branch: str | None) -> dict[str, Any]:
    repo = g.get_repo(ref.location)
    branch = base_branch or _branch_from_reference(repo, ref.branch) or repo.default_branch
    sha = repo.get_branch(branch).commit.sha
    permissions = repo.permissions
    return {
        "full_name": repo.full_name,
        "branch": branch,
        "sha": sha,
        "push": bool(permissions and permissions.push),
        "archived": bool(repo.archived),
        "html_url": repo.html_url,
        "clone_url": repo.clone_url,
    }


def _branch_from_reference(repo: Any, remainder: str | None) -> str | None:
    """`/tree/feature/x/src/app.py`: the longest prefix that is a branch (names may hold '/')."""
    import github

    if not remainder:
        return None
    parts = remainder.split("/")
    for end in range(len(parts), 0, -1):
        candidate = "/".join(parts[:end])
        try:
            repo.get_branch(candidate)
            return candidate
        except github.UnknownObjectException:
            continue
    raise github.UnknownObjectException(404, {"message": f"no branch in {remainder!r}"}, None)


def _create_fork(g: Github, name: str, organization: str | None) -> str:
    repo = g.get_repo(name)
    fork = repo.create_fork(organization=organization) if organization else repo.create_fork()
    return str(fork.full_name)


def _fork_ready(g: Github, fork: str, branch: str) -> str | None:
    """The fork's clone URL once GitHub has made it (forking is asynchronous), else None."""
    import github
    from github import GithubException

    try:
        repo = g.get_repo(fork)
        repo.get_branch(branch)
        return str(repo.clone_url)
    except github.UnknownObjectException:
        return None
    except GithubException as exc:
        if exc.status == 409:
            return None
        raise


def _sync_fork(g: Github, fork: str, branch: str) -> None:
    g.get_repo(fork).merge_upstream(branch)


def _create_pull(
    g: Github, name: str, base: str, head: str, qualified_head: str, draft: PullRequestDraft
) -> PullRequest:
    from github import GithubException

    repo = g.get_repo(name)
    is_fork = head != draft.branch
    try:
        pr = repo.create_pull(
            base=base,
            head=head,
            title=draft.title,
            body=draft.body,
            draft=draft.draft,
            maintainer_can_modify=is_fork,
        )
    except GithubException as exc:
        message = _github_message(exc).lower()
        if exc.status == 422 and "draft pull requests are not supported" in message:
            pr = repo.create_pull(
                base=base,
                head=head,
                title=draft.title,
                body=draft.body,
                draft=False,
                maintainer_can_modify=is_fork,
            )
        elif exc.status == 422 and "already exists" in message:
            existing = list(repo.get_pulls(state="open", head=qualified_head, base=base))
            if not existing:
                raise
            pr = existing[0]
            pr.edit(title=draft.title, body=draft.body)
        else:
            raise
    return PullRequest(url=pr.html_url, number=pr.number, draft=bool(pr.draft))


def _branch_sha(g: Github, name: str, branch: str) -> str | None:
    import github

    try:
        return str(g.get_repo(name).get_branch(branch).commit.sha)
    except github.UnknownObjectException:
        return None


def _pull_state(g: Github, name: str, number: int) -> PullRequestState:
    pr = g.get_repo(name).get_pull(number)
    state = "merged" if pr.merged else str(pr.state)
    return PullRequestState(
        url=pr.html_url, number=pr.number, state=state, body=pr.body or "", draft=bool(pr.draft)
    )


def _update_pull(g: Github, name: str, number: int, body: str, comment: str) -> PullRequest:
    pr = g.get_repo(name).get_pull(number)
    pr.edit(body=body)
    pr.create_issue_comment(comment)
    return PullRequest(url=pr.html_url, number=pr.number, draft=bool(pr.draft))


def _github_message(exc: GithubException) -> str:
    data = exc.data if isinstance(exc.data, dict) else {}
    parts = [str(data.get("message") or exc.message or "")]
    for error in data.get("errors") or []:
        if isinstance(error, dict) and error.get("message"):
            parts.append(str(error["message"]))
        elif isinstance(error, str):
            parts.append(error)
    return "; ".join(p for p in parts if p)
