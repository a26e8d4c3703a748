"""The server's log, read from the real process: JSON lines, the run id on a run's lines, secrets
redacted, and debug lines only with DEBUG=true."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import make_repo
from tests.fakes.anthropic import Fail, FakeAnthropic, Reply, Step, Text, ToolCall
from tests.server import Server, start_server
from tests.sse import collect, events_of
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-api03-LOGSECRET-anthropic-0001",
    "GITHUB_TOKEN": "ghp_LOGSECRETgithub00000000000000000002",
    "API_KEY": "LOGSECRET-service-api-key-0003",
}
EDIT = ToolCall(
    "str_replace_based_edit_tool",
    {"command": "str_replace", "path": "app.py", "old_str": "name\n", "new_str": "name.strip()\n"},
)
FINISH = Reply(
    [Text("Done."), ToolCall("finish", {"title": "Strip the name", "body": "x", "tests": "none"})]
)
# The first model call fails with an error that quotes two secrets: the model client logs it
# (a WARNING, with the run id), so the log certainly had a secret to redact.
SCENARIO: list[Step] = [
    [
        Fail(
            529, message=f"overloaded for {SECRETS['ANTHROPIC_API_KEY']} {SECRETS['GITHUB_TOKEN']}"
        ),
        Reply([EDIT]),
    ],
    FINISH,
]
LEVELS = {"debug", "info", "warning", "error", "critical"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    scenarios = {"logs-quiet": SCENARIO, "logs-debug": SCENARIO}
    with FakeAnthropic(scenarios, api_key=SECRETS["ANTHROPIC_API_KEY"]) as model:
        yield model


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeAnthropic
) -> Iterator[dict[str, Server]]:
    """A server with DEBUG=false and one with DEBUG=true, started side by side."""
    base = tmp_path_factory.mktemp("logs")
    repos = base / "repos"
    repos.mkdir()
    make_repo(repos, "widgets")
    env = {
        **SECRETS,
        "ANTHROPIC_BASE_URL": fake.url,
        "BACKSPACE_LOCAL_REPOS": str(repos),
        "BACKSPACE_LOG_FORMAT": "json",
    }
    with ThreadPoolExecutor(2) as pool:
        quiet = pool.submit(start_server, base / "quiet", {**env, "DEBUG": "false"})
        debug = pool.submit(start_server, base / "debug", {**env, "DEBUG": "true"})
        started = {"quiet": quiet.result(), "debug": debug.result()}
    yield started
    for server in started.values():
        server.stop()


async def run_and_stop(server: Server, prompt: str) -> tuple[str, list[dict[str, Any]]]:
    """One whole run through the API; then stop the server so the log is complete."""
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        response, frames = await collect(
            client,
            "POST",
            f"{server.url}/api/code",
            json={"repo_url": "local:widgets", "prompt": prompt},
        )
    assert response.status_code == 200, response.text
    events = events_of(frames)
    assert events[-1]["type"] == "complete" and events[-1]["status"] == "succeeded", events[-1]
    server.stop()
    return events[0]["run_id"], parse(server.logs())


def parse(log: str) -> list[dict[str, Any]]:
    entries = []
    for line in log.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        assert set(entry) <= {"time", "level", "logger", "message", "run_id"}, line
        datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S")
        assert entry["level"] in LEVELS, line
        assert isinstance(entry["logger"], str) and isinstance(entry["message"], str), line
        entries.append(entry)
    return entries


def retry_warnings(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e
        for e in entries
        if e["logger"] == "backspace.orchestrator.agent.model" and "retrying" in e["message"]
    ]


def assert_no_secret(server: Server) -> None:
    log = server.logs()
    for name, value in SECRETS.items():
        assert value not in log, f"{name} is in the log"
    assert "LOGSECRET" not in log


async def test_json_lines_carry_the_run_id_and_never_a_secret(
    servers: dict[str, Server], fake: FakeAnthropic
) -> None:
    server = servers["quiet"]
    run_id, entries = await run_and_stop(server, "logs-quiet: strip the name")
    assert fake.attempts("logs-quiet", 0) == 2, "the first model call failed and was retried"

    [warning] = retry_warnings(entries)
    assert warning["level"] == "warning" and warning["run_id"] == run_id
    assert "529" in warning["message"] and "[REDACTED]" in warning["message"]
    # Lines outside a run have no run id; every line that has one has this run's.
    assert any("ready at" in e["message"] and "run_id" not in e for e in entries)
    assert {e["run_id"] for e in entries if "run_id" in e} == {run_id}
    assert [e for e in entries if e["level"] == "debug"] == []
    assert_no_secret(server)


async def test_debug_true_adds_debug_lines_also_json_and_redacted(
    servers: dict[str, Server], fake: FakeAnthropic
) -> None:
    server = servers["debug"]
    run_id, entries = await run_and_stop(server, "logs-debug: strip the name")
    assert fake.attempts("logs-debug", 0) == 2

    debug = [e for e in entries if e["level"] == "debug"]
    assert debug, "DEBUG=true logs debug lines"
    # The model client's own lines (the SDK, at debug level) are logged inside the run.
    client_lines = [e for e in entries if e["logger"].startswith("anthropic")]
    assert client_lines and all(e.get("run_id") == run_id for e in client_lines)
    [warning] = retry_warnings(entries)
    assert warning["run_id"] == run_id and "[REDACTED]" in warning["message"]
    assert {e["run_id"] for e in entries if "run_id" in e} == {run_id}
    assert_no_secret(server)
