"""The GitHub webhook: the fake GitHub's comment, reaction and delivery side, then
``POST /github/webhook`` end to end (real uvicorn, real PyGithub and git, the fake GitHub
and the fake Anthropic)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import pytest
from github import Auth, Github, GithubException

from tests.fakes import github_openapi
from tests.fakes.github import FakeGitHub

TOKEN = "ghp_WEBHOOKTOKEN0123456789abcdefghijklmn"
LOGIN = "backspace-bot"


def client(gh: FakeGitHub) -> Github:
    return Github(
        auth=Auth.Token(TOKEN),
        base_url=gh.api_url,
        retry=None,
        seconds_between_requests=None,
        seconds_between_writes=None,
    )


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    with FakeGitHub(token=TOKEN, login=LOGIN) as fake:
        yield fake


@pytest.fixture(scope="session")
def openapi() -> ModuleType:
    if not github_openapi.spec_available():
        message = f"GitHub's OpenAPI description is not installed ({github_openapi.SPEC_PATH})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    github_openapi.load_spec()
    return github_openapi


def validate_all(gh: FakeGitHub, openapi: ModuleType) -> set[str]:
    """Every JSON answer so far against GitHub's schema; the operations seen."""
    operations: set[str] = set()
    for record in gh.requests:
        if not record["path"].startswith("/api/v3/") or record["response"] is None:
            continue
        method, path, status = record["method"], record["path"], record["status"]
        try:
            schema = openapi.response_schema(method, path, status)
        except openapi.OperationNotFound:
            assert status >= 400, f"undocumented success {method} {path} {status}"
            continue
        if schema is None:
            continue
        openapi.validate_response(method, path, status, record["response"])
        operations.add(f"{openapi.find_operation(method, path)[1]['operationId']} {status}")
    return operations


# -- the fake: issue comments, merged and closed pull requests -----------------------------


def test_fake_issue_comments_through_pygithub(gh: FakeGitHub, openapi: ModuleType) -> None:
    gh.create_repo("acme/widgets", files={"app.py": "x = 1\n"})
    gh.commit_files("acme/widgets", "backspace/x", {"app.py": "x = 2\n"})
    repo = client(gh).get_repo("acme/widgets")
    pr = repo.create_pull(base="main", head="backspace/x", title="X", body="b")
    comment = pr.create_issue_comment("Working on it")
    assert comment.user.login == LOGIN
    assert comment.html_url.endswith(f"/acme/widgets/pull/{pr.number}#issuecomment-{comment.id}")
    comment.edit("Done: it works")
    gh.comment("acme/widgets", pr.number, "@backspace also this", user="alice")
    listed = [(c.user.login, c.body) for c in pr.get_issue_comments()]
    assert listed == [(LOGIN, "Done: it works"), ("alice", "@backspace also this")]
    assert [c["body"] for c in gh.comments("acme/widgets", pr.number)] == [
        "Done: it works",
        "@backspace also this",
    ]
    assert repo.get_pull(pr.number).comments == 2
    with pytest.raises(GithubException) as empty:
        pr.create_issue_comment("")
    assert empty.value.status == 422
    with pytest.raises(GithubException) as missing:
        repo.get_issue(99).create_comment("nobody home")  # lazy issue: 404 on the comment
    assert missing.value.status == 404
    operations = validate_all(gh, openapi)
    assert {
        "issues/create-comment 201",
        "issues/update-comment 200",
        "issues/list-comments 200",
        "issues/create-comment 422",
    } <= operations


