"""The fake GitHub (tests/fakes/github.py) against the real clients that will talk to it.

Why: the service's publishing tests trust this fake, so it is checked three ways:
the real PyGithub drives a realistic publish flow through it; every JSON answer of
that flow is validated against GitHub's own OpenAPI description (the npm package
``@octokit/openapi``, skipped when not installed); and the real git client clones
and pushes through its smart HTTP endpoint (``git http-backend``).
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from github import (
    Auth,
    BadCredentialsException,
    Github,
    GithubException,
    RateLimitExceededException,
    UnknownObjectException,
)

from tests.fakes import github_openapi
from tests.fakes.github import FakeGitHub
from tests.tls import TLS

TOKEN = "ghp_FakeToken0123456789abcdefABCDEF0123"
LOGIN = "backspace-bot"
AUTH_HEADER = (
    "Authorization: Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
)


def client(gh: FakeGitHub, token: str = TOKEN, **kwargs: Any) -> Github:
    """PyGithub configured like the service's tests must: no retries, no pacing sleeps."""
    return Github(
        auth=Auth.Token(token),
        base_url=gh.api_url,
        retry=None,
        seconds_between_requests=None,
        seconds_between_writes=None,
        **kwargs,
    )


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    with FakeGitHub(token=TOKEN, login=LOGIN) as fake:
        yield fake


