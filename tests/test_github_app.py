"""backspace as a GitHub App, end to end: the real server, PyGithub, httpx and git against the
fake GitHub's App side (JWTs checked against the App's public key, installation tokens whose
repositories and permissions it enforces on REST and git smart HTTP, `issued_tokens`)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backspace.orchestrator.engines.claude_cli import ClaudeCli
from backspace.orchestrator.githosts.base import RepoRef
from backspace.orchestrator.githosts.base_payload import BasePayloads
from backspace.orchestrator.githosts.github import GitHubHost
from backspace.orchestrator.githosts.github_app import (
    FRONT_END_PERMISSIONS,
    RUN_PERMISSIONS,
    GitHubApp,
)
from backspace.orchestrator.redact import Redactor
from tests.fakes.anthropic import FakeAnthropic, Reply, Text, ToolCall
from tests.fakes.github import FakeApp, FakeGitHub, IssuedToken
from tests.fakes.github_app import private_key_pem
from tests.helpers import backspace, cli_env, shared_server, wait_for_process, workdir
from tests.scenarios import EDIT_SIGNUP
from tests.server import Server
from tests.sse import collect, events_of, of_type, post_run
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PERSONAL = "ghp_PERSONALTOKEN0123456789abcdefghijklmn"  # the fake's own; never given to backspace
ANTHROPIC_KEY = "sk-ant-api03-github-app-key-000111"
WEBHOOK_SECRET = "app-webhook-secret-0123456789"
FILES = {"app.py": "def signup(name):\n    return name\n", "README.md": "# Widgets\n"}
FINISH = Reply(
    [
        Text("Done."),
        ToolCall("finish", {"title": "Validate the signup name", "body": "Rejects empty names."}),
    ]
)


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub(token=PERSONAL, login="someone") as fake:
        yield fake


@pytest.fixture(scope="module")
def app(github: FakeGitHub) -> FakeApp:
    app = github.create_app("backspace")
    names = (
        "widgets",
        "other",
        "scope",
        "scope-other",
        "fails",
        "cancels",
        "canary",
        "hooked",
        "cc",
    )
    for name in (*names, "one", "two", "stopping"):
        github.create_repo(f"acme/{name}", files=FILES, private=True)
    # On every repository of acme: a run's token must still reach only its own.
    github.install_app(app, "acme", "all")
    github.create_repo("stranger/widgets", files=FILES)  # not installed there
    github.create_repo("readonly/widgets", files=FILES)
    github.install_app(
        app, "readonly", ["widgets"],
        permissions={"contents": "read", "pull_requests": "write", "issues": "write", "metadata": "read"},
    )  # fmt: skip
    return app


@pytest.fixture(scope="module")
def model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(scenarios={}) as fake:
        yield fake


@pytest.fixture(scope="module")
def key_file(app: FakeApp) -> Iterator[Path]:
    root = workdir("github-app-key")
    path = root / "backspace.private-key.pem"
    path.write_text(app.private_key_pem)
    yield path
    path.unlink()
    root.rmdir()


def env_for(github: FakeGitHub, model: FakeAnthropic, **extra: str) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": model.url,
        "GITHUB_API_URL": github.api_url,
        "GITHUB_WEB_HOST": "github.com",
        **extra,
    }


@pytest.fixture(scope="module")
def shared(
    github: FakeGitHub, model: FakeAnthropic, app: FakeApp, key_file: Path
) -> Iterator[Server]:
    """The App's id and the path of its key, its webhook's secret; no GITHUB_TOKEN."""
    env = env_for(
        github, model, GITHUB_APP_ID=str(app.id), GITHUB_APP_PRIVATE_KEY=str(key_file),
        GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )  # fmt: skip
    with shared_server("github-app", env) as server:
        github.app_webhook(app, f"{server.url}/github/webhook", WEBHOOK_SECRET)
        yield server


async def run(server: Server, repo: str, prompt: str, **body: Any) -> list[dict[str, Any]]:
    return await post_run(server.url, {"repo_url": repo, "prompt": prompt, **body})


def tokens_for(github: FakeGitHub, repo: str, since: int = 0) -> list[IssuedToken]:
    return [t for t in github.issued_tokens[since:] if t.repositories == [repo]]


def git(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    config = []
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        config = ["-c", f"http.extraHeader=Authorization: Basic {basic}"]
    return subprocess.run(
        ["git", *config, *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "GIT_TERMINAL_PROMPT": "0", "HOME": "/nonexistent"},
    )


def uses(token: IssuedToken, fragment: str) -> bool:
    return any(fragment in use for use in token.used_for)


def assert_a_run_token(token: IssuedToken, repo: str) -> None:
    assert token.repositories == [repo]
    assert token.permissions == RUN_PERMISSIONS
    assert token.revoked is not None, "the run's token was not revoked"


async def test_a_run_uses_a_token_of_its_own_for_its_repository_and_revokes_it(
    github: FakeGitHub, model: FakeAnthropic, app: FakeApp, shared: Server
) -> None:
    before = len(github.issued_tokens)
    model.scenarios["app-run"] = [Reply([EDIT_SIGNUP]), FINISH]
    events = await run(
        shared, "https://github.com/acme/widgets", "app-run: validate names",
        co_author="Ada Lovelace <ada@example.com>",
    )  # fmt: skip
    assert events[-1]["status"] == "succeeded", events[-2:]
    (token,) = tokens_for(github, "acme/widgets", before)
    assert len(github.issued_tokens) == before + 1, "one token for one run"
    assert_a_run_token(token, "acme/widgets")
    # Used for the fetch, the push and the pull request, and for nothing after its revocation.
    assert uses(token, "git-upload-pack acme/widgets"), token.used_for
    assert uses(token, "git-receive-pack acme/widgets"), token.used_for
    assert uses(token, "POST /repos/acme/widgets/pulls"), token.used_for
    assert token.refused == []
    (pr,) = github.pulls("acme/widgets")
    assert pr["user"]["login"] == "backspace[bot]"
    # The commit is the App's bot's, and the requester stays a co-author.
    branch = of_type(events, "pr_created")[0]["branch"]
    log = subprocess.run(
        ["git", "--git-dir", str(github.bare_path("acme/widgets")), "log", "-1",
         "--format=%an <%ae>%n%B", branch],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert log.startswith(f"backspace[bot] <{app.bot_id}+backspace[bot]@users.noreply.github.com>")
    assert "Co-authored-by: Ada Lovelace <ada@example.com>" in log
    # Revoked means dead: GitHub answers 401.
    async with httpx.AsyncClient(verify=TLS) as client:
        answer = await client.get(
            f"{github.api_url}/repos/acme/widgets",
            headers={"Authorization": f"token {token.token}"},
        )
    assert answer.status_code == 401


async def test_the_run_token_reaches_no_other_repository_while_the_run_holds_it(
    github: FakeGitHub, model: FakeAnthropic, shared: Server
) -> None:
    """The App is installed on all of acme; the run's token still reaches acme/scope alone."""
    before = len(github.issued_tokens)
    marker = f"slept-{uuid.uuid4().hex[:12]}"
    model.scenarios["app-scope"] = [
        Reply([ToolCall("bash", {"command": f"sleep 6; echo {marker}"})]),
        Reply([EDIT_SIGNUP]),
        FINISH,
    ]
    running = asyncio.create_task(run(shared, "acme/scope", "app-scope"))
    await wait_for_process(marker)
    (token,) = tokens_for(github, "acme/scope", before)
    assert token.alive
    other = f"{github.git_url}/acme/scope-other.git"
    async with httpx.AsyncClient(verify=TLS) as client:
        auth = {"Authorization": f"token {token.token}"}
        own = await client.get(f"{github.api_url}/repos/acme/scope", headers=auth)
        theirs = await client.get(f"{github.api_url}/repos/acme/scope-other", headers=auth)
        pull = await client.post(
            f"{github.api_url}/repos/acme/scope-other/pulls",
            headers=auth,
            json={"title": "x", "head": "main", "base": "main"},
        )
    assert own.status_code == 200, own.text
    assert theirs.status_code == 404 and pull.status_code == 404
    fetch = git("ls-remote", other, token=token.token)
    push = git(
        "--git-dir", str(github.bare_path("acme/scope")), "push", "--dry-run", other,
        "main:refs/heads/evil", token=token.token,
    )  # fmt: skip
    assert fetch.returncode != 0 and push.returncode != 0
    assert "evil" not in github.branches("acme/scope-other")
    assert token.refused, "the fake saw the refusals"
    events = await running
    assert events[-1]["status"] == "succeeded", events[-2:]
    assert_a_run_token(token, "acme/scope")


