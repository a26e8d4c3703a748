"""The GitHub webhook: the fake GitHub's comment, reaction and delivery side, then
``POST /github/webhook`` end to end (real uvicorn, real PyGithub and git, the fake GitHub
and the fake Anthropic)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import httpx
import pytest
from github import Auth, Github, GithubException

from tests.conftest import ServerFactory
from tests.fakes import github_openapi
from tests.fakes.anthropic import FakeAnthropic, Reply, ToolCall
from tests.fakes.github import Delivery, FakeGitHub
from tests.helpers import shared_server
from tests.scenarios import EDIT_SIGNUP, SIGNUP_PY, finish
from tests.server import Server
from tests.sse import collect, post_run
from tests.tls import TLS

pytestmark = [pytest.mark.timeout(120)]

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


def bare_git(path: Any, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(path), *args], check=True, capture_output=True, text=True
    ).stdout


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


# -- POST /github/webhook end to end ---------------------------------------------------------

SECRET = "whsec-0123456789abcdef-webhook"
ANTHROPIC_KEY = "sk-ant-api03-webhook-e2e-key-000111"
FILES = {"app.py": SIGNUP_PY, "README.md": "# Widgets\n"}
RENAME = ToolCall(
    "str_replace_based_edit_tool",
    {
        "command": "str_replace",
        "path": "app.py",
        "old_str": "'name is required'",
        "new_str": "'a name is required'",
    },
)
HIDDEN = "\u202e\u200b\u2066\ufeff\U000e0041\U000e0042"


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    """The module's fake GitHub: each test uses repositories of its own names."""
    with FakeGitHub(token=TOKEN, login=LOGIN) as fake:
        yield fake


@pytest.fixture(scope="module")
def model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(scenarios={}) as fake:
        yield fake


def env_for(github: FakeGitHub, model: FakeAnthropic, **extra: str) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": model.url,
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_API_URL": github.api_url,
        "GITHUB_WEB_HOST": "github.com",
        **extra,
    }


@pytest.fixture(scope="module")
def server(github: FakeGitHub, model: FakeAnthropic) -> Iterator[Server]:
    env = env_for(github, model, GITHUB_WEBHOOK_SECRET=SECRET, GITHUB_TRIGGER_LABEL="backspace")
    with shared_server("github-webhook", env) as started:
        github.webhook(f"{started.url}/github/webhook", SECRET)
        yield started


