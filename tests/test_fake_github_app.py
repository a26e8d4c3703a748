"""The fake GitHub's App side, driven by the real PyGithub (``Auth.AppAuth``,
``GithubIntegration``) and the real git client.

Why: backspace's App mode is only as honest as the fake it is tested against. If the fake took
any JWT, or let an installation token reach a second repository or push with ``contents: read``,
a run that leaks scope would pass. Each rule GitHub enforces is asserted here, both the accepted
and the refused side, and every App answer is checked against GitHub's OpenAPI description.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from github import (
    Auth,
    Github,
    GithubException,
    GithubIntegration,
    UnknownObjectException,
)

from tests.fakes import github_openapi
from tests.fakes.github import FakeGitHub
from tests.fakes.github_app import JWT_MESSAGES, FakeApp, private_key_pem
from tests.fakes.github_hooks import signature
from tests.tls import TLS

PAT = "ghp_personal_token_of_alice"
FULL = {
    "contents": "write",
    "pull_requests": "write",
    "issues": "write",
    "metadata": "read",
}


@pytest.fixture(scope="module")
def rig() -> Iterator[dict[str, Any]]:
    """One fake per module: an App installed on two of acme's repositories, not on a third."""
    with FakeGitHub(token=PAT, login="alice") as gh:
        for name in ("acme/widgets", "acme/gadgets", "acme/outside", "beta/elsewhere"):
            gh.create_repo(name, files={"app.py": "print('hi')\n"}, private=True)
        app = gh.create_app(slug="backspace", permissions=FULL)
        installation = gh.install_app(app, "acme", ["widgets", "gadgets"])
        other = gh.create_app(slug="someone-else")
        gh.install_app(other, "beta")
        yield {"gh": gh, "app": app, "installation": installation, "other": other}


def integration(gh: FakeGitHub, app: FakeApp, key: str | None = None) -> GithubIntegration:
    auth = Auth.AppAuth(app.id, key or app.private_key_pem)
    return GithubIntegration(auth=auth, base_url=gh.api_url, retry=None)


def client(gh: FakeGitHub, token: str) -> Github:
    return Github(
        auth=Auth.Token(token),
        base_url=gh.api_url,
        retry=None,
        seconds_between_requests=None,
        seconds_between_writes=None,
    )


def app_jwt(app: FakeApp, key: str | None = None, **claims: Any) -> str:
    """A JWT as GitHub documents it (iat 60 s back, exp 5 min ahead), ``claims`` overriding;
    signed at the JWS level so that any claim (a numeric ``iss``) can be written."""
    now = int(time.time())
    payload = {"iat": now - 60, "exp": now + 300, "iss": str(app.id), **claims}
    body = json.dumps({k: v for k, v in payload.items() if v is not None}).encode()
    signing_key = loaded_key(key or app.private_key_pem)
    return jwt.api_jws.PyJWS().encode(body, signing_key, algorithm="RS256", headers={"typ": "JWT"})