async def test_concurrent_runs_each_use_only_their_own_token(
    github: FakeGitHub, model: FakeAnthropic, shared: Server
) -> None:
    """Two runs at once on one host: neither uses the other's token (a token kept on the host
    object rather than in the run's context would be overwritten by the second run)."""
    before = len(github.issued_tokens)
    for name in ("one", "two"):
        model.scenarios[f"app-{name}"] = [
            Reply([ToolCall("bash", {"command": "sleep 2"})]),
            Reply([EDIT_SIGNUP]),
            FINISH,
        ]
    one, two = await asyncio.gather(
        run(shared, "acme/one", "app-one"), run(shared, "acme/two", "app-two")
    )
    assert one[-1]["status"] == two[-1]["status"] == "succeeded", (one[-2:], two[-2:])
    for name, other in (("one", "two"), ("two", "one")):
        (token,) = tokens_for(github, f"acme/{name}", before)
        assert_a_run_token(token, f"acme/{name}")
        assert uses(token, f"git-receive-pack acme/{name}")
        assert uses(token, f"POST /repos/acme/{name}/pulls")
        assert not uses(token, f"acme/{other}") and token.refused == [], token.used_for


async def test_the_webhook_front_end_uses_its_own_smaller_token_per_repository(
    github: FakeGitHub, model: FakeAnthropic, app: FakeApp, shared: Server
) -> None:
    """A mention by a writer: the 👀, the status comment, the run; all as backspace[bot]."""
    repo = "acme/hooked"
    before = len(github.issued_tokens)
    number = github.create_issue(repo, "Signup accepts empty names", "app-hook: fix", user="zed")
    github.set_permission(repo, "alice", "write")
    model.scenarios["app-hook"] = [Reply([EDIT_SIGNUP]), FINISH]
    asked = github.comment(repo, number, "@backspace app-hook: fix it", user="alice")
    deadline = time.monotonic() + 60
    while not github.pulls(repo) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    (pr,) = github.pulls(repo)
    assert pr["user"]["login"] == "backspace[bot]"
    (reaction,) = [r for r in github.reactions if r["id"] == asked["id"]]
    assert reaction["user"] == "backspace[bot]"
    front = [t for t in github.issued_tokens[before:] if t.permissions == FRONT_END_PERMISSIONS]
    assert front and all(t.repositories == [repo] for t in front), front
    assert uses(front[0], f"POST /repos/{repo}/issues/comments/{asked['id']}/reactions"), front[
        0
    ].used_for
    run_tokens = [t for t in github.issued_tokens[before:] if t.permissions == RUN_PERMISSIONS]
    assert len(run_tokens) == 1
    # The fake records a use once its answer is ready: the PR may be seen a moment before.
    while not uses(run_tokens[0], f"POST /repos/{repo}/pulls") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert uses(run_tokens[0], f"POST /repos/{repo}/pulls"), run_tokens[0].used_for
    # backspace's own status comment (by backspace[bot], quoting the request) starts nothing.
    while time.monotonic() < deadline:
        comments = github.comments(repo, number)
        if any("Finished" in c["body"] for c in comments if c["user"]["login"] == app.bot_login):
            break
        await asyncio.sleep(0.1)
    assert len(github.pulls(repo)) == 1