def test_fake_merge_and_close_pull(gh: FakeGitHub, openapi: ModuleType) -> None:
    gh.create_repo("acme/widgets", files={"app.py": "x = 1\n", "b.py": "b\n"})
    gh.commit_files("acme/widgets", "feature", {"app.py": "x = 2\n"})
    gh.commit_files("acme/widgets", "main", {"b.py": "b2\n"})  # base moved: a real merge
    gh.commit_files("acme/widgets", "other", {"c.py": "c\n"})
    repo = client(gh).get_repo("acme/widgets")
    merged = repo.create_pull(base="main", head="feature", title="Feature")
    closed = repo.create_pull(base="main", head="other", title="Other")
    sha = gh.merge_pull("acme/widgets", merged.number)
    gh.close_pull("acme/widgets", closed.number)
    assert gh.branches("acme/widgets")["main"] == sha
    bare = gh.bare_path("acme/widgets")
    shown = subprocess.run(
        ["git", "--git-dir", str(bare), "show", f"{sha}:app.py", f"{sha}:b.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert shown == "x = 2\nb2\n"
    again = repo.get_pull(merged.number)
    assert (again.state, again.merged, again.merge_commit_sha) == ("closed", True, sha)
    assert again.merged_at is not None
    other = repo.get_pull(closed.number)
    assert (other.state, other.merged, other.merged_at) == ("closed", False, None)
    assert [p.number for p in repo.get_pulls(state="open")] == []
    with pytest.raises(GithubException) as reopen:
        again.edit(state="open")
    assert reopen.value.status == 422
    with pytest.raises(ValueError, match="not open"):
        gh.merge_pull("acme/widgets", merged.number)
    validate_all(gh, openapi)


class Receiver:
    """A loopback HTTP endpoint recording what is POSTed to it (to see the fake's deliveries)."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                receiver.seen.append(
                    ({k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
                )
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_fake_webhook_deliveries_are_signed_and_shaped_like_githubs(
    gh: FakeGitHub, openapi: ModuleType
) -> None:
    receiver = Receiver()
    try:
        gh.create_repo("acme/widgets", files={"app.py": "a = 1\nb = 2\nc = 3\n"})
        gh.commit_files("acme/widgets", "backspace/x", {"app.py": "a = 1\nb = 20\nc = 3\n"})
        pr = (
            client(gh)
            .get_repo("acme/widgets")
            .create_pull(base="main", head="backspace/x", title="X")
        )
        issue = gh.create_issue("acme/widgets", "Signup crashes", "on empty names", user="carol")
        assert issue == pr.number + 1, "issues and pull requests share one number sequence"
        hook = gh.webhook(receiver.url, "s3cret")
        gh.comment("acme/widgets", pr.number, "@backspace on the PR", user="alice")
        gh.comment("acme/widgets", issue, "@backspace on the issue", user="dependabot[bot]")
        gh.review_comment(
            "acme/widgets", pr.number, "@backspace rename b", user="alice", path="app.py", line=2
        )
        gh.review("acme/widgets", pr.number, "@backspace see above", user="alice")
        gh.label_issue("acme/widgets", issue, "backspace", user="carol")
        gh.redeliver(gh.deliveries[0])
        assert [d.status for d in gh.deliveries] == [202] * 6
        events = [h["x-github-event"] for h, _ in receiver.seen]
        assert events == [
            "issue_comment",
            "issue_comment",
            "pull_request_review_comment",
            "pull_request_review",
            "issues",
            "issue_comment",
        ]
        ids = [h["x-github-delivery"] for h, _ in receiver.seen]
        assert len(set(ids)) == 5 and ids[-1] == ids[0], "a redelivery keeps its GUID"
        for headers, body in receiver.seen:
            expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
            assert headers["x-hub-signature-256"] == f"sha256={expected}"
            assert headers["user-agent"].startswith("GitHub-Hookshot/")
            assert headers["content-type"] == "application/json"
            assert headers["x-github-hook-id"] == str(hook.id)
        payloads = [json.loads(body) for _, body in receiver.seen]
        on_pr, on_issue, review_comment, review, labeled = payloads[:5]
        assert on_pr["issue"]["pull_request"]["html_url"] == pr.html_url
        assert "pull_request" not in on_issue["issue"]
        assert on_issue["sender"] == on_issue["comment"]["user"]
        assert on_issue["sender"]["type"] == "Bot" and on_pr["sender"]["type"] == "User"
        assert review_comment["comment"]["path"] == "app.py"
        assert review_comment["comment"]["line"] == 2
        assert review_comment["comment"]["diff_hunk"].splitlines()[-1] == "+b = 20"
        assert review_comment["comment"]["diff_hunk"].startswith("@@ -1,3 +1,3 @@")
        assert labeled["label"]["name"] == "backspace" and labeled["issue"]["number"] == issue
        for schema, payload in (
            ("webhook-issue-comment-created", on_pr),
            ("webhook-issue-comment-created", on_issue),
            ("webhook-pull-request-review-comment-created", review_comment),
            ("webhook-pull-request-review-submitted", review),
            ("webhook-issues-labeled", labeled),
        ):
            assert openapi.webhook_errors(schema, payload) == [], schema
    finally:
        receiver.close()


def test_fake_reactions_permissions_and_issues(gh: FakeGitHub, openapi: ModuleType) -> None:
    gh.create_repo("acme/widgets", files={"app.py": "a = 1\n"})
    gh.commit_files("acme/widgets", "backspace/x", {"app.py": "a = 2\n"})
    g = client(gh).withLazy(True)
    repo = g.get_repo("acme/widgets")
    pr = client(gh).get_repo("acme/widgets").create_pull(base="main", head="backspace/x", title="X")
    number = gh.create_issue("acme/widgets", "Bug", "it breaks", user="carol")
    comment = gh.comment("acme/widgets", number, "@backspace fix it", user="alice")
    review = gh.review_comment(
        "acme/widgets", pr.number, "@backspace here", user="alice", path="app.py", line=1
    )
    repo.get_issue(number).get_comment(comment["id"]).create_reaction("eyes")
    repo.get_issue(number).get_comment(comment["id"]).create_reaction("eyes")  # again: 200
    repo.get_pull(pr.number).get_review_comment(review["id"]).create_reaction("eyes")
    repo.get_issue(pr.number).create_reaction("rocket")
    with pytest.raises(GithubException) as bad:
        repo.get_issue(number).create_reaction("party")
    assert bad.value.status == 422
    seen = [(r["subject"], r["id"], r["content"]) for r in gh.reactions]
    assert seen == [
        ("issue_comment", comment["id"], "eyes"),
        ("review_comment", review["id"], "eyes"),
        ("issue", pr.number, "rocket"),
    ]
    for login, role in [("alice", "write"), ("mona", "maintain"), ("tri", "triage")]:
        gh.set_permission("acme/widgets", login, role)
    permissions = {
        login: repo.get_collaborator_permission(login)
        for login in ("alice", "mona", "tri", "stranger", LOGIN)
    }
    assert permissions == {
        "alice": "write",
        "mona": "write",
        "tri": "read",
        "stranger": "read",
        LOGIN: "write",
    }
    fetched = client(gh).get_repo("acme/widgets").get_issue(number)
    assert (fetched.title, fetched.body, fetched.pull_request) == ("Bug", "it breaks", None)
    assert client(gh).get_repo("acme/widgets").get_issue(pr.number).pull_request is not None
    assert client(gh).get_user().login == LOGIN
    operations = validate_all(gh, openapi)
    assert {
        "reactions/create-for-issue-comment 201",
        "reactions/create-for-issue-comment 200",
        "reactions/create-for-pull-request-review-comment 201",
        "reactions/create-for-issue 201",
        "reactions/create-for-issue 422",
        "repos/get-collaborator-permission-level 200",
        "issues/get 200",
    } <= operations