async def eventually(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


def api_runs(server: Server, repo: str) -> list[dict[str, Any]]:
    runs = httpx.get(f"{server.url}/api/runs", params={"limit": 100}, timeout=10, verify=TLS).json()
    items = runs["runs"] if isinstance(runs, dict) else runs
    return [r for r in items if r["repo_url"] == repo]


def finished(server: Server, repo: str, count: int) -> list[dict[str, Any]] | None:
    runs = api_runs(server, repo)
    done = [r for r in runs if r["status"] not in ("queued", "running")]
    return runs if len(runs) >= count and len(done) == len(runs) else None


def status_comments(github: FakeGitHub, repo: str, number: int) -> list[dict[str, Any]]:
    return [
        c
        for c in github.comments(repo, number)
        if c["user"]["login"] == LOGIN and "<!-- backspace:status run=" in c["body"]
    ]


def first_user_text(request: dict[str, Any]) -> str:
    return json.dumps(request["messages"][0], ensure_ascii=False)


async def test_a_writers_review_comment_continues_the_family_on_the_same_pr(
    github: FakeGitHub, model: FakeAnthropic, server: Server
) -> None:
    repo = "acme/review-widgets"
    github.create_repo(repo, files=FILES)
    bare = github.bare_path(repo)
    model.scenarios["wh-review-third"] = [finish("Nothing more")]  # matched before the others
    model.scenarios["wh-review-followup"] = [Reply([RENAME]), finish("Reword the error")]
    model.scenarios["wh-review-first"] = [Reply([EDIT_SIGNUP]), finish()]
    events = await post_run(server.url, {"repo_url": repo, "prompt": "wh-review-first: validate"})
    assert events[-1]["status"] == "succeeded", events[-2:]
    (pr,) = github.pulls(repo)
    branch = pr["head"]["ref"]
    github.set_permission(repo, "alice", "write")
    comment = github.review_comment(
        repo, pr["number"], "@backspace wh-review-followup: say 'a name'", user="alice",
        path="app.py", line=3,
    )  # fmt: skip
    assert github.deliveries[-1].status == 202, github.deliveries[-1].response
    await eventually(lambda: [r for r in github.reactions if r["id"] == comment["id"]], timeout=10)
    assert [(r["subject"], r["content"]) for r in github.reactions if r["repo"] == repo] == [
        ("review_comment", "eyes")
    ]
    runs = await eventually(lambda: finished(server, repo, 2), timeout=90)
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"], runs
    # The same branch got a second commit, and there is still one pull request.
    assert bare_git(bare, "rev-list", "--count", f"main..{branch}").strip() == "2"
    assert bare_git(bare, "show", f"{branch}:app.py").count("'a name is required'") == 1
    assert len(github.pulls(repo)) == 1
    # The agent was told where the comment points, by whom.
    first = first_user_text(model.requests_for("wh-review-followup")[0])
    assert "`app.py`" in first and "line 3" in first and "@alice wrote" in first
    assert "raise ValueError" in first, "the diff hunk the comment is attached to"
    # One status comment, edited in place, ending with the pull request's link.
    (status,) = await eventually(
        lambda: [c for c in status_comments(github, repo, pr["number"]) if "Finished" in c["body"]]
    )
    assert pr["html_url"] in status["body"] and "done" in status["body"]
    (followup,) = [r for r in runs if r["parent_id"]]
    assert f"/runs/{followup['id']}" in status["body"]
    edits = [
        r
        for r in github.requests
        if r["method"] == "PATCH" and r["path"].endswith(f"/issues/comments/{status['id']}")
    ]
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        _, frames = await collect(client, "GET", f"{server.url}/api/runs/{followup['id']}/events")
    assert 1 <= len(edits) < len(frames) / 2, "edits are paced, not one per event"
    # A submitted review that mentions backspace is a follow-up too; its 👀 goes on the PR.
    github.review(repo, pr["number"], "@backspace wh-review-third: anything else?", user="alice")
    assert github.deliveries[-1].status == 202, github.deliveries[-1].response
    await eventually(lambda: finished(server, repo, 3), timeout=90)
    assert ("issue", pr["number"]) in [(r["subject"], r["id"]) for r in github.reactions]
    third = first_user_text(model.requests_for("wh-review-third")[0])
    assert "@alice wrote this in a review (commented)" in third


async def test_an_issue_comment_starts_a_run_that_closes_it_and_no_one_else_triggers(
    github: FakeGitHub, model: FakeAnthropic, server: Server
) -> None:
    repo = "acme/issue-widgets"
    github.create_repo(repo, files=FILES)
    number = github.create_issue(repo, "Signup accepts empty names", "wh-issue: fix", user="zed")
    model.scenarios["wh-issue"] = [Reply([EDIT_SIGNUP]), finish()]
    github.set_permission(repo, "alice", "write")
    github.set_permission(repo, "helper[bot]", "write")  # a bot with write access: still no
    # A reader, a bot, backspace itself: each delivery is signed and answered, nothing happens.
    ignored = [
        github.comment(repo, number, "@backspace please fix", user="bob"),
        github.comment(repo, number, "@backspace please fix", user="helper[bot]"),
        github.comment(repo, number, "@backspace please fix", user=LOGIN),
    ]
    assert [d.status for d in github.deliveries[-3:]] == [202, 202, 202]
    asked = github.comment(
        repo, number, f"@backspace {HIDDEN[:3]}do it{HIDDEN[3:]} ![p](https://evil.example/p.png) "
        "@acme/everyone", user="alice",
    )  # fmt: skip
    await eventually(lambda: [r for r in github.reactions if r["id"] == asked["id"]], timeout=10)
    runs = await eventually(lambda: finished(server, repo, 1), timeout=90)
    assert len(runs) == 1 and runs[0]["status"] == "succeeded", runs
    assert runs[0]["source"] == "github" and "@alice" in (runs[0]["requester"] or "")
    reacted = {r["id"] for r in github.reactions if r["repo"] == repo}
    assert reacted == {asked["id"]}, "no reaction to the reader, the bot or backspace itself"
    assert not reacted & {c["id"] for c in ignored}
    (pr,) = github.pulls(repo)
    assert f"Closes #{number}" in pr["body"]
    # The hidden and bidirectional characters never reached the model; who asked did.
    sent = first_user_text(model.requests_for("wh-issue")[0])
    for char in HIDDEN:
        assert char not in sent, repr(char)
    assert "@alice wrote" in sent and "Signup accepts empty names" in sent
    assert "do it" in sent
    (status,) = await eventually(
        lambda: [c for c in status_comments(github, repo, number) if "Finished" in c["body"]]
    )
    assert pr["html_url"] in status["body"]
    assert "evil.example" not in status["body"] and "@acme/everyone" not in status["body"]
    assert "![" not in status["body"], "the request, quoted in the status comment, is inert"


async def test_signatures_missing_bad_or_forged_are_refused_and_nothing_is_done(
    github: FakeGitHub, model: FakeAnthropic, server: Server
) -> None:
    repo = "acme/signed-widgets"
    github.create_repo(repo, files=FILES)
    number = github.create_issue(repo, "Bug", "wh-signed", user="alice")
    model.scenarios["wh-signed"] = [finish()]
    github.set_permission(repo, "alice", "write")
    hook = github._hooks[0]
    comment = github.comment(repo, number, "@backspace wh-signed", user="alice")
    good = github.deliveries[-1]
    await eventually(lambda: finished(server, repo, 1), timeout=60)
    payload = {**good.payload, "comment": {**good.payload["comment"], "id": comment["id"] + 1}}
    wrong = type(hook)(hook.id, hook.url, "not-the-secret")
    unsigned = {"X-Hub-Signature-256": "", "X-Hub-Signature": ""}
    attempts = {
        "missing": github.deliver(hook, "issue_comment", payload, headers=unsigned),
        "wrong secret": github.deliver(wrong, "issue_comment", payload),
        "sha1 only": github.deliver(
            hook, "issue_comment", payload, headers={"X-Hub-Signature-256": ""}
        ),
        "another body's signature": github.deliver(
            hook,
            "issue_comment",
            payload,
            headers={"X-Hub-Signature-256": good_signature(good)},
        ),
    }
    for name, delivery in attempts.items():
        assert delivery.status == 401, (name, delivery.status, delivery.response)
        assert "X-Hub-Signature-256" in delivery.response, delivery.response
    # The refused deliveries claimed nothing: a properly signed one with the same GUID works.
    retried = github.deliver(hook, "issue_comment", payload, delivery_id=attempts["missing"].id)
    assert retried.status == 202, retried.response
    await eventually(lambda: finished(server, repo, 2), timeout=60)
    assert len(api_runs(server, repo)) == 2


def good_signature(delivery: Delivery) -> str:
    """The signature of a different (earlier) body: replaying it on this one must fail."""
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


async def test_a_redelivered_trigger_runs_once_and_the_label_triggers(
    github: FakeGitHub, model: FakeAnthropic, server: Server
) -> None:
    repo = "acme/label-widgets"
    github.create_repo(repo, files=FILES)
    number = github.create_issue(repo, "wh-label: tidy up", "please", user="zed")
    model.scenarios["wh-label"] = [finish()]
    github.set_permission(repo, "carol", "maintain")
    github.label_issue(repo, number, "backspace", user="carol")
    first = github.deliveries[-1]
    assert first.status == 202, first.response
    again = github.redeliver(first)
    assert again.status == 200 and "already handled" in again.response
    await eventually(lambda: finished(server, repo, 1), timeout=60)
    await asyncio.sleep(0.5)  # room for a second run, were one started
    assert len(api_runs(server, repo)) == 1
    assert [(r["subject"], r["id"]) for r in github.reactions if r["repo"] == repo] == [
        ("issue", number)
    ]
    github.label_issue(repo, number, "bug", user="carol")
    assert github.deliveries[-1].status == 200 and "not GITHUB_TRIGGER_LABEL" in (
        github.deliveries[-1].response
    )


async def test_without_a_secret_the_webhook_is_off_and_says_how_to_enable_it(
    github: FakeGitHub, model: FakeAnthropic, server_factory: ServerFactory
) -> None:
    off = server_factory(env_for(github, model), name="no-secret")
    answer = httpx.post(f"{off.url}/github/webhook", json={"zen": "hi"}, timeout=10, verify=TLS)
    assert answer.status_code == 404
    assert "GITHUB_WEBHOOK_SECRET" in answer.json()["detail"]


async def test_quotes_code_other_handles_and_edits_do_not_trigger(
    github: FakeGitHub, server: Server
) -> None:
    repo = "acme/quiet-widgets"
    github.create_repo(repo, files=FILES)
    number = github.create_issue(repo, "Bug", "text", user="alice")
    github.set_permission(repo, "alice", "write")
    for body in (
        "> @backspace fix it\n\nI agree with the above",  # quoting an earlier request
        "Run `@backspace fix it` to ask it",  # code span
        "```\n@backspace fix it\n```",  # code block
        "cc @backspace-bot and email me@backspace.dev",  # other handles, an address
        "no mention at all",
    ):
        github.comment(repo, number, body, user="alice")
        delivery = github.deliveries[-1]
        assert delivery.status == 200, (body, delivery.response)
        assert "no @backspace in the comment" in delivery.response, delivery.response
    edited = {**delivery.payload, "action": "edited"}
    edited["comment"] = {**edited["comment"], "body": "@backspace now do it"}
    answer = github.deliver(github._hooks[0], "issue_comment", edited)
    assert answer.status == 200 and "only new comments" in answer.response
    assert [r for r in github.reactions if r["repo"] == repo] == []
    assert api_runs(server, repo) == []


async def test_a_refusal_and_a_foreign_pr_get_a_reply_that_is_inert(
    github: FakeGitHub, server: Server
) -> None:
    repo = "acme/refused-widgets"
    github.create_repo(repo, files=FILES)
    github.commit_files(repo, "someone/feature", {"app.py": "x = 1\n"})
    pr = client(github).get_repo(repo).create_pull(base="main", head="someone/feature", title="F")
    number = github.create_issue(repo, "Bug", "text", user="alice")
    github.set_permission(repo, "alice", "write")
    github.comment(repo, pr.number, "@backspace rename it", user="alice")
    too_long = "@backspace " + "x" * 20001
    github.comment(repo, number, too_long, user="alice")
    assert [d.status for d in github.deliveries[-2:]] == [202, 202]

    def replies(on: int) -> list[str]:
        return [c["body"] for c in github.comments(repo, on) if c["user"]["login"] == LOGIN]

    (foreign,) = await eventually(lambda: replies(pr.number), timeout=10)
    assert foreign.startswith("@alice ") and "only continues pull requests it opened" in foreign
    (refused,) = await eventually(lambda: replies(number), timeout=10)
    assert refused.startswith("@alice backspace did not start: your request is 20")
    assert "BACKSPACE_MAX_PROMPT_CHARS" in refused
    assert api_runs(server, repo) == []


async def test_an_oversized_or_unsigned_body_is_refused_before_it_is_read(server: Server) -> None:
    url = f"{server.url}/github/webhook"
    big = b"{" + b" " * (1024 * 1024 + 10) + b"}"
    body = hmac.new(SECRET.encode(), big, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": f"sha256={body}", "X-GitHub-Event": "ping"}
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        answer = await client.post(url, content=big, headers=headers)
        assert answer.status_code == 413

        async def parts() -> AsyncIterator[bytes]:  # no content-length: chunked
            yield big[:600_000]
            yield big[600_000:]

        chunked = await client.post(url, content=parts(), headers=headers)
        assert chunked.status_code == 413
        not_json = b"not json"
        signed_headers = {
            "X-Hub-Signature-256": "sha256="
            + hmac.new(SECRET.encode(), not_json, hashlib.sha256).hexdigest(),
            "X-GitHub-Event": "issue_comment",
            "X-GitHub-Delivery": "d-1",
        }
        bad = await client.post(url, content=not_json, headers=signed_headers)
        assert bad.status_code == 400 and "application/json" in bad.json()["detail"]