async def test_a_stopping_server_revokes_the_front_ends_tokens(
    github: FakeGitHub, model: FakeAnthropic, app: FakeApp, key_file: Path
) -> None:
    """The front end keeps a token per repository for most of an hour: not past the server.
    An App of its own, so the module's server (which gets the module App's deliveries) mints
    none of the tokens looked at here."""
    repo = "acme/stopping"
    stopper = github.create_app("backspace-stopping")
    github.install_app(stopper, "acme", ["stopping"])
    env = env_for(
        github, model, GITHUB_APP_ID=str(stopper.id), GITHUB_APP_PRIVATE_KEY=str(key_file),
        GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )  # fmt: skip
    number = github.create_issue(repo, "Question", "not for backspace", user="zed")
    github.set_permission(repo, "alice", "read")  # a reader: 👀 never comes, but the check does

    def minted() -> list[IssuedToken]:
        return [t for t in github.issued_tokens if t.installation.app.id == stopper.id]

    with shared_server("github-app-stopping", env) as server:
        # (A dead hook afterwards: the fake records a refused connection, nothing more.)
        github.app_webhook(stopper, f"{server.url}/github/webhook", WEBHOOK_SECRET)
        github.comment(repo, number, "@backspace app-stop: hello", user="alice")
        deadline = time.monotonic() + 20
        while not minted() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        (token,) = minted()
        assert token.permissions == FRONT_END_PERMISSIONS and token.alive
        while not uses(token, "permission") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert uses(token, f"GET /repos/{repo}/collaborators/alice/permission"), token.used_for
    assert token.revoked is not None, "the front end's token outlived the server"