@functools.cache
def loaded_key(pem: str) -> rsa.RSAPrivateKey:
    """The key of a PEM, parsed once: PyJWT parses a PEM string on every signature, and
    loading an RSA key (which checks it) costs about 60 ms of CPU; the signature is the same."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def call(
    gh: FakeGitHub, method: str, path: str, credential: str, scheme: str = "Bearer", **kw: Any
) -> httpx.Response:
    headers = {"Authorization": f"{scheme} {credential}", "Accept": "application/vnd.github+json"}
    return httpx.request(method, gh.api_url + path, headers=headers, timeout=10, **kw, verify=TLS)


def mint(
    rig: dict[str, Any],
    repositories: list[str] | None = None,
    permissions: dict[str, str] | None = None,
) -> str:
    """An installation token of the App, narrowed as asked."""
    body: dict[str, Any] = {}
    if repositories is not None:
        body["repositories"] = repositories
    if permissions is not None:
        body["permissions"] = permissions
    answer = call(
        rig["gh"],
        "POST",
        f"/app/installations/{rig['installation']}/access_tokens",
        app_jwt(rig["app"]),
        json=body,
    )
    assert answer.status_code == 201, answer.text
    token: str = answer.json()["token"]
    return token


def git(cwd: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    extra: list[str] = []
    if token is not None:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        extra = ["-c", f"http.extraHeader=Authorization: Basic {basic}"]
    return subprocess.run(
        ["git", *extra, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


# -- the App and its JWT ------------------------------------------------------------------


def test_app_and_its_bot_user(rig: dict[str, Any]) -> None:
    gh, app = rig["gh"], rig["app"]
    gi = integration(gh, app)
    answered = gi.get_app()
    assert (answered.id, answered.slug, answered.name) == (app.id, "backspace", "backspace")
    assert answered.raw_data["owner"]["login"] == "alice"
    assert answered.permissions == FULL
    bot = client(gh, PAT).get_user("backspace[bot]")
    assert (bot.login, bot.type, bot.id) == ("backspace[bot]", "Bot", app.bot_id)
    assert bot.id != app.id
    assert app.bot_email == f"{app.bot_id}+backspace[bot]@users.noreply.github.com"
    with pytest.raises(UnknownObjectException):
        client(gh, PAT).get_user("nobody-at-all")


def test_repository_installation_found_or_404(rig: dict[str, Any]) -> None:
    gh, app = rig["gh"], rig["app"]
    gi = integration(gh, app)
    assert gi.get_repo_installation("acme", "widgets").id == rig["installation"]
    assert gi.get_repo_installation("ACME", "Gadgets").id == rig["installation"]
    for owner, name in (("acme", "outside"), ("beta", "elsewhere"), ("acme", "missing")):
        with pytest.raises(UnknownObjectException) as caught:
            gi.get_repo_installation(owner, name)
        assert caught.value.data["message"] == "Not Found"
    # another App's JWT does not see backspace's installation, and vice versa
    assert integration(gh, rig["other"]).get_repo_installation("beta", "elsewhere").id
    with pytest.raises(UnknownObjectException):
        integration(gh, rig["other"]).get_repo_installation("acme", "widgets")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong key", JWT_MESSAGES["decode"]),
        ("expired", JWT_MESSAGES["expired"]),
        ("iat in the future", JWT_MESSAGES["issued_at"]),
        ("exp too far", JWT_MESSAGES["too_far"]),
        ("exp 10 min after a 2 min old iat", JWT_MESSAGES["too_far"]),
        ("iat not an integer", JWT_MESSAGES["issued_at"]),
        ("unknown iss", JWT_MESSAGES["issuer"]),
        ("no iss", JWT_MESSAGES["issuer"]),
        ("HS256 signed with the public key", JWT_MESSAGES["decode"]),
        ("alg none", JWT_MESSAGES["decode"]),
        ("garbage", JWT_MESSAGES["decode"]),
        ("tampered claims", JWT_MESSAGES["decode"]),
    ],
)
def test_jwt_refused_as_github_does(rig: dict[str, Any], case: str, message: str) -> None:
    gh, app = rig["gh"], rig["app"]
    now = int(time.time())
    good = app_jwt(app)
    forged = {
        "wrong key": app_jwt(app, key=private_key_pem(other=True)),
        "expired": app_jwt(app, iat=now - 700, exp=now - 100),
        "iat in the future": app_jwt(app, iat=now + 120, exp=now + 400),
        "exp too far": app_jwt(app, exp=now + 3600),
        "exp 10 min after a 2 min old iat": app_jwt(app, iat=now - 120, exp=now + 600 - 1),
        "iat not an integer": app_jwt(app, iat=f"{now - 60}"),
        "unknown iss": app_jwt(app, iss="999999"),
        "no iss": app_jwt(app, iss=None),
        "HS256 signed with the public key": _hs256(app, now),
        "alg none": _unsigned(app, now),
        "garbage": "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiIxIn0.not-a-signature",
        "tampered claims": _tamper(good, app),
    }[case]
    for path in ("/app", "/repos/acme/widgets/installation"):
        answer = call(gh, "GET", path, forged)
        assert answer.status_code == 401, (case, answer.text)
        assert answer.json()["message"] == message
    mint_answer = call(
        gh, "POST", f"/app/installations/{rig['installation']}/access_tokens", forged, json={}
    )
    assert mint_answer.status_code == 401 and mint_answer.json()["message"] == message


def _hs256(app: FakeApp, now: int) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the (public) RSA key."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"iat": now - 60, "exp": now + 300, "iss": str(app.id)}).encode())
    mac = hmac.new(app.public_key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def _unsigned(app: FakeApp, now: int) -> str:
    """``alg: none``: a JWT with no signature at all."""
    head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    claims = {"iat": now - 60, "exp": now + 300, "iss": str(app.id)}
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{body}."


def _tamper(token: str, app: FakeApp) -> str:
    """A genuine JWT whose claims were swapped for another App id, signature kept."""
    head, _, sig = token.split(".")
    now = int(time.time())
    claims = {"iat": now - 60, "exp": now + 300, "iss": str(app.id), "admin": True}
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{body}.{sig}"


def test_jwt_accepted_with_iss_as_number_or_string_and_clock_skew(rig: dict[str, Any]) -> None:
    gh, app = rig["gh"], rig["app"]
    now = int(time.time())
    for token in (
        app_jwt(app, iss=app.id),
        app_jwt(app, iss=str(app.id)),
        app_jwt(app, iat=now + 30, exp=now + 300),  # our clock 30 s behind GitHub's: fine
        app_jwt(app, iat=now - 60, exp=now + 540),  # PyGithub's longest: 10 min after iat
    ):
        answer = call(gh, "GET", "/app", token)
        assert answer.status_code == 200, answer.text
        assert answer.json()["id"] == app.id


def test_github_clock_apart_from_ours(rig: dict[str, Any]) -> None:
    """``clock_offset``: GitHub's clock ahead (our JWT expired) or behind (issued in its future)."""
    gh, app = rig["gh"], rig["app"]
    gi = integration(gh, app)
    try:
        for offset, message in ((3600, "expired"), (-3600, "issued_at")):
            gh.clock_offset = offset
            with pytest.raises(GithubException) as caught:
                gi.get_repo_installation("acme", "widgets")
            assert caught.value.status == 401
            assert caught.value.data["message"] == JWT_MESSAGES[message]
        gh.clock_offset = -50  # within GitHub's tolerance of PyGithub's 60 s back-dating
        assert gi.get_repo_installation("acme", "widgets").id == rig["installation"]
    finally:
        gh.clock_offset = 0


