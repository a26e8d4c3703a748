"""The fake Daytona (tests/fakes/daytona.py) driven by the real ``daytona`` SDK (0.226.1).

Why: the service's Daytona tests trust this fake, so every answer it gives must
parse with the SDK's own generated models and every failure must surface as the
exception class the real service would raise. The tests below also pin down what
the SDK does in the awkward cases (timeouts, half-created sandboxes, a sandbox
lost mid-stream, a session shell killed by ``exit``), since the provider's error
handling is written against exactly these classes.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daytona import (
    AsyncDaytona,
    CreateSandboxFromSnapshotParams,
    DaytonaAuthenticationError,
    DaytonaBadGatewayError,
    DaytonaConfig,
    DaytonaError,
    DaytonaFileNotFoundError,
    DaytonaInternalServerError,
    DaytonaNotFoundError,
    DaytonaProcessExecutionTimeoutError,
    DaytonaServiceUnavailableError,
    DaytonaSessionEndedError,
    DaytonaTimeoutError,
    ListSandboxesQuery,
    SessionExecuteRequest,
)
from daytona._async.sandbox import AsyncSandbox

from tests.fakes.daytona import STDERR_PREFIX, STDOUT_PREFIX, FakeDaytona
from tests.helpers import processes_running

KEY = "dtn_test"


@pytest.fixture
def dt(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDaytona]:
    # The SDK's aiohttp session trusts HTTP(S)_PROXY; keep the fake reachable.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with FakeDaytona(api_key=KEY) as fake:
        yield fake


def make_client(dt: FakeDaytona, key: str = KEY) -> AsyncDaytona:
    return AsyncDaytona(DaytonaConfig(api_key=key, api_url=dt.api_url, target="us"))


@pytest.fixture
async def client(dt: FakeDaytona) -> AsyncIterator[AsyncDaytona]:
    async with make_client(dt) as c:
        yield c


@pytest.fixture
async def sandbox(client: AsyncDaytona) -> AsyncSandbox:
    return await client.create(CreateSandboxFromSnapshotParams(env_vars={"SANDBOX_VAR": "inside"}))


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def marked(seconds: int) -> tuple[str, str]:
    """A sleep whose ``sh`` shows a unique marker in /proc (``; :`` stops sh exec'ing sleep)."""
    marker = f"fake-daytona-{uuid.uuid4().hex[:12]}"
    return marker, f"sh -c 'sleep {seconds}; :' {marker}"


def calls(dt: FakeDaytona, method: str, suffix: str = "") -> list[dict[str, Any]]:
    return [r for r in dt.requests if r["method"] == method and r["path"].endswith(suffix)]


# -- the main API ---------------------------------------------------------------------------


async def test_create_get_list_delete(dt: FakeDaytona, client: AsyncDaytona) -> None:
    params = CreateSandboxFromSnapshotParams(
        labels={"backspace.owner": "me", "backspace.run_id": "r1"},
        env_vars={"GREETING": "hi"},
        auto_stop_interval=0,
        auto_delete_interval=0,
        network_block_all=True,
    )
    started = time.monotonic()
    sb = await client.create(params)
    assert time.monotonic() - started < 1.0  # state "started": no waiting at all
    assert sb.state == "started"
    assert sb.toolbox_proxy_url == f"http://127.0.0.1:{dt.port}/toolbox"
    record = dt.sandboxes[sb.id]
    assert record.labels == {
        "backspace.owner": "me",
        "backspace.run_id": "r1",
        "code-toolbox-language": "python",  # added by the SDK
    }
    assert record.env == {"GREETING": "hi"}
    assert record.params["autoStopInterval"] == 0
    assert record.params["autoDeleteInterval"] == 0
    assert record.params["networkBlockAll"] is True
    assert record.params["target"] == "us"
    assert record.dir.is_dir() and record.dir.name == "home"
    assert await sb.get_user_home_dir() == str(record.dir)
    assert await sb.get_work_dir() == str(record.dir)

    create = calls(dt, "POST", "/api/sandbox")[0]
    assert create["headers"]["authorization"] == f"Bearer {KEY}"
    assert create["headers"]["x-daytona-source"] == "sdk-python-async"
    assert create["headers"]["x-daytona-sdk-version"] == "0.226.1"
    assert create["status"] == 200 and create["response"]["id"] == sb.id

    same = await client.get(sb.id)
    assert (same.id, same.labels, same.env) == (sb.id, sb.labels, {"GREETING": "hi"})

    other = await client.create(CreateSandboxFromSnapshotParams(labels={"backspace.owner": "x"}))
    orphan = dt.add_orphan(labels={"backspace.owner": "me", "backspace.run_id": "crashed"})
    mine = ListSandboxesQuery(labels={"backspace.owner": "me"})
    assert {s.id async for s in client.list(mine)} == {sb.id, orphan}
    one_per_page = ListSandboxesQuery(labels={"backspace.owner": "me"}, limit=1)
    assert sorted([s.id async for s in client.list(one_per_page)]) == sorted([sb.id, orphan])
    listed = calls(dt, "GET", "/api/sandbox")
    assert listed[-1]["query"]["labels"] == '{"backspace.owner": "me"}'
    assert listed[-1]["query"]["cursor"] == "1"  # the second page

    await client.delete(sb)
    assert record.deleted and not record.dir.exists()
    assert set(dt.live()) == {other.id, orphan}
    with pytest.raises(DaytonaNotFoundError):
        await client.get(sb.id)
    with pytest.raises(DaytonaNotFoundError):  # the toolbox is gone too
        await sb.process.exec("true")
    assert {s.id async for s in client.list(mine)} == {orphan}


async def test_create_waits_while_creating(dt: FakeDaytona, client: AsyncDaytona) -> None:
    """State "creating" exercises the wait loop: Socket.IO 404s, so the SDK polls every 1 s."""
    dt.create_state = "creating"
    dt.creating_for = 0.3
    started = time.monotonic()
    sb = await client.create()
    elapsed = time.monotonic() - started
    assert sb.state == "started"
    assert 0.3 <= elapsed < 3.0
    assert len(calls(dt, "GET", f"/api/sandbox/{sb.id}")) >= 2
    assert calls(dt, "GET", "/api/socket.io/")[0]["status"] == 404


async def test_half_created_sandbox(dt: FakeDaytona, client: AsyncDaytona) -> None:
    """A create timing out while the POST hangs: the SDK cannot know the id (``sandbox_id``
    stays None), so only a label sweep can find the sandbox it left behind."""
    dt.hang_create(5)
    started = time.monotonic()
    with pytest.raises(DaytonaTimeoutError) as caught:
        await client.create(CreateSandboxFromSnapshotParams(labels={"run": "half"}), timeout=1)
    assert time.monotonic() - started < 2.5
    assert type(caught.value) is DaytonaTimeoutError
    assert "exceeded timeout of 1 seconds" in str(caught.value)
    assert caught.value.sandbox_id is None  # only set when the POST answered before the timeout
    # ...but the sandbox exists: only a label sweep finds (and deletes) it.
    [half] = dt.live()
    found = [s async for s in client.list(ListSandboxesQuery(labels={"run": "half"}))]
    assert [s.id for s in found] == [half]
    await client.delete(found[0])
    assert dt.live() == []

    # When the POST did answer and only the wait for "started" timed out, the id is attached.
    dt.create_state, dt.creating_for = "creating", 5
    with pytest.raises(DaytonaTimeoutError) as waited:
        await client.create(timeout=1)
    [slow] = dt.live()
    assert waited.value.sandbox_id == slow
    await client.delete(await client.get(slow))


async def test_create_failures(dt: FakeDaytona, client: AsyncDaytona) -> None:
    dt.fail_create(500, message="runner exploded")
    with pytest.raises(DaytonaInternalServerError) as caught:
        await client.create()
    assert "runner exploded" in str(caught.value) and caught.value.status_code == 500
    dt.fail_create(503, times=2)
    for _ in range(2):
        with pytest.raises(DaytonaServiceUnavailableError):
            await client.create()
    assert dt.live() == []
    assert (await client.create()).id in dt.live()


async def test_wrong_api_key(dt: FakeDaytona, sandbox: AsyncSandbox) -> None:
    async with make_client(dt, key="dtn_wrong") as bad:
        with pytest.raises(DaytonaAuthenticationError) as caught:
            await bad.create()
        assert caught.value.code == "UNAUTHORIZED"
        with pytest.raises(DaytonaAuthenticationError):
            await bad.get(sandbox.id)
    async with aiohttp.ClientSession() as http:  # the toolbox checks the key as well
        url = f"{dt.toolbox_url}/{sandbox.id}/work-dir"
        async with http.get(url, headers={"Authorization": "Bearer nope"}) as resp:
            body = await resp.json()
    assert resp.status == 401
    assert {k: body[k] for k in ("statusCode", "message", "code")} == {
        "statusCode": 401,
        "message": "Unauthorized",
        "code": "UNAUTHORIZED",
    }
    assert {"path", "timestamp"} <= body.keys()


# -- process/execute ------------------------------------------------------------------------


async def test_exec(
    dt: FakeDaytona, sandbox: AsyncSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = await sandbox.process.exec("echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.result) == (3, "out\nerr\n")  # stderr merged in order

    monkeypatch.setenv("FAKE_DAYTONA_HOST_SECRET", "leak")
    (dt.sandboxes[sandbox.id].dir / "sub").mkdir()
    result = await sandbox.process.exec(
        'pwd; echo "$FOO $SANDBOX_VAR ${FAKE_DAYTONA_HOST_SECRET:-unset}"',
        cwd="sub",
        env={"FOO": "bar"},
    )
    assert result.exit_code == 0
    assert result.result == f"{dt.sandboxes[sandbox.id].dir / 'sub'}\nbar inside unset\n"
    body = calls(dt, "POST", "/process/execute")[-1]["body"]
    assert (body["cwd"], body["envs"]) == ("sub", {"FOO": "bar"})
    path = (await sandbox.process.exec("echo $PATH")).result
    assert f"{sys.prefix}/bin" not in path.split(":")  # this run's virtualenv stays out


async def test_exec_timeout_kills_the_process(dt: FakeDaytona, sandbox: AsyncSandbox) -> None:
    marker, command = marked(30)
    started = time.monotonic()
    with pytest.raises(DaytonaTimeoutError) as caught:
        await sandbox.process.exec(command, timeout=1)
    assert time.monotonic() - started < 3
    # 408 + code PROCESS_EXECUTION_TIMEOUT (source DAYTONA_DAEMON) maps to the precise subclass.
    assert isinstance(caught.value, DaytonaProcessExecutionTimeoutError)
    assert caught.value.status_code == 408
    await eventually(lambda: processes_running(marker) == [])


# -- sessions -------------------------------------------------------------------------------


async def test_session_streams_live(dt: FakeDaytona, sandbox: AsyncSandbox) -> None:
    """Lines arrive while the command runs (each ≥3 bytes: the SDK's demuxer holds back
    shorter payloads until the next frame, so ``echo 1`` would arrive one line late)."""
    await sandbox.process.create_session("s")
    script = "for i in 1 2 3; do echo line-$i; sleep 0.3; done; echo oops >&2"
    response = await sandbox.process.execute_session_command(
        "s", SessionExecuteRequest(command=script, run_async=True)
    )
    assert response.exit_code is None
    started = time.monotonic()
    out: list[tuple[float, str]] = []
    err: list[str] = []

    async def on_stdout(text: str) -> None:
        out.append((time.monotonic() - started, text))

    await sandbox.process.get_session_command_logs_async(
        "s", response.cmd_id, on_stdout, err.append
    )
    ended = time.monotonic() - started
    assert "".join(text for _, text in out) == "line-1\nline-2\nline-3\n"
    assert "".join(err) == "oops\n"
    assert out[0][0] < 0.3 and ended > 0.8 and ended - out[0][0] > 0.5  # live, not at the end
    command = await sandbox.process.get_session_command("s", response.cmd_id)
    assert (command.exit_code, command.command) == (0, script)

    logs = await sandbox.process.get_session_command_logs("s", response.cmd_id)
    assert (logs.stdout, logs.stderr) == ("line-1\nline-2\nline-3\n", "oops\n")
    assert logs.output is not None
    assert logs.output.encode().startswith(STDOUT_PREFIX + b"line-1\n")
    assert STDERR_PREFIX + b"oops\n" in logs.output.encode()
    [ws] = [r for r in calls(dt, "GET", "/logs") if r["status"] == 101]
    assert ws["query"] == {"follow": "true"}


async def test_session_state_persists(sandbox: AsyncSandbox) -> None:
    process = sandbox.process
    await process.create_session("s")
    run = SessionExecuteRequest
    assert (await process.execute_session_command("s", run(command="cd /tmp"))).exit_code == 0
    assert (await process.execute_session_command("s", run(command="pwd"))).stdout == "/tmp\n"
    await process.execute_session_command("s", run(command="export FOO=bar"))
    result = await process.execute_session_command("s", run(command="echo $FOO; printf tail"))
    assert (result.exit_code, result.stdout) == (0, "bar\ntail\n")  # a last partial line gains \n
    assert [s.session_id for s in await process.list_sessions()] == ["s"]
    assert len((await process.get_session("s")).commands) == 4


async def test_exit_in_session_kills_the_shell(sandbox: AsyncSandbox) -> None:
    """Commands are sourced into the session shell: ``( exit 3 )`` is fine, ``exit 3`` is not."""
    process = sandbox.process
    await process.create_session("s")
    sub = await process.execute_session_command("s", SessionExecuteRequest(command="( exit 3 )"))
    assert sub.exit_code == 3

    fatal = await process.execute_session_command(
        "s", SessionExecuteRequest(command="echo bye; exit 3", run_async=True)
    )
    seen: list[str] = []
    # Observed: the output is delivered, then the stream closes with 1011 -> plain DaytonaError.
    with pytest.raises(DaytonaError) as caught:
        await process.get_session_command_logs_async("s", fatal.cmd_id, seen.append, seen.append)
    assert type(caught.value) is DaytonaError and "close code 1011" in str(caught.value)
    assert "".join(seen) == "bye\n"
    # The command never gets an exit code, and the session is dead for good.
    assert (await process.get_session_command("s", fatal.cmd_id)).exit_code is None
    with pytest.raises(DaytonaSessionEndedError):  # 410 SESSION_ENDED
        await process.execute_session_command("s", SessionExecuteRequest(command="true"))
    # Synchronously: the same 410 instead of a result.
    await process.create_session("t")
    with pytest.raises(DaytonaSessionEndedError):
        await process.execute_session_command("t", SessionExecuteRequest(command="exit 4"))


async def test_delete_session_kills_its_processes(sandbox: AsyncSandbox) -> None:
    marker, command = marked(100)
    await sandbox.process.create_session("s")
    response = await sandbox.process.execute_session_command(
        "s", SessionExecuteRequest(command=command, run_async=True)
    )
    await eventually(lambda: bool(processes_running(marker)))
    started = time.monotonic()
    await sandbox.process.delete_session("s")
    assert processes_running(marker) == []
    assert time.monotonic() - started < 1.5
    with pytest.raises(DaytonaNotFoundError):
        await sandbox.process.get_session("s")
    with pytest.raises(DaytonaNotFoundError):
        await sandbox.process.get_session_command("s", response.cmd_id)


# -- files ----------------------------------------------------------------------------------


async def test_files_round_trip(dt: FakeDaytona, sandbox: AsyncSandbox, tmp_path: Path) -> None:
    home = dt.sandboxes[sandbox.id].dir
    blob = bytes(range(256)) * 4
    await sandbox.fs.upload_file(blob, "nested/deeper/blob.bin")
    assert (home / "nested/deeper/blob.bin").read_bytes() == blob
    assert await sandbox.fs.download_file("nested/deeper/blob.bin") == blob
    assert calls(dt, "POST", "/files/bulk-upload")[-1]["body"] == {
        "files": ["nested/deeper/blob.bin"]
    }

    odd = f'{home}/we ird/ü "quoted" %2F.txt'  # absolute, spaces, quotes, unicode, a % escape
    await sandbox.fs.upload_file(b"first", odd)
    await sandbox.fs.upload_file(b"second", odd)  # overwrite
    assert await sandbox.fs.download_file(odd) == b"second"

    await sandbox.fs.upload_file(b"tilde", "~/t.txt")
    assert (home / "t.txt").read_bytes() == b"tilde"

    local = tmp_path / "local.txt"
    local.write_text("from disk")
    await sandbox.fs.upload_file(str(local), "copied.txt")
    await sandbox.fs.download_file("copied.txt", str(tmp_path / "back" / "copied.txt"))
    assert (tmp_path / "back" / "copied.txt").read_text() == "from disk"

    info = await sandbox.fs.get_file_info("nested/deeper/blob.bin")
    assert (info.is_dir, info.size, info.name) == (False, len(blob), "blob.bin")
    names = {f.name: f.is_dir for f in await sandbox.fs.list_files(".")}
    assert names["nested"] is True and names["copied.txt"] is False

    with pytest.raises(DaytonaNotFoundError) as caught:
        await sandbox.fs.download_file("missing.txt")
    assert isinstance(caught.value, DaytonaFileNotFoundError)
    with pytest.raises(DaytonaFileNotFoundError):
        await sandbox.fs.get_file_info("missing.txt")


# -- lost toolbox, lost sandbox -------------------------------------------------------------


async def test_toolbox_down(dt: FakeDaytona, sandbox: AsyncSandbox) -> None:
    await sandbox.process.create_session("s")
    cmd = await sandbox.process.execute_session_command(
        "s", SessionExecuteRequest(command="echo hi", run_async=True)
    )
    dt.toolbox_down = True
    with pytest.raises(DaytonaBadGatewayError):
        await sandbox.process.exec("true")
    with pytest.raises(DaytonaBadGatewayError):
        await sandbox.process.get_session_command("s", cmd.cmd_id)
    # The raw aiohttp paths lose the status class: plain DaytonaError, status_code None.
    with pytest.raises(DaytonaError) as download:
        await sandbox.fs.download_file("x")
    assert type(download.value) is DaytonaError and "502" in str(download.value)
    with pytest.raises(DaytonaError) as stream:
        await sandbox.process.get_session_command_logs_async("s", cmd.cmd_id, print, print)
    assert type(stream.value) is DaytonaError and "502" in str(stream.value)
    dt.toolbox_down = False
    assert (await sandbox.process.exec("echo back")).result == "back\n"


async def test_vanish_mid_stream(dt: FakeDaytona, client: AsyncDaytona) -> None:
    sandbox = await client.create()
    marker, command = marked(100)
    await sandbox.process.create_session("s")
    cmd = await sandbox.process.execute_session_command(
        "s",
        SessionExecuteRequest(
            command=f"while :; do echo tick; sleep 0.1; done & {command}", run_async=True
        ),
    )
    await eventually(lambda: bool(processes_running(marker)))
    ticks: list[str] = []

    async def on_stdout(text: str) -> None:
        ticks.append(text)
        if len(ticks) == 2:
            dt.vanish(sandbox.id)

    # The connection is dropped without a close frame: the SDK reports close code 1006.
    with pytest.raises(DaytonaError) as caught:
        await sandbox.process.get_session_command_logs_async("s", cmd.cmd_id, on_stdout, print)
    assert type(caught.value) is DaytonaError and "1006" in str(caught.value)
    assert processes_running(marker) == []
    with pytest.raises(DaytonaNotFoundError):
        await sandbox.process.get_session_command("s", cmd.cmd_id)
    with pytest.raises(DaytonaNotFoundError):
        await client.get(sandbox.id)
    assert dt.sandboxes[sandbox.id].vanished and sandbox.id not in dt.live()
    # A log stream opened afterwards fails at the upgrade: again a plain DaytonaError (404 text).
    with pytest.raises(DaytonaError) as late:
        await sandbox.process.get_session_command_logs_async("s", cmd.cmd_id, print, print)
    assert type(late.value) is DaytonaError and "404" in str(late.value)


async def test_stop_kills_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    marker, command = marked(100)
    with FakeDaytona(api_key=KEY) as fake:
        async with make_client(fake) as c:
            sb = await c.create()
            await sb.process.create_session("s")
            await sb.process.execute_session_command(
                "s", SessionExecuteRequest(command=command, run_async=True)
            )
            await sb.process.exec(f"{command} >/dev/null 2>&1 &")  # outlives its exec call
            await eventually(lambda: len(processes_running(marker)) == 2)
            root = fake.sandboxes[sb.id].root
    assert processes_running(marker) == []
    assert not root.exists()
    assert not root.parent.exists()