async def test_the_token_is_revoked_after_a_failure(
    github: FakeGitHub, model: FakeAnthropic, shared: Server
) -> None:
    before = len(github.issued_tokens)
    github.fail("POST", r"^/repos/acme/fails/pulls$", 422, "No commits between main and x")
    model.scenarios["app-fails"] = [Reply([EDIT_SIGNUP]), FINISH]
    events = await run(shared, "acme/fails", "app-fails")
    assert events[-1]["status"] == "failed", events[-2:]
    assert of_type(events, "error")[0]["code"] == "github_rejected"
    (token,) = tokens_for(github, "acme/fails", before)
    assert uses(token, "git-receive-pack acme/fails")
    assert_a_run_token(token, "acme/fails")


async def test_the_token_is_revoked_after_a_cancel(
    github: FakeGitHub, model: FakeAnthropic, shared: Server
) -> None:
    before = len(github.issued_tokens)
    marker = f"slept-{uuid.uuid4().hex[:12]}"
    model.scenarios["app-cancel"] = [
        Reply([ToolCall("bash", {"command": f"sleep 120; echo {marker}"})]),
        FINISH,
    ]
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        created = (
            await client.post(
                f"{shared.url}/api/code",
                json={"repo_url": "acme/cancels", "prompt": "app-cancel"},
                headers={"Accept": "application/json"},
            )
        ).json()
        await wait_for_process(marker)
        (token,) = tokens_for(github, "acme/cancels", before)
        assert token.alive
        response = await client.post(f"{shared.url}/api/runs/{created['id']}/cancel")
        assert response.status_code == 202
        _, frames = await collect(client, "GET", f"{shared.url}/api/runs/{created['id']}/events")
    assert events_of(frames)[-1]["status"] == "cancelled"
    deadline = time.monotonic() + 5
    while token.revoked is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert_a_run_token(token, "acme/cancels")


async def test_not_installed_and_a_missing_permission_are_clear_errors(
    github: FakeGitHub, model: FakeAnthropic, shared: Server
) -> None:
    before = len(github.issued_tokens)
    stranger = await run(shared, "stranger/widgets", "app-none")
    error = of_type(stranger, "error")[0]
    assert error["code"] == "github_app_not_installed", error
    assert (
        "install backspace on stranger/widgets: <https://github.com/apps/backspace/installations/new>"
        in error["message"]
    )
    readonly = await run(shared, "readonly/widgets", "app-readonly")
    error = of_type(readonly, "error")[0]
    assert error["code"] == "github_app_permission", error
    assert "contents: write (it has read)" in error["message"]
    assert github.issued_tokens[before:] == [], "no token minted for either"


