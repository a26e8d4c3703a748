"""Daytona sandboxes end to end: the real server and the real `daytona` SDK against the loopback
fake Daytona (API and toolbox, running the commands for real in a directory per sandbox)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, git, make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, ToolCall
from tests.fakes.daytona import FakeDaytona, FakeSandbox
from tests.helpers import Shared, processes_running, shared_rig, wait_for_process
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import Server
from tests.sse import collect, events_of, frames, of_type, post_run
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

KEY = "dtn_DAYTONAKEY0123456789"
INSTANCE = "e2e-instance"


@pytest.fixture
def daytona() -> Iterator[FakeDaytona]:
    with FakeDaytona(api_key=KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def shared_daytona() -> Iterator[FakeDaytona]:
    """The shared server's fake Daytona: each test looks only at its own runs' sandboxes."""
    with FakeDaytona(api_key=KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def shared(shared_daytona: FakeDaytona) -> Iterator[Shared]:
    """One server for the tests with the default settings; a GitHub token the sandbox must
    never see (the whole-run test looks for it)."""
    token = "ghp_NOTFORSANDBOX000000000000000000000"
    with shared_rig(
        "daytona-e2e",
        lambda repos, model: env_for(repos, model, shared_daytona, GITHUB_TOKEN=token),
    ) as rig:
        yield rig


def sandboxes_of(daytona: FakeDaytona, *run_ids: str) -> list[FakeSandbox]:
    return [s for s in daytona.sandboxes.values() if s.labels.get("backspace.run") in run_ids]


def live_of(daytona: FakeDaytona, *run_ids: str) -> list[str]:
    """The live sandboxes of these runs (the fake is shared by the module's tests)."""
    return [
        sid
        for sid in daytona.live()
        if daytona.sandboxes[sid].labels.get("backspace.run") in run_ids
    ]


def env_for(repos: Path, model: FakeAnthropic, dt: FakeDaytona, **extra: str) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": "sk-ant-api03-daytona-e2e-000111",
        "ANTHROPIC_BASE_URL": model.url,
        "BACKSPACE_LOCAL_REPOS": str(repos),
        "DAYTONA_API_KEY": KEY,
        "DAYTONA_API_URL": dt.api_url,
        "BACKSPACE_INSTANCE": INSTANCE,
        **extra,
    }


def unique_sleep(seconds: int) -> str:
    """A `sleep` whose command line is this call's own (the fake runs the script from its
    stdin, so only the sleep itself shows in /proc; another test or pytest session may sleep
    as long)."""
    return f"sleep {seconds}.{uuid.uuid4().int % 10**9:09d}"


def bash(command: str) -> Reply:
    return Reply([ToolCall("bash", {"command": command})])


async def start(server: Server, prompt: str, repo: str = "local:widgets") -> dict[str, Any]:
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        response = await client.post(
            f"{server.url}/api/code",
            json={"repo_url": repo, "prompt": prompt},
            headers={"Accept": "application/json"},
        )
    assert response.status_code == 202, response.text
    run: dict[str, Any] = response.json()
    return run


