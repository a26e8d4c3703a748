"""The fault matrix: every outside failure, injected for real, through the real server.

Each row of a table below is one fault, injected through a loopback fake (the model, Daytona,
GitHub) or for real on this machine (the sandbox root, the run's sandbox directory, a git hook).
For every fault the test checks:

(a) the run ends with the expected status and, when it failed, exactly one `error` event (a code,
    the stage, whether retrying may help and a message that names the cause) right before its
    one `complete`; no secret anywhere in its events;
(b) nothing is left behind: no sandbox directory or sandboxed process (`assert_clean`), no live
    Daytona sandbox, no process of the command that was running;
(c) a healthy run started at the same time on the same server succeeds with its pull request;
(d) the server keeps serving: /health answers 200 and a fresh run afterwards succeeds.

One real server per group of faults (started once per module with `start_server`, as
`server_factory` does; the model's and Slack's groups share one), several faults per server: the
matrix takes a minute or two on a shared 2-core machine. Slack's failures must leave its runs
succeeded.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from backspace.orchestrator.sandboxes.local import default_root
from tests import helpers
from tests.conftest import make_repo
from tests.fakes.anthropic import (
    CutStream,
    DroppedStream,
    Fail,
    FakeAnthropic,
    Hang,
    MidStreamError,
    Reply,
    StallStream,
    Step,
    ToolCall,
)
from tests.fakes.daytona import FakeDaytona
from tests.fakes.github import FakeGitHub
from tests.fakes.slack import FakeSlack, SlackSigner, send
from tests.helpers import assert_clean, processes_running, stop_and_remove
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import Server, start_server
from tests.sse import collect, events_of, of_type
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ANTHROPIC_KEY = "sk-ant-api03-FAULTSMODELKEY0123456789"
GITHUB_TOKEN = "ghp_FAULTSGITHUBTOKEN0123456789abcdefghij"
DAYTONA_KEY = "dtn_FAULTSDAYTONAKEY0123456789"
SLACK_TOKEN = "xoxb-FAULTSSLACKTOKEN-0123456789"
SLACK_SECRET = "FAULTSSLACKSIGNINGSECRET0123456789"
SECRETS = (ANTHROPIC_KEY, GITHUB_TOKEN, DAYTONA_KEY, SLACK_TOKEN, SLACK_SECRET)
FILES = {"app.py": "def signup(name):\n    return name\n", "README.md": "# Widgets\n"}

# A number of this session's own: the `sleep` lengths below carry it, so that /proc shows this
# session's commands only (another pytest session on the machine may run this same matrix).
SESSION = f"{uuid.uuid4().int % 10**9:09d}"
HEALTHY = "fx-healthy-run"
HEALTHY_SLOW = "fx-healthy-slow-run"
FRESH = "fx-fresh-run"
EDIT = "fx-edit-run"
EDIT_STEPS: list[Step] = [Reply([EDIT_SIGNUP]), finish()]


def bash(command: str) -> Reply:
    return Reply([ToolCall("bash", {"command": command})])


# --- what a fault must lead to ------------------------------------------------------------------
@dataclass(frozen=True)
class Expect:
    status: str
    code: str | None = None
    stage: str | None = None
    retryable: bool | None = None
    says: tuple[str, ...] = ()  # fragments of the error message: the cause and what to do


Hook = Callable[["Rig", str], Awaitable[None]]


@dataclass(frozen=True)
class Fault:
    id: str
    expect: Expect
    key: str = EDIT  # the fault run's model scenario (its prompt)
    steps: list[Step] = field(default_factory=list)  # the scenario, when the fault is the model
    repo: str = ""  # the fault run's repository; the group's healthy one when empty
    setup: Callable[[Rig], None] | None = None  # before anything starts
    before: Hook | None = None  # after the healthy run started (given its id), before the fault run
    during: Hook | None = None  # while the fault run runs (given its id)
    after: Callable[[Rig], None] | None = None  # once the fault run ended, whatever happened
    healthy: str = HEALTHY
    launch: Callable[[Rig, str], Awaitable[str]] | None = None  # start it (given its prompt)
    check: Callable[[Rig, str, list[dict[str, Any]]], None] | None = None  # more, per fault
    marker: str | None = None  # a command that must not outlive the run


@dataclass
class Rig:
    """One group's server and the fakes behind it."""

    server: Server
    model: FakeAnthropic
    healthy_repo: str
    repos: Path | None = None
    daytona: FakeDaytona | None = None
    github: FakeGitHub | None = None
    slack: FakeSlack | None = None
    signer: SlackSigner | None = None