async def test_github_refusing_the_jwt_for_its_time_says_to_check_the_clock(
    github: FakeGitHub, shared: Server
) -> None:
    try:
        github.clock_offset = -3600  # GitHub an hour behind: the JWT is issued in its future
        behind = await run(shared, "acme/other", "app-clock")
        github.clock_offset = 3600  # an hour ahead: the JWT has expired
        ahead = await run(shared, "acme/other", "app-clock")
    finally:
        github.clock_offset = 0
    for events in (behind, ahead):
        error = of_type(events, "error")[0]
        assert error["code"] == "github_app_clock", error
        assert "check this server's clock" in error["message"]
    assert "'Issued at' claim ('iat')" in of_type(behind, "error")[0]["message"]
    assert "'Expiration time' claim ('exp')" in of_type(ahead, "error")[0]["message"]


async def test_health_says_app_mode_and_that_it_authenticates(
    model: FakeAnthropic, shared: Server
) -> None:
    """/health tells GitHub's last answer to the App (a run that changes nothing asks it)."""
    model.scenarios["app-health"] = [FINISH]
    events = await run(shared, "acme/other", "app-health")
    assert events[-1]["status"] == "no_changes", events[-2:]
    async with httpx.AsyncClient(verify=TLS) as client:
        health = (await client.get(f"{shared.url}/health")).json()
    github = health["git_hosts"]["github"]
    assert github["mode"] == "app" and github["usable"] is True
    assert "authenticates" in github["message"]


async def test_a_key_that_is_not_the_apps_is_a_clear_error(
    github: FakeGitHub, model: FakeAnthropic, app: FakeApp
) -> None:
    other_key = private_key_pem(other=True)
    env = env_for(github, model, GITHUB_APP_ID=str(app.id), GITHUB_APP_PRIVATE_KEY=other_key)
    with shared_server("github-app-wrong-key", env) as server:
        events = await run(server, "acme/other", "app-wrong-key")
        async with httpx.AsyncClient(verify=TLS) as client:
            health = (await client.get(f"{server.url}/health")).json()
        logs = server.logs()
    error = of_type(events, "error")[0]
    assert error["code"] == "github_app_bad_key", error
    assert f"not a key of the App GITHUB_APP_ID={app.id}" in error["message"]
    assert (
        "cannot authenticate: GitHub could not verify" in health["git_hosts"]["github"]["message"]
    )
    for line in (other_key.splitlines()[1], app.private_key_pem.splitlines()[1]):
        assert line not in repr(events) + repr(health) + logs


def test_doctor_names_the_mode_and_an_app_id_github_does_not_know(
    github: FakeGitHub, app: FakeApp, key_file: Path, tmp_path: Path
) -> None:
    env = cli_env(
        tmp_path, GITHUB_API_URL=github.api_url, GITHUB_APP_PRIVATE_KEY=str(key_file),
        BACKSPACE_ALLOW_UNSANDBOXED="true",
    )  # fmt: skip
    good = backspace(tmp_path, "doctor", env={**env, "GITHUB_APP_ID": str(app.id)})
    wrong = backspace(tmp_path, "doctor", env={**env, "GITHUB_APP_ID": "999999"})
    assert "GitHub App" in good.stdout and "authenticates" in good.stdout, good.stdout
    assert "GITHUB_APP_ID=999999" in wrong.stdout and "Integration not found" in wrong.stdout
    body = app.private_key_pem.splitlines()[1]
    assert body not in good.stdout + good.stderr + wrong.stdout + wrong.stderr


