"""The GitHub webhook: the fake GitHub's comment, reaction and delivery side, then
``POST /github/webhook`` end to end (real uvicorn, real PyGithub and git, the fake GitHub
and the fake Anthropic)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from types import ModuleType

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
