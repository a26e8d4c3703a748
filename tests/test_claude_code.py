"""The claude-code engine end to end: the REAL Claude Code CLI (installed by scripts/bootstrap)
in a real bubblewrap sandbox, reaching tests/fakes/anthropic.py only through the model gateway.

The fake enforces the REAL key (a canary): the CLI holds a placeholder, so a request that
reached the fake without passing through the gateway would be refused. Scripted turns use
Claude Code's own tool names (Bash, Read, Edit, Write) with its own input shapes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from backspace.orchestrator.engines.claude_cli import ClaudeCli
from backspace.orchestrator.engines.claude_code import PLACEHOLDER_KEY
from backspace.orchestrator.engines.pr_summary import SUMMARY_MARKER
from tests.conftest import make_repo
from tests.fakes.anthropic import Fail, FakeAnthropic, Reply, Text, ToolCall
from tests.helpers import (
    Shared,
    assert_clean,
    processes_running,
    shared_server,
    wait_for_process,
    wait_status,
    workdir,
)
from tests.sse import collect, events_of, of_type, post_run
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module", autouse=True)
def claude_code_installed() -> None:
    """The README's test command installs the CLI (scripts/bootstrap): never skipped, so a
    failed install fails here rather than passing unseen."""
    usable, message = ClaudeCli().check()
    assert usable, f"{message}: run scripts/bootstrap --dev"


KEY = f"sk-ant-api03-canary-{secrets.token_hex(16)}"
MODEL = "claude-sonnet-4-5"  # priced: $3 / $15 per MTok
APP = "/workspace/app.py"


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    repos = workdir("claude-code-repos")
    with (
        FakeAnthropic(scenarios={}, api_key=KEY) as model,
        shared_server(
            "claude-code",
            {
                "ANTHROPIC_API_KEY": KEY,
                "ANTHROPIC_BASE_URL": model.url,
                "BACKSPACE_LOCAL_REPOS": str(repos),
                "BACKSPACE_SANDBOX": "local",
                "BACKSPACE_MODEL": MODEL,
                "BACKSPACE_MODEL_RETRIES": "1",
                "BACKSPACE_MAX_COST_USD": "1.0",
                "MAX_CONCURRENT_RUNS": "4",
            },
        ) as server,
    ):
        yield Shared(server, model, repos)


def run_body(name: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"repo_url": f"local:{name}", "prompt": f"{key}: strip the name", **extra}


async def get(shared: Shared, path: str) -> Any:
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        response = await client.get(f"{shared.server.url}{path}")
    assert response.status_code == 200, response.text
    return response.json()


def requests_of(shared: Shared, key: str) -> list[dict[str, Any]]:
    return [r for r in shared.model.requests if r.get("scenario") == key]


STRIP = [
    Reply(
        [
            Text("Let me look at the repository."),
            ToolCall("Bash", {"command": "ls && git status --short", "description": "list"}),
        ]
    ),
    Reply([ToolCall("Read", {"file_path": APP})]),
    Reply(
        [
            ToolCall(
                "Edit",
                {
                    "file_path": APP,
                    "old_string": "    return name\n",
                    "new_string": "    return name.strip()\n",
                },
            )
        ]
    ),
    Reply([ToolCall("Bash", {"command": "python3 -c 'import app' && exit 3"})]),
    Reply(
        [Text("Done.\n\nPR title: Strip the signup name\nPR body:\nStrips whitespace from names.")]
    ),
]


async def test_a_whole_run_opens_a_pr_with_exactly_the_change(shared: Shared) -> None:
    make_repo(shared.repos, "cc-whole")
    shared.model.scenarios["cc-whole"] = STRIP
    events = await post_run(
        shared.server.url, run_body("cc-whole", "cc-whole", engine="claude-code")
    )
    assert events[-1]["status"] == "succeeded", events[-4:]
    created = of_type(events, "pr_created")[0]
    assert created["title"] == "Strip the signup name"
    pr = await get(shared, f"/api/prs/{created['pr_url'].rsplit('/', 1)[1]}")
    assert [f["path"] for f in pr["files"]] == ["app.py"]
    assert "+    return name.strip()" in pr["diff"] and "-    return name\n" in pr["diff"]
    assert "Strips whitespace from names." in pr["body"]
    assert f"Claude Code {ClaudeCli().version}" in pr["body"]  # which engine ran

    # The events, as our loop emits them.
    bash = of_type(events, "Tool: Bash")
    listing = next(e for e in bash if e["command"].startswith("ls"))
    assert listing["exit_code"] == 0 and "app.py" in listing["output"]
    failing = next(e for e in bash if "exit 3" in e["command"])
    assert failing["exit_code"] == 3
    assert all("duration_ms" in e and "call_id" in e for e in bash)
    assert of_type(events, "Tool: Read")[0]["filepath"] == "app.py"
    edit = of_type(events, "Tool: Edit")[0]
    assert edit["filepath"] == "app.py" and edit["new_str"] == "    return name.strip()\n"
    assert "Let me look at the repository." in [e["message"] for e in of_type(events, "AI Message")]
    turns = [e["message"] for e in of_type(events, "progress") if "Model turn" in e["message"]]
    assert turns == [f"Model turn {n}" for n in range(1, 6)]
    usage = of_type(events, "usage")
    costs = [e["cost_usd"] for e in usage]
    assert costs == sorted(costs) and costs[-1] > 0
    assert usage[-1]["input_tokens"] == 5 * 100 and usage[-1]["output_tokens"] == 5 * 20
    # 5 turns of 100 input and 20 output tokens at $3 / $15 per MTok.
    assert costs[-1] == pytest.approx(5 * (100 * 3 + 20 * 15) / 1e6)
    assert of_type(events, "network_blocked") == []

    # Every request reached the fake with the real key, sent by the gateway; one per turn, and
    # nothing but the Messages API.
    sent = requests_of(shared, "cc-whole")
    assert len(sent) == 5
    assert all(r["headers"].get("x-api-key") == KEY for r in sent)
    assert all(r["body"]["model"] == MODEL for r in sent)
    assert "call `finish`" not in json.dumps(sent[0]["body"])  # it has no such tool
    assert "PR title:" in json.dumps(sent[0]["body"]["system"])  # how backspace publishes
    assert {r["path"] for r in shared.model.requests} <= {
        "/v1/messages",
        "/v1/messages/count_tokens",
    }


SNOOP = (
    "env; for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; echo; done; "
    'find "$HOME" /tmp /workspace -type f -print0 2>/dev/null | xargs -0 cat 2>/dev/null '
    "| grep -a -o -E 'sk-ant[A-Za-z0-9_-]*|backspace-gateway-placeholder|ANTHROPIC_[A-Z_]*=[^ ]*'"
    " | sort -u"
)


async def test_the_key_never_enters_the_sandbox(shared: Shared) -> None:
    make_repo(shared.repos, "cc-key")
    shared.model.scenarios["cc-key"] = [
        Reply([ToolCall("Write", {"file_path": "/workspace/NOTES.md", "content": "notes\n"})]),
        Reply([ToolCall("Bash", {"command": SNOOP})]),
        Reply([Text("PR title: Add notes\nPR body:\nNotes.")]),
    ]
    events = await post_run(shared.server.url, run_body("cc-key", "cc-key", engine="claude-code"))
    assert events[-1]["status"] == "succeeded", events[-4:]
    snoop = next(e for e in of_type(events, "Tool: Bash") if e["command"] == SNOOP)
    # The CLI's own environment (its /proc/N/environ), the shell's, and every file in its home
    # (config, caches), /tmp and the workspace: the placeholder, never the key.
    assert f"ANTHROPIC_API_KEY={PLACEHOLDER_KEY}" in snoop["output"]
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:3129" in snoop["output"]
    assert KEY not in json.dumps(events)
    assert of_type(events, "Tool: Write")[0]["filepath"] == "NOTES.md"
    # What the sandbox said reached the fake (the tool results): the placeholder, not the key;
    # the key only in the gateway's header.
    sent = requests_of(shared, "cc-key")
    assert PLACEHOLDER_KEY in json.dumps(sent[-1]["body"])
    assert all(KEY not in json.dumps(r["body"]) for r in sent)
    assert all(r["headers"]["x-api-key"] == KEY for r in sent)
    assert KEY not in shared.server.logs()


async def test_the_spend_limit_ends_the_run_through_the_gateway(shared: Shared) -> None:
    """BACKSPACE_MAX_COST_USD=1.0: one turn of 400k input tokens ($1.20) spends it; the
    gateway refuses the next request, the CLI stops, the run ends cost_limit."""
    make_repo(shared.repos, "cc-spend")
    shared.model.scenarios["cc-spend"] = [
        Reply(
            [ToolCall("Bash", {"command": "echo looking"})],
            usage={"input_tokens": 400_000, "output_tokens": 10},
        ),
        Reply([ToolCall("Bash", {"command": "echo never"})]),
    ]
    events = await post_run(
        shared.server.url, run_body("cc-spend", "cc-spend", engine="claude-code")
    )
    error = of_type(events, "error")[0]
    assert events[-1]["status"] == "failed" and error["code"] == "cost_limit", error
    assert "spend limit" in error["message"]
    assert len(requests_of(shared, "cc-spend")) == 1  # the second never reached the model
    assert not [e for e in of_type(events, "Tool: Bash") if e["command"] == "echo never"]
    assert of_type(events, "usage")[-1]["cost_usd"] >= 1.0


async def test_a_model_error_after_retries_fails_the_run_clearly(shared: Shared) -> None:
    make_repo(shared.repos, "cc-529")
    shared.model.scenarios["cc-529"] = [[Fail(529, times=50)]]
    events = await post_run(shared.server.url, run_body("cc-529", "cc-529", engine="claude-code"))
    error = of_type(events, "error")[0]
    assert events[-1]["status"] == "failed"
    assert error["code"] == "model_overloaded", error
    assert "Claude Code" in error["message"] and "529" in error["message"]
    assert shared.model.attempts("cc-529", 0) == 2  # BACKSPACE_MODEL_RETRIES=1: one retry


async def test_cancel_kills_the_cli_mid_command(shared: Shared) -> None:
    make_repo(shared.repos, "cc-cancel")
    marker = f"cc-cancel-{secrets.token_hex(4)}"
    shared.model.scenarios["cc-cancel"] = [
        Reply(
            [
                ToolCall(
                    "Bash",
                    {"command": f"python3 -c 'import time; time.sleep(300)' # {marker}"},
                )
            ]
        )
    ]
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        response = await client.post(
            f"{shared.server.url}/api/code",
            json=run_body("cc-cancel", "cc-cancel", engine="claude-code"),
            headers={"Accept": "application/json"},
        )
        assert response.status_code == 202, response.text
        run_id = response.json()["id"]
        await wait_for_process(marker, timeout=60)
        assert processes_running("/opt/claude-code/bin/claude.exe")
        cancelled = await client.post(f"{shared.server.url}/api/runs/{run_id}/cancel")
        assert cancelled.status_code in (200, 202), cancelled.text
    run = await wait_status(shared.server, run_id, timeout=30)
    assert run["status"] == "cancelled"
    for _ in range(50):
        if not processes_running(marker):
            break
        await asyncio.sleep(0.1)
    assert processes_running(marker) == []  # the command and the CLI above it died
    assert_clean(shared.server)  # no process of any of its sandboxes, no sandbox directory


async def test_what_is_not_the_messages_api_is_refused_and_shown(shared: Shared) -> None:
    """What the CLI could try beyond the Messages API (its telemetry host through the proxy
    variables, the gateway's other paths) is refused and reported as network_blocked."""
    make_repo(shared.repos, "cc-net")
    command = (
        "curl -s -m 10 -o /dev/null -w '%{http_code}\\n' https://statsig.anthropic.com/v1/x; "
        "curl -s -m 10 -w '\\n%{http_code}\\n' http://127.0.0.1:3129/v1/models"
    )
    shared.model.scenarios["cc-net"] = [
        Reply([ToolCall("Bash", {"command": command})]),
        Reply([Text("PR title: Nothing\nPR body:\nNothing.")]),
    ]
    events = await post_run(shared.server.url, run_body("cc-net", "cc-net", engine="claude-code"))
    assert events[-1]["status"] == "no_changes", events[-3:]
    blocked = of_type(events, "network_blocked")
    shown = json.dumps(blocked)
    assert "statsig.anthropic.com" in shown, blocked
    assert "/v1/models" in shown, blocked
    bash = next(e for e in of_type(events, "Tool: Bash") if "statsig" in e["command"])
    assert "200" not in bash["output"].split()


async def test_without_a_summary_the_host_writes_the_title(shared: Shared) -> None:
    make_repo(shared.repos, "cc-summary")
    shared.model.scenarios[SUMMARY_MARKER] = [
        Reply([Text("PR title: Strip names (summarised)\nPR body:\nSummarised by the host.")])
    ]
    shared.model.scenarios["cc-summary"] = [
        Reply([ToolCall("Read", {"file_path": APP})]),
        Reply(
            [
                ToolCall(
                    "Edit",
                    {"file_path": APP, "old_string": "return name", "new_string": "return 1"},
                )
            ]
        ),
        Reply([Text("All done, nothing more to say.")]),
    ]
    events = await post_run(
        shared.server.url, run_body("cc-summary", "cc-summary", engine="claude-code")
    )
    assert events[-1]["status"] == "succeeded", events[-4:]
    assert of_type(events, "pr_created")[0]["title"] == "Strip names (summarised)"
    summary = [r for r in shared.model.requests if r.get("scenario") == SUMMARY_MARKER]
    assert len(summary) == 1  # answered: the fake enforces the real key (the host's call)
    assert "All done, nothing more to say." in json.dumps(summary[0]["body"])


async def test_health_and_an_unknown_engine(shared: Shared) -> None:
    health = await get(shared, "/health")
    engines = health["engines"]
    assert engines["default"] == "backspace"
    assert engines["claude-code"]["usable"] is True
    assert engines["claude-code"]["version"] == ClaudeCli().version
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        response, frames = await collect(
            client,
            "POST",
            f"{shared.server.url}/api/code",
            json=run_body("cc-none", "cc-none", engine="claude"),
        )
    assert response.status_code == 422
    assert "engine" in response.text
    assert events_of(frames) == []


def test_slack_text_picks_the_engine_and_refuses_an_unknown_one() -> None:
    from backspace.orchestrator.githosts.base import RepoRef, RepoRefError
    from backspace.slackbot.commands import Invalid, StartRun, parse

    def repo(text: str) -> RepoRef:
        if text.count("/") != 1:
            raise RepoRefError(f"{text} is not owner/name")
        return RepoRef("github", text, text)

    run = parse("acme/widgets engine=claude-code add a flag", repo, None)
    assert isinstance(run, StartRun) and run.engine == "claude-code"
    assert run.prompt == "add a flag"
    assert isinstance(parse("acme/widgets engine=gpt add a flag", repo, None), Invalid)
    plain = parse("acme/widgets add a flag", repo, None)
    assert isinstance(plain, StartRun) and plain.engine is None


def test_the_summary_block_is_parsed_from_the_last_message() -> None:
    from backspace.orchestrator.engines.pr_summary import parse

    found = parse("Done.\n\n**PR title:** Strip names\nPR body:\nStrips.\n- one")
    assert found is not None and found.title == "Strip names" and found.body == "Strips.\n- one"
    assert parse("no block here") is None


async def test_a_follow_up_on_a_claude_code_run_keeps_its_engine(shared: Shared) -> None:
    make_repo(shared.repos, "cc-family")
    shared.model.scenarios["cc-family-2"] = [
        Reply([ToolCall("Read", {"file_path": APP})]),
        Reply(
            [
                ToolCall(
                    "Edit",
                    {
                        "file_path": APP,
                        "old_string": "    return name.strip()\n",
                        "new_string": "    return name.strip().lower()\n",
                    },
                )
            ]
        ),
        Reply([Text("PR title: Lower-case the name\nPR body:\nAlso lower-cases it.")]),
    ]
    shared.model.scenarios["cc-family-1"] = STRIP
    first = await post_run(
        shared.server.url, run_body("cc-family", "cc-family-1", engine="claude-code")
    )
    assert first[-1]["status"] == "succeeded", first[-4:]
    async with httpx.AsyncClient(verify=TLS, timeout=90) as client:
        _, frames = await collect(
            client,
            "POST",
            f"{shared.server.url}/api/runs/{first[0]['run_id']}/followups",
            json={"prompt": "cc-family-2: and lower-case it"},
        )
    events = events_of(frames)
    assert events[-1]["status"] == "succeeded", "\n".join(
        f"{e['type']}: {e.get('message') or e.get('error') or e.get('filepath') or e.get('output')}"
        for e in events
    )
    updated = of_type(events, "pr_updated")[0]
    assert updated["pr_url"] == of_type(first, "pr_created")[0]["pr_url"]
    # Claude Code ran it (its requests came through the gateway, with backspace's publishing
    # note), and it was told about the earlier run.
    sent = requests_of(shared, "cc-family-2")
    assert sent and all(r["headers"].get("x-api-key") == KEY for r in sent)
    assert "PR title:" in json.dumps(sent[0]["body"]["system"])
    assert "<earlier_run" in json.dumps(sent[0]["body"]["messages"])