async def events(server: Server, run_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(verify=TLS, timeout=60) as client:
        _, got = await collect(client, "GET", f"{server.url}/api/runs/{run_id}/events")
    return events_of(got)


async def test_a_whole_run_on_daytona_opens_a_pr_and_deletes_the_sandbox(
    shared: Shared, shared_daytona: FakeDaytona
) -> None:
    origin = make_repo(shared.repos, "whole")
    daytona = shared_daytona
    shared.model.scenarios["dt-run"] = [
        bash("cat app.py; env | sort"),
        Reply([EDIT_SIGNUP]),
        finish(),
    ]
    server = shared.server
    got = await post_run(server.url, {"repo_url": "local:whole", "prompt": "dt-run"})
    assert got[-1]["status"] == "succeeded", of_type(got, "error")
    branch = of_type(got, "pr_created")[0]["branch"]
    assert git(origin, "diff", "--name-only", "main", branch).split() == ["app.py"]
    (record,) = sandboxes_of(daytona, got[0]["run_id"])
    assert record.deleted and live_of(daytona, got[0]["run_id"]) == []
    assert record.labels["backspace.run"] == got[0]["run_id"]
    assert record.labels["backspace.instance"] == INSTANCE
    assert record.env == {}
    params = record.params
    assert params.get("autoStopInterval", 0) > 0 and params.get("autoDeleteInterval", -1) >= 0
    assert params.get("networkBlockAll") is True
    output = of_type(got, "Tool: Bash")[0]["output"]
    assert "def signup" in output
    for secret in (KEY, "ghp_NOTFORSANDBOX", "sk-ant-api03-daytona"):
        assert secret not in output and secret not in repr(params) and secret not in server.logs()


async def test_a_slow_commands_output_reaches_the_stream_before_it_ends(shared: Shared) -> None:
    make_repo(shared.repos, "live")
    slow = "for i in 1 2 3; do echo tick-$i; sleep 0.6; done"
    shared.model.scenarios["dt-live"] = [bash(slow), finish()]
    server = shared.server
    seen: dict[str, float] = {}
    async with httpx.AsyncClient(verify=TLS, timeout=60) as client:
        body = {"repo_url": "local:live", "prompt": "dt-live"}
        async with client.stream("POST", f"{server.url}/api/code", json=body) as response:
            async for frame in frames(response):
                event = frame.json if frame.data else {}
                if event.get("type") == "output" and "tick-1" in event["output"]:
                    seen.setdefault("first", time.monotonic())
                if event.get("type") == "Tool: Bash":
                    seen["done"] = time.monotonic()
                    assert event["output"] == "tick-1\ntick-2\ntick-3\n"
    assert seen["done"] - seen["first"] > 0.9


async def test_timeouts_and_exit_do_not_break_later_commands(
    repos: Path, fake_model: FakeAnthropic, daytona: FakeDaytona, server_factory: ServerFactory
) -> None:
    make_repo(repos, "widgets")
    fake_model.scenarios["dt-exit"] = [
        bash("exit 3"),
        bash("set -e; false; echo never"),
        bash("sleep 30; echo never"),
        bash("echo still-alive; pwd"),
        finish(),
    ]
    server = server_factory(env_for(repos, fake_model, daytona, BACKSPACE_COMMAND_TIMEOUT="1"))
    got = await post_run(server.url, {"repo_url": "local:widgets", "prompt": "dt-exit"})
    results = of_type(got, "Tool: Bash")
    assert [r["exit_code"] for r in results] == [3, 1, 124, 0]
    assert results[2].get("timed_out") is True
    assert results[3]["output"].startswith("still-alive\n")
    tool_results = fake_model.requests_for("dt-exit")[3]["messages"][-1]["content"]
    assert "timed out after 1 s" in str(tool_results), "the agent is told"
    assert got[-1]["status"] == "no_changes"
    assert daytona.live() == []


async def test_create_is_retried_and_a_failure_for_good_leaves_nothing(
    shared: Shared, shared_daytona: FakeDaytona
) -> None:
    make_repo(shared.repos, "retry")
    shared.model.scenarios["dt-retry"] = [Reply([EDIT_SIGNUP]), finish()]
    shared.model.scenarios["dt-never"] = [Reply([EDIT_SIGNUP]), finish()]
    server, daytona = shared.server, shared_daytona
    daytona.fail_create(503, times=1)
    retried = await post_run(server.url, {"repo_url": "local:retry", "prompt": "dt-retry"})
    assert retried[-1]["status"] == "succeeded", of_type(retried, "error")
    # Exactly the attempts the server makes (the message says 3): the fake is shared, and a
    # failure left over would fail the next test's create.
    daytona.fail_create(500, times=3, message="no runners available")
    never = await post_run(server.url, {"repo_url": "local:retry", "prompt": "dt-never"})
    (error,) = of_type(never, "error")
    assert error["code"] == "sandbox_unreachable" and error["stage"] == "sandbox"
    assert "3 attempts" in error["message"] and error["retryable"] is True
    assert never[-1]["status"] == "failed"
    assert live_of(daytona, retried[0]["run_id"], never[0]["run_id"]) == []


async def test_a_half_created_sandbox_is_deleted(
    repos: Path, fake_model: FakeAnthropic, daytona: FakeDaytona, server_factory: ServerFactory
) -> None:
    make_repo(repos, "widgets")
    fake_model.scenarios["dt-half"] = [Reply([EDIT_SIGNUP]), finish()]
    server = server_factory(env_for(repos, fake_model, daytona, DAYTONA_CREATE_TIMEOUT="1"))
    daytona.hang_create(3, times=1)
    got = await post_run(server.url, {"repo_url": "local:widgets", "prompt": "dt-half"})
    assert got[-1]["status"] == "succeeded", of_type(got, "error")
    await asyncio.sleep(2.5)  # the hung create answers late; its sandbox must still go
    deadline = time.monotonic() + 10
    while daytona.live() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert daytona.live() == [] and len(daytona.sandboxes) == 2


async def test_the_janitor_deletes_sandboxes_no_live_run_owns(
    repos: Path, fake_model: FakeAnthropic, daytona: FakeDaytona, server_factory: ServerFactory
) -> None:
    ours = daytona.add_orphan(labels={"backspace.instance": INSTANCE, "backspace.run": "gone"})
    theirs = daytona.add_orphan(
        labels={"backspace.instance": "another-server", "backspace.run": "x"}
    )
    unlabelled = daytona.add_orphan(labels={})
    server_factory(env_for(repos, fake_model, daytona, BACKSPACE_JANITOR_INTERVAL="0.5"))
    assert ours not in daytona.live()
    assert theirs in daytona.live() and unlabelled in daytona.live()
    # ... and every few seconds after start: a crash of another process of ours, say.
    later = daytona.add_orphan(labels={"backspace.instance": INSTANCE, "backspace.run": "gone-too"})
    deadline = time.monotonic() + 10
    while later in daytona.live() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert later not in daytona.live() and theirs in daytona.live()


async def test_cancel_during_a_long_command_kills_it_and_deletes_the_sandbox(
    shared: Shared, shared_daytona: FakeDaytona
) -> None:
    make_repo(shared.repos, "cancel")
    marker = unique_sleep(131)
    shared.model.scenarios["dt-cancel"] = [bash(f"{marker}; echo never"), finish()]
    server, daytona = shared.server, shared_daytona
    run = await start(server, "dt-cancel", "local:cancel")
    await wait_for_process(marker)
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        assert (await client.post(f"{server.url}/api/runs/{run['id']}/cancel")).status_code == 202
    got = await events(server, run["id"])
    assert got[-1]["status"] == "cancelled" and of_type(got, "error") == []
    assert live_of(daytona, run["id"]) == []
    assert not processes_running(marker)


async def test_daytona_failures_name_their_cause(
    shared: Shared, shared_daytona: FakeDaytona, server_factory: ServerFactory
) -> None:
    repos, fake_model, daytona = shared.repos, shared.model, shared_daytona
    make_repo(repos, "failing")
    marker = unique_sleep(132)
    fake_model.scenarios["dt-badkey"] = [Reply([EDIT_SIGNUP]), finish()]
    fake_model.scenarios["dt-lost"] = [bash(marker), finish()]
    fake_model.scenarios["dt-down"] = [bash("echo hi"), finish()]
    wrong = server_factory(
        env_for(repos, fake_model, daytona, DAYTONA_API_KEY="dtn_wrong0000000"), name="wrong"
    )
    bad_key = await post_run(wrong.url, {"repo_url": "local:failing", "prompt": "dt-badkey"})
    server = shared.server
    run = await start(server, "dt-lost", "local:failing")
    await wait_for_process(marker)
    (lost_id,) = live_of(daytona, run["id"])
    daytona.vanish(lost_id)
    lost = await events(server, run["id"])
    run = await start(server, "dt-down", "local:failing")
    while not live_of(daytona, run["id"]):
        await asyncio.sleep(0.02)
    daytona.toolbox_down = True
    down = await events(server, run["id"])
    daytona.toolbox_down = False
    daytona.fail_create(403, times=1, message="Total CPU quota exceeded")
    quota = await post_run(server.url, {"repo_url": "local:failing", "prompt": "dt-badkey"})
    for got, code in (
        (bad_key, "sandbox_unavailable"),
        (lost, "sandbox_lost"),
        (down, "sandbox_unreachable"),
        (quota, "sandbox_quota"),
    ):
        (error,) = of_type(got, "error")
        assert error["code"] == code, (code, error)
        assert got[-1]["status"] == "failed"
    assert "DAYTONA_API_KEY" in of_type(bad_key, "error")[0]["message"]
    assert KEY not in repr(bad_key) + wrong.logs()


async def test_health_and_doctor_say_whether_daytona_answers(shared: Shared) -> None:
    server = shared.server
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        health = (await client.get(f"{server.url}/health")).json()
    assert health["sandbox"]["backend"] == "daytona" and health["sandbox"]["usable"] is True
    doctor = await asyncio.create_subprocess_exec(
        *_python(), "-m", "backspace", "doctor", env=server.env, cwd=str(server.db_path.parent),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await doctor.communicate()
    assert doctor.returncode == 0, out.decode()
    assert "reachable at" in out.decode()


def _python() -> list[str]:
    import sys

    return [sys.executable]


async def test_file_calls_on_a_vanished_sandbox_say_it_is_gone(daytona: FakeDaytona) -> None:
    from backspace.orchestrator.sandboxes.base import SandboxLost
    from backspace.orchestrator.sandboxes.daytona import DaytonaOptions, DaytonaSandboxProvider

    provider = DaytonaSandboxProvider(
        DaytonaOptions(api_key=KEY, api_url=daytona.api_url, instance="t")
    )
    sandbox = await provider.create("vanishing")
    try:
        await sandbox.write_file(f"{sandbox.workdir}/a.txt", b"a")
        assert await sandbox.read_file(f"{sandbox.workdir}/a.txt") == b"a"
        with pytest.raises(FileNotFoundError):
            await sandbox.read_file(f"{sandbox.workdir}/missing.txt")
        daytona.vanish(sandbox.remote.id)
        with pytest.raises(SandboxLost):
            await sandbox.read_file(f"{sandbox.workdir}/a.txt")
        with pytest.raises(SandboxLost):
            await sandbox.write_file(f"{sandbox.workdir}/b.txt", b"b")
        with pytest.raises(SandboxLost):
            await sandbox.exec("echo hi")
    finally:
        await sandbox.close()
        await provider.aclose()


# --- repository environments on Daytona (issue 14) ----------------------------------------------
CHECKER = (
    '[setup]\nrun = \'mkdir -p .venv/bin && printf "#!/bin/sh\\ngrep -q ValueError app.py\\n" '
    "> .venv/bin/check && chmod +x .venv/bin/check && echo set-up >> ~/setup-count'\n"
    "maintenance = 'echo maintained > .venv/maintained'\n[verify]\nrun = '.venv/bin/check'\n"
)


async def test_setup_is_snapshotted_reused_and_verified_in_a_fresh_sandbox(
    shared: Shared, shared_daytona: FakeDaytona
) -> None:
    make_repo(
        shared.repos,
        "dt-env",
        {"app.py": "def signup(name):\n    return name\n", ".backspace.toml": CHECKER},
    )
    shared.model.scenarios["dt-env-1"] = [Reply([EDIT_SIGNUP]), finish()]
    first = await post_run(shared.server.url, {"repo_url": "local:dt-env", "prompt": "dt-env-1"})
    assert first[-1]["status"] == "succeeded", of_type(first, "error")
    (receipt,) = of_type(first, "verification")
    assert receipt["passed"] and receipt["environment"] == "set up afresh", receipt
    assert any("Cached the environment" in e["message"] for e in of_type(first, "progress"))
    run_id = first[0]["run_id"]
    agent, verifier = (
        sandboxes_of(shared_daytona, run_id),
        sandboxes_of(shared_daytona, run_id + "-verify"),
    )
    assert len(agent) == 1 and len(verifier) == 1
    # The agent's sandbox was closed to the network for the agent phase.
    assert agent[0].network and agent[0].network[-1].get("networkBlockAll") is True
    assert live_of(shared_daytona, run_id, run_id + "-verify") == []

    # The second run starts from the snapshot: maintenance only; the agent fakes the checker,
    # and verification (from the snapshot, not the agent's sandbox) still fails its wrong change.
    shared.model.scenarios["dt-env-2"] = [
        bash("printf '#!/bin/sh\\nexit 0\\n' > .venv/bin/check && echo '# done' >> app.py"),
        finish(),
    ]
    second = await post_run(shared.server.url, {"repo_url": "local:dt-env", "prompt": "dt-env-2"})
    assert second[-1]["status"] == "succeeded", of_type(second, "error")
    said = [e["message"] for e in of_type(second, "progress")]
    assert any("Using the cached environment" in m for m in said), said
    # The snapshot was made on this very base: the base payload does not cross again, to the
    # agent's sandbox or the verifier's.
    assert any("already holds" in m for m in said), said
    run_id = second[0]["run_id"]
    ids = {s.id for s in sandboxes_of(shared_daytona, run_id, run_id + "-verify")}
    uploaded = [
        path
        for r in shared_daytona.requests
        if r["path"].endswith("/files/bulk-upload") and any(i in r["path"] for i in ids)
        for path in (r["body"] or {}).get("files", [])
    ]
    assert uploaded and not any(path.endswith(".tar") for path in uploaded), uploaded
    (receipt,) = of_type(second, "verification")
    assert not receipt["passed"] and receipt["environment"].startswith("cached"), receipt
    assert of_type(second, "pr_created")[0]["draft"] is True
