"""A fake GitHub: REST API (Enterprise-style ``/api/v3`` prefix) plus git smart HTTP.

Why: publishing (push a branch, open a pull request, fork, sync a fork) must be
tested end to end with the *real* PyGithub and the *real* git client, offline.
The fake listens on 127.0.0.1 (ephemeral port); every repository is a real bare
repository served through ``git http-backend`` (CGI), and the REST answers are
shaped like GitHub's (checked against GitHub's OpenAPI description by
``tests/test_fake_github.py``). See ``../shared/reference/github.md`` §2-3
for the rules a fake must follow (absolute ``url`` fields on the fake's own host,
never a 202 to a GET, error shapes, ``Link`` pagination).

Usage::

    with FakeGitHub(token="ghp_x", login="backspace-bot") as gh:
        gh.create_repo("acme/widgets", files={"app.py": "..."})
        Github(auth=Auth.Token("ghp_x"), base_url=gh.api_url, retry=None, ...)
        git clone f"{gh.git_url}/acme/widgets.git"

A GitHub App (``create_app``, ``install_app``, ``app_webhook``) authenticates with a JWT on
the App routes only, and its installation tokens reach only their repositories with their
permissions, on REST and on git smart HTTP; the rules and the records tests assert on
(``issued_tokens``) are in ``tests/fakes/github_app.py``.

Every request (REST and git) is recorded in :attr:`FakeGitHub.requests` as
``{method, path, query, headers, body, status, response}`` (``path`` is the raw
URL path, e.g. ``/api/v3/repos/acme/widgets``; ``headers`` lower-case; ``body``
the parsed JSON request or None; ``response`` the JSON answer or None).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from tests.fakes.github_app import (
    FakeApp,
    FakeInstallation,
    IssuedToken,
    JwtRefused,
    app_json,
    check_jwt,
    installation_json,
    looks_like_jwt,
    new_token,
    private_key_pem,
    public_key_pem,
    satisfies,
)
from tests.fakes.github_hooks import Delivery, Hook, send

__all__ = ["Delivery", "FakeApp", "FakeGitHub", "FakeInstallation", "FakeRepo", "IssuedToken"]

API_PREFIX = "/api/v3"
DOCS_URL = "https://docs.github.com/rest"
RATE_LIMIT = 5000
ANONYMOUS_RATE_LIMIT = 60
MAX_PR_BODY = 65536
DEFAULT_PER_PAGE = 30
MAX_PER_PAGE = 100
COMMITTER = ("Fake GitHub", "fake-github@example.invalid")

_DEFAULT_MESSAGES: dict[int, str] = {
    400: "Problems parsing JSON",
    401: "Bad credentials",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    422: "Validation Failed",
    429: "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
    500: "Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}

_GIT_PATH = re.compile(
    r"^/(?P<owner>[^/]+)/(?P<repo>[^/]+?)(?:\.git)?/(?P<rest>info/refs|git-upload-pack|git-receive-pack)$"
)
_REPO = r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
REACTIONS = frozenset({"+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"})
ROLES = {  # role → (legacy ``permission``, push)
    "admin": ("admin", True),
    "maintain": ("write", True),
    "write": ("write", True),
    "triage": ("read", False),
    "read": ("read", False),
    "none": ("none", False),
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(git_date: str) -> str:
    """git's strict ISO date (``+00:00``) in GitHub's ``...Z`` form."""
    return datetime.fromisoformat(git_date).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node_id(kind: str, number: int) -> str:
    return base64.b64encode(f"0{len(kind)}:{kind}{number}".encode()).decode()


@dataclass
class FakeRepo:
    """One repository; mutate the fields in a test to change the fake's behaviour."""

    owner: str
    name: str
    id: int
    default_branch: str
    private: bool
    push: bool
    draft_supported: bool
    path: Path
    created_at: str
    archived: bool = False
    description: str | None = None
    parent: FakeRepo | None = None
    not_ready: int = 0
    """Remaining ``GET /repos/{o}/{r}`` answered 404 (a fork that GitHub is still creating)."""
    pushed_at: str = ""

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def root(self) -> FakeRepo:
        """The source of the fork network this repository belongs to."""
        repo = self
        while repo.parent is not None:
            repo = repo.parent
        return repo


@dataclass
class _Pull:
    number: int
    id: int
    repo: FakeRepo
    head_repo: FakeRepo
    head_ref: str
    head_sha: str
    base_ref: str
    title: str
    body: str | None
    draft: bool
    user: str
    maintainer_can_modify: bool
    created_at: str
    updated_at: str
    state: str = "open"
    closed_at: str | None = None
    merged_at: str | None = None
    merge_commit_sha: str | None = None
    merged_by: str | None = None


@dataclass
class _Comment:
    """An issue comment (on an issue or, since a PR is an issue, on a pull request)."""

    id: int
    repo: FakeRepo
    number: int
    user: str
    body: str
    created_at: str
    updated_at: str


@dataclass
class _Issue:
    """An issue (not a pull request: those are ``_Pull``; both share the number sequence)."""

    number: int
    id: int
    repo: FakeRepo
    title: str
    body: str | None
    user: str
    created_at: str
    updated_at: str
    labels: list[str] = field(default_factory=list)
    state: str = "open"


@dataclass
class _ReviewComment:
    """A pull request review comment: on a line of a file of the diff."""

    id: int
    review_id: int
    pull: _Pull
    user: str
    body: str
    path: str
    line: int
    diff_hunk: str
    commit_id: str
    created_at: str


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    message: str | None
    times: int
    headers: dict[str, str] = field(default_factory=dict)