def test_pygithub_with_the_wrong_key_is_refused(rig: dict[str, Any]) -> None:
    gh, app = rig["gh"], rig["app"]
    gi = integration(gh, app, key=private_key_pem(other=True))
    with pytest.raises(GithubException) as caught:
        gi.get_repo_installation("acme", "widgets")
    assert caught.value.status == 401
    assert caught.value.data["message"] == JWT_MESSAGES["decode"]


def test_jwt_only_on_app_routes_and_only_a_jwt_there(rig: dict[str, Any]) -> None:
    gh, app = rig["gh"], rig["app"]
    token = mint(rig)
    # a JWT is not a key to the repositories
    for path in ("/repos/acme/widgets", "/user", "/repos/acme/widgets/pulls"):
        answer = call(gh, "GET", path, app_jwt(app))
        assert answer.status_code == 403, (path, answer.text)
        assert answer.json()["message"] == "Resource not accessible by integration"
    # an installation token (or a personal one) is not a JWT
    for credential, scheme in ((token, "token"), (token, "Bearer"), (PAT, "token")):
        for method, path in (
            ("GET", "/app"),
            ("GET", "/repos/acme/widgets/installation"),
            ("POST", f"/app/installations/{rig['installation']}/access_tokens"),
        ):
            answer = call(gh, method, path, credential, scheme=scheme, json={})
            assert answer.status_code == 401, (path, answer.text)
            assert answer.json()["message"] == JWT_MESSAGES["decode"]


