"""GitHub end to end: the real server, PyGithub and git against the loopback fake GitHub (REST
plus git smart HTTP through `git http-backend`), the token kept on the host."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backspace.orchestrator.githosts.base import PullRequestDraft, RepoRef
from backspace.orchestrator.githosts.base_payload import BasePayloads
from backspace.orchestrator.githosts.github import GitHubHost
from backspace.orchestrator.redact import Redactor
from tests.conftest import ServerFactory
from tests.fakes.anthropic import FakeAnthropic, Reply, Text, ToolCall
from tests.fakes.github import FakeGitHub
from tests.helpers import shared_server
from tests.scenarios import EDIT_SIGNUP
from tests.server import Server
from tests.sse import of_type, post_run
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

TOKEN = "ghp_GITHUBTOKEN0123456789abcdefghijklmno"
ANTHROPIC_KEY = "sk-ant-api03-github-e2e-key-000111"
FILES = {"app.py": "def signup(name):\n    return name\n", "README.md": "# Widgets\n"}
EDIT = EDIT_SIGNUP
FINISH = Reply(
    [
        Text("Done."),
        ToolCall(
            "finish",
            {
                "title": "Validate the signup name",
                "body": "Rejects empty names.",
                "tests": "pytest: 3 passed",
            },
        ),
    ]
)


def bare_git(path: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(path), *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    """The module's fake GitHub: each test works on repositories of its own names and looks only
    at their pull requests, or at the requests made since it began."""
    with FakeGitHub(token=TOKEN, login="backspace-bot") as fake:
        yield fake


@pytest.fixture(scope="module")
def model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(scenarios={}) as fake:
        yield fake


@pytest.fixture(scope="module")
def shared(github: FakeGitHub, model: FakeAnthropic) -> Iterator[Server]:
    """One server for the tests with the default settings and no need of a fresh process."""
    with shared_server("github-e2e", env_for(github, model)) as server:
        yield server


def env_for(github: FakeGitHub, model: FakeAnthropic, **extra: str) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": model.url,
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_API_URL": github.api_url,
        "GITHUB_WEB_HOST": "github.com",
        **extra,
    }


async def run(server: Server, repo_url: str, prompt: str, **body: Any) -> list[dict[str, Any]]:
    return await post_run(server.url, {"repo_url": repo_url, "prompt": prompt, **body})


of = of_type


async def test_a_run_opens_a_draft_pull_request_on_github(
    github: FakeGitHub, model: FakeAnthropic, shared: Server
) -> None:
    github.create_repo("acme/draft-widgets", files=FILES, default_branch="main")
    bare = github.bare_path("acme/draft-widgets")
    base = bare_git(bare, "rev-parse", "main").strip()
    model.scenarios["gh-e2e"] = [
        Reply([ToolCall("bash", {"command": "cat app.py"})]),
        Reply([EDIT]),
        FINISH,
    ]
    server = shared
    events = await run(
        server, "https://github.com/acme/draft-widgets", "gh-e2e: validate names @octocat fixes #1",
        co_author="Ada Lovelace <ada@example.com>",
    )  # fmt: skip
    assert events[-1]["status"] == "succeeded", events[-2:]
    created = of(events, "pr_created")[0]
    (pr,) = github.pulls("acme/draft-widgets")
    assert created["pr_url"] == pr["html_url"] == events[-1]["pr_url"]
    assert pr["head"]["ref"] == created["branch"] and pr["base"]["ref"] == "main"
    assert pr["title"] == "Validate the signup name" and pr["draft"] is True
    body = pr["body"]
    assert "Rejects empty names." in body and "pytest: 3 passed" in body
    assert f"<!-- backspace:run={events[0]['run_id']} -->" in body
    assert "@\u200bocto" in body and "#\u200b1" in body, "mentions and closing keywords defused"
    assert "`app.py` | M | +2 | −0" in body and events[0]["run_url"] in body

    branch = created["branch"]
    assert bare_git(bare, "rev-parse", f"{branch}^").strip() == base
    assert bare_git(bare, "diff", "--name-only", base, branch).split() == ["app.py"]
    message = bare_git(bare, "log", "-1", "--format=%an <%ae>%n%B", branch)
    assert message.startswith("backspace-bot <backspace-bot@users.noreply.github.com>\nValidate")
    assert "Co-authored-by: Ada Lovelace <ada@example.com>" in message


async def test_the_token_never_reaches_the_sandbox(
    github: FakeGitHub, model: FakeAnthropic, shared: Server
) -> None:
    github.create_repo("acme/secret-widgets", files=FILES, private=True)
    probe = (
        "env; echo ---; cat .git/config; git config --list --show-origin; echo ---; "
        "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; "
        "grep -rsl 'GITHUB''TOKEN' / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev "
        "--exclude-dir=usr --exclude-dir=opt 2>/dev/null; echo probe-done"
    )
    model.scenarios["gh-token-e2e"] = [
        Reply([ToolCall("bash", {"command": probe})]),
        Reply([EDIT]),
        FINISH,
    ]
    server = shared
    before = len(github.requests)  # the fake is shared: this test's run's requests only
    events = await run(server, "acme/secret-widgets", "gh-token-e2e")
    assert events[-1]["status"] == "succeeded", events[-2:]
    output = of(events, "Tool: Bash")[0]["output"]
    assert "probe-done" in output and "[core]" in output
    sent_back = str(model.requests_for("gh-token-e2e")[1]["messages"][-1])
    for place in (
        output,
        sent_back,
        repr(events),
        server.logs(),
        repr(github.pulls("acme/secret-widgets")),
    ):
        assert TOKEN not in place and "GITHUBTOKEN" not in place
    # The token was used, on the host: for the API and for git (clone and push).
    authorized = [
        r
        for r in github.requests[before:]
        if TOKEN in r["headers"].get("authorization", "")
        or r["headers"].get("authorization", "").startswith("Basic ")
    ]
    assert any(r["path"].endswith("/git-receive-pack") for r in authorized)
    assert any(r["path"].startswith("/api/v3/repos/acme/secret-widgets") for r in authorized)


async def test_without_push_access_it_forks_and_opens_the_pr_from_the_fork(
    github: FakeGitHub, model: FakeAnthropic, shared: Server
) -> None:
    github.create_repo("upstream/fork-widgets", files=FILES, push=False)
    github.fork_ready_after = 2
    model.scenarios["gh-fork-e2e"] = [Reply([EDIT]), FINISH]
    server = shared
    events = await run(server, "https://github.com/upstream/fork-widgets", "gh-fork-e2e")
    assert events[-1]["status"] == "succeeded", events[-2:]
    (pr,) = github.pulls("upstream/fork-widgets")
    branch = of(events, "pr_created")[0]["branch"]
    assert pr["head"]["label"] == f"backspace-bot:{branch}"
    assert branch in bare_git(github.bare_path("backspace-bot/fork-widgets"), "branch", "--list")
    assert branch not in bare_git(github.bare_path("upstream/fork-widgets"), "branch", "--list")


async def test_default_branch_and_a_base_branch_named_in_the_url(
    github: FakeGitHub, model: FakeAnthropic, shared: Server
) -> None:
    github.create_repo(
        "acme/based-widgets", files=FILES, default_branch="develop",
        branches={"release/1.x": {"app.py": "def signup(name):\n    return name\n", "VERSION": "1\n"}},
    )  # fmt: skip
    model.scenarios["gh-default-e2e"] = [Reply([EDIT]), FINISH]
    model.scenarios["gh-tree-e2e"] = [Reply([EDIT]), FINISH]
    server = shared
    default = await run(server, "git@github.com:acme/based-widgets.git", "gh-default-e2e")
    tree = await run(
        server,
        "<https://github.com/acme/based-widgets/tree/release/1.x/app.py|widgets>",
        "gh-tree-e2e",
    )
    assert default[-1]["status"] == tree[-1]["status"] == "succeeded"
    bases = sorted(pr["base"]["ref"] for pr in github.pulls("acme/based-widgets"))
    assert bases == ["develop", "release/1.x"]
    bare = github.bare_path("acme/based-widgets")
    tree_branch = of(tree, "pr_created")[0]["branch"]
    assert (
        bare_git(bare, "rev-parse", f"{tree_branch}^").strip()
        == bare_git(bare, "rev-parse", "release/1.x").strip()
    )


async def test_github_failures_become_errors_a_person_can_act_on(
    github: FakeGitHub, model: FakeAnthropic, shared: Server, server_factory: ServerFactory
) -> None:
    github.create_repo("acme/failing-widgets", files=FILES)
    github.create_repo("acme/failing-readonly", files=FILES, push=False)
    github.create_repo("acme/failing-hooked", files=FILES)
    for key in (
        "gh-bad-token",
        "gh-missing",
        "gh-rate",
        "gh-5xx",
        "gh-protected",
        "gh-no-fork",
        "gh-declined",
    ):
        model.scenarios[key] = [Reply([EDIT]), FINISH]
    wrong = server_factory(
        env_for(github, model, GITHUB_TOKEN="ghp_wrongtoken000000000000000000000000"),
        name="wrong",
    )
    bad_token = await run(wrong, "acme/failing-widgets", "gh-bad-token")
    server = shared
    missing = await run(server, "acme/nope", "gh-missing")
    github.fail(
        "GET",
        r"/repos/acme/failing-widgets$",
        403,
        "API rate limit exceeded for user ID 1.",
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "4102444800"},
    )
    rate = await run(server, "acme/failing-widgets", "gh-rate")
    github.fail("POST", r"/repos/acme/failing-widgets/pulls$", 502, "Server Error", times=5)
    five_hundred = await run(server, "acme/failing-widgets", "gh-5xx")
    hook = github.bare_path("acme/failing-widgets") / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\necho 'GH006: Protected branch update failed for refs/heads/x.' >&2\nexit 1\n"
    )
    hook.chmod(0o755)
    protected = await run(server, "acme/failing-widgets", "gh-protected")
    github.fail(
        "POST",
        r"/repos/acme/failing-readonly/forks$",
        403,
        "Resource not accessible by personal access token",
    )
    no_fork = await run(server, "acme/failing-readonly", "gh-no-fork")
    declined = github.bare_path("acme/failing-hooked") / "hooks" / "pre-receive"
    declined.write_text("#!/bin/sh\necho 'push declined by policy' >&2\nexit 1\n")
    declined.chmod(0o755)
    rejected = await run(server, "acme/failing-hooked", "gh-declined")
    expected = {
        "github_bad_token": bad_token,
        "repo_not_found": missing,
        "github_rate_limited": rate,
        "github_unavailable": five_hundred,
        "branch_protection": protected,
        "github_no_access": no_fork,
        "push_rejected": rejected,
    }
    for code, events in expected.items():
        errors = of(events, "error")
        assert len(errors) == 1 and errors[0]["code"] == code, (code, errors)
        assert events[-1]["status"] == "failed"
        assert TOKEN not in repr(events)
    assert of(rate, "error")[0]["retryable"] is True
    assert "GITHUB_TOKEN" in of(bad_token, "error")[0]["message"]


@pytest.fixture(scope="module")
def refusing(github: FakeGitHub, model: FakeAnthropic) -> Iterator[Server]:
    """A server without a GitHub token, with ALLOWED_REPOS: each of its tests' requests is
    refused before a run starts, for the one reason the test looks at."""
    env = env_for(github, model, ALLOWED_REPOS="acme/*, tools/widgets")
    del env["GITHUB_TOKEN"]
    with shared_server("github-e2e-refusing", env) as server:
        yield server


async def test_allowed_repos_limits_what_may_be_touched(
    github: FakeGitHub, refusing: Server
) -> None:
    before = len(github.requests)
    server = refusing  # ALLOWED_REPOS="acme/*, tools/widgets"
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        refused = await client.post(
            f"{server.url}/api/code",
            json={"repo_url": "https://github.com/evil/widgets", "prompt": "x"},
        )
    assert refused.status_code == 422 and "ALLOWED_REPOS" in refused.json()["detail"]
    assert github.requests[before:] == []  # the fake is shared: none since this test began


async def test_without_a_token_github_runs_are_refused_before_they_start(
    github: FakeGitHub, refusing: Server
) -> None:
    before = len(github.requests)
    server = refusing  # no GITHUB_TOKEN; acme/widgets is in its ALLOWED_REPOS
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        refused = await client.post(
            f"{server.url}/api/code", json={"repo_url": "acme/widgets", "prompt": "x"}
        )
        health = (await client.get(f"{server.url}/health")).json()
    assert refused.status_code == 503 and "GITHUB_TOKEN is not set" in refused.json()["detail"]
    assert health["git_hosts"]["github"]["usable"] is False
    assert github.requests[before:] == []  # the fake is shared: none since this test began


async def test_an_existing_pull_request_is_updated_not_a_crash(
    github: FakeGitHub, tmp_path: Path
) -> None:
    github.create_repo("acme/existing-widgets", files=FILES)
    bare = github.bare_path("acme/existing-widgets")
    base = bare_git(bare, "rev-parse", "main").strip()
    tree = bare_git(bare, "rev-parse", "main^{tree}").strip()
    head = subprocess.run(
        ["git", "--git-dir", str(bare), "commit-tree", tree, "-p", base, "-m", "x"],
        check=True, capture_output=True, text=True,
        env={"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@a", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@a", "PATH": "/usr/bin:/bin"},
    ).stdout.strip()  # fmt: skip
    bare_git(bare, "update-ref", "refs/heads/backspace/x-1", head)
    host = GitHubHost(
        token=TOKEN, api_url=github.api_url, web_host="github.com",
        cache_root=tmp_path / "cache", redactor=Redactor([TOKEN]),
        payloads=BasePayloads(tmp_path / "payloads", 100, 50),
    )  # fmt: skip
    repo = await host.resolve(RepoRef("github", "acme/existing-widgets", "acme/existing-widgets"))

    def draft(title: str) -> PullRequestDraft:
        return PullRequestDraft(
            run_id="r", title=title, body="b", branch="backspace/x-1", head_sha=head,
            files=[], additions=0, deletions=0, diff="",
        )  # fmt: skip

    first = await host.open_pull_request(repo, draft("First"))
    second = await host.open_pull_request(repo, draft("Second"))
    assert first.number == second.number and first.url == second.url
    (pr,) = github.pulls("acme/existing-widgets")
    assert pr["title"] == "Second"


async def test_a_repository_without_draft_support_gets_a_normal_pr(
    github: FakeGitHub, model: FakeAnthropic, shared: Server
) -> None:
    github.create_repo("acme/nodraft-widgets", files=FILES, draft_supported=False)
    model.scenarios["gh-nodraft-e2e"] = [Reply([EDIT]), FINISH]
    server = shared
    events = await run(server, "acme/nodraft-widgets", "gh-nodraft-e2e")
    assert events[-1]["status"] == "succeeded"
    (pr,) = github.pulls("acme/nodraft-widgets")
    assert pr["draft"] is False and of(events, "pr_created")[0]["draft"] is False


async def test_concurrent_runs_on_one_repository_share_the_cache_safely(
    github: FakeGitHub, model: FakeAnthropic, shared: Server
) -> None:
    github.create_repo("acme/concurrent-widgets", files={f"f{i}.txt": f"{i}\n" for i in range(3)})
    for i in range(3):
        call = {"command": "create", "path": f"f{i}.txt", "file_text": f"changed {i}\n"}
        model.scenarios[f"gh-par-{i}-e2e"] = [
            Reply([ToolCall("str_replace_based_edit_tool", call)]),
            FINISH,
        ]
    server = shared
    results = await asyncio.gather(
        *(run(server, "acme/concurrent-widgets", f"gh-par-{i}-e2e") for i in range(3))
    )
    assert [r[-1]["status"] for r in results] == ["succeeded"] * 3
    assert len(github.pulls("acme/concurrent-widgets")) == 3
