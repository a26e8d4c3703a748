"""End to end through the real server: real uvicorn, real git, real bubblewrap, the SDK against
the loopback fake model, and SSE read as bytes by a real HTTP client."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, git, make_repo
from tests.fakes.anthropic import Fail, FakeAnthropic, Reply, Text, ToolCall
from tests.helpers import (
    Shared,
    assert_clean,
    base_env,
    shared_rig,
    stop_and_remove,
    wait_for_process,
    wait_status,
    workdir,
)
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import Server, start_server
from tests.sse import collect, events_of, frames, of_type, post_run
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

EDIT = EDIT_SIGNUP


def edit_scenario() -> list[Any]:
    return [
        Reply([Text("Let me look at the code."), ToolCall("bash", {"command": "cat app.py"})]),
        Reply([EDIT]),
        Reply([ToolCall("str_replace_based_edit_tool", {"command": "view", "path": "app.py"})]),
        finish(),
    ]


def slow_scenario(seconds: int = 60) -> tuple[list[Any], str]:
    """A run whose command sleeps, and a fragment of that command's line unique to this call
    (another test, or another pytest session on the machine, may sleep as long)."""
    marker = f"slept-{uuid.uuid4().hex[:12]}"
    command = f"sleep {seconds}; echo {marker}"
    return [Reply([ToolCall("bash", {"command": command})]), finish()], marker


async def run_to_end(
    server: Server, prompt: str, repo: str = "local:widgets", **body: Any
) -> list[dict[str, Any]]:
    return await post_run(server.url, {"repo_url": repo, "prompt": prompt, **body})


by_type = of_type


# The shared server's secrets: the secrets test checks none leaks from any run on it, the
# publishing-policy test that a pasted GITHUB_TOKEN is caught.
SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-api03-SECRETANTHROPIC0001",
    "GITHUB_TOKEN": "ghp_SECRETGITHUB0000000000000000000002",
    "SLACK_BOT_TOKEN": "xoxb-SECRETSLACK-0003",
    "SLACK_SIGNING_SECRET": "SECRETSIGNING0004",
    "DAYTONA_API_KEY": "SECRETDAYTONA0005",  # with BACKSPACE_SANDBOX=local
}


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    with shared_rig(
        "api-e2e",
        lambda repos, model: base_env(
            repos,
            model,
            BACKSPACE_SSE_PING="0.3",  # for the ping test; other tests skip comment frames
            BACKSPACE_MODEL_RETRIES="2",
            # For the bad-input test; every other test's prompt and body are well within them.
            BACKSPACE_MAX_PROMPT_CHARS="500",
            BACKSPACE_MAX_BODY_BYTES="4096",
            MAX_CONCURRENT_RUNS="4",
            BACKSPACE_SANDBOX="local",
            **SECRETS,
        ),
    ) as rig:
        yield rig


API_KEY = "backspace-api-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def authed() -> Iterator[Shared]:
    """A server behind an API key, with a short wall-clock limit: the auth test's and the
    wall-clock test's (each waits for its own run to end, so neither sees the other's)."""
    with shared_rig(
        "api-e2e-auth",
        lambda repos, model: base_env(
            repos, model, REQUIRE_AUTH="true", API_KEY=API_KEY, MAX_SANDBOX_DURATION="6"
        ),
    ) as rig:
        yield rig


class Restarts:
    """One database through the restart tests: a test starts from the server the one before
    left running (a fresh start costs a second or two of CPU), or a fresh one; `restart` starts
    the next process on the same database and directory (its log file continues)."""

    def __init__(self, root: Path, repos: Path, model: FakeAnthropic) -> None:
        self.root, self.repos, self.model = root, repos, model
        self.env = base_env(repos, model, BACKSPACE_SHUTDOWN_GRACE="1")
        self.server: Server | None = None

    def live(self) -> Server:
        if self.server is None or self.server.process.poll() is not None:
            return self.restart()
        return self.server

    def restart(self) -> Server:
        self.server = start_server(self.root / "server", self.env)
        return self.server


@pytest.fixture(scope="module")
def restarts() -> Iterator[Restarts]:
    root, repos = workdir("api-e2e-restarts"), workdir("api-e2e-restarts-repos")
    try:
        with FakeAnthropic(scenarios={}) as model:
            rig = Restarts(root, repos, model)
            try:
                yield rig
            finally:
                if rig.server is not None:
                    stop_and_remove(rig.server, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(repos, ignore_errors=True)


async def test_a_whole_run_streams_every_step_and_pushes_exactly_the_change(
    shared: Shared,
) -> None:
    origin = make_repo(shared.repos, "whole")
    base_sha = git(origin, "rev-parse", "HEAD").strip()
    shared.model.scenarios["validation-e2e"] = edit_scenario()
    server = shared.server

    async with httpx.AsyncClient(verify=TLS, timeout=60) as client:
        response, frames = await collect(
            client, "POST", f"{server.url}/api/code",
            json={"repo_url": "local:whole", "prompt": "validation-e2e: add input validation to signup"},
        )  # fmt: skip
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = events_of(frames)
    assert all(f.event is None for f in frames), (
        "no `event:` lines, so EventSource.onmessage sees all"
    )
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [f.id for f in frames if f.data] == [str(e["seq"]) for e in events]
    run_id = events[0]["run_id"]
    assert all(e["run_id"] == run_id == e["request_id"] for e in events)

    assert events[0]["type"] == "start"
    assert events[0]["repo_url"] == "local:whole" and events[0]["run_url"].endswith(run_id)
    stages = [e["stage"] for e in by_type(events, "progress")]
    firsts = list(dict.fromkeys(stages))
    assert firsts == ["sandbox", "cloning", "agent", "validating", "pushing", "pr"]
    percentages = [e["percentage"] for e in by_type(events, "progress")]
    assert percentages == sorted(percentages)
    assert by_type(events, "AI Message")[0]["message"] == "Let me look at the code."
    bash = by_type(events, "Tool: Bash")[0]
    assert (
        bash["command"] == "cat app.py"
        and "def signup" in bash["output"]
        and bash["exit_code"] == 0
    )
    edit = by_type(events, "Tool: Edit")[0]
    assert edit["filepath"] == "app.py" and "raise ValueError" in edit["new_str"]
    assert by_type(events, "Tool: Read")[0]["filepath"] == "app.py"
    assert by_type(events, "usage")[-1]["cost_usd"] > 0
    pr = by_type(events, "pr_created")[0]
    assert pr["files_changed"] == 1 and pr["additions"] == 2 and pr["deletions"] == 0
    assert pr["branch"].startswith("backspace/validation-e2e-add-input") and pr["branch"].endswith(
        run_id[:8]
    )
    assert by_type(events, "error") == []
    complete = events[-1]
    assert complete["type"] == "complete" and complete["status"] == "succeeded"
    assert complete["pr_url"] == pr["pr_url"] and complete["duration_ms"] > 0
    assert len(by_type(events, "complete")) == 1

    # The origin has the branch: one commit on the base, by backspace, with exactly the change.
    branch = pr["branch"]
    assert git(origin, "rev-parse", f"{branch}^").strip() == base_sha
    assert git(origin, "log", "-1", "--format=%an <%ae>|%s", branch).strip() == (
        "backspace-bot <backspace-bot@users.noreply.github.com>|Validate the signup name"
    )
    assert git(origin, "diff", "--name-only", base_sha, branch).split() == ["app.py"]
    assert "+    if not name:" in git(origin, "diff", base_sha, branch)
    assert git(origin, "rev-parse", "main").strip() == base_sha

    async with httpx.AsyncClient(verify=TLS) as client:
        page = await client.get(pr["pr_url"])
        run = (await client.get(f"{server.url}/api/runs/{run_id}")).json()
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "raise ValueError(&#x27;name is required&#x27;)" in page.text
    assert "Validate the signup name" in page.text
    assert (
        run["status"] == "succeeded" and run["pr_url"] == pr["pr_url"] and run["branch"] == branch
    )
    assert_clean(server)


async def test_resume_after_last_event_id_gives_exactly_the_rest(shared: Shared) -> None:
    make_repo(shared.repos, "resume")
    steps = edit_scenario()
    steps[1] = Reply([EDIT], delay=0.4)  # keep the run live while the client reconnects
    steps[2] = Reply(steps[2].blocks, delay=0.4)
    shared.model.scenarios["resume-e2e"] = steps
    server = shared.server
    async with httpx.AsyncClient(verify=TLS, timeout=60) as client:
        _, first = await collect(
            client,
            "POST",
            f"{server.url}/api/code",
            json={"repo_url": "local:resume", "prompt": "resume-e2e"},
            stop_after=5,
        )
        head = events_of(first)
        run_id = head[0]["run_id"]
        _, rest = await collect(
            client, "GET", f"{server.url}/api/runs/{run_id}/events", headers={"Last-Event-ID": "5"}
        )
        _, again = await collect(client, "GET", f"{server.url}/api/runs/{run_id}/events?after=2")
    tail = events_of(rest)
    assert [e["seq"] for e in head] == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in tail] == list(range(6, tail[-1]["seq"] + 1))
    assert tail[-1]["type"] == "complete" and tail[-1]["status"] == "succeeded"
    assert [e["seq"] for e in events_of(again)] == list(range(3, tail[-1]["seq"] + 1))


async def test_a_client_that_disconnects_does_not_cancel_its_run(shared: Shared) -> None:
    make_repo(shared.repos, "disconnect")
    steps = edit_scenario()
    steps[1] = Reply([EDIT], delay=0.5)
    shared.model.scenarios["disconnect-e2e"] = steps
    server = shared.server
    async with httpx.AsyncClient(verify=TLS, timeout=60) as client:
        _, frames = await collect(
            client,
            "POST",
            f"{server.url}/api/code",
            json={"repo_url": "local:disconnect", "prompt": "disconnect-e2e"},
            stop_after=2,
        )
    run = await wait_status(server, events_of(frames)[0]["run_id"])
    assert run["status"] == "succeeded" and run["pr_url"]


async def test_a_silent_stream_gets_ping_comments(shared: Shared) -> None:
    make_repo(shared.repos, "ping")
    steps = edit_scenario()
    steps[1] = Reply([EDIT], delay=1.2)  # the model thinks for a while: the stream is silent
    shared.model.scenarios["ping-e2e"] = steps
    server = shared.server  # BACKSPACE_SSE_PING=0.3
    async with httpx.AsyncClient(verify=TLS, timeout=60) as client:
        _, frames = await collect(
            client,
            "POST",
            f"{server.url}/api/code",
            json={"repo_url": "local:ping", "prompt": "ping-e2e"},
        )
    pings = [f for f in frames if not f.data]
    assert len(pings) >= 2 and all(f.comments == ["ping"] and f.id is None for f in pings)
    assert events_of(frames)[-1]["status"] == "succeeded"


async def test_a_slow_commands_output_streams_before_it_ends(shared: Shared) -> None:
    make_repo(shared.repos, "live")
    slow = "for i in 1 2 3; do echo tick-$i; sleep 0.6; done"
    shared.model.scenarios["live-e2e"] = [Reply([ToolCall("bash", {"command": slow})]), finish()]
    server = shared.server
    seen: dict[str, float] = {}
    async with httpx.AsyncClient(verify=TLS, timeout=60) as client:
        body = {"repo_url": "local:live", "prompt": "live-e2e"}
        async with client.stream("POST", f"{server.url}/api/code", json=body) as response:
            async for frame in frames(response):
                if not frame.data:
                    continue
                event = frame.json
                if event["type"] == "output" and "tick-1" in event["output"]:
                    seen.setdefault("tick-1", time.monotonic())
                if event["type"] == "Tool: Bash":
                    seen["done"] = time.monotonic()
                    assert event["output"] == "tick-1\ntick-2\ntick-3\n"
    assert seen["done"] - seen["tick-1"] > 0.9, "the first line arrived while the command ran"


async def test_json_clients_get_202_with_the_run(shared: Shared) -> None:
    make_repo(shared.repos, "json")
    shared.model.scenarios["json-e2e"] = edit_scenario()
    server = shared.server
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        response = await client.post(
            f"{server.url}/api/code",
            json={"repoUrl": "local:json", "prompt": "json-e2e"},
            headers={"Accept": "application/json"},
        )
        assert response.status_code == 202
        run = response.json()
        assert (
            run["status"] == "queued" and response.headers["location"] == f"/api/runs/{run['id']}"
        )
        assert run["events_url"].endswith(f"/api/runs/{run['id']}/events")
        final = await wait_status(server, run["id"])
        listed = (await client.get(f"{server.url}/api/runs")).json()["runs"]
    assert final["status"] == "succeeded"
    # The server is shared: of the runs listed, this test's repository has exactly its one.
    assert [r["id"] for r in listed if r["repo_url"] == "local:json"] == [run["id"]]


async def test_cancel_mid_command_kills_it_and_ends_cancelled(shared: Shared) -> None:
    make_repo(shared.repos, "cancel")
    shared.model.scenarios["cancel-e2e"], marker = slow_scenario(120)
    server = shared.server
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        run = (
            await client.post(
                f"{server.url}/api/code",
                json={"repo_url": "local:cancel", "prompt": "cancel-e2e"},
                headers={"Accept": "application/json"},
            )
        ).json()
        await wait_for_process(marker)
        started = time.monotonic()
        response = await client.post(f"{server.url}/api/runs/{run['id']}/cancel")
        assert response.status_code == 202
        _, frames = await collect(client, "GET", f"{server.url}/api/runs/{run['id']}/events")
        again = await client.post(f"{server.url}/api/runs/{run['id']}/cancel")
    events = events_of(frames)
    assert time.monotonic() - started < 10
    assert events[-1]["type"] == "complete" and events[-1]["status"] == "cancelled"
    assert by_type(events, "error") == [] and len(by_type(events, "complete")) == 1
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    assert_clean(server)


async def test_the_wall_clock_limit_ends_the_run_timed_out(authed: Shared) -> None:
    make_repo(authed.repos, "timeout")
    authed.model.scenarios["timeout-e2e"], _ = slow_scenario(121)
    server = authed.server  # MAX_SANDBOX_DURATION=6
    started = time.monotonic()
    async with httpx.AsyncClient(verify=TLS, timeout=60) as client:
        response, got = await collect(
            client, "POST", f"{server.url}/api/code",
            json={"repo_url": "local:timeout", "prompt": "timeout-e2e"}, headers=AUTH,
        )  # fmt: skip
    assert response.status_code == 200, response.text
    events = events_of(got)
    assert time.monotonic() - started < 15
    error, complete = events[-2], events[-1]
    assert error["type"] == "error" and error["code"] == "wall_clock_limit"
    assert "MAX_SANDBOX_DURATION" in error["message"] and error["stage"] == "agent"
    assert complete["type"] == "complete" and complete["status"] == "timed_out"
    assert len(by_type(events, "error")) == 1
    assert_clean(server)


async def test_a_model_that_keeps_failing_fails_the_run_after_retries(shared: Shared) -> None:
    make_repo(shared.repos, "overloaded")
    fake_model = shared.model
    fake_model.scenarios["overloaded-e2e"] = [[Fail(529, times=99)]]
    server = shared.server  # BACKSPACE_MODEL_RETRIES=2
    events = await run_to_end(server, "overloaded-e2e", repo="local:overloaded")
    errors = by_type(events, "error")
    assert (
        len(errors) == 1
        and errors[0]["code"] == "model_overloaded"
        and errors[0]["retryable"] is True
    )
    assert "3 attempts" in errors[0]["message"]
    assert events[-1]["status"] == "failed"
    assert fake_model.attempts("overloaded-e2e", 0) == 3
    assert_clean(server)


async def test_an_agent_that_changes_nothing_ends_no_changes(shared: Shared) -> None:
    origin = make_repo(shared.repos, "nothing")
    shared.model.scenarios["nothing-e2e"] = [
        Reply([ToolCall("bash", {"command": "cat app.py"})]),
        finish(),
    ]
    events = await run_to_end(shared.server, "nothing-e2e", repo="local:nothing")
    assert events[-1]["status"] == "no_changes" and "no changes" in events[-1]["message"]
    assert by_type(events, "error") == [] and by_type(events, "pr_created") == []
    assert git(origin, "branch", "--list").split() == ["*", "main"]


async def test_five_runs_at_once_each_stream_has_only_its_own_events(shared: Shared) -> None:
    origin = make_repo(shared.repos, "parallel", {f"f{i}.txt": f"{i}\n" for i in range(5)})
    for i in range(5):
        shared.model.scenarios[f"parallel-{i}-e2e"] = [
            Reply(
                [
                    ToolCall(
                        "str_replace_based_edit_tool",
                        {"command": "create", "path": f"f{i}.txt", "file_text": f"changed {i}\n"},
                    )
                ],
                delay=0.2,
            ),
            finish(f"Change f{i}"),
        ]
    server = shared.server  # MAX_CONCURRENT_RUNS=4
    results = await asyncio.gather(
        *(run_to_end(server, f"parallel-{i}-e2e", repo="local:parallel") for i in range(5))
    )
    branches = []
    for i, events in enumerate(results):
        assert len({e["run_id"] for e in events}) == 1
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["status"] == "succeeded", events[-1]
        branch = by_type(events, "pr_created")[0]["branch"]
        assert git(origin, "diff", "--name-only", "main", branch).split() == [f"f{i}.txt"]
        branches.append(branch)
    queued = [e for events in results for e in by_type(events, "progress") if e.get("position")]
    assert queued and queued[0]["position"] == 1, "the fifth run waited in the queue"
    assert len(set(branches)) == 5
    assert_clean(server)


async def test_secrets_never_reach_the_sandbox_an_event_or_a_log_line(shared: Shared) -> None:
    make_repo(shared.repos, "secrets")
    secrets, fake_model = SECRETS, shared.model  # the shared server's
    probe = "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; grep -rsl SECRET /workspace /tmp /home /etc 2>/dev/null; echo probe-done"
    fake_model.scenarios["secrets-e2e"] = [
        Reply([ToolCall("bash", {"command": probe})]),
        Reply([EDIT]),
        finish(),
    ]
    server = shared.server
    # The prompt itself carries a token a user pasted: it must be redacted from the events.
    events = await run_to_end(
        server, f"secrets-e2e: use token {secrets['GITHUB_TOKEN']} please", repo="local:secrets"
    )
    assert events[-1]["status"] == "succeeded", by_type(events, "error")
    output = by_type(events, "Tool: Bash")[0]["output"]
    assert "probe-done" in output and "PATH=" in output
    tool_results = str(fake_model.requests_for("secrets-e2e")[1]["messages"][-1])
    everything = repr(events) + server.logs() + output + tool_results
    for value in secrets.values():
        assert value not in everything
    assert "[REDACTED]" in events[0]["prompt"]
    async with httpx.AsyncClient(verify=TLS) as client:
        run = (await client.get(f"{server.url}/api/runs/{events[0]['run_id']}")).text
        pr = (
            await client.get(
                by_type(events, "pr_created")[0]["pr_url"].replace("/prs/", "/api/prs/")
            )
        ).text
    assert "[REDACTED]" in run and "[REDACTED]" in pr
    for value in secrets.values():
        assert value not in run and value not in pr
        assert (
            value.lower().replace("_", "-")[:12] not in by_type(events, "pr_created")[0]["branch"]
        )
    # The key was really in use: the fake model saw it, from the host.
    (first, *_) = [r for r in fake_model.requests if r.get("scenario") == "secrets-e2e"]
    assert first["headers"]["authorization"] == f"Bearer {secrets['ANTHROPIC_API_KEY']}"


BAD_REQUESTS: list[tuple[str, Any, int, str]] = [
    ("not json", b"{nope", 400, "not valid JSON"),
    ("empty body", b"", 400, "empty"),
    ("array", [1, 2], 422, "JSON object"),
    ("missing prompt", {"repo_url": "local:widgets"}, 422, "prompt"),
    ("missing repo", {"prompt": "x"}, 422, "repo_url"),
    ("empty prompt", {"repo_url": "local:widgets", "prompt": "   "}, 422, "prompt"),
    ("wrong type", {"repo_url": 5, "prompt": "x"}, 422, "repo_url"),
    ("unknown field", {"repo_url": "local:widgets", "prompt": "x", "extra": 1}, 422, "extra"),
    (
        "prompt too long",
        {"repo_url": "local:widgets", "prompt": "x" * 501},
        422,
        "BACKSPACE_MAX_PROMPT_CHARS",
    ),
    (
        "body too large",
        {"repo_url": "local:widgets", "prompt": "x", "pad": "y" * 5000},
        413,
        "larger than",
    ),
    (
        "outside the root",
        {"repo_url": "/etc", "prompt": "x"},
        422,
        "not inside BACKSPACE_LOCAL_REPOS",
    ),
    (
        "dot-dot",
        {"repo_url": "local:../outside", "prompt": "x"},
        422,
        "not inside BACKSPACE_LOCAL_REPOS",
    ),
    (
        "symlink out",
        {"repo_url": "local:escape", "prompt": "x"},
        422,
        "not inside BACKSPACE_LOCAL_REPOS",
    ),
    (
        "option-like",
        {"repo_url": "--upload-pack=touch /tmp/pwned", "prompt": "x"},
        422,
        "cannot start with '-'",
    ),
    (
        "option-like base",
        {"repo_url": "local:widgets", "prompt": "x", "base_branch": "--exec=id"},
        422,
        "base_branch",
    ),
    (
        "refspec base",
        {"repo_url": "local:widgets", "prompt": "x", "base_branch": "a:refs/heads/main"},
        422,
        "not a valid branch name",
    ),
    ("not a repo", {"repo_url": "local:plain", "prompt": "x"}, 422, "not a git repository"),
    (
        "unknown form",
        {"repo_url": "widgets", "prompt": "x"},
        422,
        "not a repository this server knows",
    ),
    (
        "other scheme",
        {"repo_url": "ftp://example.com/x", "prompt": "x"},
        422,
        "ftp:// URLs are not",
    ),
    ("other host", {"repo_url": "https://gitlab.com/a/b", "prompt": "x"}, 422, "not a GitHub host"),
    (
        "token in url",
        {"repo_url": "https://x:ghp_abc@github.com/a/b", "prompt": "x"},
        422,
        "credentials",
    ),
    ("ext transport", {"repo_url": "ext::sh", "prompt": "x"}, 422, "ext::"),
    ("file url", {"repo_url": "file:///etc", "prompt": "x"}, 422, "file://"),
    ("control chars", {"repo_url": "local:wid\ngets", "prompt": "x"}, 422, "control characters"),
]


async def test_bad_input_gets_a_clear_error_and_starts_nothing(
    shared: Shared, tmp_path: Path
) -> None:
    repos = shared.repos  # the shared server's limits: 500 prompt characters, 4096 body bytes
    make_repo(repos, "widgets")
    (repos / "plain").mkdir()
    outside = make_repo(tmp_path, "outside")
    (repos / "escape").symlink_to(outside)
    server = shared.server
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        # The server is shared, and its earlier runs have ended: any run these requests
        # started would be listed first, before the ones listed now.
        before = [r["id"] for r in (await client.get(f"{server.url}/api/runs")).json()["runs"]]
        for name, body, status, fragment in BAD_REQUESTS:
            if isinstance(body, bytes):
                response = await client.post(
                    f"{server.url}/api/code",
                    content=body,
                    headers={"content-type": "application/json"},
                )
            else:
                response = await client.post(f"{server.url}/api/code", json=body)
            assert response.status_code == status, (name, response.text)
            assert fragment in response.json()["detail"], (name, response.json())
        after = [r["id"] for r in (await client.get(f"{server.url}/api/runs")).json()["runs"]]
        assert after == before
        unknown = await client.get(f"{server.url}/api/runs/nope")
        assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
        assert (await client.post(f"{server.url}/api/runs/nope/cancel")).status_code == 404
        assert (await client.get(f"{server.url}/api/runs?limit=0")).status_code == 422
        assert (await client.get(f"{server.url}/prs/999")).status_code == 404
        assert (
            (await client.get(f"{server.url}/no/such/path"))
            .json()["detail"]
            .startswith("no such endpoint")
        )
        assert (await client.delete(f"{server.url}/api/code")).status_code == 405
    assert not Path("/tmp/pwned").exists()
    assert server.process.poll() is None


async def test_api_key_auth(authed: Shared) -> None:
    make_repo(authed.repos, "widgets")
    authed.model.scenarios["auth-e2e"] = edit_scenario()
    key = API_KEY
    server = authed.server
    body = {"repo_url": "local:widgets", "prompt": "auth-e2e"}
    accept = {"Accept": "application/json"}
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        assert (await client.get(f"{server.url}/health")).status_code == 200
        missing = await client.post(f"{server.url}/api/code", json=body)
        wrong = await client.post(
            f"{server.url}/api/code", json=body, headers={"Authorization": "Bearer nope"}
        )
        listed = await client.get(f"{server.url}/api/runs", headers={"X-API-Key": "nope"})
        assert (missing.status_code, wrong.status_code, listed.status_code) == (401, 401, 401)
        assert "Authorization: Bearer" in missing.json()["detail"]
        ok = await client.post(
            f"{server.url}/api/code",
            json=body,
            headers={"Authorization": f"Bearer {key}", **accept},
        )
        assert ok.status_code == 202
        assert (
            await client.get(f"{server.url}/api/runs", headers={"X-API-Key": key})
        ).status_code == 200
        # The run ends before the test does (the server is shared with the wall-clock test).
        deadline = time.monotonic() + 30
        while (
            run := (
                await client.get(f"{server.url}/api/runs/{ok.json()['id']}", headers=AUTH)
            ).json()
        )["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, run
            await asyncio.sleep(0.05)
    assert run["status"] == "succeeded", run
    assert key not in server.logs()


async def test_without_a_model_the_api_says_which_variable_to_set(
    repos: Path, server_factory: ServerFactory
) -> None:
    make_repo(repos, "widgets")
    server = server_factory({"BACKSPACE_LOCAL_REPOS": str(repos)})
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        health = (await client.get(f"{server.url}/health")).json()
        response = await client.post(
            f"{server.url}/api/code", json={"repo_url": "local:widgets", "prompt": "x"}
        )
    assert health["status"] == "degraded" and health["model"]["configured"] is False
    assert health["sandbox"]["usable"] is True and health["store"]["ok"] is True
    assert response.status_code == 503 and "ANTHROPIC_API_KEY" in response.json()["detail"]


async def test_a_restart_marks_interrupted_runs_failed_and_cleans_their_sandboxes(
    restarts: Restarts,
) -> None:
    make_repo(restarts.repos, "crash")
    restarts.model.scenarios["crash-e2e"], marker = slow_scenario(122)
    server = restarts.live()
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        run = (
            await client.post(
                f"{server.url}/api/code",
                json={"repo_url": "local:crash", "prompt": "crash-e2e"},
                headers={"Accept": "application/json"},
            )
        ).json()
        await wait_for_process(marker)
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        await asyncio.sleep(0.5)
        restarted = restarts.restart()
        _, frames = await collect(client, "GET", f"{restarted.url}/api/runs/{run['id']}/events")
        final = (await client.get(f"{restarted.url}/api/runs/{run['id']}")).json()
    events = events_of(frames)
    assert [e["type"] for e in events[-2:]] == ["error", "complete"]
    assert events[-2]["code"] == "interrupted" and events[-1]["status"] == "failed"
    assert final["status"] == "failed" and final["error"]["code"] == "interrupted"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert_clean(restarted)


async def test_graceful_shutdown_ends_running_runs_and_deletes_their_sandboxes(
    restarts: Restarts,
) -> None:
    make_repo(restarts.repos, "shutdown")
    restarts.model.scenarios["shutdown-e2e"], marker = slow_scenario(123)
    server = restarts.live()  # BACKSPACE_SHUTDOWN_GRACE=1
    logged = len(server.logs())  # the log file goes on across restarts: only this process's
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        run = (
            await client.post(
                f"{server.url}/api/code",
                json={"repo_url": "local:shutdown", "prompt": "shutdown-e2e"},
                headers={"Accept": "application/json"},
            )
        ).json()
        await wait_for_process(marker)
    started = time.monotonic()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status reflects it.
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "waiting up to 1s for 1 running runs" in server.logs()[logged:]
    assert time.monotonic() - started < 15
    assert_clean(server)
    restarted = restarts.restart()
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        final = (await client.get(f"{restarted.url}/api/runs/{run['id']}")).json()
    assert final["status"] == "failed" and final["error"]["code"] == "interrupted"
    assert "shut down" in final["error"]["message"]


async def test_a_change_that_breaks_publishing_policy_is_not_pushed(shared: Shared) -> None:
    origin = make_repo(shared.repos, "policy")
    token = SECRETS["GITHUB_TOKEN"]  # the server's
    fake_model = shared.model

    def create(path: str, text: str) -> list[Any]:
        call = {"command": "create", "path": path, "file_text": text}
        return [Reply([ToolCall("str_replace_based_edit_tool", call)]), finish()]

    fake_model.scenarios["junk-e2e"] = create(
        "node_modules/left-pad/index.js", "module.exports = 1\n"
    )
    fake_model.scenarios["pasted-token-e2e"] = create("config.py", f"TOKEN = '{token}'\n")
    fake_model.scenarios["shaped-token-e2e"] = create("keys.py", "KEY = 'AKIAABCDEFGHIJKLMNOP'\n")
    server = shared.server
    repo = "local:policy"
    junk = await run_to_end(server, "junk-e2e", repo=repo)
    pasted = await run_to_end(server, f"pasted-token-e2e: put {token} in config.py", repo=repo)
    shaped = await run_to_end(server, "shaped-token-e2e", repo=repo)
    assert by_type(junk, "error")[0]["code"] == "junk_files"
    assert "node_modules/left-pad/index.js" in by_type(junk, "error")[0]["message"]
    for events in (pasted, shaped):
        error = by_type(events, "error")[0]
        assert error["code"] == "secret_in_diff" and error["stage"] == "validating"
        assert token not in repr(events)  # a secret the server knows is redacted everywhere
    assert all(events[-1]["status"] == "failed" for events in (junk, pasted, shaped))
    assert git(origin, "branch", "--list").split() == ["*", "main"]
    assert_clean(server)


async def test_starting_runs_too_fast_gets_429_with_retry_after(
    repos: Path, fake_model: FakeAnthropic, server_factory: ServerFactory
) -> None:
    make_repo(repos, "widgets")
    fake_model.scenarios["rate-e2e"] = [finish()]
    env = base_env(repos, fake_model, BACKSPACE_RUNS_PER_MINUTE="1", BACKSPACE_RUNS_BURST="2")
    server = server_factory(env)
    body = {"repo_url": "local:widgets", "prompt": "rate-e2e"}
    accept = {"Accept": "application/json"}
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        answers = [
            await client.post(f"{server.url}/api/code", json=body, headers=accept) for _ in range(3)
        ]
        listed = await client.get(f"{server.url}/api/runs")
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert int(answers[2].headers["retry-after"]) >= 1
    assert "BACKSPACE_RUNS_PER_MINUTE" in answers[2].json()["detail"]
    assert listed.status_code == 200 and len(listed.json()["runs"]) == 2


async def test_a_full_store_fails_the_run_clearly_and_the_server_keeps_serving(
    repos: Path, fake_model: FakeAnthropic, server_factory: ServerFactory
) -> None:
    make_repo(repos, "widgets")
    chatty = "python3 -c \"print('x' * 7000)\""
    fake_model.scenarios["full-e2e"] = [
        Reply([ToolCall("bash", {"command": chatty})]) for _ in range(40)
    ]
    server = server_factory(base_env(repos, fake_model, BACKSPACE_DB_MAX_MB="0.2"))
    async with httpx.AsyncClient(verify=TLS, timeout=60) as client:
        response, got = await collect(
            client,
            "POST",
            f"{server.url}/api/code",
            json={"repo_url": "local:widgets", "prompt": "full-e2e"},
        )
        events = events_of(got)
        assert response.status_code == 200
        last = events[-1]
        assert last["type"] == "complete" and last["status"] == "failed", last
        assert "could not record this run" in last["message"]
        errors = by_type(events, "error")
        # The end is stored when a small write still fits; else only live viewers get it.
        assert (errors and errors[0]["code"] == "store_unavailable") or last.get(
            "recorded"
        ) is False
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, len(seqs) + 1))
        health = await client.get(f"{server.url}/health")
        again = await client.post(
            f"{server.url}/api/code", json={"repo_url": "local:widgets", "prompt": "full-e2e"}
        )
    assert health.status_code == 200 and server.process.poll() is None
    assert again.status_code in (202, 200, 503)
    if again.status_code == 503:
        assert "store" in again.json()["detail"]
    assert "store_unavailable" in server.logs() or "could not be recorded" in server.logs()
    assert_clean(server)