# -- installation tokens ----------------------------------------------------------------


def test_token_scoped_to_repositories_and_permissions(rig: dict[str, Any]) -> None:
    gh, app = rig["gh"], rig["app"]
    wanted = {"contents": "write", "pull_requests": "write", "metadata": "read"}
    before = time.time()
    answer = call(
        gh,
        "POST",
        f"/app/installations/{rig['installation']}/access_tokens",
        app_jwt(app),
        json={"repositories": ["widgets"], "permissions": wanted},
    )
    assert answer.status_code == 201, answer.text
    data = answer.json()
    assert re.fullmatch(r"ghs_[A-Za-z0-9]{36}", data["token"])
    assert data["permissions"] == wanted
    assert data["repository_selection"] == "selected"
    assert [r["full_name"] for r in data["repositories"]] == ["acme/widgets"]
    issued = gh.issued_token(data["token"])
    assert issued in gh.issued_tokens
    assert issued.repositories == ["acme/widgets"] and issued.permissions == wanted
    assert issued.revoked is None and issued.used_for == []
    assert before + 3600 - 5 <= issued.expires <= time.time() + 3600
    assert data["expires_at"] == issued.expires_at
    # by id, and without narrowing: the whole installation
    by_id = call(
        gh,
        "POST",
        f"/app/installations/{rig['installation']}/access_tokens",
        app_jwt(app),
        json={"repository_ids": [gh.repo("acme/gadgets").id]},
    ).json()
    assert gh.issued_token(by_id["token"]).repositories == ["acme/gadgets"]
    assert by_id["permissions"] == FULL
    whole = integration(gh, app).get_access_token(rig["installation"])  # PyGithub's own call
    assert gh.issued_token(whole.token).repositories is None
    assert whole.permissions == FULL


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"permissions": {"administration": "write"}}, 422, "not granted"),
        ({"permissions": {"metadata": "write"}}, 422, "not granted"),
        ({"permissions": {"contents": "admin"}}, 422, "not granted"),
        ({"repositories": ["outside"]}, 422, "not accessible to the parent installation"),
        ({"repositories": ["widgets", "missing"]}, 422, "not accessible to the parent"),
        ({"repository_ids": [999999]}, 422, "not accessible to the parent installation"),
        ({"repositories": "widgets"}, 422, "Invalid request"),
    ],
)
def test_token_asking_for_more_than_installed_is_422(
    rig: dict[str, Any], body: dict[str, Any], status: int, message: str
) -> None:
    gh, app = rig["gh"], rig["app"]
    count = len(gh.issued_tokens)
    answer = call(
        gh,
        "POST",
        f"/app/installations/{rig['installation']}/access_tokens",
        app_jwt(app),
        json=body,
    )
    assert answer.status_code == status, answer.text
    assert message in answer.json()["message"]
    assert len(gh.issued_tokens) == count


def test_pygithub_missing_permission_message(rig: dict[str, Any]) -> None:
    gh, app = rig["gh"], rig["app"]
    with pytest.raises(GithubException) as caught:
        integration(gh, app).get_access_token(rig["installation"], {"workflows": "write"})
    assert caught.value.status == 422
    assert (
        caught.value.data["message"]
        == "The permissions requested are not granted to this installation."
    )