@pytest.fixture(scope="session")
def openapi() -> ModuleType:
    if not github_openapi.spec_available():
        message = (
            f"GitHub's OpenAPI description is not installed ({github_openapi.SPEC_PATH}); "
            "run `npm ci` at the repository root (scripts/bootstrap --dev does)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)  # CI set itself up with scripts/test: a missing spec is a bug
        pytest.skip(message)
    github_openapi.load_spec()
    return github_openapi


# -- the realistic PyGithub flow ---------------------------------------------------


@pytest.fixture(scope="module")
def flow() -> Iterator[dict[str, Any]]:
    """Run a publish flow once with the real PyGithub; tests below check what it saw."""
    seen: dict[str, Any] = {}
    with FakeGitHub(token=TOKEN, login=LOGIN) as gh:
        seen["gh"] = gh
        gh.create_repo(
            "acme/widgets",
            files={"app.py": "def signup(name):\n    return name\n"},
            default_branch="trunk",
            branches={"develop": {"dev.txt": "wip\n"}},
        )
        gh.create_repo("acme/secret", private=True, draft_supported=False)
        gh.create_repo("upstream/lib", files={"lib.py": "VERSION = 1\n"}, push=False)
        g = client(gh)

        seen["user"] = g.get_user().login
        repo = g.get_repo("acme/widgets")
        seen["repo"] = repo
        seen["branch"] = repo.get_branch(repo.default_branch)
        seen["develop_sha"] = repo.get_git_ref("heads/develop").object.sha

        # Pull requests: draft, duplicate, lookup by head, edit.
        gh.commit_files(
            "acme/widgets", "backspace/fix-signup", {"app.py": "fixed\n"}, start="trunk"
        )
        pr = repo.create_pull(
            base="trunk", head="backspace/fix-signup", title="Fix signup", body="body", draft=True
        )
        seen["pr"] = pr
        with pytest.raises(GithubException) as duplicate:
            repo.create_pull(base="trunk", head="backspace/fix-signup", title="again", body="")
        seen["duplicate"] = duplicate.value
        seen["found"] = list(
            repo.get_pulls(state="open", head="acme:backspace/fix-signup", base="trunk")
        )
        pr.edit(title="Fix signup validation", body="Updated body")
        seen["edited"] = repo.get_pull(pr.number)
        with pytest.raises(GithubException) as no_commits:
            repo.create_pull(base="trunk", head="trunk", title="nothing")
        seen["no_commits"] = no_commits.value
        with pytest.raises(GithubException) as bad_head:
            repo.create_pull(base="trunk", head="no-such-branch", title="x")
        seen["bad_head"] = bad_head.value

        # Pagination: 6 PRs, 2 per page.
        for i in range(5):
            gh.commit_files("acme/widgets", f"feature-{i}", {f"f{i}.txt": "x"}, start="trunk")
            repo.create_pull(base="trunk", head=f"feature-{i}", title=f"Feature {i}", draft=False)
        small_pages = client(gh, per_page=2).get_repo("acme/widgets").get_pulls(state="all")
        seen["paged"] = [p.number for p in small_pages]
        seen["total"] = small_pages.totalCount

        # Drafts unsupported (private repo on a free plan): retry without draft.
        secret = g.get_repo("acme/secret")
        gh.commit_files("acme/secret", "change", {"s.txt": "s"})
        with pytest.raises(GithubException) as no_draft:
            secret.create_pull(base="main", head="change", title="Secret", draft=True)
        seen["no_draft"] = no_draft.value
        seen["secret_pr"] = secret.create_pull(base="main", head="change", title="Secret")

        # Forking: async creation, idempotent, sync with upstream, cross-repo PR.
        upstream = g.get_repo("upstream/lib")
        seen["upstream_push"] = upstream.permissions.push
        gh.fork_ready_after = 2
        fork = upstream.create_fork()
        seen["fork_created"] = fork
        attempts = 0
        while True:
            attempts += 1
            try:
                ready = g.get_repo(fork.full_name)
                break
            except UnknownObjectException:
                assert attempts < 10
        seen["fork_attempts"] = attempts
        seen["fork"] = ready
        seen["fork_again"] = upstream.create_fork().full_name
        seen["upstream_moved"] = gh.commit_files(
            "upstream/lib", "main", {"lib.py": "VERSION = 2\n"}
        )
        seen["sync"] = ready.merge_upstream("main")
        seen["sync_again"] = ready.merge_upstream("main")
        gh.commit_files(fork.full_name, "fix-typo", {"lib.py": "VERSION = 3\n"})
        seen["fork_pr"] = upstream.create_pull(
            base="main", head=f"{LOGIN}:fix-typo", title="Fix typo", maintainer_can_modify=True
        )
        seen["fork_pr_found"] = [
            p.number for p in upstream.get_pulls(state="open", head=f"{LOGIN}:fix-typo")
        ]
        gh.commit_files(fork.full_name, "main", {"mine.txt": "fork only\n"})
        gh.commit_files("upstream/lib", "main", {"theirs.txt": "upstream only\n"})
        with pytest.raises(GithubException) as diverged:
            ready.merge_upstream("main")
        seen["diverged"] = diverged.value

        # Error mapping to PyGithub's exception classes.
        with pytest.raises(BadCredentialsException) as bad_token:
            client(gh, token="ghp_wrong").get_repo("acme/widgets")
        seen["bad_token"] = bad_token.value
        with pytest.raises(UnknownObjectException) as missing:
            g.get_repo("acme/no-such-repo")
        seen["missing"] = missing.value
        gh.fail(
            "GET",
            r"/repos/acme/widgets$",
            403,
            "API rate limit exceeded for user ID 1.",
            headers={"x-ratelimit-remaining": "0"},
        )
        with pytest.raises(RateLimitExceededException) as limited:
            g.get_repo("acme/widgets")
        seen["limited"] = limited.value
        gh.fail("GET", r"/repos/acme/widgets$", 500)
        with pytest.raises(GithubException) as broken:
            g.get_repo("acme/widgets")
        seen["broken"] = broken.value
        seen["recovered"] = g.get_repo("acme/widgets").full_name
        seen["pulls"] = gh.pulls("acme/widgets")
        seen["fork_branches"] = gh.branches(fork.full_name)
        seen["upstream_branches"] = gh.branches("upstream/lib")
        yield seen


def test_flow_repository_branch_and_ref(flow: dict[str, Any]) -> None:
    gh: FakeGitHub = flow["gh"]
    repo = flow["repo"]
    assert flow["user"] == LOGIN
    assert repo.full_name == "acme/widgets"
    assert repo.default_branch == "trunk"
    assert repo.permissions.push is True and repo.permissions.admin is False
    assert repo.clone_url == f"{gh.git_url}/acme/widgets.git"
    assert repo.html_url == f"{gh.git_url}/acme/widgets"
    assert (repo.private, repo.fork, repo.archived, repo.owner.login) == (
        False,
        False,
        False,
        "acme",
    )
    assert flow["branch"].name == "trunk"
    trunk = subprocess.run(
        ["git", "--git-dir", str(gh.bare_path("acme/widgets")), "rev-parse", "refs/heads/trunk"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert flow["branch"].commit.sha == trunk
    assert flow["develop_sha"] != trunk


def test_flow_pull_requests(flow: dict[str, Any]) -> None:
    gh: FakeGitHub = flow["gh"]
    pr = flow["pr"]
    assert (pr.number, pr.draft, pr.state) == (1, True, "open")
    assert (pr.head.ref, pr.base.ref, pr.head.label) == (
        "backspace/fix-signup",
        "trunk",
        "acme:backspace/fix-signup",
    )
    assert pr.html_url == f"{gh.git_url}/acme/widgets/pull/1"
    assert pr.head.sha == gh.branches("acme/widgets")["backspace/fix-signup"]
    assert pr.commits == 1 and pr.changed_files == 1

    duplicate = flow["duplicate"]
    assert duplicate.status == 422
    assert duplicate.data["errors"][0]["message"] == (
        "A pull request already exists for acme:backspace/fix-signup."
    )
    assert [p.number for p in flow["found"]] == [1]
    assert flow["edited"].title == "Fix signup validation"
    assert flow["edited"].body == "Updated body"
    assert flow["no_commits"].status == 422
    assert flow["no_commits"].data["errors"][0]["message"] == "No commits between trunk and trunk"
    assert flow["bad_head"].status == 422
    assert flow["bad_head"].data["errors"][0] == {
        "resource": "PullRequest",
        "code": "invalid",
        "field": "head",
    }
    assert flow["no_draft"].status == 422
    assert flow["no_draft"].data["errors"][0]["message"] == (
        "Draft pull requests are not supported in this repository."
    )
    assert flow["secret_pr"].draft is False

    # Pagination followed GitHub's Link header: newest first, three pages of two.
    assert flow["paged"] == [6, 5, 4, 3, 2, 1]
    assert flow["total"] == 6
    pages = [
        r["query"].get("page")
        for r in gh.requests
        if r["path"].endswith("/repos/acme/widgets/pulls") and r["query"].get("per_page") == "2"
    ]
    assert pages == [None, "2", "3"]

    recorded = {p["number"]: p for p in flow["pulls"]}
    assert recorded[1]["title"] == "Fix signup validation"
    assert recorded[1]["draft"] is True and recorded[2]["draft"] is False
    assert recorded[1]["head"]["repo"]["full_name"] == "acme/widgets"


def test_flow_fork(flow: dict[str, Any]) -> None:
    gh: FakeGitHub = flow["gh"]
    assert flow["upstream_push"] is False
    created, fork = flow["fork_created"], flow["fork"]
    assert created.full_name == fork.full_name == f"{LOGIN}/lib"
    assert flow["fork_attempts"] == 3  # fork_ready_after=2: two 404s, then the fork
    assert fork.fork is True and fork.parent.full_name == "upstream/lib"
    assert fork.source.full_name == "upstream/lib"
    assert fork.permissions.push is True
    assert fork.clone_url == f"{gh.git_url}/{LOGIN}/lib.git"
    assert flow["fork_again"] == fork.full_name
    fork_posts = [r for r in gh.requests if r["method"] == "POST" and r["path"].endswith("/forks")]
    assert [r["status"] for r in fork_posts] == [202, 202]

    assert flow["sync"].merge_type == "fast-forward"
    assert flow["sync"].base_branch == "upstream:main"
    assert flow["sync_again"].merge_type == "none"
    assert flow["diverged"].status == 409

    fork_pr = flow["fork_pr"]
    assert fork_pr.head.label == f"{LOGIN}:fix-typo"
    assert fork_pr.head.repo.full_name == f"{LOGIN}/lib"
    assert fork_pr.base.repo.full_name == "upstream/lib"
    assert fork_pr.head.sha == flow["fork_branches"]["fix-typo"]
    assert flow["fork_pr_found"] == [fork_pr.number]
    assert flow["fork_branches"]["main"] != flow["upstream_branches"]["main"]


def test_flow_errors_map_to_pygithub_exceptions(flow: dict[str, Any]) -> None:
    assert flow["bad_token"].status == 401
    assert flow["missing"].status == 404
    assert flow["missing"].data["message"] == "Not Found"
    limited = flow["limited"]
    assert limited.status == 403 and limited.headers["x-ratelimit-remaining"] == "0"
    assert flow["broken"].status == 500
    assert flow["recovered"] == "acme/widgets"  # each injected failure fired once


def test_flow_wire_rules(flow: dict[str, Any]) -> None:
    """What PyGithub relies on: absolute URLs on the fake's host, no GET 202, rate headers."""
    gh: FakeGitHub = flow["gh"]
    rest = [r for r in gh.requests if r["path"].startswith("/api/v3/")]
    assert rest and all(r["status"] != 202 for r in rest if r["method"] == "GET")
    assert all(r["headers"]["authorization"] == f"token {TOKEN}" for r in rest[:3])
    not_api = {"html_url", "clone_url", "svn_url", "avatar_url", "diff_url", "patch_url", "href"}

    def walk(node: Any) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str) and (
                    key == "url" or key.endswith("_url") or key == "href"
                ):
                    yield key, value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    checked = 0
    for record in rest:
        for key, value in walk(record["response"]):
            if key in ("git_url", "ssh_url", "documentation_url"):
                continue
            prefix = gh.git_url + "/" if key in not_api else gh.api_url + "/"
            assert value.startswith(prefix), (key, value)
            checked += 1
    assert checked > 500


def test_flow_responses_match_github_openapi(flow: dict[str, Any], openapi: ModuleType) -> None:
    """Every JSON answer of the flow validates against the schema GitHub documents."""
    gh: FakeGitHub = flow["gh"]
    operations: set[str] = set()
    for record in gh.requests:
        if not record["path"].startswith("/api/v3/") or record["response"] is None:
            continue
        method, path, status = record["method"], record["path"], record["status"]
        if method == "GET":  # legacy alias documented as git/ref
            path = path.replace("/git/refs/", "/git/ref/")
        try:
            schema = openapi.response_schema(method, path, status)
        except openapi.OperationNotFound:
            assert status >= 400, f"undocumented success {method} {path} {status}"
            continue  # e.g. 401/500 on repos/get: GitHub does not document those bodies
        if schema is None:
            assert status >= 400, f"{method} {path} {status} should have no body"
            continue
        openapi.validate_response(method, path, status, record["response"])
        operations.add(f"{openapi.find_operation(method, path)[1]['operationId']} {status}")
    assert {
        "users/get-authenticated 200",
        "repos/get 200",
        "repos/get 404",
        "repos/get 403",
        "repos/get-branch 200",
        "git/get-ref 200",
        "pulls/create 201",
        "pulls/create 422",
        "pulls/list 200",
        "pulls/get 200",
        "pulls/update 200",
        "repos/create-fork 202",
        "repos/merge-upstream 200",
    } <= operations


def test_openapi_validator_rejects_missing_and_mistyped_fields(
    gh: FakeGitHub, openapi: ModuleType
) -> None:
    gh.create_repo("acme/widgets")
    body = httpx.get(
        f"{gh.api_url}/repos/acme/widgets", headers={"Authorization": f"token {TOKEN}"}, verify=TLS
    ).json()
    assert openapi.validation_errors("GET", "/repos/acme/widgets", 200, body) == []
    del body["node_id"]
    body["owner"]["id"] = "1"
    body["description"] = None  # nullable: still fine
    errors = openapi.validation_errors("GET", "/api/v3/repos/acme/widgets", 200, body)
    assert errors == [
        "(root): 'node_id' is a required property",
        "owner/id: '1' is not of type 'integer'",
    ]
    with pytest.raises(openapi.OperationNotFound):
        openapi.find_operation("GET", "/repos/acme/widgets/git/refs/heads/main")


# -- REST details with a raw HTTP client ---------------------------------------------


def test_link_header_is_exactly_githubs(gh: FakeGitHub) -> None:
    gh.create_repo("acme/widgets")
    for i in range(5):
        gh.commit_files("acme/widgets", f"b{i}", {f"{i}.txt": "x"})
        client(gh).get_repo("acme/widgets").create_pull(base="main", head=f"b{i}", title=str(i))
    url = f"{gh.api_url}/repos/acme/widgets/pulls"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    middle = httpx.get(
        url, params={"state": "open", "per_page": 2, "page": 2}, headers=auth, verify=TLS
    )
    assert [p["number"] for p in middle.json()] == [3, 2]
    base = f"{url}?state=open&per_page=2&page="
    assert middle.headers["link"] == (
        f'<{base}1>; rel="prev", <{base}3>; rel="next", <{base}3>; rel="last", <{base}1>; rel="first"'
    )
    single = httpx.get(url, headers=auth, verify=TLS)
    assert len(single.json()) == 5 and "link" not in single.headers
    filtered = httpx.get(
        url, params={"head": "b1"}, headers=auth, verify=TLS
    )  # no owner: ignored, like GitHub
    assert len(filtered.json()) == 5
    assert [
        p["head"]["ref"]
        for p in httpx.get(url, params={"head": "acme:b1"}, headers=auth, verify=TLS).json()
    ] == ["b1"]


def test_auth_rules_and_headers(gh: FakeGitHub) -> None:
    gh.create_repo("acme/public")
    gh.create_repo("acme/private", private=True)
    api = gh.api_url
    anonymous = httpx.get(f"{api}/repos/acme/public", verify=TLS)
    assert anonymous.status_code == 200 and "permissions" not in anonymous.json()
    assert httpx.get(f"{api}/repos/acme/private", verify=TLS).status_code == 404
    assert (
        httpx.get(
            f"{api}/repos/acme/private", headers={"Authorization": f"token {TOKEN}"}, verify=TLS
        ).status_code
        == 200
    )
    wrong = httpx.get(
        f"{api}/repos/acme/public", headers={"Authorization": "token nope"}, verify=TLS
    )
    assert wrong.status_code == 401 and wrong.json()["message"] == "Bad credentials"
    write = httpx.post(f"{api}/repos/acme/public/forks", json={}, verify=TLS)
    assert write.status_code == 401 and write.json()["message"] == "Requires authentication"
    unknown = httpx.get(
        f"{api}/repos/acme/public/no/such/route",
        headers={"Authorization": f"token {TOKEN}"},
        verify=TLS,
    )
    assert unknown.status_code == 404
    assert unknown.json() == {
        "message": "Not Found",
        "documentation_url": "https://docs.github.com/rest",
        "status": "404",
    }
    for response in (anonymous, wrong, write, unknown):
        for name in (
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "x-ratelimit-used",
        ):
            assert response.headers[name].isdigit()
    assert anonymous.headers["x-ratelimit-limit"] == "60"
    assert unknown.headers["x-ratelimit-limit"] == "5000"
    recorded = gh.requests[-1]
    assert (
        recorded["method"] == "GET"
        and recorded["path"] == "/api/v3/repos/acme/public/no/such/route"
    )
    assert recorded["headers"]["authorization"] == f"token {TOKEN}" and recorded["body"] is None


def test_fault_injection(gh: FakeGitHub) -> None:
    gh.create_repo("acme/widgets")
    gh.commit_files("acme/widgets", "feature", {"f.txt": "x"})
    repo = client(gh).get_repo("acme/widgets")
    gh.fail("POST", r"/pulls$", 429, headers={"retry-after": "7"})
    gh.fail("POST", r"/pulls$", 502, times=2)
    gh.fail("POST", r"^/repos/acme/widgets/pulls$", 422, "Something custom.")
    statuses = []
    for _ in range(4):
        with pytest.raises(GithubException) as caught:
            repo.create_pull(base="main", head="feature", title="t")
        statuses.append(caught.value.status)
        if caught.value.status == 429:
            assert (caught.value.headers or {})["retry-after"] == "7"
            assert "secondary rate limit" in caught.value.data["message"]
        if caught.value.status == 422:
            assert caught.value.data["errors"][0]["message"] == "Something custom."
    assert statuses == [429, 502, 502, 422]
    assert repo.create_pull(base="main", head="feature", title="t").number == 1


# -- git smart HTTP with the real git client ----------------------------------------


def git(
    cwd: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def bare_rev(gh: FakeGitHub, full_name: str, ref: str) -> str:
    path = gh.bare_path(full_name)
    return git(path, "--git-dir", str(path), "rev-parse", ref).stdout.strip()


def statuses_for(gh: FakeGitHub, suffix: str) -> list[int]:
    return [r["status"] for r in gh.requests if r["path"].endswith(suffix)]


def test_git_clone_public_anonymously(gh: FakeGitHub, tmp_path: Path) -> None:
    gh.create_repo("acme/widgets", files={"app.py": "print('hi')\n"}, default_branch="trunk")
    git(tmp_path, "clone", "-q", f"{gh.git_url}/acme/widgets.git", "w")
    assert (tmp_path / "w" / "app.py").read_text() == "print('hi')\n"
    assert git(tmp_path / "w", "branch", "--show-current").stdout.strip() == "trunk"
    assert git(tmp_path / "w", "rev-parse", "HEAD").stdout.strip() == bare_rev(
        gh, "acme/widgets", "trunk"
    )


def test_git_private_clone_needs_the_token(gh: FakeGitHub, tmp_path: Path) -> None:
    gh.create_repo("acme/secret", private=True, files={"s.txt": "secret\n"})
    url = f"{gh.git_url}/acme/secret.git"
    denied = git(tmp_path, "clone", "-q", url, "anon", check=False)
    assert denied.returncode != 0 and not (tmp_path / "anon" / "s.txt").exists()
    assert statuses_for(gh, "/acme/secret.git/info/refs") == [401]
    wrong = "Authorization: Basic " + base64.b64encode(b"x-access-token:ghp_wrong").decode()
    assert (
        git(
            tmp_path, "-c", f"http.extraHeader={wrong}", "clone", "-q", url, "bad", check=False
        ).returncode
        != 0
    )
    git(tmp_path, "-c", f"http.extraHeader={AUTH_HEADER}", "clone", "-q", url, "ok")
    assert (tmp_path / "ok" / "s.txt").read_text() == "secret\n"
    assert statuses_for(gh, "/acme/secret.git/info/refs") == [401, 401, 200]
    assert any(
        r.get("headers", {}).get("authorization", "").startswith("Basic ") for r in gh.requests
    )


def test_git_push_needs_token_and_permission(gh: FakeGitHub, tmp_path: Path) -> None:
    gh.create_repo("acme/widgets")
    gh.create_repo("acme/readonly", push=False)
    git(tmp_path, "clone", "-q", f"{gh.git_url}/acme/widgets.git", "w")
    work = tmp_path / "w"
    (work / "new.txt").write_text("new\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "Add new.txt")
    sha = git(work, "rev-parse", "HEAD").stdout.strip()

    anonymous = git(work, "push", "origin", "HEAD:refs/heads/feature", check=False)
    assert anonymous.returncode != 0
    assert statuses_for(gh, "/acme/widgets.git/info/refs")[-1] == 401
    assert "feature" not in gh.branches("acme/widgets")

    git(
        work,
        "-c",
        f"http.extraHeader={AUTH_HEADER}",
        "push",
        "-q",
        "origin",
        "HEAD:refs/heads/feature",
    )
    assert bare_rev(gh, "acme/widgets", "refs/heads/feature") == sha
    push = [r for r in gh.requests if r["path"].endswith("/git-receive-pack")][-1]
    assert push["headers"]["authorization"] == AUTH_HEADER.split(": ", 1)[1]

    git(tmp_path, "clone", "-q", f"{gh.git_url}/acme/readonly.git", "ro")
    forbidden = git(
        tmp_path / "ro",
        "-c",
        f"http.extraHeader={AUTH_HEADER}",
        "push",
        "origin",
        "HEAD:refs/heads/x",
        check=False,
    )
    assert forbidden.returncode != 0 and "403" in forbidden.stderr
    assert "x" not in gh.branches("acme/readonly")


def test_git_push_larger_than_post_buffer(gh: FakeGitHub, tmp_path: Path) -> None:
    """Over http.postBuffer (1 MiB) git streams the pack with Transfer-Encoding: chunked."""
    gh.create_repo("acme/widgets")
    git(tmp_path, "clone", "-q", f"{gh.git_url}/acme/widgets.git", "w")
    work = tmp_path / "w"
    (work / "blob.bin").write_bytes(os.urandom(1536 * 1024))  # incompressible 1.5 MiB
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "Add a large blob")
    sha = git(work, "rev-parse", "HEAD").stdout.strip()
    git(
        work, "-c", f"http.extraHeader={AUTH_HEADER}", "push", "-q", "origin", "HEAD:refs/heads/big"
    )
    assert bare_rev(gh, "acme/widgets", "refs/heads/big") == sha
    posts = [
        r for r in gh.requests if r["method"] == "POST" and r["path"].endswith("/git-receive-pack")
    ]
    assert any(r["headers"].get("transfer-encoding") == "chunked" for r in posts)
    assert all(r["status"] == 200 for r in posts)


def test_git_fetch_with_gzip_negotiation_and_by_sha(gh: FakeGitHub, tmp_path: Path) -> None:
    """Long negotiations arrive gzip-encoded; fetching a bare sha with a filter works like GitHub."""
    gh.create_repo("acme/widgets")
    git(tmp_path, "clone", "-q", f"{gh.git_url}/acme/widgets.git", "w")
    work = tmp_path / "w"
    for i in range(50):  # newer local-only commits: walked first, so many "have" lines
        date = f"{2_000_000_000 + i} +0000"
        git(
            work,
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            f"local {i}",
            env={"GIT_COMMITTER_DATE": date},
        )
    new = gh.commit_files("acme/widgets", "main", {"upstream.txt": "moved\n"})
    git(work, "fetch", "-q", "origin")
    assert git(work, "rev-parse", "origin/main").stdout.strip() == new
    gzipped = [r for r in gh.requests if r["headers"].get("content-encoding") == "gzip"]
    assert gzipped and all(r["status"] == 200 for r in gzipped)

    git(tmp_path, "init", "-q", "--bare", "partial")
    git(
        tmp_path / "partial",
        "fetch", "-q", "--depth=1", "--filter=blob:none", f"{gh.git_url}/acme/widgets.git", new,
    )  # fmt: skip
    assert git(tmp_path / "partial", "cat-file", "-t", new).stdout.strip() == "commit"


def test_push_to_fork_then_cross_repo_pull_request(gh: FakeGitHub, tmp_path: Path) -> None:
    gh.create_repo("upstream/lib", files={"lib.py": "VERSION = 1\n"}, push=False)
    g = client(gh)
    upstream = g.get_repo("upstream/lib")
    fork = upstream.create_fork()
    git(tmp_path, "clone", "-q", fork.clone_url, "w")
    work = tmp_path / "w"
    (work / "lib.py").write_text("VERSION = 2\n")
    git(work, "commit", "-q", "-am", "Bump version")
    git(
        work,
        "-c",
        f"http.extraHeader={AUTH_HEADER}",
        "push",
        "-q",
        "origin",
        "HEAD:refs/heads/bump",
    )
    pr = upstream.create_pull(base="main", head=f"{LOGIN}:bump", title="Bump", body="", draft=True)
    assert pr.head.repo.full_name == f"{LOGIN}/lib"
    assert pr.head.sha == git(work, "rev-parse", "HEAD").stdout.strip()
    assert pr.additions == 1 and pr.deletions == 1
    assert gh.pulls("upstream/lib")[0]["head"]["label"] == f"{LOGIN}:bump"