def test_a_malformed_key_stops_the_server_with_a_message(tmp_path: Path) -> None:
    env = cli_env(
        tmp_path,
        GITHUB_APP_ID="1",
        GITHUB_APP_PRIVATE_KEY="-----BEGIN RSA PRIVATE KEY-----\\nAAAA\\n-----END RSA PRIVATE KEY-----",
    )
    result = backspace(tmp_path, "doctor", env=env)
    assert result.returncode != 0
    assert (
        "GITHUB_APP_PRIVATE_KEY is not a readable PEM private key" in result.stdout + result.stderr
    )
    assert "AAAA" not in result.stdout + result.stderr


async def test_no_app_token_nor_key_reaches_the_sandbox_an_event_or_a_log_line(
    github: FakeGitHub, model: FakeAnthropic, app: FakeApp, shared: Server
) -> None:
    before = len(github.issued_tokens)
    key_line = app.private_key_pem.splitlines()[5]
    probe = (
        "env; echo ---; cat .git/config; git config --list --show-origin; echo ---; "
        "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; "
        f"grep -rsl -e 'ghs''_' -e '{key_line[:20]}' / --exclude-dir=proc --exclude-dir=sys "
        "--exclude-dir=dev --exclude-dir=usr --exclude-dir=opt 2>/dev/null; echo probe-done"
    )
    model.scenarios["app-canary"] = [
        Reply([ToolCall("bash", {"command": probe})]),
        Reply([EDIT_SIGNUP]),
        FINISH,
    ]
    events = await run(shared, "acme/canary", "app-canary")
    # An error too: its message must not carry a token either.
    stranger = await run(shared, "stranger/widgets", "app-canary-error")
    assert events[-1]["status"] == "succeeded", events[-2:]
    output = of_type(events, "Tool: Bash")[0]["output"]
    assert "probe-done" in output and "[core]" in output
    sent_back = str(model.requests_for("app-canary")[1]["messages"][-1])
    (token,) = tokens_for(github, "acme/canary", before)
    assert uses(token, "git-receive-pack acme/canary")
    secrets = [t.token for t in github.issued_tokens] + [
        line for line in app.private_key_pem.splitlines() if not line.startswith("-----")
    ]
    places = [output, sent_back, repr(events), repr(stranger), shared.logs()]
    places.append(repr(github.pulls("acme/canary")))
    for place in places:
        assert "ghs_" not in place
        for secret in secrets:
            assert secret not in place


async def test_with_claude_code_too_no_app_token_nor_key_reaches_the_sandbox(
    github: FakeGitHub, model: FakeAnthropic, app: FakeApp, shared: Server
) -> None:
    """The claude-code engine (the real CLI, in the sandbox) under the App: same canary."""
    usable, message = ClaudeCli().check()
    assert usable, f"{message}: run scripts/bootstrap --dev"
    before = len(github.issued_tokens)
    probe = (
        "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; git config --list; "
        "grep -rsl -e 'ghs''_' -e 'PRIVATE'' KEY' / --exclude-dir=proc --exclude-dir=sys "
        "--exclude-dir=dev --exclude-dir=usr --exclude-dir=opt 2>/dev/null; echo probe-done"
    )
    model.scenarios["app-cc"] = [
        Reply([ToolCall("Bash", {"command": probe, "description": "look around"})]),
        Reply(
            [
                ToolCall(
                    "Edit",
                    {
                        "file_path": "/workspace/app.py",
                        "old_string": "    return name\n",
                        "new_string": "    return name.strip()\n",
                    },
                )
            ]
        ),
        Reply([Text("PR title: Strip the name\nPR body:\nStrips it.")]),
    ]
    events = await run(shared, "acme/cc", "app-cc: strip", engine="claude-code")
    assert events[-1]["status"] == "succeeded", events[-3:]
    output = next(e for e in of_type(events, "Tool: Bash") if e["command"] == probe)["output"]
    assert "probe-done" in output
    (token,) = tokens_for(github, "acme/cc", before)
    assert_a_run_token(token, "acme/cc")
    assert uses(token, "git-receive-pack acme/cc")
    secrets = [t.token for t in github.issued_tokens] + [
        line for line in app.private_key_pem.splitlines() if not line.startswith("-----")
    ]
    sent = json.dumps(model.requests_for("app-cc"))
    for place in (output, sent, json.dumps(events), shared.logs()):
        assert "ghs_" not in place
        for secret in secrets:
            assert secret not in place