def test_another_apps_installation_is_404(rig: dict[str, Any]) -> None:
    gh = rig["gh"]
    beta = integration(gh, rig["other"]).get_repo_installation("beta", "elsewhere").id
    answer = call(
        gh, "POST", f"/app/installations/{beta}/access_tokens", app_jwt(rig["app"]), json={}
    )
    assert answer.status_code == 404


def test_token_reaches_only_its_repository(rig: dict[str, Any]) -> None:
    """The attack: a token minted for one repository used on a second one the App may reach."""
    gh = rig["gh"]
    token = mint(rig, ["widgets"], {"contents": "write", "metadata": "read"})
    g = client(gh, token)
    assert g.get_repo("acme/widgets").full_name == "acme/widgets"
    for name in ("acme/gadgets", "acme/outside", "beta/elsewhere"):
        with pytest.raises(UnknownObjectException):
            g.get_repo(name)
        answer = call(gh, "GET", f"/repos/{name}/branches/main", token, scheme="token")
        assert answer.status_code == 404 and answer.json()["message"] == "Not Found"
    issued = gh.issued_token(token)
    assert issued.used_for == ["GET /repos/acme/widgets"]
    assert "GET /repos/acme/gadgets -> 404" in issued.refused


def test_token_permissions_per_route(rig: dict[str, Any], tmp_path: Path) -> None:
    gh = rig["gh"]
    readonly = mint(rig, ["widgets"], {"contents": "read"})
    # no metadata: read, no repository: a token must ask for what it uses
    answer = call(gh, "GET", "/repos/acme/widgets", readonly, scheme="token")
    assert answer.status_code == 403
    assert answer.json()["message"] == "Resource not accessible by integration"
    assert answer.headers["x-accepted-github-permissions"] == "metadata=read"
    assert call(gh, "GET", "/repos/acme/widgets/branches/main", readonly, "token").is_success
    assert call(gh, "GET", "/user", readonly, "token").status_code == 403
    assert call(gh, "GET", "/repos/acme/widgets/pulls", readonly, "token").status_code == 403
    # contents: write pushes a branch, pull_requests is still needed to open the PR
    writer = mint(rig, ["widgets"], {"contents": "write", "metadata": "read"})
    url = f"{gh.git_url}/acme/widgets.git"
    assert git(tmp_path, "clone", "-q", url, "w", token=writer).returncode == 0
    work = tmp_path / "w"
    (work / "app.py").write_text("print('bye')\n")
    git(work, "commit", "-qam", "change")
    assert (
        git(work, "push", "-q", "origin", "HEAD:refs/heads/feature", token=writer).returncode == 0
    )
    pr = {"title": "t", "head": "feature", "base": "main"}
    refused = call(gh, "POST", "/repos/acme/widgets/pulls", writer, "token", json=pr)
    assert refused.status_code == 403
    assert refused.headers["x-accepted-github-permissions"] == "pull_requests=write"
    prs = mint(rig, ["widgets"], {"pull_requests": "write", "metadata": "read"})
    pull = (
        client(gh, prs).get_repo("acme/widgets").create_pull(title="t", head="feature", base="main")
    )
    assert pull.user.login == "backspace[bot]" and pull.user.type == "Bot"
    # a comment on the pull request: pull_requests stands in for issues, as on GitHub
    comment = pull.as_issue().create_comment("done")
    assert comment.user.login == "backspace[bot]"
    # …but not on a plain issue, which takes issues: write
    number = gh.create_issue("acme/widgets", "bug", user="alice")
    path = f"/repos/acme/widgets/issues/{number}/comments"
    assert call(gh, "POST", path, prs, "token", json={"body": "x"}).status_code == 403
    reaction = f"/repos/acme/widgets/issues/comments/{comment.id}/reactions"
    assert (
        call(gh, "POST", reaction, readonly, "token", json={"content": "eyes"}).status_code == 403
    )
    issues = mint(rig, ["widgets"], {"issues": "write"})
    assert call(gh, "POST", path, issues, "token", json={"body": "x"}).status_code == 201
    assert call(gh, "POST", reaction, issues, "token", json={"content": "eyes"}).status_code == 201
    assert gh.reactions[-1]["user"] == "backspace[bot]"


