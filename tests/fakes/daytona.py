"""A fake Daytona: the main API (``/api``) and the toolbox (``/toolbox/{id}``) on 127.0.0.1.

Why: the service's Daytona provider must be tested end to end with the *real*
``daytona`` SDK (0.226.1, async client), offline. Every answer here is shaped
like the generated models that SDK parses (``daytona_api_client_async`` and
``daytona_toolbox_api_client_async``; see ``../shared/reference/daytona.md``
§4), and ``tests/test_fake_daytona.py`` proves it by driving the SDK.

Each sandbox is a real temporary directory (:attr:`FakeSandbox.dir`, also its
home and work dir, reported as a *host* path) and commands really run on the
host in it: ``process/execute`` through a fresh ``bash`` in its own process
group, sessions as one long-lived ``bash`` per session into which each command
is sourced, like the real daemon (so ``cd``/``export`` persist and a top-level
``exit`` kills the session). This is a test fake, not a security boundary.

Usage::

    with FakeDaytona(api_key="dtn_test") as dt:     # own event loop in a background thread
        client = AsyncDaytona(DaytonaConfig(api_key="dtn_test", api_url=dt.api_url, target="us"))
        dt.sandboxes[sid]          # FakeSandbox: .id .labels .env .state .dir .params .deleted .vanished
        dt.live()                  # ids neither deleted nor vanished
        dt.fail_create(500)        # the next POST /api/sandbox answers 500 (nothing created)
        dt.hang_create(5)          # the next create exists at once but answers after 5 s
        dt.create_state = "creating"   # POST answers "creating"; GET then answers "started"
        dt.creating_for = 0.5          # ...only after 0.5 s (exercises the SDK's poll loop)
        dt.toolbox_down = True     # every toolbox call answers 502
        dt.vanish(sid)             # 404 everywhere, processes killed, log streams dropped (1006)
        dt.add_orphan(labels={...})    # a sandbox left behind by a crashed process
        dt.snapshots[name]         # FakeSnapshot: .id .name .dir (files at snapshot time) .deleted
        dt.fail_snapshot(500)      # the next POST /api/sandbox/{id}/snapshot answers 500
        dt.sandboxes[sid].network  # every network-settings update, in order (JSON bodies)

Snapshots: ``POST /api/sandbox/{id}/snapshot`` copies the sandbox's directory as it is then
(409 when the name is taken); a create whose ``snapshot`` names one starts with a copy of those
files (404 for an unknown snapshot, as the real service answers); ``GET /api/snapshots``,
``GET``/``DELETE /api/snapshots/{id or name}``. ``POST /api/sandbox/{id}/network-settings``
records the body and answers the sandbox with the new settings; like the documented service it
refuses (400) a CIDR list of more than 5 entries or an entry that is not an IPv4 CIDR.

Every request is recorded in :attr:`FakeDaytona.requests` as
``{method, path, query, headers, body, status, response}`` (headers lower-case;
body the JSON request, ``{"files": [...]}`` for a multipart upload, or None;
response the JSON answer or None). Socket.IO (``/api/socket.io/``) answers 404,
so the SDK polls for state changes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import grp
import ipaddress
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from daytona_api_client_async.models.create_sandbox import CreateSandbox
from daytona_api_client_async.models.create_sandbox_snapshot import CreateSandboxSnapshot
from daytona_api_client_async.models.update_sandbox_network_settings import (
    UpdateSandboxNetworkSettings,
)
from daytona_toolbox_api_client_async.models.create_session_request import CreateSessionRequest
from daytona_toolbox_api_client_async.models.execute_request import ExecuteRequest
from daytona_toolbox_api_client_async.models.files_download_request import FilesDownloadRequest
from daytona_toolbox_api_client_async.models.session_execute_request import SessionExecuteRequest
from pydantic import ValidationError

__all__ = ["FakeCommand", "FakeDaytona", "FakeSandbox", "FakeSession", "FakeSnapshot"]

T = TypeVar("T")

STDOUT_PREFIX = b"\x01\x01\x01"
STDERR_PREFIX = b"\x02\x02\x02"
SOURCE_DAEMON = "DAYTONA_DAEMON"
SOURCE_PROXY = "DAYTONA_PROXY"
SHELL = shutil.which("bash") or "/bin/sh"
# The host's PATH minus this test run's virtualenv, so `pip install` in a sandbox cannot touch it.
_HOST_PATH = os.pathsep.join(
    entry
    for entry in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep)
    if sys.prefix == sys.base_prefix or Path(entry) != Path(sys.prefix) / "bin"
)
# Written by the session shell after each command, on stdout (with the exit code) and stderr.
_DONE = b"\x00__fake_daytona_done__:"

_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    410: "GONE",
    422: "UNPROCESSABLE_ENTITY",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_SERVER_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}
_MESSAGES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
# SandboxListItem (0.226.1) has no env/kvm/volumes/buildInfo/network lists.
_LIST_ITEM_KEYS = frozenset(
    {
        "id",
        "organizationId",
        "name",
        "target",
        "runnerId",
        "sandboxClass",
        "state",
        "desiredState",
        "snapshot",
        "user",
        "errorReason",
        "recoverable",
        "public",
        "networkBlockAll",
        "cpu",
        "gpu",
        "memory",
        "disk",
        "labels",
        "backupState",
        "autoStopInterval",
        "autoArchiveInterval",
        "autoDeleteInterval",
        "createdAt",
        "updatedAt",
        "daemonVersion",
        "toolboxProxyUrl",
    }
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error_body(status: int, message: str, path: str, code: str | None = None) -> dict[str, Any]:
    return {
        "statusCode": status,
        "message": message,
        "error": _MESSAGES.get(status, "Error"),
        "code": code or _CODES.get(status, "ERROR"),
        "path": path,
        "timestamp": _now(),
    }


def _kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) member? Orphaned zombies may never be reaped by this PID 1."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _exit_status(returncode: int | None) -> int:
    """Shell convention: a signal N becomes 128+N."""
    if returncode is None:
        return -1
    return 128 - returncode if returncode < 0 else returncode


def _split_log(log: bytes) -> tuple[str, str]:
    """Demultiplex a marker-prefixed log into (stdout, stderr), as daemons for SDK >= 0.167 do."""
    out, err = bytearray(), bytearray()
    for line in log.splitlines(keepends=True):
        if line.startswith(STDOUT_PREFIX):
            out += line[len(STDOUT_PREFIX) :]
        elif line.startswith(STDERR_PREFIX):
            err += line[len(STDERR_PREFIX) :]
    return out.decode(errors="replace"), err.decode(errors="replace")


@dataclass(eq=False)
class FakeCommand:
    """One command sourced into a session shell; its log is the daemon's marker-prefixed bytes."""

    id: str
    command: str
    log_path: Path
    exit_code: int | None = None
    ended: bool = False  # the shell died (or was killed) before the command finished
    log: bytearray = field(default_factory=bytearray, repr=False)
    _code: int | None = field(default=None, repr=False)
    _streams_done: set[str] = field(default_factory=set, repr=False)
    _event: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def over(self) -> bool:
        return self.exit_code is not None or self.ended

    def add_output(self, kind: str, data: bytes, *, final: bool) -> None:
        """Append whole lines (and, when ``final``, a last partial line plus a newline)."""
        if not data:
            return
        prefix = STDOUT_PREFIX if kind == "stdout" else STDERR_PREFIX
        lines = data.split(b"\n")
        tail = lines.pop()
        if final and tail:
            lines.append(tail)
        chunk = b"".join(prefix + line + b"\n" for line in lines)
        self.log += chunk
        with contextlib.suppress(OSError), self.log_path.open("ab") as handle:
            handle.write(chunk)
        self.poke()

    def stream_done(self, kind: str, code: int | None = None) -> None:
        if code is not None:
            self._code = code
        self._streams_done.add(kind)
        if self._streams_done >= {"stdout", "stderr"} and not self.ended:
            self.exit_code = self._code if self._code is not None else -1
            self.poke()

    def end(self) -> None:
        if not self.over:
            self.ended = True
        self.poke()

    def poke(self) -> None:
        """Wake every waiter; later waiters get a fresh event (no lost wake-ups)."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    def changed(self) -> Awaitable[bool]:
        """Wait for new output or a state change; take it right after checking the state."""
        return self._event.wait()

    def dto(self) -> dict[str, Any]:
        return {"id": self.id, "command": self.command, "exitCode": self.exit_code}


@dataclass(eq=False)
class FakeSession:
    """A long-lived ``bash`` (own process group); commands are sourced into it one by one."""

    id: str
    proc: asyncio.subprocess.Process
    dir: Path
    commands: dict[str, FakeCommand] = field(default_factory=dict)
    dead: bool = False
    _pending: dict[str, collections.deque[FakeCommand]] = field(
        default_factory=lambda: {"stdout": collections.deque(), "stderr": collections.deque()},
        repr=False,
    )
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def dto(self) -> dict[str, Any]:
        return {"sessionId": self.id, "commands": [c.dto() for c in self.commands.values()]}

    async def submit(self, command: str) -> FakeCommand:
        cmd_id = str(uuid.uuid4())
        script = self.dir / f"{cmd_id}.sh"
        script.write_text(command if command.endswith("\n") else command + "\n")
        cmd = FakeCommand(id=cmd_id, command=command, log_path=self.dir / f"{cmd_id}.log")
        cmd.log_path.touch()
        tag = _DONE.decode().replace("\x00", "\\000")
        line = (
            f"{{ . {shlex.quote(str(script))}; }} </dev/null; "
            f"printf '{tag}%s:%d\\000' {cmd_id} \"$?\"; "
            f"printf '{tag}%s:\\000' {cmd_id} >&2\n"
        )
        self.commands[cmd_id] = cmd
        if self.dead or self.proc.stdin is None:
            cmd.end()
            return cmd
        self._pending["stdout"].append(cmd)
        self._pending["stderr"].append(cmd)
        try:
            self.proc.stdin.write(line.encode())
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            self._end_pending()
        return cmd

    def start_pumps(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._tasks = [
            asyncio.ensure_future(self._pump(self.proc.stdout, "stdout")),
            asyncio.ensure_future(self._pump(self.proc.stderr, "stderr")),
            asyncio.ensure_future(self._watch()),
        ]

    async def _pump(self, stream: asyncio.StreamReader, kind: str) -> None:
        buf = bytearray()
        while chunk := await stream.read(65536):
            buf += chunk
            self._feed(kind, buf, eof=False)
        self._feed(kind, buf, eof=True)

    def _feed(self, kind: str, buf: bytearray, *, eof: bool) -> None:
        """Attribute stream bytes to the oldest unfinished command; its sentinel ends its share."""
        queue = self._pending[kind]
        while queue:
            cmd = queue[0]
            tag = _DONE + cmd.id.encode() + b":"
            start = buf.find(tag)
            if start >= 0:
                stop = buf.find(b"\x00", start + len(tag))
                if stop < 0:
                    break  # the sentinel is split across reads
                cmd.add_output(kind, bytes(buf[:start]), final=True)
                raw_code = bytes(buf[start + len(tag) : stop])
                del buf[: stop + 1]
                queue.popleft()
                cmd.stream_done(kind, int(raw_code) if raw_code else None)
                continue
            if eof:
                cmd.add_output(kind, bytes(buf), final=True)
                buf.clear()
                for pending in queue:
                    pending.end()
                queue.clear()
                return
            newline = buf.rfind(b"\n")
            if newline >= 0:
                cmd.add_output(kind, bytes(buf[: newline + 1]), final=False)
                del buf[: newline + 1]
            return
        if not queue:
            buf.clear()  # output of background jobs between commands: nobody's

    async def _watch(self) -> None:
        await self.proc.wait()
        self.dead = True
        # Background jobs may hold the pipes open; do not wait for them for long.
        _, stuck = await asyncio.wait(self._tasks[:2], timeout=0.5)
        for task in stuck:
            task.cancel()
        self._end_pending()
        transport = getattr(self.proc, "_transport", None)  # closes the pipes; no API for it
        if transport is not None:
            transport.close()

    def _end_pending(self) -> None:
        self.dead = True
        for queue in self._pending.values():
            for cmd in queue:
                cmd.end()
            queue.clear()
        for cmd in self.commands.values():
            cmd.end()

    async def kill(self, grace: float = 1.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left (the daemon's order)."""
        _kill_group(self.pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (
            self.proc.returncode is None or _group_alive(self.pgid)
        ):
            await asyncio.sleep(0.02)
        _kill_group(self.pgid, signal.SIGKILL)
        await _wait_gone({self.pgid})
        await self.closed()

    def kill_now(self) -> None:
        _kill_group(self.pgid, signal.SIGKILL)
        self._end_pending()

    async def closed(self) -> None:
        """Wait until the shell is reaped and its pipes are closed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._tasks[2]), 5)


@dataclass(eq=False)
class FakeSandbox:
    """One sandbox: ``dir`` is its home and work dir (a real host path), ``params`` the create body."""

    id: str
    name: str
    labels: dict[str, str]
    env: dict[str, str]
    state: str
    root: Path
    dir: Path
    params: dict[str, Any]
    created_at: str
    deleted: bool = False
    vanished: bool = False
    started_at: float = 0.0  # monotonic time from which a "creating" sandbox reports "started"
    sessions: dict[str, FakeSession] = field(default_factory=dict, repr=False)
    groups: set[int] = field(default_factory=set, repr=False)  # process groups of exec calls
    sockets: set[asyncio.Transport] = field(default_factory=set, repr=False)  # log streams
    network: list[dict[str, Any]] = field(default_factory=list)  # network-settings updates

    @property
    def gone(self) -> bool:
        return self.deleted or self.vanished

    def resolve(self, path: str) -> Path:
        """Relative paths resolve against the work dir, as in the daemon."""
        if path == "~" or path.startswith("~/"):
            return self.dir / path[2:]
        target = Path(path)
        return target if target.is_absolute() else self.dir / target

    def shell_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A minimal environment: host secrets do not leak in; the sandbox's env vars do."""
        env = {
            "PATH": _HOST_PATH,
            "HOME": str(self.dir),
            "USER": str(self.params.get("user") or "daytona"),
            "SHELL": SHELL,
            "LANG": "C.UTF-8",
            "TERM": "dumb",
        }
        env.update(self.env)
        env.update(extra or {})
        return env


@dataclass(eq=False)
class FakeSnapshot:
    """A snapshot of a sandbox: ``dir`` holds a copy of its files at the time it was taken."""

    id: str
    name: str
    dir: Path
    source_sandbox_id: str
    created_at: str
    size_bytes: int = 0
    last_used_at: str | None = None
    deleted: bool = False


_MAX_CIDRS = 5  # "networkAllowList accepts up to 5 CIDR network blocks" (Daytona's docs)


_RECORD = web.RequestKey("record", dict[str, Any])
_SANDBOX = web.RequestKey("sandbox", FakeSandbox)


class FakeDaytona:
    """Main API + toolbox on 127.0.0.1 (ephemeral port), served by aiohttp in its own thread."""

    def __init__(
        self,
        api_key: str = "dtn_test",
        *,
        organization_id: str = "org-fake",
        target: str = "us",
    ) -> None:
        self.api_key = api_key
        self.organization_id = organization_id
        self.target = target
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.requests: list[dict[str, Any]] = []
        self.create_state = "started"
        self.creating_for = 0.0  # seconds a "creating" sandbox keeps answering "creating" to GET
        self.toolbox_down = False
        self.port = 0
        self._lock = threading.Lock()
        self._fail_queue: list[tuple[int, str]] = []
        self._snapshot_fail_queue: list[tuple[int, str]] = []
        self.snapshots: dict[str, FakeSnapshot] = {}  # by name, the deleted ones too
        self._hang_queue: list[float] = []
        self._sessions: list[FakeSession] = []  # every session ever started, for shutdown
        self._root: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def toolbox_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/toolbox"

    def start(self) -> FakeDaytona:
        if self._thread is not None:
            return self
        self._root = Path(tempfile.mkdtemp(prefix="fake-daytona-"))
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # surfaced to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-daytona", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Kill every process of every sandbox, close the server and remove all sandbox dirs."""
        if self._thread is None or self._loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> FakeDaytona:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._middleware], client_max_size=1024**3)
        self._routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        self._runner = runner

    async def _shutdown(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        for sandbox in list(self.sandboxes.values()):
            await self._destroy(sandbox)
        for session in self._sessions:
            session.kill_now()
        await asyncio.gather(*(session.closed() for session in self._sessions))
        if self._runner is not None:
            await self._runner.cleanup()

    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine on the fake's loop from the test's thread and wait for it."""
        assert self._loop is not None, "the fake is not started"
        return asyncio.run_coroutine_threadsafe(_as_coro(fn), self._loop).result(30)

    # --- test controls -------------------------------------------------------------------------
    def live(self) -> list[str]:
        """Ids of sandboxes neither deleted nor vanished."""
        return [sid for sid, sb in list(self.sandboxes.items()) if not sb.gone]

    def fail_create(self, status: int = 500, times: int = 1, message: str | None = None) -> None:
        """The next ``times`` POST /api/sandbox answer ``status`` with an error body (nothing created)."""
        text = message or f"fake failure creating the sandbox ({status})"
        with self._lock:
            self._fail_queue.extend([(status, text)] * times)

    def fail_snapshot(self, status: int = 500, times: int = 1) -> None:
        """The next ``times`` snapshots of a sandbox answer ``status`` (nothing is kept)."""
        with self._lock:
            self._snapshot_fail_queue.extend(
                [(status, f"fake snapshot failure ({status})")] * times
            )

    def live_snapshots(self) -> list[str]:
        """Names of the snapshots not deleted."""
        return [name for name, snap in list(self.snapshots.items()) if not snap.deleted]

    def hang_create(self, seconds: float, times: int = 1) -> None:
        """The next ``times`` creates create the sandbox but answer only after ``seconds``."""
        with self._lock:
            self._hang_queue.extend([seconds] * times)

    def vanish(self, sandbox_id: str) -> None:
        """The sandbox disappears: 404 everywhere, processes killed, log streams dropped."""

        async def go() -> None:
            sandbox = self.sandboxes[sandbox_id]
            sandbox.vanished = True
            sandbox.state = "destroyed"
            await self._destroy(sandbox, remove_dir=False)

        self._call(go)

    def add_orphan(self, labels: dict[str, str] | None = None, **params: Any) -> str:
        """Create a started sandbox directly, as if left behind by a crashed process."""

        async def go() -> str:
            body = {"labels": dict(labels or {}), "env": {}, **params}
            return self._new_sandbox(body, "started").id

        return self._call(go)

    # --- plumbing ------------------------------------------------------------------------------
    def _routes(self, app: web.Application) -> None:
        api, tb = "/api", "/toolbox/{sid}"
        r = app.router
        r.add_route("*", "/api/socket.io/{tail:.*}", self._socket_io)
        r.add_post(f"{api}/sandbox", self._create)
        r.add_get(f"{api}/sandbox", self._list)
        r.add_get(f"{api}/sandbox/{{ref}}", self._get)
        r.add_delete(f"{api}/sandbox/{{ref}}", self._delete)
        r.add_post(f"{api}/sandbox/{{ref}}/stop", self._stop)
        r.add_post(f"{api}/sandbox/{{ref}}/start", self._start)
        r.add_put(f"{api}/sandbox/{{ref}}/labels", self._replace_labels)
        r.add_get(f"{api}/sandbox/{{ref}}/toolbox-proxy-url", self._toolbox_proxy_url)
        r.add_post(f"{api}/sandbox/{{ref}}/snapshot", self._snapshot_sandbox)
        r.add_post(f"{api}/sandbox/{{ref}}/network-settings", self._network_settings)
        r.add_get(f"{api}/snapshots", self._list_snapshots)
        r.add_get(f"{api}/snapshots/{{ref}}", self._get_snapshot)
        r.add_delete(f"{api}/snapshots/{{ref}}", self._delete_snapshot)
        r.add_get(f"{tb}/work-dir", self._dir)
        r.add_get(f"{tb}/user-home-dir", self._dir)
        r.add_get(f"{tb}/version", self._version)
        r.add_post(f"{tb}/process/execute", self._execute)
        r.add_post(f"{tb}/process/session", self._create_session)
        r.add_get(f"{tb}/process/session", self._list_sessions)
        r.add_get(f"{tb}/process/session/{{session}}", self._get_session)
        r.add_delete(f"{tb}/process/session/{{session}}", self._delete_session)
        r.add_post(f"{tb}/process/session/{{session}}/exec", self._session_exec)
        r.add_get(f"{tb}/process/session/{{session}}/command/{{cmd}}", self._get_command)
        r.add_get(f"{tb}/process/session/{{session}}/command/{{cmd}}/logs", self._command_logs)
        r.add_post(f"{tb}/files/bulk-upload", self._upload)
        r.add_post(f"{tb}/files/bulk-download", self._download)
        r.add_get(f"{tb}/files/info", self._file_info)
        r.add_get(f"{tb}/files", self._list_files)
        r.add_post(f"{tb}/files/folder", self._create_folder)
        r.add_delete(f"{tb}/files", self._delete_file)
        r.add_route("*", "/{tail:.*}", self._unknown)

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        record: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": None,
            "status": None,
            "response": None,
        }
        if request.can_read_body and not request.content_type.startswith("multipart/"):
            raw = await request.read()
            try:
                record["body"] = json.loads(raw) if raw else None
            except ValueError:
                record["body"] = raw.decode(errors="replace")
        self.requests.append(record)
        request[_RECORD] = record
        response = await self._gate(request)
        if response is None:
            response = await handler(request)
        record["status"] = response.status
        return response

    async def _gate(self, request: web.Request) -> web.StreamResponse | None:
        """Auth on every API/toolbox call; then the toolbox's own failure modes (down, gone)."""
        path = request.path
        if path.startswith("/api/socket.io/"):
            return None
        if not (path.startswith("/api/") or path.startswith("/toolbox/")):
            return None
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(request, 401, "Unauthorized", code="UNAUTHORIZED")
        if "sid" not in request.match_info:
            return None
        if self.toolbox_down:
            return self._error(request, 502, "toolbox unreachable", source=SOURCE_PROXY)
        sandbox = self._find(request.match_info.get("sid", ""))
        if sandbox is None:
            return self._error(
                request,
                404,
                f"sandbox {request.match_info.get('sid')} not found",
                source=SOURCE_PROXY,
            )
        request[_SANDBOX] = sandbox
        return None

    def _json(self, request: web.Request, data: Any, status: int = 200) -> web.Response:
        request[_RECORD]["response"] = data
        return web.json_response(data, status=status)

    def _error(
        self,
        request: web.Request,
        status: int,
        message: str,
        *,
        code: str | None = None,
        source: str | None = None,
    ) -> web.Response:
        body = _error_body(status, message, request.path, code)
        body["method"] = request.method
        if source:
            body["source"] = source
        return self._json(request, body, status)

    def _find(self, ref: str) -> FakeSandbox | None:
        sandbox = self.sandboxes.get(ref)
        if sandbox is None:
            sandbox = next(
                (s for s in self.sandboxes.values() if s.name == ref and not s.gone), None
            )
        return None if sandbox is None or sandbox.gone else sandbox

    def _sandbox(self, request: web.Request) -> FakeSandbox:
        sandbox: FakeSandbox = request[_SANDBOX]
        return sandbox

    async def _body(self, request: web.Request) -> Any:
        return request[_RECORD]["body"]

    # --- main API ------------------------------------------------------------------------------
    def _new_sandbox(self, body: dict[str, Any], state: str) -> FakeSandbox:
        assert self._root is not None
        sandbox_id = str(uuid.uuid4())
        root = self._root / sandbox_id
        home = root / "home"
        home.mkdir(parents=True)
        (root / "sessions").mkdir()
        sandbox = FakeSandbox(
            id=sandbox_id,
            name=str(body.get("name") or sandbox_id),
            labels=dict(body.get("labels") or {}),
            env=dict(body.get("env") or {}),
            state=state,
            root=root,
            dir=home,
            params=body,
            created_at=_now(),
            started_at=time.monotonic() + self.creating_for,
        )
        self.sandboxes[sandbox_id] = sandbox
        return sandbox

    def _dto(self, sandbox: FakeSandbox) -> dict[str, Any]:
        p = sandbox.params
        if (
            sandbox.state == "creating"
            and not sandbox.gone
            and time.monotonic() >= sandbox.started_at
        ):
            # The first look after creation (once ``creating_for`` passed) finds it started.
            sandbox.state = "started"
        return {
            "id": sandbox.id,
            "organizationId": self.organization_id,
            "name": sandbox.name,
            "snapshot": p.get("snapshot") or "daytonaio/sandbox:fake",
            "user": p.get("user") or "daytona",
            "env": sandbox.env,
            "labels": sandbox.labels,
            "public": bool(p.get("public", False)),
            "networkBlockAll": bool(p.get("networkBlockAll", False)),
            "networkAllowList": p.get("networkAllowList"),
            "domainAllowList": p.get("domainAllowList"),
            "kvm": bool(p.get("kvm", False)),
            "target": p.get("target") or self.target,
            "cpu": int(p.get("cpu") or 1),
            "gpu": int(p.get("gpu") or 0),
            "memory": int(p.get("memory") or 1),
            "disk": int(p.get("disk") or 3),
            "state": sandbox.state,
            "desiredState": "destroyed" if sandbox.gone else "started",
            "recoverable": False,
            "backupState": "None",
            "autoStopInterval": p.get("autoStopInterval", 15),
            "autoArchiveInterval": p.get("autoArchiveInterval", 10080),
            "autoDeleteInterval": p.get("autoDeleteInterval", -1),
            "volumes": p.get("volumes") or [],
            "createdAt": sandbox.created_at,
            "updatedAt": _now(),
            "sandboxClass": "small",
            "daemonVersion": "fake",
            "runnerId": "runner-fake",
            "toolboxProxyUrl": self.toolbox_url,
        }

    async def _socket_io(self, request: web.Request) -> web.StreamResponse:
        """No Socket.IO: the SDK falls back to polling GET /sandbox/{id}."""
        return self._error(request, 404, "Socket.IO is not served by the fake")

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        return self._error(
            request, 404, f"the fake Daytona does not implement {request.method} {request.path}"
        )

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        try:
            CreateSandbox.from_dict(body)
        except (ValidationError, ValueError, TypeError) as exc:
            return self._error(request, 400, f"invalid CreateSandbox body: {exc}")
        with self._lock:
            failure = self._fail_queue.pop(0) if self._fail_queue else None
            hang = self._hang_queue.pop(0) if self._hang_queue and failure is None else None
        if failure is not None:
            return self._error(request, failure[0], failure[1])
        name = body.get("name")
        if name and any(s.name == name and not s.gone for s in self.sandboxes.values()):
            return self._error(request, 409, f"Sandbox with name {name} already exists")
        source = self._find_snapshot(body.get("snapshot") or "")
        if body.get("snapshot") and source is None:
            return self._error(request, 404, f"Snapshot {body['snapshot']} not found")
        sandbox = self._new_sandbox(body, self.create_state)
        if source is not None:
            shutil.rmtree(sandbox.dir)
            shutil.copytree(source.dir, sandbox.dir, symlinks=True)
            source.last_used_at = _now()
        if hang:
            assert self._stopping is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), hang)
        return self._json(request, self._dto(sandbox))

    async def _get(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request.match_info["ref"])
        if sandbox is None:
            return self._error(request, 404, f"Sandbox {request.match_info['ref']} not found")
        return self._json(request, self._dto(sandbox))

    async def _list(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        try:
            wanted: dict[str, str] = json.loads(query["labels"]) if query.get("labels") else {}
            limit = int(query.get("limit") or 100)
            offset = int(query.get("cursor") or 0)
        except ValueError as exc:
            return self._error(request, 400, f"bad list query: {exc}")
        states = set(query.getall("states", []))
        matches = [
            s
            for s in self.sandboxes.values()
            if not s.gone
            and all(s.labels.get(k) == v for k, v in wanted.items())
            and (not states or s.state in states)
            and s.id.startswith(query.get("id", ""))
            and s.name.startswith(query.get("name", ""))
        ]
        page = matches[offset : offset + limit]
        more = offset + limit < len(matches)
        items = [{k: v for k, v in self._dto(s).items() if k in _LIST_ITEM_KEYS} for s in page]
        return self._json(
            request, {"items": items, "nextCursor": str(offset + limit) if more else None}
        )

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request.match_info["ref"])
        if sandbox is None:
            return self._error(request, 404, f"Sandbox {request.match_info['ref']} not found")
        sandbox.deleted = True
        sandbox.state = "destroyed"
        await self._destroy(sandbox)
        return self._json(request, self._dto(sandbox))

    async def _stop(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request.match_info["ref"])
        if sandbox is None:
            return self._error(request, 404, f"Sandbox {request.match_info['ref']} not found")
        await self._kill_processes(sandbox)
        sandbox.state = "stopped"
        return self._json(request, self._dto(sandbox))

    async def _start(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request.match_info["ref"])
        if sandbox is None:
            return self._error(request, 404, f"Sandbox {request.match_info['ref']} not found")
        sandbox.state = "started"
        return self._json(request, self._dto(sandbox))

    async def _replace_labels(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request.match_info["ref"])
        if sandbox is None:
            return self._error(request, 404, f"Sandbox {request.match_info['ref']} not found")
        body = await self._body(request) or {}
        sandbox.labels = dict(body.get("labels") or {})
        return self._json(request, {"labels": sandbox.labels})

    # --- snapshots and network settings ---------------------------------------------------------
    def _find_snapshot(self, ref: str) -> FakeSnapshot | None:
        snap = self.snapshots.get(ref) or next(
            (s for s in self.snapshots.values() if s.id == ref), None
        )
        return None if snap is None or snap.deleted else snap

    def _snapshot_dto(self, snap: FakeSnapshot) -> dict[str, Any]:
        return {
            "id": snap.id,
            "organizationId": self.organization_id,
            "general": False,
            "name": snap.name,
            "imageName": f"fake-registry/{snap.name}",
            "state": "removing" if snap.deleted else "active",
            "size": round(snap.size_bytes / 1024**3, 6),
            "entrypoint": ["sleep", "infinity"],
            "cpu": 1,
            "gpu": 0,
            "mem": 1,
            "disk": 3,
            "errorReason": None,
            "createdAt": snap.created_at,
            "updatedAt": snap.created_at,
            "lastUsedAt": snap.last_used_at,
            "sourceSandboxId": snap.source_sandbox_id,
        }

    async def _snapshot_sandbox(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request.match_info["ref"])
        if sandbox is None:
            return self._error(request, 404, f"Sandbox {request.match_info['ref']} not found")
        try:
            req = CreateSandboxSnapshot.from_dict(await self._body(request))
        except (ValidationError, ValueError, TypeError) as exc:
            return self._error(request, 400, f"invalid CreateSandboxSnapshot body: {exc}")
        assert req is not None and self._root is not None
        with self._lock:
            failure = self._snapshot_fail_queue.pop(0) if self._snapshot_fail_queue else None
        if failure is not None:
            return self._error(request, failure[0], failure[1])
        if self._find_snapshot(req.name) is not None:
            return self._error(request, 409, f"Snapshot with name {req.name} already exists")
        snap_id = str(uuid.uuid4())
        target = self._root / "snapshots" / snap_id
        shutil.copytree(sandbox.dir, target, symlinks=True)
        size = sum(f.lstat().st_size for f in target.rglob("*") if not f.is_dir())
        self.snapshots[req.name] = FakeSnapshot(
            id=snap_id,
            name=req.name,
            dir=target,
            source_sandbox_id=sandbox.id,
            created_at=_now(),
            size_bytes=size,
        )
        return self._json(request, self._dto(sandbox))

    async def _list_snapshots(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        try:
            page = int(query.get("page") or 1)
            limit = int(query.get("limit") or 100)
        except ValueError as exc:
            return self._error(request, 400, f"bad snapshot list query: {exc}")
        matches = [
            s
            for s in self.snapshots.values()
            if not s.deleted
            and s.name.startswith(query.get("name", ""))
            and s.source_sandbox_id.startswith(query.get("sourceSandboxId", ""))
        ]
        items = matches[(page - 1) * limit : page * limit]
        return self._json(
            request,
            {
                "items": [self._snapshot_dto(s) for s in items],
                "total": len(matches),
                "page": page,
                "totalPages": max(1, -(-len(matches) // limit)),
            },
        )

    async def _get_snapshot(self, request: web.Request) -> web.StreamResponse:
        snap = self._find_snapshot(request.match_info["ref"])
        if snap is None:
            return self._error(request, 404, f"Snapshot {request.match_info['ref']} not found")
        return self._json(request, self._snapshot_dto(snap))

    async def _delete_snapshot(self, request: web.Request) -> web.StreamResponse:
        snap = self._find_snapshot(request.match_info["ref"])
        if snap is None:
            return self._error(request, 404, f"Snapshot {request.match_info['ref']} not found")
        snap.deleted = True
        shutil.rmtree(snap.dir, ignore_errors=True)
        request[_RECORD]["response"] = None
        return web.Response(status=200)

    async def _network_settings(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request.match_info["ref"])
        if sandbox is None:
            return self._error(request, 404, f"Sandbox {request.match_info['ref']} not found")
        body = await self._body(request) or {}
        try:
            UpdateSandboxNetworkSettings.from_dict(body)
        except (ValidationError, ValueError, TypeError) as exc:
            return self._error(request, 400, f"invalid UpdateSandboxNetworkSettings body: {exc}")
        cidrs = [c for c in (body.get("networkAllowList") or "").split(",") if c]
        if len(cidrs) > _MAX_CIDRS:
            return self._error(request, 400, f"networkAllowList accepts at most {_MAX_CIDRS} CIDRs")
        for cidr in cidrs:
            try:
                ipaddress.IPv4Network(cidr)
            except ValueError:
                return self._error(request, 400, f"{cidr!r} is not an IPv4 CIDR")
        sandbox.network.append(dict(body))
        params = sandbox.params
        if "networkBlockAll" in body and body["networkBlockAll"] is not None:
            params["networkBlockAll"] = body["networkBlockAll"]
            if not body["networkBlockAll"]:
                params["networkAllowList"] = None
        if body.get("networkAllowList") is not None:
            params["networkAllowList"] = body["networkAllowList"]
            params["networkBlockAll"] = False
        if body.get("domainAllowList") is not None:
            params["domainAllowList"] = body["domainAllowList"]
            params["networkBlockAll"] = False
        return self._json(request, self._dto(sandbox))

    async def _toolbox_proxy_url(self, request: web.Request) -> web.StreamResponse:
        if self._find(request.match_info["ref"]) is None:
            return self._error(request, 404, f"Sandbox {request.match_info['ref']} not found")
        return self._json(request, {"url": self.toolbox_url})

    async def _kill_processes(self, sandbox: FakeSandbox) -> None:
        """SIGKILL every process group of the sandbox and wait (briefly) until they are gone."""
        groups = {session.pgid for session in sandbox.sessions.values()} | sandbox.groups
        for session in list(sandbox.sessions.values()):
            session.kill_now()
        sandbox.sessions.clear()
        for pgid in groups:
            _kill_group(pgid)
        sandbox.groups.clear()
        await _wait_gone(groups)

    async def _destroy(self, sandbox: FakeSandbox, *, remove_dir: bool = True) -> None:
        """Kill everything the sandbox runs, drop its log streams, optionally remove its files."""
        for transport in list(sandbox.sockets):
            # A vanished machine does not say goodbye: drop the connection, no close frame.
            transport.abort()
        await self._kill_processes(sandbox)
        if remove_dir:
            shutil.rmtree(sandbox.root, ignore_errors=True)

    # --- toolbox: info -------------------------------------------------------------------------
    async def _dir(self, request: web.Request) -> web.StreamResponse:
        return self._json(request, {"dir": str(self._sandbox(request).dir)})

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return self._json(request, {"version": "fake"})

    # --- toolbox: process/execute --------------------------------------------------------------
    async def _execute(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._sandbox(request)
        body = await self._body(request)
        try:
            req = ExecuteRequest.from_dict(body)
        except (ValidationError, ValueError, TypeError) as exc:
            return self._error(
                request, 400, f"invalid ExecuteRequest body: {exc}", code="INVALID_REQUEST_BODY"
            )
        assert req is not None
        cwd = sandbox.resolve(req.cwd) if req.cwd else sandbox.dir
        try:
            proc = await asyncio.create_subprocess_exec(
                SHELL,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=cwd,
                env=sandbox.shell_env(req.envs),
                start_new_session=True,
            )
        except OSError as exc:
            return self._json(request, {"exitCode": -1, "result": str(exc)})
        sandbox.groups.add(proc.pid)  # background jobs outlive the call, until the sandbox dies
        try:
            output, _ = await asyncio.wait_for(
                proc.communicate(req.command.encode()), req.timeout or None
            )
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            return self._error(
                request,
                408,
                "command execution timeout",
                code="PROCESS_EXECUTION_TIMEOUT",
                source=SOURCE_DAEMON,
            )
        if sandbox.gone:
            return self._error(request, 404, f"sandbox {sandbox.id} not found", source=SOURCE_PROXY)
        return self._json(
            request,
            {"exitCode": _exit_status(proc.returncode), "result": output.decode(errors="replace")},
        )

    # --- toolbox: sessions ---------------------------------------------------------------------
    def _session(self, request: web.Request) -> FakeSession | None:
        return self._sandbox(request).sessions.get(request.match_info["session"])

    def _no_session(self, request: web.Request) -> web.Response:
        return self._error(
            request, 404, f"session {request.match_info['session']} not found", source=SOURCE_DAEMON
        )

    async def _create_session(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._sandbox(request)
        try:
            req = CreateSessionRequest.from_dict(await self._body(request))
        except (ValidationError, ValueError, TypeError) as exc:
            return self._error(
                request, 400, f"invalid CreateSessionRequest: {exc}", code="INVALID_REQUEST_BODY"
            )
        assert req is not None
        if req.session_id in sandbox.sessions:
            return self._error(
                request, 409, f"session {req.session_id} already exists", source=SOURCE_DAEMON
            )
        directory = sandbox.root / "sessions" / req.session_id
        directory.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            *([SHELL, "--noprofile", "--norc"] if SHELL.endswith("bash") else [SHELL]),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=sandbox.dir,
            env=sandbox.shell_env(),
            start_new_session=True,
        )
        session = FakeSession(id=req.session_id, proc=proc, dir=directory)
        session.start_pumps()
        self._sessions.append(session)
        sandbox.sessions[req.session_id] = session
        request[_RECORD]["response"] = None
        return web.Response(status=201)

    async def _list_sessions(self, request: web.Request) -> web.StreamResponse:
        sessions = self._sandbox(request).sessions.values()
        return self._json(request, [s.dto() for s in sessions])

    async def _get_session(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        return self._no_session(request) if session is None else self._json(request, session.dto())

    async def _delete_session(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._sandbox(request)
        session = sandbox.sessions.pop(request.match_info["session"], None)
        if session is None:
            return self._no_session(request)
        await session.kill()
        return web.Response(status=204)

    async def _session_exec(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._sandbox(request)
        session = self._session(request)
        if session is None:
            return self._no_session(request)
        try:
            req = SessionExecuteRequest.from_dict(await self._body(request))
        except (ValidationError, ValueError, TypeError) as exc:
            return self._error(
                request, 400, f"invalid SessionExecuteRequest: {exc}", code="INVALID_REQUEST_BODY"
            )
        assert req is not None
        if session.dead:
            return self._error(
                request,
                410,
                f"session {session.id} has ended",
                code="SESSION_ENDED",
                source=SOURCE_DAEMON,
            )
        cmd = await session.submit(req.command)
        if req.run_async or req.var_async:
            return self._json(request, {"cmdId": cmd.id}, status=202)
        while not cmd.over and not sandbox.gone:
            await cmd.changed()
        if sandbox.gone:
            return self._error(request, 404, f"sandbox {sandbox.id} not found", source=SOURCE_PROXY)
        if cmd.exit_code is None:
            return self._error(
                request,
                410,
                f"session {session.id} ended before the command finished",
                code="SESSION_ENDED",
                source=SOURCE_DAEMON,
            )
        stdout, stderr = _split_log(bytes(cmd.log))
        return self._json(
            request,
            {
                "cmdId": cmd.id,
                "exitCode": cmd.exit_code,
                "output": cmd.log.decode(errors="replace"),
                "stdout": stdout,
                "stderr": stderr,
            },
        )

    def _command(self, request: web.Request) -> FakeCommand | None:
        session = self._session(request)
        return None if session is None else session.commands.get(request.match_info["cmd"])

    async def _get_command(self, request: web.Request) -> web.StreamResponse:
        cmd = self._command(request)
        if cmd is None:
            return self._error(request, 404, "command not found", source=SOURCE_DAEMON)
        return self._json(request, cmd.dto())

    async def _command_logs(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._sandbox(request)
        cmd = self._command(request)
        if cmd is None:
            return self._error(request, 404, "command not found", source=SOURCE_DAEMON)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            stdout, stderr = _split_log(bytes(cmd.log))
            return self._json(
                request,
                {"output": cmd.log.decode(errors="replace"), "stdout": stdout, "stderr": stderr},
            )
        follow = request.query.get("follow", "").lower() == "true"
        ws = web.WebSocketResponse()
        transport = request.transport
        await ws.prepare(request)
        if transport is not None:
            sandbox.sockets.add(transport)
        # Read concurrently: answers the client's keepalive pings and notices its close.
        reader = asyncio.ensure_future(_drain(ws))
        try:
            with contextlib.suppress(ConnectionError):  # the client (or _destroy) hung up
                await self._follow(ws, sandbox, cmd, follow, reader)
            if sandbox.gone and transport is not None:
                transport.abort()  # never a clean close for a sandbox that is gone
        finally:
            reader.cancel()
            if transport is not None:
                sandbox.sockets.discard(transport)
        return ws

    async def _follow(
        self,
        ws: web.WebSocketResponse,
        sandbox: FakeSandbox,
        cmd: FakeCommand,
        follow: bool,
        reader: asyncio.Task[None],
    ) -> None:
        """Tail the log from offset 0 (no replay/live split, so no duplicates); 1000 after exit."""
        offset = 0
        while not ws.closed and not reader.done():
            if sandbox.gone:
                return  # the connection was dropped by _destroy
            if len(cmd.log) > offset:
                chunk = bytes(cmd.log[offset:])
                offset += len(chunk)
                await ws.send_bytes(chunk)
                continue
            if cmd.exit_code is not None or not follow:
                await ws.close(code=1000)
                return
            if cmd.ended:
                await ws.close(code=1011, message=b"session ended before the command finished")
                return
            waiter = asyncio.ensure_future(cmd.changed())
            await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

    # --- toolbox: files ------------------------------------------------------------------------
    async def _upload(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._sandbox(request)
        paths: dict[str, str] = {}
        blobs: dict[str, bytes] = {}
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            if not part.name.startswith("files[") or "]." not in part.name:
                continue
            index, kind = part.name[len("files[") :].split("].", 1)
            if kind == "path":
                paths[index] = (await part.read()).decode()
            elif kind == "file":
                blobs[index] = bytes(await part.read())
        written: list[str] = []
        errors: list[str] = []
        for index, path in paths.items():
            target = sandbox.resolve(path)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(blobs.get(index, b""))
                written.append(path)
            except OSError as exc:
                errors.append(f"{path}: {exc}")
        request[_RECORD]["body"] = {"files": list(paths.values())}
        if errors and not written:
            return self._json(request, {"files": written, "errors": errors}, status=400)
        return self._json(request, {"files": written, "errors": errors})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        """Multipart answer, one ``file`` or ``error`` part per path, named by the exact path."""
        sandbox = self._sandbox(request)
        try:
            req = FilesDownloadRequest.from_dict(await self._body(request))
        except (ValidationError, ValueError, TypeError) as exc:
            return self._error(
                request, 400, f"invalid FilesDownloadRequest: {exc}", code="INVALID_REQUEST_BODY"
            )
        assert req is not None
        boundary = secrets.token_hex(16)
        body = bytearray()
        for path in req.paths:
            target = sandbox.resolve(path)
            escaped = path.replace("\\", "\\\\").replace('"', '\\"')
            disposition = f"filename=\"{escaped}\"; filename*=utf-8''{quote(path, safe='')}"
            if target.is_file():
                name, content_type, data = "file", "application/octet-stream", target.read_bytes()
            else:
                status, code, message = (
                    (400, "INVALID_FILE_PATH", f"{path} is a directory")
                    if target.is_dir()
                    else (404, "FILE_NOT_FOUND", f"file not found: {path}")
                )
                error = _error_body(status, message, request.path, code)
                error["source"] = SOURCE_DAEMON
                name, content_type, data = "error", "application/json", json.dumps(error).encode()
            body += f"--{boundary}\r\n".encode()
            body += f'Content-Disposition: form-data; name="{name}"; {disposition}\r\n'.encode()
            body += f"Content-Type: {content_type}\r\n\r\n".encode()
            body += data + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        return web.Response(
            body=bytes(body), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )

    def _file_dto(self, path: Path) -> dict[str, Any]:
        info = path.lstat() if path.is_symlink() else path.stat()
        modified = datetime.fromtimestamp(info.st_mtime, UTC)
        try:
            owner = pwd.getpwuid(info.st_uid).pw_name
        except KeyError:
            owner = str(info.st_uid)
        try:
            group = grp.getgrgid(info.st_gid).gr_name
        except KeyError:
            group = str(info.st_gid)
        return {
            "name": path.name,
            "path": str(path),
            "isDir": stat.S_ISDIR(info.st_mode),
            "size": info.st_size,
            "mode": stat.filemode(info.st_mode),
            "permissions": f"{stat.S_IMODE(info.st_mode):04o}",
            "owner": owner,
            "group": group,
            "modTime": modified.strftime("%Y-%m-%d %H:%M:%S.%f +0000 UTC"),
            "modifiedAt": modified.isoformat().replace("+00:00", "Z"),
        }

    def _missing(self, request: web.Request, path: str) -> web.Response:
        return self._error(
            request, 404, f"file not found: {path}", code="FILE_NOT_FOUND", source=SOURCE_DAEMON
        )

    async def _file_info(self, request: web.Request) -> web.StreamResponse:
        path = request.query.get("path", "")
        target = self._sandbox(request).resolve(path)
        if not target.exists():
            return self._missing(request, path)
        return self._json(request, self._file_dto(target))

    async def _list_files(self, request: web.Request) -> web.StreamResponse:
        path = request.query.get("path", "") or "."
        target = self._sandbox(request).resolve(path)
        if not target.is_dir():
            return self._missing(request, path)
        return self._json(request, [self._file_dto(p) for p in sorted(target.iterdir())])

    async def _create_folder(self, request: web.Request) -> web.StreamResponse:
        target = self._sandbox(request).resolve(request.query.get("path", ""))
        target.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(ValueError):
            target.chmod(int(request.query.get("mode", "755"), 8))
        return web.Response(status=201)

    async def _delete_file(self, request: web.Request) -> web.StreamResponse:
        path = request.query.get("path", "")
        target = self._sandbox(request).resolve(path)
        if not target.exists():
            return self._missing(request, path)
        if target.is_dir():
            if request.query.get("recursive", "").lower() != "true":
                return self._error(request, 400, f"{path} is a directory", code="BAD_REQUEST")
            shutil.rmtree(target)
        else:
            target.unlink()
        return web.Response(status=204)


async def _wait_gone(groups: set[int], timeout: float = 1.0) -> None:
    """Killed processes linger for a moment; callers want them gone from /proc on return."""
    deadline = time.monotonic() + timeout
    while any(_group_alive(g) for g in groups) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def _drain(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass


async def _as_coro(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()