class _HttpError(Exception):
    """Raised by REST handlers; turned into GitHub's JSON error shape."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.message = message or _DEFAULT_MESSAGES.get(status, HTTPStatus(status).phrase)
        self.errors = errors
        self.headers = dict(headers or {})
        super().__init__(f"{status} {self.message}")


def _validation(resource: str, *, code: str = "custom", **fields: str) -> _HttpError:
    return _HttpError(422, "Validation Failed", [{"resource": resource, "code": code, **fields}])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    fake: FakeGitHub


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive (PyGithub's pool) and chunked uploads (large git pushes)."""

    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections end instead of lingering
    disable_nagle_algorithm = True  # else Nagle + delayed ACK cost ~40 ms per keep-alive request
    wbufsize = 1 << 16  # headers and body leave in one send; handle_one_request flushes

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.server.fake._handle(self)

    def read_body(self) -> bytes:
        """The request body, de-chunked and gunzipped (git gzips large fetch requests)."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            raw = b"".join(parts)
        else:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
        encoding = self.headers.get("content-encoding", "").lower()
        if raw and encoding in ("gzip", "x-gzip"):
            raw = gzip.decompress(raw)
        elif raw and encoding == "deflate":
            raw = zlib.decompress(raw)
        return raw

    def respond(
        self, status: int, headers: Mapping[str, str], body: bytes, reason: str = ""
    ) -> None:
        self.send_response(status, reason or None)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


_Commit = tuple[str, str | None, Mapping[str, str | bytes | None], str]
"""(branch, parent sha or fast-import mark, files with None = delete, message)."""

Route = Callable[[re.Match[str], dict[str, str], Any, bool], tuple[int, Any, dict[str, str]]]

APP_PERMISSIONS = {
    "contents": "write",
    "pull_requests": "write",
    "issues": "write",
    "metadata": "read",
}
"""What :meth:`FakeGitHub.create_app` registers when no permissions are given."""
NOT_ACCESSIBLE = "Resource not accessible by integration"
NOT_A_JWT = "A JSON web token could not be decoded"
NOT_GRANTED = "The permissions requested are not granted to this installation."
NOT_IN_INSTALLATION = (
    "There is at least one repository that does not exist or is not accessible to the parent "
    "installation."
)


@dataclass
class _Principal:
    """Who a request authenticates as.

    ``kind``: ``token`` (the personal token), ``anonymous``, ``bad`` (unknown credentials),
    ``installation`` (an installation token, ``issued``), ``app`` (a valid JWT of ``app``) or
    ``jwt_refused`` (a JWT GitHub would refuse: ``error`` is GitHub's message).
    """

    kind: str
    login: str = ""
    issued: IssuedToken | None = None
    app: FakeApp | None = None
    error: str = ""


_Scope = tuple[str, str] | None
"""(permission, level) an installation token needs for a route; None: refused to tokens."""


class FakeGitHub:
    """GitHub REST + git smart HTTP on 127.0.0.1; ``token`` is the only accepted token.

    ``login`` is that token's user. Repositories live under ``root`` (a temporary
    directory removed on :meth:`stop` unless given) as ``repos/{owner}/{name}.git``.
    """

    def __init__(
        self, token: str, login: str = "backspace-bot", *, root: Path | None = None
    ) -> None:
        self.token = token
        self.login = login
        self.requests: list[dict[str, Any]] = []
        self.fork_ready_after = 0
        """How many ``GET /repos/{fork}`` answer 404 after a fork is created (GitHub forks async)."""
        self._own_root = root is None
        self._root = Path(tempfile.mkdtemp(prefix="fake-github-")) if root is None else root
        self._repos_root = self._root / "repos"
        self._home = self._root / "home"
        self._repos_root.mkdir(parents=True, exist_ok=True)
        self._home.mkdir(exist_ok=True)
        self._lock = threading.RLock()
        self._repos: dict[str, FakeRepo] = {}
        self._pulls: dict[str, list[_Pull]] = {}
        self._comments: dict[int, _Comment] = {}
        self._numbers: dict[str, int] = {}
        self._issues: dict[str, list[_Issue]] = {}
        self._review_comments: dict[int, _ReviewComment] = {}
        self._roles: dict[tuple[str, str], str] = {}
        self.reactions: list[dict[str, Any]] = []
        """Every reaction made: ``{subject, id, content, user, repo, json, at}``, subject one of
        ``issue_comment``, ``review_comment``, ``issue`` (``id`` the comment id or issue number,
        ``at`` its ``time.perf_counter()``)."""
        self._hooks: list[Hook] = []
        self.deliveries: list[Delivery] = []
        """Every webhook delivery sent, oldest first (see :meth:`webhook`)."""
        """Last issue/PR number per repository (GitHub numbers both from one sequence)."""
        self._failures: list[_Failure] = []
        self._user_ids: dict[str, int] = {}
        self._orgs: set[str] = set()
        self._next_id = 1000
        self._used = {"token": 0, "anonymous": 0}
        self._reset_at = int(time.time()) + 3600
        self._apps: dict[int, FakeApp] = {}
        self._installations: dict[int, FakeInstallation] = {}
        self._tokens: dict[str, IssuedToken] = {}
        self.clock_offset = 0.0
        """Seconds GitHub's clock is ahead of this machine's (negative: behind); JWTs are
        judged by it, so a test can play a server whose clock is skewed."""
        self._app_hooks: dict[int, FakeApp] = {}
        """Hook id → the App whose webhook it is (see :meth:`app_webhook`)."""
        self.issued_tokens: list[IssuedToken] = []
        """Every installation token issued, oldest first: scope, expiry, revocation and uses."""
        self._default = _Principal("token", login)
        self._current = self._default
        """The principal of the REST request being handled (set and read under ``_lock``)."""
        self._server: _Server | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._routes: list[tuple[str, re.Pattern[str], Route]] = [
            ("GET", re.compile(r"^/user$"), self._get_user),
            ("GET", re.compile(_REPO + r"$"), self._get_repo),
            ("GET", re.compile(_REPO + r"/branches/(?P<branch>.+)$"), self._get_branch),
            ("GET", re.compile(_REPO + r"/git/refs?/(?P<ref>(?:heads|tags)/.+)$"), self._get_ref),
            ("POST", re.compile(_REPO + r"/forks$"), self._create_fork),
            ("POST", re.compile(_REPO + r"/merge-upstream$"), self._merge_upstream),
            ("GET", re.compile(_REPO + r"/pulls$"), self._list_pulls),
            ("POST", re.compile(_REPO + r"/pulls$"), self._create_pull),
            ("GET", re.compile(_REPO + r"/pulls/(?P<number>\d+)$"), self._get_pull),
            ("PATCH", re.compile(_REPO + r"/pulls/(?P<number>\d+)$"), self._update_pull),
            ("GET", re.compile(_REPO + r"/issues/(?P<number>\d+)/comments$"), self._list_comments),
            ("POST", re.compile(_REPO + r"/issues/(?P<number>\d+)/comments$"), self._add_comment),
            ("GET", re.compile(_REPO + r"/issues/comments/(?P<id>\d+)$"), self._get_comment),
            ("PATCH", re.compile(_REPO + r"/issues/comments/(?P<id>\d+)$"), self._edit_comment),
            (
                "POST",
                re.compile(_REPO + r"/(?P<kind>issues|pulls)/comments/(?P<id>\d+)/reactions$"),
                self._react_to_comment,
            ),
            (
                "POST",
                re.compile(_REPO + r"/issues/(?P<number>\d+)/reactions$"),
                self._react_to_issue,
            ),
            ("GET", re.compile(_REPO + r"/issues/(?P<number>\d+)$"), self._get_issue),
            (
                "GET",
                re.compile(_REPO + r"/collaborators/(?P<user>[^/]+)/permission$"),
                self._get_permission,
            ),
            ("GET", re.compile(r"^/users/(?P<user>[^/]+)$"), self._get_user_by_name),
            ("GET", re.compile(r"^/app$"), self._get_app),
            ("GET", re.compile(_REPO + r"/installation$"), self._get_repo_installation),
            (
                "POST",
                re.compile(r"^/app/installations/(?P<id>\d+)/access_tokens$"),
                self._create_access_token,
            ),
            ("DELETE", re.compile(r"^/installation/token$"), self._revoke_token),
        ]
        self._app_routes = {self._get_app, self._get_repo_installation, self._create_access_token}
        """Routes that take a JWT, and only a JWT."""
        self._scopes: dict[Route, _Scope] = {
            self._get_repo: ("metadata", "read"),
            self._get_permission: ("metadata", "read"),
            self._get_branch: ("contents", "read"),
            self._get_ref: ("contents", "read"),
            self._merge_upstream: ("contents", "write"),
            self._create_fork: ("administration", "write"),
            self._list_pulls: ("pull_requests", "read"),
            self._get_pull: ("pull_requests", "read"),
            self._create_pull: ("pull_requests", "write"),
            self._update_pull: ("pull_requests", "write"),
            self._list_comments: ("issues", "read"),
            self._get_comment: ("issues", "read"),
            self._get_issue: ("issues", "read"),
            self._add_comment: ("issues", "write"),
            self._edit_comment: ("issues", "write"),
            self._react_to_issue: ("issues", "write"),
            self._react_to_comment: ("issues", "write"),
            self._get_user: None,  # GitHub: an installation token has no user
            self._revoke_token: ("", ""),
            self._get_user_by_name: ("", ""),
        }
        """What an installation token needs per route (``("", "")``: nothing); a route missing
        here is refused to installation tokens (fail closed: a new route must say)."""

    # -- lifecycle ----------------------------------------------------------
    @property
    def git_url(self) -> str:
        """Root of git smart HTTP (and of ``html_url``): ``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("FakeGitHub is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def api_url(self) -> str:
        """PyGithub ``base_url``: ``http://127.0.0.1:PORT/api/v3``."""
        return self.git_url + API_PREFIX

    def start(self) -> FakeGitHub:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        server.timeout = 0.05
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, args=(server,), name="fake-github")
        self._thread.daemon = True
        self._thread.start()
        return self

    def _serve(self, server: _Server) -> None:
        """Our own accept loop: unlike ``shutdown()``, stopping it can never block forever."""
        while not self._stopping.is_set():
            server.handle_request()

    def stop(self) -> None:
        server, self._server = self._server, None
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if server is not None:
            server.server_close()
        if self._own_root:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- test-facing setup and inspection --------------------------------------
    def create_repo(
        self,
        full_name: str,
        files: Mapping[str, str | bytes] | None = None,
        *,
        default_branch: str = "main",
        private: bool = False,
        push: bool = True,
        draft_supported: bool = True,
        branches: Mapping[str, Mapping[str, str | bytes]] | None = None,
        description: str | None = None,
    ) -> FakeRepo:
        """A repository with one commit of ``files`` on ``default_branch``.

        ``branches`` adds branches with one more commit each on top of it; ``push``
        is the token user's push permission (False → git push answers 403);
        ``draft_supported=False`` makes draft PRs fail like on free private repos.
        """
        owner, name = self._split(full_name)
        with self._lock:
            if full_name.lower() in self._repos:
                raise ValueError(f"{full_name} already exists")
            if owner.lower() != self.login.lower():
                self._orgs.add(owner.lower())
            repo = self._new_repo(
                owner, name, default_branch, private, push, draft_supported, description
            )
            self._git(
                repo.path.parent, "init", "-q", "--bare", "-b", default_branch, repo.path.name
            )
            if files is None:
                files = {"README.md": f"# {name}\n"}
            commits: list[_Commit] = [(default_branch, None, files, "Initial commit")]
            commits += [
                (branch, ":1", extra, f"Add {branch}") for branch, extra in (branches or {}).items()
            ]
            self._fast_import(repo, commits)
            self._repos[full_name.lower()] = repo
            return repo

    def commit_files(
        self,
        full_name: str,
        branch: str,
        files: Mapping[str, str | bytes | None],
        message: str = "Update files",
        *,
        start: str | None = None,
    ) -> str:
        """Commit ``files`` (None deletes a path) on ``branch`` server-side; returns the sha.

        A missing branch is created from ``start`` (default: the default branch), so
        tests can move an upstream ahead or prepare a head branch without a clone.
        """
        with self._lock:
            repo = self._lookup(full_name)
            shas = self._branches(repo)
            parent = shas.get(branch) or shas[start or repo.default_branch]
            self._fast_import(repo, [(branch, parent, files, message)])
            return self._branches(repo)[branch]

    def repo(self, full_name: str) -> FakeRepo:
        with self._lock:
            return self._lookup(full_name)

    def bare_path(self, full_name: str) -> Path:
        """The real bare repository behind ``full_name`` (inspect it with git)."""
        return self.repo(full_name).path

    def branches(self, full_name: str) -> dict[str, str]:
        """Branch name → tip sha, read from the bare repository."""
        with self._lock:
            return self._branches(self._lookup(full_name))

    def pulls(self, full_name: str) -> list[dict[str, Any]]:
        """Every pull request opened against ``full_name`` (GitHub's JSON), by number."""
        with self._lock:
            repo = self._lookup(full_name)
            return [self._pull_json(p, full=True) for p in self._pulls.get(repo.full_name, [])]

    def comments(self, full_name: str, number: int) -> list[dict[str, Any]]:
        """Issue comments on issue or pull request ``number`` (GitHub's JSON), oldest first."""
        with self._lock:
            repo = self._lookup(full_name)
            return [
                self._comment_json(c)
                for c in self._comments.values()
                if c.repo is repo and c.number == number
            ]

    # -- test-facing: people, issues and webhook deliveries ---------------------------
    def set_permission(self, full_name: str, login: str, role: str) -> None:
        """``login``'s role on the repository: admin, maintain, write, triage, read or none."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        with self._lock:
            repo = self._lookup(full_name)
            self._roles[(repo.full_name.lower(), login.lower())] = role

    def create_issue(
        self, full_name: str, title: str, body: str | None = None, *, user: str
    ) -> int:
        """Open an issue as ``user``; its number (no delivery: label it or comment on it)."""
        with self._lock:
            repo = self._lookup(full_name)
            now = _now()
            issue = _Issue(
                self._new_number(repo), self._new_id(), repo, title, body, user, now, now
            )
            self._issues.setdefault(repo.full_name, []).append(issue)
            return issue.number

    def webhook(self, url: str, secret: str | None, events: set[str] | None = None) -> Hook:
        """Add a webhook: from now on every comment, review and label made through this fake's
        test methods is delivered to ``url`` (synchronously, after the change is made)."""
        with self._lock:
            hook = Hook(self._new_id(), url, secret, frozenset(events) if events else None)
            self._hooks.append(hook)
            return hook

    def app_webhook(
        self, app: FakeApp, url: str, secret: str | None, events: set[str] | None = None
    ) -> Hook:
        """The App's webhook: events (default: the App's) on repositories one of its
        installations covers, each payload carrying ``installation`` (``id``, ``node_id``) and
        the ``X-GitHub-Hook-Installation-Target-Type: integration`` header, as GitHub sends."""
        with self._lock:
            chosen = frozenset(events or app.events)
            hook = Hook(self._new_id(), url, secret, chosen)
            self._hooks.append(hook)
            self._app_hooks[hook.id] = app
            return hook

    def deliver(
        self,
        hook: Hook,
        event: str,
        payload: dict[str, Any],
        *,
        delivery_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Delivery:
        """Send one delivery to ``hook`` now (``headers`` override GitHub's, for attacks)."""
        app = self._app_hooks.get(hook.id)
        if app is not None:
            target = {
                "X-GitHub-Hook-Installation-Target-Type": "integration",
                "X-GitHub-Hook-Installation-Target-ID": str(app.id),
            }
            headers = {**target, **(headers or {})}
        delivery = send(hook, event, payload, delivery_id=delivery_id, headers=headers)
        with self._lock:
            self.deliveries.append(delivery)
        return delivery

    def redeliver(self, delivery: Delivery) -> Delivery:
        """GitHub's "Redeliver" button: the same payload under the same ``X-GitHub-Delivery``."""
        hook = next(h for h in self._hooks if h.id == delivery.hook_id)
        return self.deliver(hook, delivery.event, delivery.payload, delivery_id=delivery.id)

    def _broadcast(self, event: str, payload: dict[str, Any]) -> list[Delivery]:
        sends: list[tuple[Hook, dict[str, Any]]] = []
        with self._lock:
            for hook in self._hooks:
                if hook.events is not None and event not in hook.events:
                    continue
                app = self._app_hooks.get(hook.id)
                if app is None:
                    sends.append((hook, payload))
                    continue
                full_name = payload.get("repository", {}).get("full_name", "")
                inst = next(
                    (
                        i
                        for i in self._installations.values()
                        if i.app is app and i.covers(full_name)
                    ),
                    None,
                )
                if inst is not None:  # an App hears only from where it is installed
                    installation = {"id": inst.id, "node_id": _node_id("Installation", inst.id)}
                    sends.append((hook, {**payload, "installation": installation}))
        return [self.deliver(hook, event, body) for hook, body in sends]

    def comment(self, full_name: str, number: int, body: str, *, user: str) -> dict[str, Any]:
        """Comment on issue or pull request ``number`` as ``user``; delivers ``issue_comment``."""
        with self._lock:
            repo = self._lookup(full_name)
            if not self._issue_exists(repo, number):
                raise KeyError(f"no issue or pull request {full_name}#{number}")
            comment = self._comment_json(self._new_comment(repo, number, user, body))
            payload = {
                "action": "created",
                "issue": self._issue_json(repo, number),
                "comment": comment,
                **self._hook_context(repo, user),
            }
        self._broadcast("issue_comment", payload)
        return comment

    def review_comment(
        self, full_name: str, number: int, body: str, *, user: str, path: str, line: int
    ) -> dict[str, Any]:
        """A review comment on ``path`` at ``line`` (of the head) of pull request ``number``;
        delivers ``pull_request_review_comment`` with GitHub's ``diff_hunk``."""
        with self._lock:
            repo = self._lookup(full_name)
            pull = self._pull(repo, number)
            head = self._branches(pull.head_repo).get(pull.head_ref, pull.head_sha)
            comment = _ReviewComment(
                id=self._new_id(), review_id=self._new_id(), pull=pull, user=user, body=body,
                path=path, line=line, diff_hunk=self._diff_hunk(pull, head, path, line),
                commit_id=head, created_at=_now(),
            )  # fmt: skip
            self._review_comments[comment.id] = comment
            data = self._review_comment_json(comment)
            payload = {
                "action": "created",
                "comment": data,
                "pull_request": self._pull_json(pull, full=False),
                **self._hook_context(repo, user),
            }
        self._broadcast("pull_request_review_comment", payload)
        return data

    def review(
        self, full_name: str, number: int, body: str, *, user: str, state: str = "commented"
    ) -> dict[str, Any]:
        """Submit a review (commented, approved, changes_requested); delivers
        ``pull_request_review``."""
        with self._lock:
            repo = self._lookup(full_name)
            pull = self._pull(repo, number)
            review_id = self._new_id()
            html = f"{self.git_url}/{repo.full_name}/pull/{number}"
            review = {
                "id": review_id,
                "node_id": _node_id("PullRequestReview", review_id),
                "user": self._user_json(user),
                "body": body,
                "commit_id": self._branches(pull.head_repo).get(pull.head_ref, pull.head_sha),
                "submitted_at": _now(),
                "state": state,
                "html_url": f"{html}#pullrequestreview-{review_id}",
                "pull_request_url": f"{self.api_url}/repos/{repo.full_name}/pulls/{number}",
                "author_association": self._association(repo, user),
                "_links": {
                    "html": {"href": f"{html}#pullrequestreview-{review_id}"},
                    "pull_request": {
                        "href": f"{self.api_url}/repos/{repo.full_name}/pulls/{number}"
                    },
                },
            }
            payload = {
                "action": "submitted",
                "review": review,
                "pull_request": self._pull_json(pull, full=False),
                **self._hook_context(repo, user),
            }
        self._broadcast("pull_request_review", payload)
        return review

    def label_issue(self, full_name: str, number: int, label: str, *, user: str) -> None:
        """Add ``label`` to issue ``number`` as ``user``; delivers ``issues`` ``labeled``."""
        with self._lock:
            repo = self._lookup(full_name)
            issue = next(i for i in self._issues.get(repo.full_name, []) if i.number == number)
            if label not in issue.labels:
                issue.labels.append(label)
            issue.updated_at = _now()
            payload = {
                "action": "labeled",
                "issue": self._issue_json(repo, number),
                "label": self._label_json(repo, label),
                **self._hook_context(repo, user),
            }
        self._broadcast("issues", payload)

    def merge_pull(self, full_name: str, number: int) -> str:
        """Merge pull request ``number`` like the merge button: a real merge commit on the base.

        Returns the merge commit's sha; the pull request becomes closed and merged.
        Raises ValueError if it is not open or the branches conflict.
        """
        with self._lock:
            pull = self._pull(self._lookup(full_name), number)
            if pull.state != "open":
                raise ValueError(f"{full_name}#{number} is {pull.state}, not open")
            repo, head_repo = pull.repo, pull.head_repo
            head_sha = self._branches(head_repo)[pull.head_ref]
            base_sha = self._branches(repo)[pull.base_ref]
            if head_repo is not repo:  # bring the fork's commits into the base repository
                self._git(repo.path, "fetch", "-q", "--no-tags", str(head_repo.path), head_sha)
            proc = self._git(
                repo.path, "merge-tree", "--write-tree", base_sha, head_sha, check=False
            )
            if proc.returncode != 0:
                raise ValueError(f"{full_name}#{number} has merge conflicts")
            tree = proc.stdout.decode().split()[0]
            message = (
                f"Merge pull request #{number} from {head_repo.owner}/{pull.head_ref}\n\n"
                f"{pull.title}"
            )
            merge = (
                self._git(
                    repo.path, "commit-tree", tree, "-p", base_sha, "-p", head_sha, "-m", message
                )
                .stdout.decode()
                .strip()
            )
            self._git(repo.path, "update-ref", f"refs/heads/{pull.base_ref}", merge, base_sha)
            repo.pushed_at = now = _now()
            pull.head_sha = head_sha
            pull.state, pull.closed_at, pull.merged_at, pull.updated_at = "closed", now, now, now
            pull.merge_commit_sha, pull.merged_by = merge, repo.owner
            return merge

    def close_pull(self, full_name: str, number: int) -> None:
        """Close pull request ``number`` without merging it (as someone on the web page would)."""
        with self._lock:
            pull = self._pull(self._lookup(full_name), number)
            if pull.state != "open":
                raise ValueError(f"{full_name}#{number} is {pull.state}, not open")
            pull.state, pull.closed_at = "closed", _now()
            pull.updated_at = pull.closed_at

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        message: str | None = None,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status``.

        ``path_regex`` is searched in the URL path both with and without the
        ``/api/v3`` prefix (so ``r"^/repos/acme/widgets$"`` works); git HTTP paths
        match too. For 422 the ``message`` goes into ``errors[0].message`` under
        "Validation Failed", as GitHub does. ``headers`` override the defaults
        (e.g. ``{"x-ratelimit-remaining": "0"}`` or ``{"retry-after": "1"}``).
        """
        failure = _Failure(
            method.upper(), re.compile(path_regex), status, message, times, dict(headers or {})
        )
        with self._lock:
            self._failures.append(failure)

    # -- test-facing: the GitHub App ----------------------------------------------------
    def create_app(
        self,
        slug: str = "backspace",
        permissions: Mapping[str, str] | None = None,
        *,
        name: str | None = None,
        owner: str | None = None,
        events: list[str] | None = None,
    ) -> FakeApp:
        """Register a GitHub App; its RSA key is the process's test key (see ``github_app``).

        ``permissions`` are what the App asks for (default :data:`APP_PERMISSIONS`); an
        installation is granted at most these.
        """
        private, public = private_key_pem(), public_key_pem()
        with self._lock:
            if any(a.slug == slug for a in self._apps.values()):
                raise ValueError(f"an App {slug!r} already exists")
            app = FakeApp(
                id=self._new_id(), slug=slug, name=name or slug, owner=owner or self.login,
                permissions=dict(APP_PERMISSIONS if permissions is None else permissions),
                events=list(events or ["issue_comment", "pull_request_review_comment"]),
                private_key_pem=private, public_key=public, bot_id=0,
                client_id=f"Iv1.{secrets.token_hex(8)}", created_at=_now(),
            )  # fmt: skip
            self._apps[app.id] = app
            app.bot_id = self._user_id(app.bot_login)
            return app

    def install_app(
        self,
        app: FakeApp,
        account: str,
        repositories: list[str] | str = "all",
        permissions: Mapping[str, str] | None = None,
    ) -> int:
        """Install ``app`` on ``account``: on ``repositories`` (names or ``owner/name``) or on
        "all" of them (present and future). ``permissions`` (default: all the App asks for)
        must be a subset of the App's. Returns the installation id."""
        granted = dict(app.permissions if permissions is None else permissions)
        for permission, level in granted.items():
            if not satisfies(app.permissions, permission, level):
                raise ValueError(f"{app.slug} does not ask for {permission}: {level}")
        with self._lock:
            if repositories == "all":
                names: list[str] | None = None
            elif isinstance(repositories, str):
                raise ValueError('repositories must be a list of names or "all"')
            else:
                names = []
                for repo_name in repositories:
                    full = repo_name if "/" in repo_name else f"{account}/{repo_name}"
                    if full.partition("/")[0].lower() != account.lower():
                        raise ValueError(f"{full} does not belong to {account}")
                    names.append(self._lookup(full).full_name.lower())
            inst = FakeInstallation(self._new_id(), app, account, names, granted, _now())
            self._installations[inst.id] = inst
            return inst.id

    def installation(self, installation_id: int) -> FakeInstallation:
        with self._lock:
            return self._installations[installation_id]

    def uninstall_app(self, installation_id: int) -> None:
        """Remove an installation: its tokens die with it, as on GitHub."""
        with self._lock:
            self._installations.pop(installation_id)
            for issued in self.issued_tokens:
                if issued.installation.id == installation_id and issued.revoked is None:
                    issued.revoked = time.time()

    def issued_token(self, token: str) -> IssuedToken:
        """The record of an installation token this fake issued (KeyError if it did not)."""
        with self._lock:
            return self._tokens[token]

    # -- internals: repositories and git -----------------------------------------
    @staticmethod
    def _split(full_name: str) -> tuple[str, str]:
        owner, _, name = full_name.partition("/")
        if not owner or not name or "/" in name or name.endswith(".git"):
            raise ValueError(f"expected owner/name, got {full_name!r}")
        return owner, name

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _new_number(self, repo: FakeRepo) -> int:
        """The next issue/pull request number of ``repo`` (one sequence for both, as on GitHub)."""
        self._numbers[repo.full_name] = self._numbers.get(repo.full_name, 0) + 1
        return self._numbers[repo.full_name]

    def _pull(self, repo: FakeRepo, number: int) -> _Pull:
        for pull in self._pulls.get(repo.full_name, []):
            if pull.number == number:
                return pull
        raise KeyError(f"no pull request {repo.full_name}#{number}")

    def _is_pull(self, repo: FakeRepo, number: int) -> bool:
        return any(p.number == number for p in self._pulls.get(repo.full_name, []))

    def _issue_exists(self, repo: FakeRepo, number: int) -> bool:
        return self._is_pull(repo, number) or any(
            i.number == number for i in self._issues.get(repo.full_name, [])
        )

    def _new_comment(self, repo: FakeRepo, number: int, user: str, body: str) -> _Comment:
        now = _now()
        comment = _Comment(self._new_id(), repo, number, user, body, now, now)
        self._comments[comment.id] = comment
        return comment

    def _new_repo(
        self,
        owner: str,
        name: str,
        default_branch: str,
        private: bool,
        push: bool,
        draft_supported: bool,
        description: str | None,
        parent: FakeRepo | None = None,
    ) -> FakeRepo:
        path = self._repos_root / owner / f"{name}.git"
        path.parent.mkdir(parents=True, exist_ok=True)
        now = _now()
        return FakeRepo(
            owner=owner,
            name=name,
            id=self._new_id(),
            default_branch=default_branch,
            private=private,
            push=push,
            draft_supported=draft_supported,
            path=path,
            created_at=now,
            description=description,
            parent=parent,
            pushed_at=now,
        )

    def _lookup(self, full_name: str) -> FakeRepo:
        repo = self._repos.get(full_name.lower())
        if repo is None:
            raise KeyError(f"no repository {full_name}")
        return repo

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self._home),
            "LANG": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": COMMITTER[0],
            "GIT_AUTHOR_EMAIL": COMMITTER[1],
            "GIT_COMMITTER_NAME": COMMITTER[0],
            "GIT_COMMITTER_EMAIL": COMMITTER[1],
        }
        env.update(extra or {})
        return env

    def _git(
        self,
        cwd: Path,
        *args: str,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, input=stdin, env=self._env(env), capture_output=True
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}"
            )
        return proc

    def _fast_import(
        self,
        repo: FakeRepo,
        commits: list[_Commit],
    ) -> None:
        """Write commits ``(branch, parent sha or :mark, files, message)`` in one git call."""
        stamp = f"{int(time.time())} +0000"
        ident = f"{COMMITTER[0]} <{COMMITTER[1]}> {stamp}".encode()
        out = bytearray()
        for mark, (branch, parent, files, message) in enumerate(commits, start=1):
            msg = message.encode()
            out += b"commit refs/heads/%s\nmark :%d\n" % (branch.encode(), mark)
            out += b"author %s\ncommitter %s\ndata %d\n%s\n" % (ident, ident, len(msg), msg)
            if parent is not None:
                out += b"from %s\n" % parent.encode()
            for rel, content in files.items():
                if rel.startswith('"') or "\n" in rel:
                    raise ValueError(f"unsupported path {rel!r}")
                if content is None:
                    out += b"D %s\n" % rel.encode()
                    continue
                data = content.encode() if isinstance(content, str) else content
                out += b"M 100644 inline %s\ndata %d\n%s\n" % (rel.encode(), len(data), data)
        self._git(repo.path, "fast-import", "--quiet", "--force", stdin=bytes(out))
        repo.pushed_at = _now()

    def _branches(self, repo: FakeRepo) -> dict[str, str]:
        out = self._git(
            repo.path, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/"
        ).stdout.decode()
        shas: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, ref = line.partition(" ")
            shas[ref.removeprefix("refs/heads/")] = sha
        return shas

    def _rev_count(self, repo: FakeRepo, other: FakeRepo, base: str, head: str) -> int:
        """Commits in ``head`` not in ``base``, across a fork network (shared objects)."""
        env = (
            {}
            if other is repo
            else {"GIT_ALTERNATE_OBJECT_DIRECTORIES": str(other.path / "objects")}
        )
        proc = self._git(repo.path, "rev-list", "--count", f"{base}..{head}", env=env, check=False)
        return int(proc.stdout or b"0") if proc.returncode == 0 else -1

    def _commit_info(self, repo: FakeRepo, sha: str) -> dict[str, Any]:
        fmt = "%H%x00%T%x00%P%x00%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI%x00%B"
        out = self._git(repo.path, "log", "-1", f"--format={fmt}", sha, "--").stdout.decode()
        (sha, tree, parents, an, ae, ad, cn, ce, cd, message) = out.split("\x00", 9)
        return {
            "sha": sha,
            "tree": tree,
            "parents": parents.split(),
            "author": {"name": an, "email": ae, "date": _iso(ad)},
            "committer": {"name": cn, "email": ce, "date": _iso(cd)},
            "message": message.rstrip("\n"),
        }

    # -- internals: HTTP ----------------------------------------------------------
    def _record(self, h: _Handler, body: Any) -> dict[str, Any]:
        split = urlsplit(h.path)
        record: dict[str, Any] = {
            "method": h.command,
            "path": split.path,
            "query": dict(parse_qsl(split.query, keep_blank_values=True)),
            "headers": {k.lower(): v for k, v in h.headers.items()},
            "body": body,
            "status": None,
            "response": None,
        }
        with self._lock:
            self.requests.append(record)
        return record

    def _take_failure(self, method: str, path: str) -> _Failure | None:
        short = path.removeprefix(API_PREFIX)
        with self._lock:
            for failure in self._failures:
                if failure.method == method and (
                    failure.pattern.search(path) or failure.pattern.search(short)
                ):
                    failure.times -= 1
                    if failure.times <= 0:
                        self._failures.remove(failure)
                    return failure
        return None

    def _handle(self, h: _Handler) -> None:
        raw = h.read_body()
        split = urlsplit(h.path)
        path = split.path
        body: Any = None
        bad_json = False
        is_rest = path == API_PREFIX or path.startswith(API_PREFIX + "/")
        if raw and is_rest:
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json = True
        record = self._record(h, body)
        if is_rest:
            self._rest(h, record, path.removeprefix(API_PREFIX), body, bad_json)
            return
        match = _GIT_PATH.match(path)
        if match is None:
            record["status"] = 404
            h.respond(404, {"Content-Type": "text/plain"}, b"Not Found\n")
            return
        self._git_http(h, record, match, split.query, raw)

    # -- REST -------------------------------------------------------------------
    def _principal(self, headers: Mapping[str, str]) -> _Principal:
        """Who the ``Authorization`` header says the caller is (see :class:`_Principal`)."""
        value = headers.get("authorization", "")
        if not value:
            return _Principal("anonymous")
        scheme, _, credential = value.strip().partition(" ")
        scheme, credential = scheme.lower(), credential.strip()
        if scheme == "basic":
            try:
                user, _, password = base64.b64decode(credential).decode().partition(":")
            except ValueError:
                return _Principal("bad")
            candidates = [password, user]
        elif scheme in ("token", "bearer"):
            candidates = [credential]
        else:
            return _Principal("bad")
        if self.token in candidates:
            return self._default
        with self._lock:
            for candidate in candidates:
                issued = self._tokens.get(candidate)
                if issued is not None:
                    login = issued.installation.app.bot_login
                    return _Principal("installation", login, issued=issued)
            if scheme == "bearer" and looks_like_jwt(credential):
                try:
                    app = check_jwt(credential, self._apps, time.time() + self.clock_offset)
                except JwtRefused as refused:
                    return _Principal("jwt_refused", error=str(refused))
                return _Principal("app", app.bot_login, app=app)
        return _Principal("bad")

    def _auth(self, headers: Mapping[str, str]) -> str:
        """``token`` (the accepted token), ``anonymous`` or ``bad`` (anything else)."""
        kind = self._principal(headers).kind
        return kind if kind in ("token", "anonymous") else "bad"

    @property
    def _actor(self) -> str:
        """The login acting in the request being handled (the token's user or the App's bot)."""
        return self._current.login or self.login

    def _gate(self, principal: _Principal, handler: Route, match: re.Match[str]) -> None:
        """GitHub's rules for Apps: a JWT only on App routes, an installation token only
        within its repositories and permissions (raises the error GitHub answers)."""
        if handler in self._app_routes:
            if principal.kind == "app":
                return
            raise _HttpError(401, principal.error or NOT_A_JWT)
        if principal.kind == "app":
            raise _HttpError(403, NOT_ACCESSIBLE)
        if principal.kind == "jwt_refused":
            raise _HttpError(401, principal.error)
        if handler == self._revoke_token and principal.kind != "installation":
            raise _HttpError(401 if principal.kind == "anonymous" else 403, NOT_ACCESSIBLE)
        issued = principal.issued
        if issued is None:
            return
        if not issued.alive:
            raise _HttpError(401, "Bad credentials")
        scope = self._scopes.get(handler)
        if scope is None:
            raise _HttpError(403, NOT_ACCESSIBLE)
        if "owner" in match.re.groupindex:
            full_name = f"{unquote(match['owner'])}/{unquote(match['repo'])}"
            repo = self._repos.get(full_name.lower())
            if repo is None or not issued.reaches(repo.full_name):
                raise _HttpError(404, "Not Found")
            permission, level = scope
            if match.groupdict().get("kind") == "pulls":  # a reaction to a review comment
                permission = "pull_requests"
            if not permission or issued.allows(permission, level):
                return
            alternative = permission == "issues" and self._is_pull_number(repo, match)
            if alternative and issued.allows("pull_requests", level):
                return  # GitHub lets pull_requests stand in for issues on a pull request
            accepted = f"{permission}={level}" + (f"; pull_requests={level}" if alternative else "")
            raise _HttpError(
                403, NOT_ACCESSIBLE, headers={"x-accepted-github-permissions": accepted}
            )

    def _is_pull_number(self, repo: FakeRepo, match: re.Match[str]) -> bool:
        """Whether an issue route's number (or its comment's) is one of ``repo``'s pulls."""
        groups = match.groupdict()
        if groups.get("number"):
            return self._is_pull(repo, int(groups["number"]))
        comment = self._comments.get(int(groups.get("id") or 0))
        return comment is not None and comment.repo is repo and self._is_pull(repo, comment.number)

    def _rate_headers(self, kind: str) -> dict[str, str]:
        limit = RATE_LIMIT if kind == "token" else ANONYMOUS_RATE_LIMIT
        with self._lock:
            self._used[kind] += 1
            used = self._used[kind]
        return {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(limit - used, 0)),
            "x-ratelimit-reset": str(self._reset_at),
            "x-ratelimit-used": str(used),
            "x-ratelimit-resource": "core",
        }

    def _rest(
        self, h: _Handler, record: dict[str, Any], path: str, body: Any, bad_json: bool
    ) -> None:
        headers: dict[str, str] = record["headers"]
        principal = self._principal(headers)
        auth = principal.kind if principal.kind in ("token", "anonymous") else "bad"
        authed = principal.kind in ("token", "installation", "app")
        base_headers = {
            "Content-Type": "application/json; charset=utf-8",
            "x-github-media-type": "github.v3; format=json",
            "x-github-api-version-selected": "2022-11-28",
            "x-github-request-id": f"FAKE:{len(self.requests):08X}",
            **self._rate_headers("token" if authed else "anonymous"),
        }
        if auth == "token":
            base_headers["x-oauth-scopes"] = "repo, workflow"
        status: int
        payload: Any
        extra: dict[str, str] = {}
        failure = self._take_failure(h.command, record["path"])
        try:
            if failure is not None:
                raise self._injected(failure, path)
            if principal.kind == "bad":
                raise _HttpError(401, "Bad credentials")
            if bad_json or (body is not None and not isinstance(body, dict)):
                raise _HttpError(400, "Problems parsing JSON")
            for method, pattern, handler in self._routes:
                match = pattern.match(path)
                if match is not None and method == h.command:
                    query: dict[str, str] = record["query"]
                    with self._lock:
                        self._gate(principal, handler, match)
                        self._current = principal
                        try:
                            status, payload, extra = handler(match, query, body or {}, authed)
                        finally:
                            self._current = self._default
                    break
            else:
                if principal.kind == "jwt_refused":
                    raise _HttpError(401, principal.error)
                raise _HttpError(404, "Not Found")
        except _HttpError as err:
            status, extra = err.status, err.headers
            payload = {"message": err.message, "documentation_url": DOCS_URL, "status": str(status)}
            if err.errors is not None:
                payload["errors"] = err.errors
        if h.command == "GET" and status == 202:  # PyGithub would retry forever
            raise AssertionError("the fake must never answer a GET with 202")
        record["status"], record["response"] = status, payload
        if principal.issued is not None:
            with self._lock:
                use = f"{h.command} {path}"
                if status < 400:
                    principal.issued.used_for.append(use)
                else:
                    principal.issued.refused.append(f"{use} -> {status}")
        data = b"" if status == 204 else json.dumps(payload).encode()
        h.respond(status, {**base_headers, **extra}, data)

    @staticmethod
    def _injected(failure: _Failure, path: str) -> _HttpError:
        """The error for a :meth:`fail` rule; a 422 carries the message in ``errors``."""
        if failure.status != 422:
            return _HttpError(failure.status, failure.message, headers=failure.headers)
        errors = None
        if failure.message:
            resource = "PullRequest" if "/pulls" in path else "Repository"
            errors = [{"resource": resource, "code": "custom", "message": failure.message}]
        return _HttpError(422, "Validation Failed", errors, failure.headers)

    def _repo_for(self, match: re.Match[str], authed: bool, *, counting: bool = False) -> FakeRepo:
        """The repository named in the path, or 404 (missing, private to anonymous, fork not ready)."""
        repo = self._repos.get(f"{unquote(match['owner'])}/{unquote(match['repo'])}".lower())
        if repo is None or (repo.private and not authed):
            raise _HttpError(404, "Not Found")
        if repo.not_ready > 0:
            if counting:
                repo.not_ready -= 1
            raise _HttpError(404, "Not Found")
        return repo

    @staticmethod
    def _require_token(authed: bool) -> None:
        if not authed:
            raise _HttpError(401, "Requires authentication")

    # JSON builders -------------------------------------------------------------
    def _user_id(self, login: str) -> int:
        key = login.lower()
        if key not in self._user_ids:
            self._user_ids[key] = self._new_id()
        return self._user_ids[key]

    def _user_json(self, login: str) -> dict[str, Any]:
        uid = self._user_id(login)
        api = f"{self.api_url}/users/{login}"
        is_org = login.lower() in self._orgs and login.lower() != self.login.lower()
        return {
            "login": login,
            "id": uid,
            "node_id": _node_id("Organization" if is_org else "User", uid),
            "avatar_url": f"{self.git_url}/avatars/u/{uid}?v=4",
            "gravatar_id": "",
            "url": api,
            "html_url": f"{self.git_url}/{login}",
            "followers_url": f"{api}/followers",
            "following_url": f"{api}/following{{/other_user}}",
            "gists_url": f"{api}/gists{{/gist_id}}",
            "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/subscriptions",
            "organizations_url": f"{api}/orgs",
            "repos_url": f"{api}/repos",
            "events_url": f"{api}/events{{/privacy}}",
            "received_events_url": f"{api}/received_events",
            "type": "Bot" if login.endswith("[bot]") else "Organization" if is_org else "User",
            "user_view_type": "public",
            "site_admin": False,
        }

    def _permissions(self, repo: FakeRepo) -> dict[str, bool]:
        issued = self._current.issued
        if issued is not None:  # an installation token: what it may do there
            push = issued.reaches(repo.full_name) and issued.allows("contents", "write")
            return {"admin": False, "maintain": False, "push": push, "triage": push, "pull": True}
        admin = repo.owner.lower() == self.login.lower()
        push = repo.push or admin
        return {"admin": admin, "maintain": admin, "push": push, "triage": push, "pull": True}

    def _repo_json(self, repo: FakeRepo, authed: bool, *, full: bool) -> dict[str, Any]:
        api = f"{self.api_url}/repos/{repo.full_name}"
        web = f"{self.git_url}/{repo.full_name}"
        host = self.git_url.removeprefix("http://")
        network = [r for r in self._repos.values() if r.root is repo.root]
        forks = sum(1 for r in self._repos.values() if r.parent is repo)
        open_pulls = sum(1 for p in self._pulls.get(repo.full_name, []) if p.state == "open")
        data: dict[str, Any] = {
            "id": repo.id,
            "node_id": _node_id("Repository", repo.id),
            "name": repo.name,
            "full_name": repo.full_name,
            "private": repo.private,
            "owner": self._user_json(repo.owner),
            "html_url": web,
            "description": repo.description,
            "fork": repo.parent is not None,
            "url": api,
            "archive_url": f"{api}/{{archive_format}}{{/ref}}",
            "assignees_url": f"{api}/assignees{{/user}}",
            "blobs_url": f"{api}/git/blobs{{/sha}}",
            "branches_url": f"{api}/branches{{/branch}}",
            "collaborators_url": f"{api}/collaborators{{/collaborator}}",
            "comments_url": f"{api}/comments{{/number}}",
            "commits_url": f"{api}/commits{{/sha}}",
            "compare_url": f"{api}/compare/{{base}}...{{head}}",
            "contents_url": f"{api}/contents/{{+path}}",
            "contributors_url": f"{api}/contributors",
            "deployments_url": f"{api}/deployments",
            "downloads_url": f"{api}/downloads",
            "events_url": f"{api}/events",
            "forks_url": f"{api}/forks",
            "git_commits_url": f"{api}/git/commits{{/sha}}",
            "git_refs_url": f"{api}/git/refs{{/sha}}",
            "git_tags_url": f"{api}/git/tags{{/sha}}",
            "git_url": f"git://{host}/{repo.full_name}.git",
            "issue_comment_url": f"{api}/issues/comments{{/number}}",
            "issue_events_url": f"{api}/issues/events{{/number}}",
            "issues_url": f"{api}/issues{{/number}}",
            "keys_url": f"{api}/keys{{/key_id}}",
            "labels_url": f"{api}/labels{{/name}}",
            "languages_url": f"{api}/languages",
            "merges_url": f"{api}/merges",
            "milestones_url": f"{api}/milestones{{/number}}",
            "notifications_url": f"{api}/notifications{{?since,all,participating}}",
            "pulls_url": f"{api}/pulls{{/number}}",
            "releases_url": f"{api}/releases{{/id}}",
            "ssh_url": f"git@{host.partition(':')[0]}:{repo.full_name}.git",
            "stargazers_url": f"{api}/stargazers",
            "statuses_url": f"{api}/statuses/{{sha}}",
            "subscribers_url": f"{api}/subscribers",
            "subscription_url": f"{api}/subscription",
            "tags_url": f"{api}/tags",
            "teams_url": f"{api}/teams",
            "trees_url": f"{api}/git/trees{{/sha}}",
            "clone_url": f"{web}.git",
            "mirror_url": None,
            "hooks_url": f"{api}/hooks",
            "svn_url": web,
            "homepage": None,
            "language": None,
            "forks_count": forks,
            "forks": forks,
            "stargazers_count": 0,
            "watchers_count": 0,
            "watchers": 0,
            "size": 0,
            "default_branch": repo.default_branch,
            "open_issues_count": open_pulls,
            "open_issues": open_pulls,
            "is_template": False,
            "topics": [],
            "has_issues": True,
            "has_projects": True,
            "has_wiki": True,
            "has_pages": False,
            "has_downloads": True,
            "has_discussions": False,
            "archived": repo.archived,
            "disabled": False,
            "visibility": "private" if repo.private else "public",
            "pushed_at": repo.pushed_at,
            "created_at": repo.created_at,
            "updated_at": repo.pushed_at,
            "allow_forking": True,
            "web_commit_signoff_required": False,
            "license": None,
        }
        if authed:
            data["permissions"] = self._permissions(repo)
        if full:
            data.update(
                {
                    "allow_rebase_merge": True,
                    "allow_squash_merge": True,
                    "allow_merge_commit": True,
                    "allow_auto_merge": False,
                    "delete_branch_on_merge": False,
                    "network_count": len(network),
                    "subscribers_count": 0,
                }
            )
            if repo.parent is not None:
                data["parent"] = self._repo_json(repo.parent, authed, full=False)
                data["source"] = self._repo_json(repo.root, authed, full=False)
        return data

    def _pull_json(self, pull: _Pull, *, full: bool) -> dict[str, Any]:
        repo, head_repo = pull.repo, pull.head_repo
        api = f"{self.api_url}/repos/{repo.full_name}"
        html = f"{self.git_url}/{repo.full_name}/pull/{pull.number}"
        head_sha = self._branches(head_repo).get(pull.head_ref, pull.head_sha)
        pull.head_sha = head_sha
        base_sha = self._branches(repo).get(pull.base_ref, "")
        statuses = f"{api}/statuses/{head_sha}"
        user = self._user_json(pull.user)
        if pull.user.lower() == repo.owner.lower():
            association = "OWNER"
        elif repo.push:
            association = "MEMBER" if repo.owner.lower() in self._orgs else "COLLABORATOR"
        else:
            association = "CONTRIBUTOR"
        data: dict[str, Any] = {
            "url": f"{api}/pulls/{pull.number}",
            "id": pull.id,
            "node_id": _node_id("PullRequest", pull.id),
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "issue_url": f"{api}/issues/{pull.number}",
            "commits_url": f"{api}/pulls/{pull.number}/commits",
            "review_comments_url": f"{api}/pulls/{pull.number}/comments",
            "review_comment_url": f"{api}/pulls/comments{{/number}}",
            "comments_url": f"{api}/issues/{pull.number}/comments",
            "statuses_url": statuses,
            "number": pull.number,
            "state": pull.state,
            "locked": False,
            "title": pull.title,
            "user": user,
            "body": pull.body,
            "labels": [],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": pull.created_at,
            "updated_at": pull.updated_at,
            "closed_at": pull.closed_at,
            "merged_at": pull.merged_at,
            "merge_commit_sha": pull.merge_commit_sha,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": {
                "label": f"{head_repo.owner}:{pull.head_ref}",
                "ref": pull.head_ref,
                "sha": head_sha,
                "user": self._user_json(head_repo.owner),
                "repo": self._repo_json(head_repo, True, full=False),
            },
            "base": {
                "label": f"{repo.owner}:{pull.base_ref}",
                "ref": pull.base_ref,
                "sha": base_sha,
                "user": self._user_json(repo.owner),
                "repo": self._repo_json(repo, True, full=False),
            },
            "_links": {
                "self": {"href": f"{api}/pulls/{pull.number}"},
                "html": {"href": html},
                "issue": {"href": f"{api}/issues/{pull.number}"},
                "comments": {"href": f"{api}/issues/{pull.number}/comments"},
                "review_comments": {"href": f"{api}/pulls/{pull.number}/comments"},
                "review_comment": {"href": f"{api}/pulls/comments{{/number}}"},
                "commits": {"href": f"{api}/pulls/{pull.number}/commits"},
                "statuses": {"href": statuses},
            },
            "author_association": association,
            "auto_merge": None,
            "draft": pull.draft,
        }
        if full:
            commits = self._rev_count(repo, head_repo, base_sha, head_sha) if base_sha else 0
            additions = deletions = changed = 0
            if commits > 0:
                env = {"GIT_ALTERNATE_OBJECT_DIRECTORIES": str(head_repo.path / "objects")}
                proc = self._git(
                    repo.path, "diff", "--numstat", f"{base_sha}...{head_sha}", env=env, check=False
                )
                for line in proc.stdout.decode().splitlines():
                    added, removed, _ = line.split("\t", 2)
                    additions += int(added) if added.isdigit() else 0
                    deletions += int(removed) if removed.isdigit() else 0
                    changed += 1
            data.update(
                {
                    "merged": pull.merged_at is not None,
                    "mergeable": None,
                    "rebaseable": None,
                    "mergeable_state": "unknown",
                    "merged_by": self._user_json(pull.merged_by) if pull.merged_by else None,
                    "comments": sum(
                        1
                        for c in self._comments.values()
                        if c.repo is repo and c.number == pull.number
                    ),
                    "review_comments": 0,
                    "maintainer_can_modify": pull.maintainer_can_modify,
                    "commits": max(commits, 0),
                    "additions": additions,
                    "deletions": deletions,
                    "changed_files": changed,
                }
            )
        return data

    # Handlers: each returns (status, payload, extra headers) -------------------
    def _get_user(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        self._require_token(authed)
        user = self._user_json(self.login)
        user.update(
            {
                "user_view_type": "private",
                "name": self.login,
                "company": None,
                "blog": "",
                "location": None,
                "email": None,
                "hireable": None,
                "bio": None,
                "twitter_username": None,
                "notification_email": None,
                "public_repos": sum(
                    1
                    for r in self._repos.values()
                    if r.owner.lower() == self.login.lower() and not r.private
                ),
                "public_gists": 0,
                "followers": 0,
                "following": 0,
                "created_at": "2024-01-01T00:00:00Z",
                "updated_at": "2024-01-01T00:00:00Z",
                "private_gists": 0,
                "total_private_repos": 0,
                "owned_private_repos": 0,
                "disk_usage": 0,
                "collaborators": 0,
                "two_factor_authentication": True,
            }
        )
        return 200, user, {}

    def _get_repo(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        repo = self._repo_for(match, authed, counting=True)
        return 200, self._repo_json(repo, authed, full=True), {}

    def _get_branch(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        repo = self._repo_for(match, authed)
        name = unquote(match["branch"])
        sha = self._branches(repo).get(name)
        if sha is None:
            raise _HttpError(404, "Branch not found")
        info = self._commit_info(repo, sha)
        api = f"{self.api_url}/repos/{repo.full_name}"
        web = f"{self.git_url}/{repo.full_name}"
        branch_url = f"{api}/branches/{quote(name)}"
        commit = {
            "sha": sha,
            "node_id": _node_id("Commit", repo.id) + sha[:8],
            "commit": {
                "author": info["author"],
                "committer": info["committer"],
                "message": info["message"],
                "tree": {"sha": info["tree"], "url": f"{api}/git/trees/{info['tree']}"},
                "url": f"{api}/git/commits/{sha}",
                "comment_count": 0,
                "verification": {
                    "verified": False,
                    "reason": "unsigned",
                    "signature": None,
                    "payload": None,
                    "verified_at": None,
                },
            },
            "url": f"{api}/commits/{sha}",
            "html_url": f"{web}/commit/{sha}",
            "comments_url": f"{api}/commits/{sha}/comments",
            "author": None,
            "committer": None,
            "parents": [
                {"sha": p, "url": f"{api}/commits/{p}", "html_url": f"{web}/commit/{p}"}
                for p in info["parents"]
            ],
        }
        payload = {
            "name": name,
            "commit": commit,
            "_links": {"self": branch_url, "html": f"{web}/tree/{quote(name)}"},
            "protected": False,
            "protection": {
                "enabled": False,
                "required_status_checks": {
                    "enforcement_level": "off",
                    "contexts": [],
                    "checks": [],
                },
            },
            "protection_url": f"{branch_url}/protection",
        }
        return 200, payload, {}

    def _get_ref(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        repo = self._repo_for(match, authed)
        ref = "refs/" + unquote(match["ref"])
        out = self._git(
            repo.path, "for-each-ref", "--format=%(objectname) %(objecttype) %(refname)", ref
        ).stdout.decode()
        found = [line.split(" ", 2) for line in out.splitlines()]
        exact = [f for f in found if f[2] == ref]
        if not exact:
            raise _HttpError(404, "Not Found")
        sha, kind, _ = exact[0]
        api = f"{self.api_url}/repos/{repo.full_name}"
        plural = "commits" if kind == "commit" else f"{kind}s"
        payload = {
            "ref": ref,
            "node_id": _node_id("Ref", repo.id) + base64.b64encode(ref.encode()).decode(),
            "url": f"{api}/git/{quote(ref)}",
            "object": {"sha": sha, "type": kind, "url": f"{api}/git/{plural}/{sha}"},
        }
        return 200, payload, {}

    def _create_fork(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        self._require_token(authed)
        repo = self._repo_for(match, authed)
        org = body.get("organization")
        owner = org if isinstance(org, str) and org else self._actor
        if owner.lower() == repo.owner.lower():
            raise _validation("Repository", message="Cannot fork a repository to its own owner.")
        for existing in self._repos.values():  # idempotent: the owner's fork in this network
            if existing.root is repo.root and existing.owner.lower() == owner.lower():
                return 202, self._repo_json(existing, True, full=True), {}
        name = str(body.get("name") or repo.name)
        base, n = name, 0
        while f"{owner}/{name}".lower() in self._repos:
            n += 1
            name = f"{base}-{n}"
        if org:
            self._orgs.add(owner.lower())
        fork = self._new_repo(
            owner, name, repo.default_branch, repo.private, True, repo.draft_supported,
            repo.description, parent=repo,
        )  # fmt: skip
        self._git(fork.path.parent, "clone", "-q", "--bare", str(repo.path), fork.path.name)
        self._git(fork.path, "remote", "remove", "origin")
        if body.get("default_branch_only"):
            for branch in self._branches(fork):
                if branch != fork.default_branch:
                    self._git(fork.path, "update-ref", "-d", f"refs/heads/{branch}")
        fork.not_ready = self.fork_ready_after
        self._repos[fork.full_name.lower()] = fork
        return 202, self._repo_json(fork, True, full=True), {}

    def _merge_upstream(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        self._require_token(authed)
        repo = self._repo_for(match, authed)
        if not self._permissions(repo)["push"]:
            raise _HttpError(403, "Resource not accessible by personal access token")
        branch = body.get("branch")
        if not isinstance(branch, str) or not branch:
            raise _validation("Repository", code="missing_field", field="branch")
        parent = repo.parent
        if parent is None:
            raise _validation("Repository", message="This repository is not a fork.")
        upstream = self._branches(parent).get(branch)
        mine = self._branches(repo).get(branch)
        if upstream is None or mine is None:
            raise _validation("Repository", message=f"Branch {branch} does not exist.")
        label = f"{parent.owner}:{branch}"
        if self._rev_count(repo, parent, mine, upstream) == 0:  # nothing new upstream
            message, merge_type = f"This branch is not behind the upstream {label}.", "none"
        elif self._rev_count(repo, parent, upstream, mine) == 0:  # fork is behind: fast-forward
            self._git(
                repo.path, "fetch", "-q", "--no-tags", str(parent.path), f"refs/heads/{branch}"
            )
            self._git(repo.path, "update-ref", f"refs/heads/{branch}", upstream, mine)
            repo.pushed_at = _now()
            message = f"Successfully fetched and fast-forwarded from upstream {label}."
            merge_type = "fast-forward"
        else:
            raise _HttpError(409, "There are merge conflicts")
        return 200, {"message": message, "merge_type": merge_type, "base_branch": label}, {}

    def _network_repo(self, repo: FakeRepo, owner: str, name: str | None) -> FakeRepo | None:
        """The repository of ``owner`` in ``repo``'s fork network (``head_repo`` picks by name)."""
        candidates = [
            r
            for r in self._repos.values()
            if r.root is repo.root and r.owner.lower() == owner.lower() and r.not_ready == 0
        ]
        if name:
            short = name.rpartition("/")[2].lower()
            candidates = [r for r in candidates if r.name.lower() == short]
        candidates.sort(key=lambda r: (r is not repo, r.name.lower() != repo.name.lower()))
        return candidates[0] if candidates else None

    def _list_pulls(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        repo = self._repo_for(match, authed)
        pulls = list(self._pulls.get(repo.full_name, []))
        state = query.get("state", "open")
        if state != "all":
            pulls = [p for p in pulls if p.state == state]
        head = query.get("head", "")
        if ":" in head:  # GitHub ignores a head filter without "owner:"
            owner, _, ref = head.partition(":")
            pulls = [
                p
                for p in pulls
                if p.head_repo.owner.lower() == owner.lower() and (not ref or p.head_ref == ref)
            ]
        if query.get("base"):
            pulls = [p for p in pulls if p.base_ref == query["base"]]
        sort = query.get("sort", "created")
        direction = query.get("direction", "desc" if sort == "created" else "asc")
        key = (lambda p: p.updated_at) if sort == "updated" else (lambda p: f"{p.number:09d}")
        pulls.sort(key=lambda p: (key(p), p.number), reverse=direction == "desc")
        items = [self._pull_json(p, full=False) for p in pulls]
        return 200, *self._paginate(items, query, f"/repos/{repo.full_name}/pulls")

    def _paginate(
        self, items: list[Any], query: dict[str, str], path: str
    ) -> tuple[list[Any], dict[str, str]]:
        """One page of ``items`` plus GitHub's ``Link`` header (omitted for a single page)."""
        try:
            per_page = min(max(int(query.get("per_page", DEFAULT_PER_PAGE)), 1), MAX_PER_PAGE)
        except ValueError:
            per_page = DEFAULT_PER_PAGE
        try:
            page = max(int(query.get("page", 1)), 1)
        except ValueError:
            page = 1
        last = max((len(items) + per_page - 1) // per_page, 1)
        params = {k: v for k, v in query.items() if k != "page"}

        def url(number: int) -> str:
            return f"{self.api_url}{path}?{urlencode({**params, 'page': number})}"

        links: list[str] = []
        if page > 1:
            links.append(f'<{url(page - 1)}>; rel="prev"')
        if page < last:
            links += [f'<{url(page + 1)}>; rel="next"', f'<{url(last)}>; rel="last"']
        if page > 1:
            links.append(f'<{url(1)}>; rel="first"')
        start = (page - 1) * per_page
        return items[start : start + per_page], ({"Link": ", ".join(links)} if links else {})

    def _find_pull(self, match: re.Match[str], authed: bool) -> _Pull:
        repo = self._repo_for(match, authed)
        number = int(match["number"])
        for pull in self._pulls.get(repo.full_name, []):
            if pull.number == number:
                return pull
        raise _HttpError(404, "Not Found")

    def _get_pull(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        return 200, self._pull_json(self._find_pull(match, authed), full=True), {}

    def _open_duplicate(self, pull: _Pull) -> bool:
        return any(
            other is not pull
            and other.state == "open"
            and other.head_repo is pull.head_repo
            and other.head_ref == pull.head_ref
            and other.base_ref == pull.base_ref
            for other in self._pulls.get(pull.repo.full_name, [])
        )

    def _create_pull(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        self._require_token(authed)
        repo = self._repo_for(match, authed)
        if repo.archived:
            raise _HttpError(403, "Repository was archived so is read-only.")
        head, base, title = body.get("head"), body.get("base"), body.get("title")
        for name, value in (("head", head), ("base", base), ("title", title)):
            if not isinstance(value, str) or not value:
                raise _validation("PullRequest", code="missing_field", field=name)
        assert isinstance(head, str) and isinstance(base, str) and isinstance(title, str)
        text = body.get("body")
        if isinstance(text, str) and len(text) > MAX_PR_BODY:
            raise _validation(
                "Issue", message=f"body is too long (maximum is {MAX_PR_BODY} characters)"
            )
        owner, _, branch = head.rpartition(":")
        head_repo = self._network_repo(repo, owner or repo.owner, body.get("head_repo"))
        base_sha = self._branches(repo).get(base)
        if base_sha is None:
            raise _validation("PullRequest", code="invalid", field="base")
        head_sha = self._branches(head_repo).get(branch) if head_repo is not None else None
        if head_repo is None or head_sha is None:
            raise _validation("PullRequest", code="invalid", field="head")
        now = _now()
        pull = _Pull(
            number=0,  # numbered below, once it is valid
            id=self._new_id(),
            repo=repo,
            head_repo=head_repo,
            head_ref=branch,
            head_sha=head_sha,
            base_ref=base,
            title=title,
            body=text if isinstance(text, str) else None,
            draft=bool(body.get("draft")),
            user=self._actor,
            maintainer_can_modify=bool(body.get("maintainer_can_modify", head_repo is not repo)),
            created_at=now,
            updated_at=now,
        )
        if self._open_duplicate(pull):
            raise _validation(
                "PullRequest",
                message=f"A pull request already exists for {head_repo.owner}:{branch}.",
            )
        if self._rev_count(repo, head_repo, base_sha, head_sha) <= 0:
            raise _validation("PullRequest", message=f"No commits between {base} and {head}")
        if pull.draft and not repo.draft_supported:
            raise _validation(
                "PullRequest", message="Draft pull requests are not supported in this repository."
            )
        pull.number = self._new_number(repo)
        self._pulls.setdefault(repo.full_name, []).append(pull)
        headers = {"Location": f"{self.api_url}/repos/{repo.full_name}/pulls/{pull.number}"}
        return 201, self._pull_json(pull, full=True), headers

    def _update_pull(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        self._require_token(authed)
        pull = self._find_pull(match, authed)
        if pull.repo.archived:
            raise _HttpError(403, "Repository was archived so is read-only.")
        if "title" in body:
            if not isinstance(body["title"], str) or not body["title"]:
                raise _validation("PullRequest", code="missing_field", field="title")
            pull.title = body["title"]
        if "body" in body:
            text = body["body"]
            if isinstance(text, str) and len(text) > MAX_PR_BODY:
                raise _validation(
                    "Issue", message=f"body is too long (maximum is {MAX_PR_BODY} characters)"
                )
            pull.body = text if isinstance(text, str) else None
        if "base" in body:
            if body["base"] not in self._branches(pull.repo):
                raise _validation("PullRequest", code="invalid", field="base")
            pull.base_ref = body["base"]
        if "maintainer_can_modify" in body:
            pull.maintainer_can_modify = bool(body["maintainer_can_modify"])
        if "state" in body:
            state = body["state"]
            if state not in ("open", "closed"):
                raise _validation("PullRequest", code="invalid", field="state")
            if state == "open" and pull.merged_at is not None:
                raise _validation(
                    "PullRequest", message="state cannot be changed. The pull request is merged."
                )
            if state == "open" and pull.state == "closed" and self._open_duplicate(pull):
                raise _validation(
                    "PullRequest",
                    message=f"A pull request already exists for {pull.head_repo.owner}:{pull.head_ref}.",
                )
            pull.closed_at = _now() if state == "closed" else None
            pull.state = state
        pull.updated_at = _now()
        return 200, self._pull_json(pull, full=True), {}

    # -- issue comments ---------------------------------------------------------------
    def _association(self, repo: FakeRepo, login: str) -> str:
        """``author_association`` of ``login`` on ``repo``, as GitHub shows it next to a comment."""
        if login.lower() == repo.owner.lower():
            return "OWNER"
        if self._role(repo, login) in ("admin", "maintain", "write", "triage"):
            return "MEMBER" if repo.owner.lower() in self._orgs else "COLLABORATOR"
        return "NONE"

    def _role(self, repo: FakeRepo, login: str) -> str:
        """``login``'s role: set by the test; the token's user by its push access; else read."""
        role = self._roles.get((repo.full_name.lower(), login.lower()))
        if role is not None:
            return role
        if login.lower() == self.login.lower():
            permissions = self._permissions(repo)
            return "admin" if permissions["admin"] else "write" if permissions["push"] else "read"
        if login.lower() == repo.owner.lower():
            return "admin"
        return "none" if repo.private else "read"

    def _comment_json(self, comment: _Comment) -> dict[str, Any]:
        repo = comment.repo
        api = f"{self.api_url}/repos/{repo.full_name}"
        kind = "pull" if self._is_pull(repo, comment.number) else "issues"
        url = f"{api}/issues/comments/{comment.id}"
        return {
            "id": comment.id,
            "node_id": _node_id("IssueComment", comment.id),
            "url": url,
            "html_url": (
                f"{self.git_url}/{repo.full_name}/{kind}/{comment.number}#issuecomment-{comment.id}"
            ),
            "body": comment.body,
            "user": self._user_json(comment.user),
            "created_at": comment.created_at,
            "updated_at": comment.updated_at,
            "issue_url": f"{api}/issues/{comment.number}",
            "author_association": self._association(repo, comment.user),
            "performed_via_github_app": None,
            "reactions": self._reactions_json(f"{url}/reactions"),
        }

    @staticmethod
    def _reactions_json(url: str) -> dict[str, Any]:
        counts = dict.fromkeys(
            ("+1", "-1", "laugh", "confused", "heart", "hooray", "eyes", "rocket"), 0
        )
        return {"url": url, "total_count": 0, **counts}

    @staticmethod
    def _comment_body(body: Any) -> str:
        text = body.get("body")
        if not isinstance(text, str) or not text:
            raise _validation("IssueComment", code="missing_field", field="body")
        if len(text) > MAX_PR_BODY:
            raise _validation(
                "IssueComment", message=f"body is too long (maximum is {MAX_PR_BODY} characters)"
            )
        return text

    def _issue_for(self, match: re.Match[str], authed: bool) -> tuple[FakeRepo, int]:
        repo = self._repo_for(match, authed)
        number = int(match["number"])
        if not self._issue_exists(repo, number):
            raise _HttpError(404, "Not Found")
        return repo, number

    def _comment_for(self, match: re.Match[str], authed: bool) -> _Comment:
        repo = self._repo_for(match, authed)
        comment = self._comments.get(int(match["id"]))
        if comment is None or comment.repo is not repo:
            raise _HttpError(404, "Not Found")
        return comment

    def _list_comments(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        repo, number = self._issue_for(match, authed)
        items = [
            self._comment_json(c)
            for c in self._comments.values()
            if c.repo is repo and c.number == number
        ]
        return 200, *self._paginate(
            items, query, f"/repos/{repo.full_name}/issues/{number}/comments"
        )

    def _add_comment(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        self._require_token(authed)
        repo, number = self._issue_for(match, authed)
        if repo.archived:
            raise _HttpError(403, "Repository was archived so is read-only.")
        comment = self._new_comment(repo, number, self._actor, self._comment_body(body))
        data = self._comment_json(comment)
        return 201, data, {"Location": data["url"]}

    def _get_comment(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        return 200, self._comment_json(self._comment_for(match, authed)), {}

    def _edit_comment(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        self._require_token(authed)
        comment = self._comment_for(match, authed)
        if (
            comment.user.lower() != self._actor.lower()
            and not self._permissions(comment.repo)["push"]
        ):
            raise _HttpError(403, "Resource not accessible by personal access token")
        comment.body = self._comment_body(body)
        comment.updated_at = _now()
        return 200, self._comment_json(comment), {}

    # -- webhook side: issues, reactions, permissions -------------------------------------
    def _label_json(self, repo: FakeRepo, name: str) -> dict[str, Any]:
        label_id = self._user_id(f"label:{repo.full_name}:{name}")
        return {
            "id": label_id,
            "node_id": _node_id("Label", label_id),
            "url": f"{self.api_url}/repos/{repo.full_name}/labels/{quote(name)}",
            "name": name,
            "color": "ededed",
            "default": False,
            "description": None,
        }

    def _issue_json(self, repo: FakeRepo, number: int) -> dict[str, Any]:
        """GitHub's issue JSON; a pull request is an issue with a ``pull_request`` key."""
        api = f"{self.api_url}/repos/{repo.full_name}"
        pull = next((p for p in self._pulls.get(repo.full_name, []) if p.number == number), None)
        issue = next((i for i in self._issues.get(repo.full_name, []) if i.number == number), None)
        if pull is not None:
            item_id, title, body, user, state = (
                pull.id,
                pull.title,
                pull.body,
                pull.user,
                pull.state,
            )
            created, updated, closed, labels = pull.created_at, pull.updated_at, pull.closed_at, []
            html = f"{self.git_url}/{repo.full_name}/pull/{number}"
        elif issue is not None:
            item_id, title, body, user, state = (
                issue.id, issue.title, issue.body, issue.user, issue.state
            )  # fmt: skip
            created, updated, closed = issue.created_at, issue.updated_at, None
            labels = issue.labels
            html = f"{self.git_url}/{repo.full_name}/issues/{number}"
        else:
            raise _HttpError(404, "Not Found")
        url = f"{api}/issues/{number}"
        data: dict[str, Any] = {
            "id": item_id,
            "node_id": _node_id("Issue", item_id),
            "url": url,
            "repository_url": api,
            "labels_url": f"{url}/labels{{/name}}",
            "comments_url": f"{url}/comments",
            "events_url": f"{url}/events",
            "html_url": html,
            "number": number,
            "state": state,
            "state_reason": None,
            "title": title,
            "body": body,
            "user": self._user_json(user),
            "labels": [self._label_json(repo, name) for name in labels],
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "locked": False,
            "active_lock_reason": None,
            "comments": sum(
                1 for c in self._comments.values() if c.repo is repo and c.number == number
            ),
            "closed_at": closed,
            "created_at": created,
            "updated_at": updated,
            "author_association": self._association(repo, user),
            "reactions": self._reactions_json(f"{url}/reactions"),
            "timeline_url": f"{url}/timeline",
            "performed_via_github_app": None,
        }
        if pull is not None:
            data["draft"] = pull.draft
            data["pull_request"] = {
                "url": f"{api}/pulls/{number}",
                "html_url": html,
                "diff_url": f"{html}.diff",
                "patch_url": f"{html}.patch",
                "merged_at": pull.merged_at,
            }
        return data

    def _hook_context(self, repo: FakeRepo, sender: str) -> dict[str, Any]:
        """What every repository webhook payload carries: the repository and the sender."""
        return {
            "repository": self._repo_json(repo, False, full=False),
            "sender": self._user_json(sender),
        }

    def _diff_hunk(self, pull: _Pull, head: str, path: str, line: int) -> str:
        """GitHub's ``diff_hunk``: the hunk of ``path`` up to ``line`` of the head's side."""
        base = self._branches(pull.repo).get(pull.base_ref, "")
        env = {"GIT_ALTERNATE_OBJECT_DIRECTORIES": str(pull.head_repo.path / "objects")}
        proc = self._git(
            pull.repo.path,
            "diff",
            "--no-color",
            f"{base}...{head}",
            "--",
            path,
            env=env,
            check=False,
        )
        hunk: list[str] = []
        new_line = 0
        for text in proc.stdout.decode(errors="replace").splitlines():
            header = re.match(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@", text)
            if header:
                if new_line > line and hunk:
                    break
                hunk, new_line = [text], int(header[1])
                continue
            if not hunk:
                continue
            if new_line > line:
                break
            hunk.append(text)
            if not text.startswith("-"):
                new_line += 1
        return "\n".join(hunk)

    def _review_comment_json(self, comment: _ReviewComment) -> dict[str, Any]:
        pull, repo = comment.pull, comment.pull.repo
        api = f"{self.api_url}/repos/{repo.full_name}"
        url = f"{api}/pulls/comments/{comment.id}"
        html = f"{self.git_url}/{repo.full_name}/pull/{pull.number}#discussion_r{comment.id}"
        return {
            "url": url,
            "pull_request_review_id": comment.review_id,
            "id": comment.id,
            "node_id": _node_id("PullRequestReviewComment", comment.id),
            "diff_hunk": comment.diff_hunk,
            "path": comment.path,
            "position": max(len(comment.diff_hunk.splitlines()) - 1, 1),
            "original_position": max(len(comment.diff_hunk.splitlines()) - 1, 1),
            "commit_id": comment.commit_id,
            "original_commit_id": comment.commit_id,
            "user": self._user_json(comment.user),
            "body": comment.body,
            "created_at": comment.created_at,
            "updated_at": comment.created_at,
            "html_url": html,
            "pull_request_url": f"{api}/pulls/{pull.number}",
            "author_association": self._association(repo, comment.user),
            "_links": {
                "self": {"href": url},
                "html": {"href": html},
                "pull_request": {"href": f"{api}/pulls/{pull.number}"},
            },
            "start_line": None,
            "original_start_line": None,
            "start_side": None,
            "line": comment.line,
            "original_line": comment.line,
            "side": "RIGHT",
            "subject_type": "line",
            "reactions": self._reactions_json(f"{url}/reactions"),
        }

    def _react(
        self, repo: FakeRepo, subject: str, target: int, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        content = body.get("content")
        if content not in REACTIONS:
            raise _validation("Reaction", code="invalid", field="content")
        for seen in self.reactions:  # one reaction of a kind per user: 200 with the existing one
            if (seen["repo"], seen["subject"], seen["id"], seen["content"], seen["user"]) == (
                repo.full_name, subject, target, content, self._actor
            ):  # fmt: skip
                return 200, seen["json"], {}
        reaction_id = self._new_id()
        data = {
            "id": reaction_id,
            "node_id": _node_id("Reaction", reaction_id),
            "user": self._user_json(self._actor),
            "content": content,
            "created_at": _now(),
        }
        self.reactions.append(
            {"subject": subject, "id": target, "content": content, "user": self._actor,
             "repo": repo.full_name, "json": data, "at": time.perf_counter()}
        )  # fmt: skip
        return 201, data, {}

    def _react_to_comment(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        self._require_token(authed)
        repo = self._repo_for(match, authed)
        comment_id = int(match["id"])
        if match["kind"] == "issues":
            comment = self._comments.get(comment_id)
            if comment is None or comment.repo is not repo:
                raise _HttpError(404, "Not Found")
            return self._react(repo, "issue_comment", comment_id, body)
        review = self._review_comments.get(comment_id)
        if review is None or review.pull.repo is not repo:
            raise _HttpError(404, "Not Found")
        return self._react(repo, "review_comment", comment_id, body)

    def _react_to_issue(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        self._require_token(authed)
        repo, number = self._issue_for(match, authed)
        return self._react(repo, "issue", number, body)

    def _get_issue(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        repo, number = self._issue_for(match, authed)
        return 200, self._issue_json(repo, number), {}

    def _get_permission(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        self._require_token(authed)
        repo = self._repo_for(match, authed)
        login = unquote(match["user"])
        role = self._role(repo, login)
        permission = ROLES[role][0]
        user = self._user_json(login)
        push = ROLES[role][1] or role == "admin"
        user["permissions"] = {
            "admin": role == "admin",
            "maintain": role in ("admin", "maintain"),
            "push": push,
            "triage": push or role == "triage",
            "pull": role != "none",
        }
        user["role_name"] = role
        return 200, {"permission": permission, "role_name": role, "user": user}, {}

    # -- the GitHub App's routes --------------------------------------------------------
    def _get_user_by_name(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        """A user, an organisation or an App's bot user (``<slug>[bot]``), as anyone sees it."""
        login = unquote(match["user"])
        app = next((a for a in self._apps.values() if a.bot_login.lower() == login.lower()), None)
        known = (
            app is not None
            or login.lower() in self._user_ids
            or login.lower() in self._orgs
            or login.lower() == self.login.lower()
            or any(r.owner.lower() == login.lower() for r in self._repos.values())
        )
        if not known:
            raise _HttpError(404, "Not Found")
        user = self._user_json(app.bot_login if app is not None else login)
        if app is not None:
            user["html_url"] = f"{self.git_url}/apps/{app.slug}"
        user.update(
            {
                "name": None, "company": None, "blog": "", "location": None, "email": None,
                "hireable": None, "bio": None, "twitter_username": None, "public_repos": 0,
                "public_gists": 0, "followers": 0, "following": 0,
                "created_at": app.created_at if app is not None else "2024-01-01T00:00:00Z",
                "updated_at": app.created_at if app is not None else "2024-01-01T00:00:00Z",
            }
        )  # fmt: skip
        return 200, user, {}

    def _get_app(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        app = self._current.app
        assert app is not None  # _gate let only a JWT through
        installs = sum(1 for i in self._installations.values() if i.app is app)
        owner = self._user_json(app.owner)
        return 200, app_json(app, self.api_url, self.git_url, owner, installs), {}

    def _installation_json(self, inst: FakeInstallation) -> dict[str, Any]:
        return installation_json(inst, self.api_url, self.git_url, self._user_json(inst.account))

    def _get_repo_installation(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        """The App's installation that covers the repository; 404 when it is not installed."""
        full_name = f"{unquote(match['owner'])}/{unquote(match['repo'])}"
        repo = self._repos.get(full_name.lower())
        for inst in self._installations.values():
            if repo is not None and inst.app is self._current.app and inst.covers(repo.full_name):
                return 200, self._installation_json(inst), {}
        raise _HttpError(404, "Not Found")

    def _create_access_token(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        """An installation token, narrowed to ``repositories``/``repository_ids`` and
        ``permissions`` when asked; 422 when asked for more than the installation has."""
        inst = self._installations.get(int(match["id"]))
        if inst is None or inst.app is not self._current.app:
            raise _HttpError(404, "Not Found")
        names, ids, wanted = (
            body.get("repositories"), body.get("repository_ids"), body.get("permissions")
        )  # fmt: skip
        for key, value, kind in (("repositories", names, str), ("repository_ids", ids, int)):
            if value is not None and (
                not isinstance(value, list) or not all(type(v) is kind for v in value)
            ):
                raise _HttpError(422, f"Invalid request.\n\nFor '{key}', {value!r} is invalid.")
        if wanted is not None and not (
            isinstance(wanted, dict) and all(isinstance(v, str) for v in wanted.values())
        ):
            raise _HttpError(422, f"Invalid request.\n\nFor 'permissions', {wanted!r} is invalid.")
        reach: list[FakeRepo] | None = None
        if names or ids:
            by_id = {r.id: r for r in self._repos.values()}
            found = [self._repos.get(f"{inst.account}/{name}".lower()) for name in names or []]
            found += [by_id.get(i) for i in ids or []]
            reach = [r for r in found if r is not None and inst.covers(r.full_name)]
            if len(reach) != len(found):
                raise _HttpError(422, NOT_IN_INSTALLATION)
        permissions = dict(wanted) if wanted else dict(inst.permissions)
        for permission, level in permissions.items():
            if level not in ("read", "write", "admin") or not satisfies(
                inst.permissions, permission, level
            ):
                raise _HttpError(422, NOT_GRANTED)
        now = time.time()
        issued = IssuedToken(
            token=new_token(), installation=inst,
            repositories=None if reach is None else sorted({r.full_name.lower() for r in reach}),
            permissions=permissions, issued=now, expires=now + 3600,
        )  # fmt: skip
        self._tokens[issued.token] = issued
        self.issued_tokens.append(issued)
        payload: dict[str, Any] = {
            "token": issued.token,
            "expires_at": issued.expires_at,
            "permissions": dict(permissions),
            "repository_selection": "selected" if reach is not None else (
                "all" if inst.repositories is None else "selected"
            ),
        }  # fmt: skip
        if reach is not None:
            unique = {r.full_name: r for r in reach}
            payload["repositories"] = [
                self._repo_json(r, True, full=False) for r in unique.values()
            ]
        return 201, payload, {}

    def _revoke_token(
        self, match: re.Match[str], query: dict[str, str], body: Any, authed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        """``DELETE /installation/token``: the calling token is dead from now on."""
        issued = self._current.issued
        assert issued is not None  # _gate let only an installation token through
        issued.revoked = time.time()
        return 204, None, {}

    # -- git smart HTTP --------------------------------------------------------------
    def _git_http(
        self, h: _Handler, record: dict[str, Any], match: re.Match[str], query: str, body: bytes
    ) -> None:
        headers: dict[str, str] = record["headers"]
        rest = match["rest"]
        service = record["query"].get("service", "") if rest == "info/refs" else rest

        def deny(status: int, message: str, extra: Mapping[str, str] | None = None) -> None:
            record["status"] = status
            h.respond(status, {"Content-Type": "text/plain", **(extra or {})}, message.encode())

        challenge = {"WWW-Authenticate": 'Basic realm="GitHub"'}
        failure = self._take_failure(h.command, record["path"])
        if failure is not None:
            deny(failure.status, (failure.message or "injected failure") + "\n", failure.headers)
            return
        if service not in ("git-upload-pack", "git-receive-pack"):
            deny(403, "Smart HTTP only: ask for ?service=git-upload-pack or git-receive-pack\n")
            return
        if (rest == "info/refs") != (h.command == "GET"):
            deny(405, "Method Not Allowed\n")
            return
        principal = self._principal(headers)
        issued = principal.issued
        if principal.kind not in ("token", "anonymous", "installation") or (
            issued is not None and not issued.alive
        ):
            deny(401, "Invalid username or token.\n", challenge)
            return
        auth = "anonymous" if principal.kind == "anonymous" else "token"
        actor = principal.login or self.login
        full_name = f"{unquote(match['owner'])}/{unquote(match['repo'])}"
        with self._lock:
            repo = self._repos.get(full_name.lower())
            if repo is not None and (repo.not_ready > 0 or (repo.private and auth != "token")):
                repo = None
            if repo is not None and issued is not None and not issued.reaches(repo.full_name):
                repo = None  # a token answers as if a repository out of its reach did not exist
            if issued is not None:
                can_push = issued.allows("contents", "write")
                can_pull = issued.allows("contents", "read")
            else:
                can_push = repo is not None and self._permissions(repo)["push"]
                can_pull = True
            can_push = can_push and repo is not None and not repo.archived

        def refuse(status: int, message: str, extra: Mapping[str, str] | None = None) -> None:
            if issued is not None:
                with self._lock:
                    issued.refused.append(f"{service} {full_name} -> {status}")
            deny(status, message, extra)

        if repo is None:  # GitHub asks anonymous clients to log in rather than reveal existence
            if auth == "anonymous":
                refuse(401, "Authentication required.\n", challenge)
            else:
                refuse(404, "Repository not found.\n")
            return
        if service == "git-receive-pack":
            if auth == "anonymous":
                refuse(401, "Authentication required to push.\n", challenge)
                return
            if not can_push:
                refuse(403, f"Permission to {repo.full_name}.git denied to {actor}.\n")
                return
        elif not can_pull:
            refuse(403, f"Permission to {repo.full_name}.git denied to {actor}.\n")
            return
        if issued is not None:
            with self._lock:
                issued.used_for.append(f"{service} {repo.full_name}")
        self._run_backend(h, record, repo, rest, query, body, actor if auth == "token" else "")

    def _run_backend(
        self,
        h: _Handler,
        record: dict[str, Any],
        repo: FakeRepo,
        rest: str,
        query: str,
        body: bytes,
        user: str,
    ) -> None:
        """Run ``git http-backend`` as a CGI and relay its answer (``user``: who, if anyone)."""
        config = {
            "http.receivepack": "true",
            "uploadpack.allowFilter": "true",  # partial clones, like GitHub
            "uploadpack.allowAnySHA1InWant": "true",  # fetch a commit by sha, like GitHub
            "receive.advertisePushOptions": "true",
        }
        env: dict[str, str] = {
            "GIT_PROJECT_ROOT": str(self._repos_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_HTTP_MAX_REQUEST_BUFFER": "512M",
            "PATH_INFO": f"/{repo.owner}/{repo.name}.git/{rest}",
            "REQUEST_METHOD": h.command,
            "QUERY_STRING": query,
            "CONTENT_TYPE": record["headers"].get("content-type", ""),
            "REMOTE_ADDR": "127.0.0.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "GIT_CONFIG_COUNT": str(len(config)),
        }
        for i, (key, value) in enumerate(config.items()):
            env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
        if h.command == "POST":
            env["CONTENT_LENGTH"] = str(len(body))
        if user:
            env["REMOTE_USER"] = user
        if "git-protocol" in record["headers"]:
            env["GIT_PROTOCOL"] = record["headers"]["git-protocol"]
        proc = self._git(self._repos_root, "http-backend", stdin=body, env=env, check=False)
        out = proc.stdout
        sep = out.find(b"\r\n\r\n")
        head, payload = (out[:sep], out[sep + 4 :]) if sep >= 0 else out.split(b"\n\n", 1)
        status, reason = 200, ""
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                code, _, reason = value.strip().partition(" ")
                status = int(code)
            elif name:
                headers[name.strip()] = value.strip()
        if proc.returncode != 0 and status == 200 and not payload:
            status, payload = 500, proc.stderr
        if rest == "git-receive-pack" and status == 200:
            with self._lock:
                repo.pushed_at = _now()
        record["status"] = status
        h.respond(status, headers, payload, reason)