def test_git_scope_fetch_push_and_second_repository(rig: dict[str, Any], tmp_path: Path) -> None:
    """The attacks on git smart HTTP: a contents:read token pushing, a token on a second
    repository, a token without contents fetching."""
    gh = rig["gh"]
    widgets, gadgets = f"{gh.git_url}/acme/widgets.git", f"{gh.git_url}/acme/gadgets.git"
    reader = mint(rig, ["widgets"], {"contents": "read"})
    assert git(tmp_path, "clone", "-q", widgets, "r", token=reader).returncode == 0
    work = tmp_path / "r"
    (work / "new.txt").write_text("x\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "x")
    before = gh.branches("acme/widgets")
    push = git(work, "push", "origin", "HEAD:refs/heads/sneaky", token=reader)
    assert push.returncode != 0
    assert "Permission to acme/widgets.git denied to backspace[bot]" in push.stderr
    assert gh.branches("acme/widgets") == before
    second = git(tmp_path, "clone", "-q", gadgets, "g", token=reader)
    assert second.returncode != 0 and "Repository not found" in second.stderr
    assert not (tmp_path / "g" / "app.py").exists()
    nothing = mint(rig, ["widgets"], {"issues": "read"})
    assert git(tmp_path, "clone", "-q", widgets, "n", token=nothing).returncode != 0
    issued = gh.issued_token(reader)
    assert "git-upload-pack acme/widgets" in issued.used_for
    assert not any("receive-pack" in use for use in issued.used_for)
    assert "git-receive-pack acme/widgets -> 403" in issued.refused
    assert any(r.startswith("git-upload-pack acme/gadgets -> 404") for r in issued.refused)


def test_revoked_and_expired_tokens_are_dead(rig: dict[str, Any], tmp_path: Path) -> None:
    gh = rig["gh"]
    url = f"{gh.git_url}/acme/widgets.git"
    token = mint(rig, ["widgets"], {"contents": "read", "metadata": "read"})
    assert call(gh, "GET", "/repos/acme/widgets", token, "token").status_code == 200
    assert call(gh, "DELETE", "/installation/token", token, "token").status_code == 204
    issued = gh.issued_token(token)
    assert issued.revoked is not None and not issued.alive
    answer = call(gh, "GET", "/repos/acme/widgets", token, "token")
    assert answer.status_code == 401 and answer.json()["message"] == "Bad credentials"
    assert call(gh, "DELETE", "/installation/token", token, "token").status_code == 401
    assert git(tmp_path, "clone", "-q", url, "a", token=token).returncode != 0
    # DELETE /installation/token is for installation tokens only
    assert call(gh, "DELETE", "/installation/token", PAT, "token").status_code == 403
    assert call(gh, "DELETE", "/installation/token", app_jwt(rig["app"])).status_code == 403
    # an hour later
    late = mint(rig, ["widgets"], {"contents": "read", "metadata": "read"})
    gh.issued_token(late).expires = time.time() - 1
    answer = call(gh, "GET", "/repos/acme/widgets", late, "token")
    assert answer.status_code == 401 and answer.json()["message"] == "Bad credentials"
    assert git(tmp_path, "clone", "-q", url, "b", token=late).returncode != 0


def test_pygithub_installation_auth_and_revoke(rig: dict[str, Any]) -> None:
    """The path backspace takes: PyGithub's AppInstallationAuth, then a revoke by the token."""
    gh, app = rig["gh"], rig["app"]
    auth = Auth.AppAuth(app.id, app.private_key_pem).get_installation_auth(
        rig["installation"], {"contents": "read", "metadata": "read"}
    )
    g = Github(auth=auth, base_url=gh.api_url, retry=None)
    assert g.get_repo("acme/gadgets").private
    token = auth.token
    g.requester.requestJsonAndCheck("DELETE", "/installation/token")
    assert gh.issued_token(token).revoked is not None


def test_personal_token_unchanged(rig: dict[str, Any]) -> None:
    gh = rig["gh"]
    g = client(gh, PAT)
    assert g.get_user().login == "alice"
    assert {g.get_repo(n).full_name for n in ("acme/outside", "beta/elsewhere")} == {
        "acme/outside",
        "beta/elsewhere",
    }


def test_every_route_declares_what_a_token_needs(rig: dict[str, Any]) -> None:
    """Fail closed: a route added to the fake without a scope is refused to installation tokens,
    and this test names it so the author decides."""
    gh = rig["gh"]
    undeclared = [
        f"{method} {pattern.pattern}"
        for method, pattern, handler in gh._routes
        if handler not in gh._scopes and handler not in gh._app_routes
    ]
    assert undeclared == []


class _Receiver(BaseHTTPRequestHandler):
    """Records each POST (headers, body) and answers 204, like a webhook endpoint."""

    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def test_app_webhook_hears_installed_repositories_with_installation(
    rig: dict[str, Any], openapi: ModuleType
) -> None:
    gh, app = rig["gh"], rig["app"]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        gh.app_webhook(app, url, "app-secret", {"issue_comment"})
        inside = gh.create_issue("acme/widgets", "bug", user="alice")
        outside = gh.create_issue("acme/outside", "bug", user="alice")
        gh.comment("acme/outside", outside, "@backspace fix", user="alice")
        gh.comment("acme/widgets", inside, "@backspace fix", user="alice")
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Receiver.received) == 1  # nothing from the repository it is not installed on
    headers, body = _Receiver.received[0]
    assert headers["x-hub-signature-256"] == signature("app-secret", body)
    assert headers["x-github-hook-installation-target-type"] == "integration"
    assert headers["x-github-hook-installation-target-id"] == str(app.id)
    payload = json.loads(body)
    assert payload["installation"]["id"] == rig["installation"]
    assert payload["repository"]["full_name"] == "acme/widgets"
    assert openapi.webhook_errors("webhook-issue-comment-created", payload) == []