async def test_a_run_cancelled_while_github_mints_still_has_its_token_revoked(
    github: FakeGitHub, app: FakeApp
) -> None:
    """In-process, the host itself: a run cancelled while its token request is in flight; the
    token GitHub mints all the same is revoked, not left alive for an hour."""
    root = workdir("github-app-mint")
    redactor = Redactor()
    host = GitHubHost(
        token=None,
        api_url=github.api_url,
        web_host="github.com",
        cache_root=root / "cache",
        redactor=redactor,
        payloads=BasePayloads(root / "payloads", 10, 1),
        app=GitHubApp(
            app_id=app.id,
            private_key=app.private_key_pem,
            api_url=github.api_url,
            web_host="github.com",
            redactor=redactor,
        ),
    )
    before = len(github.issued_tokens)
    entered = asyncio.Event()

    async def a_run() -> None:
        async with host.run_access(
            RepoRef(host="github", name="acme/other", location="acme/other")
        ):
            entered.set()

    try:
        seen = len(github.requests)
        task = asyncio.create_task(a_run())
        # The installation is found; GitHub then stalls (its lock taken) before it takes the
        # token request, which is in flight when the run is cancelled: without care, GitHub
        # mints the token after the client has gone, and no one revokes it.
        while not any(
            r["path"].endswith("/acme/other/installation") and r.get("status") is not None
            for r in github.requests[seen:]
        ):
            await asyncio.sleep(0)
        with github._lock:
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            minted = github.issued_tokens[before:]
            if minted and all(t.revoked is not None for t in minted):
                break
            await asyncio.sleep(0.05)
        (token,) = github.issued_tokens[before:]
        assert token.revoked is not None, "minted after the cancel, and left alive"
        assert not entered.is_set()
    finally:
        await host.aclose()
        shutil.rmtree(root, ignore_errors=True)


def test_the_app_settings_take_a_path_or_the_pem_and_say_what_is_wrong(
    app: FakeApp, key_file: Path, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from backspace.config import SettingsError, load_settings

    pem = app.private_key_pem
    by_path = load_settings(GITHUB_APP_ID=str(app.id), GITHUB_APP_PRIVATE_KEY=str(key_file))
    escaped = pem.strip().replace("\n", "\\n")  # one .env line
    inline = load_settings(GITHUB_APP_ID=str(app.id), GITHUB_APP_PRIVATE_KEY=escaped)
    assert by_path.github_app_pem == inline.github_app_pem == pem.strip() + "\n"
    assert by_path.github_app_configured and not by_path.github_identity_set
    assert load_settings(
        GITHUB_APP_ID="1", GITHUB_APP_PRIVATE_KEY=pem, GITHUB_EMAIL="a@b.c"
    ).github_identity_set
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    cases = {
        "GITHUB_APP_ID (the App's numeric id": {"GITHUB_APP_PRIVATE_KEY": pem},
        "and GITHUB_APP_PRIVATE_KEY (its private key": {"GITHUB_APP_ID": "1"},
        "nor the path of a readable .pem file": {
            "GITHUB_APP_ID": "1",
            "GITHUB_APP_PRIVATE_KEY": str(tmp_path / "missing.pem"),
        },
        "is not an RSA key": {"GITHUB_APP_ID": "1", "GITHUB_APP_PRIVATE_KEY": ec_pem},
        "GITHUB_APP_ID: Input should be a valid integer": {
            "GITHUB_APP_ID": "backspace",
            "GITHUB_APP_PRIVATE_KEY": pem,
        },
    }
    for expected, settings in cases.items():
        with pytest.raises(SettingsError) as refused:
            load_settings(**settings)
        assert expected in str(refused.value), str(refused.value)
        for line in (pem + ec_pem).splitlines()[1:-1]:
            assert line not in str(refused.value)