# --- the server, runs and events ----------------------------------------------------------------
async def start(server: Server, prompt: str, repo: str) -> str:
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        response = await client.post(
            f"{server.url}/api/code",
            json={"repo_url": repo, "prompt": prompt},
            headers={"Accept": "application/json"},
        )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    return run_id


async def follow(server: Server, run_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(verify=TLS, timeout=90) as client:
        response, got = await collect(client, "GET", f"{server.url}/api/runs/{run_id}/events")
    assert response.status_code == 200
    return events_of(got)


async def get_run(server: Server, run_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        run: dict[str, Any] = (await client.get(f"{server.url}/api/runs/{run_id}")).json()
    return run


def running(fragment: str) -> bool:
    return bool(processes_running(fragment))


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.03)


# --- the checks ---------------------------------------------------------------------------------
def check_ending(events: list[dict[str, Any]], expect: Expect) -> None:
    """(a): the one `complete` with the status, and the one clear `error` right before it."""
    assert events[0]["type"] == "start"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    assert types.count("complete") == 1 and types[-1] == "complete", types
    complete = events[-1]
    errors = of_type(events, "error")
    assert complete["status"] == expect.status, (complete, errors)
    if expect.code is None:
        assert errors == []
    else:
        assert len(errors) == 1 and types[-2] == "error", errors
        error = errors[0]
        assert error["code"] == expect.code, error
        assert error["message"] == complete["message"] and len(error["message"]) > 25
        if expect.stage is not None:
            assert error["stage"] == expect.stage, error
        if expect.retryable is not None:
            assert error["retryable"] is expect.retryable, error
        for fragment in expect.says:
            assert fragment in error["message"], (fragment, error["message"])
    shown = repr(events)
    for secret in SECRETS:
        assert secret not in shown


def check_healthy(events: list[dict[str, Any]]) -> None:
    """(c) and (d): the healthy run opened its pull request, untouched by the fault."""
    assert events[-1]["type"] == "complete" and events[-1]["status"] == "succeeded", (
        of_type(events, "error"),
        events[-1],
    )
    assert of_type(events, "error") == [] and len(of_type(events, "pr_created")) == 1


def check_nothing_left(rig: Rig, marker: str | None) -> None:
    """(b): no sandbox directory, no sandboxed process, no live Daytona sandbox, no command."""
    assert_clean(rig.server)
    if rig.daytona is not None:
        assert rig.daytona.live() == []
    if marker is not None:
        assert not running(marker), f"{marker!r} outlived its run"


async def check_serving(rig: Rig) -> None:
    """(d): /health answers and a fresh run succeeds; the log holds no secret."""
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        health = await client.get(f"{rig.server.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    assert rig.server.process.poll() is None
    fresh = await follow(rig.server, await start(rig.server, FRESH, rig.healthy_repo))
    check_healthy(fresh)
    logs = rig.server.logs()
    for secret in SECRETS:
        assert secret not in logs


async def exercise(rig: Rig, fault: Fault) -> None:
    """Run the fault next to a healthy run, then check (a) to (d)."""
    if fault.steps:
        rig.model.scenarios[fault.key] = fault.steps
    if fault.setup is not None:
        fault.setup(rig)
    healthy_id = await start(rig.server, fault.healthy, rig.healthy_repo)
    try:
        if fault.before is not None:
            await fault.before(rig, healthy_id)
        if fault.launch is not None:
            fault_id = await fault.launch(rig, fault.key)
        else:
            fault_id = await start(rig.server, fault.key, fault.repo or rig.healthy_repo)
        if fault.during is not None:
            await fault.during(rig, fault_id)
        events = await asyncio.wait_for(follow(rig.server, fault_id), 90)
    finally:
        if fault.after is not None:
            fault.after(rig)
    healthy = await asyncio.wait_for(follow(rig.server, healthy_id), 90)

    check_ending(events, fault.expect)
    run = await get_run(rig.server, fault_id)
    assert run["status"] == fault.expect.status
    if fault.expect.code is not None:
        assert run["error"]["code"] == fault.expect.code
    if fault.check is not None:
        fault.check(rig, fault.key, events)
    check_healthy(healthy)
    check_nothing_left(rig, fault.marker)
    await check_serving(rig)
    check_nothing_left(rig, fault.marker)


# --- the model ----------------------------------------------------------------------------------
RATE_LIMIT_HEADERS = {
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "0",
    "anthropic-ratelimit-requests-reset": "2030-01-01T00:00:00Z",
}
LOOK = bash("cat app.py")  # turn 0: the sandbox is in use when the model fails on turn 1


def attempts_spaced(turn: int, count: int, at_least: float) -> Callable[[Rig, str, Any], None]:
    """The model was asked `count` times for `turn`, each retry after `retry-after`."""

    def check(rig: Rig, key: str, events: list[dict[str, Any]]) -> None:
        assert rig.model.attempts(key, turn) == count
        records = [r for r in list(rig.model.requests) if r.get("scenario") == key]
        times = [r["time"] for r in records if r["path"] == "/v1/messages"][turn : turn + count]
        assert all(b - a >= at_least for a, b in itertools.pairwise(times)), times

    return check


def attempts(turn: int, count: int) -> Callable[[Rig, str, Any], None]:
    def check(rig: Rig, key: str, events: list[dict[str, Any]]) -> None:
        assert rig.model.attempts(key, turn) == count

    return check


MODEL_FAULTS = [
    Fault(
        "429-persistent-retry-after",
        Expect("failed", "model_rate_limited", "agent", True, ("rate limiting", "3 attempts")),
        key="fx-model-429-persistent",
        steps=[
            LOOK,
            [Fail(429, retry_after=1, retry_after_ms=None, headers=RATE_LIMIT_HEADERS, times=99)],
        ],
        check=attempts_spaced(1, 3, 0.9),
    ),
    Fault(
        "429-transient",
        Expect("succeeded"),
        key="fx-model-429-transient",
        steps=[
            [Fail(429, retry_after=1, retry_after_ms=None, headers=RATE_LIMIT_HEADERS), LOOK],
            Reply([EDIT_SIGNUP]),
            finish(),
        ],
        check=attempts_spaced(0, 2, 0.9),
    ),
    Fault(
        "529-overloaded",
        Expect("failed", "model_overloaded", "agent", True, ("overloaded", "3 attempts")),
        key="fx-model-529",
        steps=[LOOK, [Fail(529, times=99)]],
        check=attempts(1, 3),
    ),
    Fault(
        "500-api-error",
        Expect("failed", "model_unavailable", "agent", True, ("failed (500)", "3 attempts")),
        key="fx-model-500",
        steps=[LOOK, [Fail(500, times=99)]],
        check=attempts(1, 3),
    ),
    Fault(
        "401-key-rejected",
        Expect("failed", "model_auth", "agent", False, ("ANTHROPIC_API_KEY",)),
        key="fx-model-401",
        steps=[[Fail(401, times=99)]],
        check=attempts(0, 1),
    ),
    Fault(
        "hang-until-timeout",
        Expect("failed", "model_timeout", "agent", True, ("did not answer in time", "3 attempts")),
        key="fx-model-hang",
        steps=[LOOK, [Hang(60, times=99)]],
        check=attempts(1, 3),
    ),
    Fault(
        "stall-mid-stream",
        Expect("failed", "model_timeout", "agent", True, ("in the middle", "3 attempts")),
        key="fx-model-stall",
        steps=[LOOK, [StallStream(60, times=99)]],
        check=attempts(1, 3),
    ),
    Fault(
        "error-event-mid-stream",
        Expect("failed", "model_stream_error", "agent", True, ("overloaded_error", "3 attempts")),
        key="fx-model-midstream",
        steps=[LOOK, [MidStreamError(times=99)]],
        check=attempts(1, 3),
    ),
    Fault(
        "stream-cut",
        Expect("failed", "model_stream_cut", "agent", True, ("ended before", "3 attempts")),
        key="fx-model-cut",
        steps=[LOOK, [CutStream(times=99)]],
        check=attempts(1, 3),
    ),
    Fault(
        "connection-dropped-mid-stream",
        Expect("failed", "model_stream_cut", "agent", True, ("connection", "3 attempts")),
        key="fx-model-dropped",
        steps=[LOOK, [DroppedStream(times=99)]],
        check=attempts(1, 3),
    ),
    Fault(
        "mid-stream-error-then-drop-then-ok",
        Expect("succeeded"),
        key="fx-model-flaky",
        steps=[LOOK, [MidStreamError(), DroppedStream(), Reply([EDIT_SIGNUP])], finish()],
        check=attempts(1, 3),
    ),
]


def healthy_scenarios(model: FakeAnthropic) -> None:
    model.scenarios[HEALTHY] = [Reply([EDIT_SIGNUP], delay=0.3), finish()]
    model.scenarios[HEALTHY_SLOW] = [Reply([EDIT_SIGNUP], delay=2.5), finish()]
    model.scenarios[FRESH] = EDIT_STEPS
    model.scenarios[EDIT] = EDIT_STEPS


@pytest.fixture(scope="module")
def model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(scenarios={}) as fake:
        healthy_scenarios(fake)
        yield fake


UNLIMITED = {"BACKSPACE_RUNS_PER_MINUTE": "6000", "BACKSPACE_RUNS_BURST": "1000"}


def workdir(group: str) -> Path:
    """A group's directory (see tests/helpers.py: not under pytest's basetemp)."""
    return helpers.workdir(f"faults-{group}")


def local_env(repos: Path, model: FakeAnthropic, **extra: str) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": model.url,
        "BACKSPACE_LOCAL_REPOS": str(repos),
        "BACKSPACE_SANDBOX": "local",
        **UNLIMITED,
        **extra,
    }


@pytest.fixture(scope="module")
def model_rig(model: FakeAnthropic) -> Iterator[Rig]:
    """One server for the model's faults and Slack's (a server start is about 1.5 s of CPU):
    the model's fault runs come through the API, so they post nothing to Slack, and Slack's
    runs take one model turn each, far inside the short model timeout."""
    root = workdir("model")
    make_repo(root / "repos", "widgets", FILES)
    with FakeSlack(token=SLACK_TOKEN, team_id="T0001", bot_user_id="U0BOT") as slack:
        env = local_env(
            root / "repos", model,
            BACKSPACE_MODEL_RETRIES="2", BACKSPACE_MODEL_TIMEOUT="1.5",
            SLACK_BOT_TOKEN=SLACK_TOKEN, SLACK_SIGNING_SECRET=SLACK_SECRET,
            SLACK_API_URL=slack.api_url, SLACK_STATUS_INTERVAL="0.3", SLACK_POST_INTERVAL="0.25",
        )  # fmt: skip
        server = start_server(root / "server", env)
        try:
            yield Rig(
                server, model, "local:widgets", repos=root / "repos",
                slack=slack, signer=SlackSigner(SLACK_SECRET),
            )  # fmt: skip
        finally:
            stop_and_remove(server, root)


@pytest.mark.parametrize("fault", MODEL_FAULTS, ids=[f.id for f in MODEL_FAULTS])
async def test_model_faults(model_rig: Rig, fault: Fault) -> None:
    await exercise(model_rig, fault)


# --- the local sandbox and the local git host ---------------------------------------------------
def sandbox_dir(rig: Rig, run_id: str) -> Path:
    return default_root(rig.server.db_path) / run_id


def chattr(path: Path, flag: str) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


async def freeze_the_root(rig: Rig, healthy_id: str) -> None:
    """The healthy run has its sandbox; then the root stops taking new entries (even for root)."""
    await wait_until(lambda: sandbox_dir(rig, healthy_id).is_dir(), "the healthy sandbox")
    chattr(default_root(rig.server.db_path), "+i")


def thaw_the_root(rig: Rig) -> None:
    chattr(default_root(rig.server.db_path), "-i")


def running_exactly(*argv: str) -> bool:
    """A process whose argv is exactly `argv`: the command itself, not bwrap's command line
    (which holds the script before bubblewrap has mounted the sandbox)."""
    wanted = b"\0".join(arg.encode() for arg in argv) + b"\0"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes() == wanted:
                    return True
            except OSError:
                continue
    return False


def delete_sandbox_dir(path: Path) -> None:
    """What a /tmp cleaner does: all it can. As root the run directory is its tmpfs's mount
    point, which cannot be removed while mounted: everything in it goes, the workspace too."""
    shutil.rmtree(path, ignore_errors=True)
    assert not (path / "workspace").exists()


def vanish_during(*argv: str) -> Hook:
    """Delete the run's sandbox directory from outside while `argv` runs in it."""

    async def go(rig: Rig, run_id: str) -> None:
        await wait_until(lambda: running_exactly(*argv), " ".join(argv))
        delete_sandbox_dir(sandbox_dir(rig, run_id))

    return go


def vanish_between_turns(turn: int) -> Hook:
    """Delete the run's sandbox directory while the model thinks about `turn`."""

    async def go(rig: Rig, run_id: str) -> None:
        await wait_until(
            lambda: rig.model.attempts("fx-sandbox-vanish-turns", turn) > 0, "the model turn"
        )
        delete_sandbox_dir(sandbox_dir(rig, run_id))

    return go


def timed_out_and_went_on(rig: Rig, key: str, events: list[dict[str, Any]]) -> None:
    first = of_type(events, "Tool: Bash")[0]
    assert first["exit_code"] == 124 and first.get("timed_out") is True
    told = str(rig.model.requests_for(key)[1]["messages"][-1])
    assert "timed out after 2 s" in told, "the agent is told"
    assert of_type(events, "Tool: Edit")[0]["filepath"] == "app.py"


def no_further_turn(turns: int) -> Callable[[Rig, str, Any], None]:
    """Once the sandbox is gone the run stops: the model is not asked again."""

    def check(rig: Rig, key: str, events: list[dict[str, Any]]) -> None:
        assert len(rig.model.requests_for(key)) == turns, len(rig.model.requests_for(key))

    return check


def conflicting_branch(rig: Rig) -> None:
    """A branch named `backspace`: no `backspace/...` branch can be made next to it.

    (The origin's hooks never run when backspace publishes into it, so a hook cannot refuse.)
    """
    assert rig.repos is not None
    subprocess.run(
        ["git", "-C", str(rig.repos / "rejecting"), "branch", "backspace"],
        check=True, capture_output=True,
    )  # fmt: skip


def nothing_pushed(rig: Rig, key: str, events: list[dict[str, Any]]) -> None:
    assert rig.repos is not None
    branches = subprocess.run(
        ["git", "-C", str(rig.repos / "rejecting"), "branch", "--list"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert branches == ["backspace", "*", "main"]


SANDBOX_FAULTS = [
    Fault(
        "root-not-writable",
        Expect(
            "failed",
            "sandbox_error",
            "sandbox",
            True,
            ("could not be created", "Operation not permitted", "BACKSPACE_SANDBOX_ROOT"),
        ),
        before=freeze_the_root,
        after=thaw_the_root,
        healthy=HEALTHY_SLOW,
    ),
    Fault(
        "command-hangs-past-its-timeout",
        Expect("succeeded"),
        key="fx-sandbox-hang",
        steps=[bash(f"sleep 61.{SESSION}; echo never"), Reply([EDIT_SIGNUP]), finish()],
        check=timed_out_and_went_on,
        marker=f"sleep 61.{SESSION}",
    ),
    Fault(
        "vanishes-while-a-command-runs",
        Expect("failed", "sandbox_lost", "agent", True, ("sandbox", "gone")),
        key="fx-sandbox-vanish-command",
        steps=[bash(f"sleep 1.5{SESSION}; echo slept"), Reply([EDIT_SIGNUP]), finish()],
        during=vanish_during("sleep", f"1.5{SESSION}"),
        check=no_further_turn(2),
        marker=f"sleep 1.5{SESSION}",
    ),
    Fault(
        "vanishes-between-turns",
        Expect("failed", "sandbox_lost", "agent", True, ("sandbox", "gone")),
        key="fx-sandbox-vanish-turns",
        steps=[bash("echo first"), Reply([EDIT_SIGNUP], delay=1.0), finish()],
        during=vanish_between_turns(1),
        check=no_further_turn(2),
    ),
    Fault(
        "push-rejected-by-the-origin",
        Expect(
            "failed",
            "push_rejected",
            "pushing",
            False,
            ("rejected", "refs/heads/backspace"),
        ),
        repo="local:rejecting",
        setup=conflicting_branch,
        check=nothing_pushed,
    ),
]


@pytest.fixture(scope="module")
def sandbox_rig(model: FakeAnthropic) -> Iterator[Rig]:
    root = workdir("sandbox")
    make_repo(root / "repos", "widgets", FILES)
    make_repo(root / "repos", "rejecting", FILES)
    env = local_env(root / "repos", model, BACKSPACE_COMMAND_TIMEOUT="2")
    server = start_server(root / "server", env)
    try:
        yield Rig(server, model, "local:widgets", repos=root / "repos")
    finally:
        stop_and_remove(server, root)


@pytest.mark.parametrize("fault", SANDBOX_FAULTS, ids=[f.id for f in SANDBOX_FAULTS])
async def test_sandbox_and_push_faults(sandbox_rig: Rig, fault: Fault) -> None:
    await exercise(sandbox_rig, fault)


async def test_a_sandbox_root_that_cannot_be_made_is_refused_clearly(
    tmp_path: Path, model: FakeAnthropic
) -> None:
    """At start: BACKSPACE_SANDBOX_ROOT is a file. Runs are refused with a 503 saying why (and
    what to set); /health says it; the server keeps serving; nothing is started."""
    make_repo(tmp_path / "repos", "widgets", FILES)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the sandbox root should be\n")
    env = local_env(tmp_path / "repos", model, BACKSPACE_SANDBOX_ROOT=str(blocker))
    server = start_server(tmp_path / "server", env)
    try:
        async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
            refused = await client.post(
                f"{server.url}/api/code", json={"repo_url": "local:widgets", "prompt": HEALTHY}
            )
            health = await client.get(f"{server.url}/health")
            runs = (await client.get(f"{server.url}/api/runs")).json()["runs"]
            again = await client.get(f"{server.url}/health")
        assert refused.status_code == 503, refused.text
        detail = refused.json()["detail"]
        assert str(blocker) in detail and "BACKSPACE_SANDBOX_ROOT" in detail, detail
        assert "bubblewrap" not in detail, "the advice is about the root, not bubblewrap"
        assert health.status_code == 200 and again.status_code == 200
        sandbox = health.json()["sandbox"]
        assert sandbox["usable"] is False and "BACKSPACE_SANDBOX_ROOT" in sandbox["message"]
        assert health.json()["status"] == "degraded" and runs == []
        assert blocker.read_text().startswith("a file") and server.process.poll() is None
    finally:
        server.stop()


# --- Daytona ------------------------------------------------------------------------------------
def daytona_sandbox_of(rig: Rig, run_id: str) -> str | None:
    assert rig.daytona is not None
    for sid, sandbox in list(rig.daytona.sandboxes.items()):
        if sandbox.labels.get("backspace.run") == run_id and not sandbox.gone:
            return sid
    return None


def daytona_create_fails(status: int, times: int, message: str) -> Hook:
    """Once the healthy run has its sandbox, the next `times` creates fail."""

    async def go(rig: Rig, healthy_id: str) -> None:
        assert rig.daytona is not None
        await wait_until(lambda: daytona_sandbox_of(rig, healthy_id) is not None, "its sandbox")
        rig.daytona.fail_create(status, times=times, message=message)

    return go


def daytona_vanish_during(marker: str) -> Hook:
    async def go(rig: Rig, run_id: str) -> None:
        assert rig.daytona is not None
        await wait_until(lambda: running(marker), marker)
        sid = daytona_sandbox_of(rig, run_id)
        assert sid is not None
        rig.daytona.vanish(sid)

    return go


DAYTONA_FAULTS = [
    Fault(
        "create-fails-500-every-attempt",
        Expect(
            "failed",
            "sandbox_unreachable",
            "sandbox",
            True,
            ("3 attempts", "no runners available"),
        ),
        before=daytona_create_fails(500, 3, "no runners available"),
        healthy=HEALTHY_SLOW,
    ),
    Fault(
        "create-refused-403-quota",
        Expect("failed", "sandbox_quota", "sandbox", None, ("quota",)),
        before=daytona_create_fails(403, 1, "Total CPU quota exceeded"),
    ),
    Fault(
        "sandbox-deleted-mid-command",
        Expect("failed", "sandbox_lost", "agent", True, ("gone",)),
        key="fx-daytona-vanish",
        steps=[bash(f"sleep 134.{SESSION}; echo never"), Reply([EDIT_SIGNUP]), finish()],
        during=daytona_vanish_during(f"sleep 134.{SESSION}"),
        marker=f"sleep 134.{SESSION}",
    ),
]


@pytest.fixture(scope="module")
def daytona_rig(model: FakeAnthropic) -> Iterator[Rig]:
    root = workdir("daytona")
    make_repo(root / "repos", "widgets", FILES)
    with FakeDaytona(api_key=DAYTONA_KEY) as daytona:
        env = {
            **local_env(root / "repos", model),
            "BACKSPACE_SANDBOX": "daytona",
            "DAYTONA_API_KEY": DAYTONA_KEY,
            "DAYTONA_API_URL": daytona.api_url,
            "BACKSPACE_INSTANCE": "faults",
        }
        server = start_server(root / "server", env)
        try:
            yield Rig(server, model, "local:widgets", repos=root / "repos", daytona=daytona)
        finally:
            stop_and_remove(server, root)


@pytest.mark.parametrize("fault", DAYTONA_FAULTS, ids=[f.id for f in DAYTONA_FAULTS])
async def test_daytona_faults(daytona_rig: Rig, fault: Fault) -> None:
    await exercise(daytona_rig, fault)


# --- GitHub -------------------------------------------------------------------------------------
def github_fails(
    method: str, path: str, status: int, message: str | None = None, **headers: str
) -> Callable[[Rig], None]:
    def go(rig: Rig) -> None:
        assert rig.github is not None
        rig.github.fail(method, path, status, message, times=10, headers=headers)

    return go


def no_pull_request(repo: str) -> Callable[[Rig, str, Any], None]:
    def check(rig: Rig, key: str, events: list[dict[str, Any]]) -> None:
        assert rig.github is not None
        assert rig.github.pulls(repo) == []

    return check


def github_hook(repo: str) -> Callable[[Rig], None]:
    def go(rig: Rig) -> None:
        assert rig.github is not None
        hook = rig.github.bare_path(repo) / "hooks" / "pre-receive"
        hook.write_text("#!/bin/sh\necho 'push declined: commits must be signed' >&2\nexit 1\n")
        hook.chmod(0o755)

    return go


def github_fault(
    name: str, expect: Expect, setup: Callable[[Rig], None], pr: bool = False
) -> Fault:
    repo = f"acme/{name}"
    return Fault(name, expect, repo=repo, setup=setup, check=no_pull_request(repo) if pr else None)


RESET_LATER = str(int(time.time()) + 3600)
GITHUB_FAULTS = [
    github_fault(
        "lookup-502",
        Expect("failed", "github_unavailable", "sandbox", True, ("acme/lookup-502", "try again")),
        github_fails("GET", r"^/repos/acme/lookup-502$", 502),
    ),
    github_fault(
        "lookup-403-rate-limit",
        Expect("failed", "github_rate_limited", "sandbox", True, ("rate limit", "try again")),
        github_fails(
            "GET",
            r"^/repos/acme/lookup-403-rate-limit$",
            403,
            "API rate limit exceeded for user ID 1.",
            **{"x-ratelimit-remaining": "0", "x-ratelimit-reset": RESET_LATER},
        ),
    ),
    github_fault(
        "lookup-403-secondary-rate-limit",
        Expect("failed", "github_rate_limited", "sandbox", True, ("rate limit", "try again")),
        github_fails(
            "GET",
            r"^/repos/acme/lookup-403-secondary-rate-limit$",
            403,
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            **{"retry-after": "1"},
        ),
    ),
    github_fault(
        "fetch-503",
        Expect("failed", "github_unavailable", "sandbox", True, ("fetch from acme/fetch-503",)),
        github_fails("GET", r"^/acme/fetch-503\.git/info/refs$", 503),
    ),
    github_fault(
        "push-declined-by-a-hook",
        Expect(
            "failed",
            "push_rejected",
            "pushing",
            False,
            ("commits must be signed", "(pre-receive hook declined)"),
        ),
        github_hook("acme/push-declined-by-a-hook"),
    ),
    github_fault(
        "pr-502",
        Expect("failed", "github_unavailable", "pr", True, ("open a pull request", "try again")),
        github_fails("POST", r"^/repos/acme/pr-502/pulls$", 502),
        pr=True,
    ),
    github_fault(
        "pr-403-no-access",
        Expect("failed", "github_no_access", "pr", False, ("GITHUB_TOKEN", "not accessible")),
        github_fails(
            "POST",
            r"^/repos/acme/pr-403-no-access/pulls$",
            403,
            "Resource not accessible by personal access token",
        ),
        pr=True,
    ),
    github_fault(
        "pr-422-validation",
        Expect("failed", "github_rejected", "pr", False, ("422", "No commits between")),
        github_fails(
            "POST",
            r"^/repos/acme/pr-422-validation/pulls$",
            422,
            "No commits between main and the branch",
        ),
        pr=True,
    ),
    github_fault(
        "pr-429-secondary-rate-limit",
        Expect("failed", "github_rate_limited", "pr", True, ("rate limit", "try again")),
        github_fails(
            "POST",
            r"^/repos/acme/pr-429-secondary-rate-limit/pulls$",
            429,
            None,
            **{"retry-after": "1"},
        ),
        pr=True,
    ),
]


@pytest.fixture(scope="module")
def github_rig(model: FakeAnthropic) -> Iterator[Rig]:
    root = workdir("github")
    with FakeGitHub(token=GITHUB_TOKEN, login="backspace-bot") as github:
        github.create_repo("acme/healthy", files=FILES)
        for fault in GITHUB_FAULTS:
            github.create_repo(fault.repo, files=FILES)
        env = {
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": model.url,
            "BACKSPACE_SANDBOX": "local",
            "GITHUB_TOKEN": GITHUB_TOKEN,
            "GITHUB_API_URL": github.api_url,
            "GITHUB_WEB_HOST": "github.com",
            **UNLIMITED,
        }
        server = start_server(root / "server", env)
        try:
            yield Rig(server, model, "acme/healthy", github=github)
        finally:
            stop_and_remove(server, root)


@pytest.mark.parametrize("fault", GITHUB_FAULTS, ids=[f.id for f in GITHUB_FAULTS])
async def test_github_faults(github_rig: Rig, fault: Fault) -> None:
    await exercise(github_rig, fault)


# --- Slack: its failures must never hurt the run it reports on ---------------------------------
CHANNEL = "C0FAULTS"


async def slash_run(rig: Rig, prompt: str) -> str:
    """Start the run with a signed `/backspace` command; its id from the run list."""
    assert rig.slack is not None and rig.signer is not None
    body = rig.signer.slash_command_body(
        text=f"local:widgets {prompt}",
        channel_id=CHANNEL,
        response_url=rig.slack.response_url(CHANNEL, "U1"),
    )
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        response = await send(
            client, f"{rig.server.url}/slack/events", body, rig.signer,
            content_type="application/x-www-form-urlencoded",
        )  # fmt: skip
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            runs = (await client.get(f"{rig.server.url}/api/runs")).json()["runs"]
            mine = [r for r in runs if r["prompt"] == prompt and r["source"] == "slack"]
            if mine:
                run_id: str = mine[0]["id"]
                return run_id
            await asyncio.sleep(0.05)
    raise AssertionError(f"no run started for {prompt!r}")


def slack_fails(method: str, error: str, times: int, **how: int) -> Callable[[Rig], None]:
    """Queued failures; the next Slack fault's reset drops any this one did not use up."""

    def go(rig: Rig) -> None:
        assert rig.slack is not None
        rig.slack.reset()
        rig.slack.fail(method, error, times=times, **how)

    return go


def posted_after_the_wait(rig: Rig, key: str, events: list[dict[str, Any]]) -> None:
    assert rig.slack is not None
    deadline = time.monotonic() + 15  # the reporter may still be waiting out a Retry-After
    while len(rig.slack.calls_to("chat.postMessage")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    posts = [
        c for c in rig.slack.calls_to("chat.postMessage") if c["args"].get("channel") == CHANNEL
    ]
    statuses = [c["status"] for c in posts]
    assert statuses[:3] == [429, 429, 200], statuses
    assert posts[2]["time"] - posts[0]["time"] >= 1.8, "Retry-After was honoured"


def every_post_failed(rig: Rig, key: str, events: list[dict[str, Any]]) -> None:
    assert rig.slack is not None
    posts = rig.slack.calls_to("chat.postMessage")
    assert posts and all(c["status"] == 500 for c in posts), [c["status"] for c in posts]


SLACK_FAULTS = [
    Fault(
        "chat-postMessage-429-twice",
        Expect("succeeded"),
        key="fx-slack-429",
        steps=EDIT_STEPS,
        launch=slash_run,
        setup=slack_fails("chat.postMessage", "ratelimited", 2, retry_after=1),
        check=posted_after_the_wait,
    ),
    Fault(
        "every-slack-call-500",
        Expect("succeeded"),
        key="fx-slack-500",
        steps=EDIT_STEPS,
        launch=slash_run,
        setup=slack_fails("chat.postMessage", "internal_error", 50, status=500),
        check=every_post_failed,
    ),
]


@pytest.mark.parametrize("fault", SLACK_FAULTS, ids=[f.id for f in SLACK_FAULTS])
async def test_slack_faults(model_rig: Rig, fault: Fault) -> None:
    await exercise(model_rig, fault)


def test_the_tables_name_each_fault_once() -> None:
    every = MODEL_FAULTS + SANDBOX_FAULTS + DAYTONA_FAULTS + GITHUB_FAULTS + SLACK_FAULTS
    assert len({f.id for f in every}) == len(every)
    keys = [f.key for f in every if f.steps]
    assert len(set(keys)) == len(keys)
    assert not any(a in b for a in keys for b in keys if a != b), "a key inside another's prompt"