# -- GitHub's schema -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi() -> ModuleType:
    if not github_openapi.spec_available():
        message = f"GitHub's OpenAPI description is missing ({github_openapi.SPEC_PATH}): npm ci"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return github_openapi


def test_app_answers_and_requests_match_github_openapi(
    rig: dict[str, Any], openapi: ModuleType
) -> None:
    """Runs last in the module: every App request and answer so far, against GitHub's schema."""
    gh = rig["gh"]
    seen: set[str] = set()
    app_paths = re.compile(
        r"^/api/v3/(app($|/)|installation/|users/|repos/[^/]+/[^/]+/installation)"
    )
    for record in gh.requests:
        path, method, status = record["path"], record["method"], record["status"]
        if not app_paths.match(path):
            continue
        if record["body"] is not None:
            assert openapi.request_errors(method, path, record["body"]) == [] or status == 422
        try:
            schema = openapi.response_schema(method, path, status)
        except openapi.OperationNotFound:
            assert status >= 400, f"undocumented success {method} {path} {status}"
            continue
        if schema is None:
            assert record["response"] is None, f"{method} {path} {status} has no documented body"
        else:
            openapi.validate_response(method, path, status, record["response"])
        seen.add(f"{openapi.find_operation(method, path)[1]['operationId']} {status}")
    assert {
        "apps/get-authenticated 200",
        "apps/get-repo-installation 200",
        "apps/get-repo-installation 404",
        "apps/create-installation-access-token 201",
        "apps/create-installation-access-token 422",
        "apps/create-installation-access-token 404",
        "apps/revoke-installation-access-token 204",
        "users/get-by-username 200",
    } <= seen
