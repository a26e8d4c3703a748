"""Remote sandboxes on Daytona, through the `daytona` SDK's `AsyncDaytona` (one client per process).

- Create: from DAYTONA_SNAPSHOT (or the default snapshot), labelled with the run id and this
  service instance, with auto-stop and auto-delete as a backstop, no environment of ours, and the
  network blocked unless the operator allows it. A failed or timed-out create is retried; a
  sandbox a timed-out call half-created is deleted.
- Exec: through one session per sandbox, so output streams while the command runs. Each command
  runs in a child shell, so `exit` or `set -e` cannot kill the session; on the per-command
  timeout or a cancel the session is deleted (killing the command's process group) and a fresh one
  is made.
- Files through the SDK's file calls; close always deletes, shielded from cancellation.
- The janitor lists sandboxes with this instance's label and deletes those no live run owns.
- Environments: set-up sandboxes are kept as snapshots (daytona_layers.py) and a sandbox is
  created from one; each phase's network is set through `update_network_settings` as IPv4 /32s
  (daytona_network.py). Daytona reports no refused connection, so no `network_blocked` event
  comes from the sandbox itself: only the hosts refused before any connection is tried.
- Claude Code (`claude_code=`): the sandbox starts from the CLI's snapshot (daytona_tools.py), or
  from an environment snapshot with the CLI uploaded when it lacks it; `model_url`, the server's
  public URL, is where its model gateway is (backspace/http/model_gateway.py): its host is
  allowed, resolved and vetted like any other, in the agent phase only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import daytona
from daytona import (
    AsyncDaytona,
    AsyncSandbox,
    CreateSandboxFromSnapshotParams,
    DaytonaConfig,
    ListSandboxesQuery,
    SessionExecuteRequest,
)

from backspace.orchestrator.egress.gate import Gate, Phase
from backspace.orchestrator.egress.hosts import HostList
from backspace.orchestrator.engines.claude_cli import ClaudeCli
from backspace.orchestrator.environment.layer import Layer, LayerStore
from backspace.orchestrator.errors import (
    SandboxError,
    SandboxLost,
    SandboxQuota,
    SandboxUnavailable,
    SandboxUnreachable,
)
from backspace.orchestrator.sandboxes.base import (
    ExecResult,
    OutputCallback,
    OutputCollector,
    run_of,
)
from backspace.orchestrator.sandboxes.daytona_layers import DaytonaLayerStore
from backspace.orchestrator.sandboxes.daytona_network import (
    NetworkPlan,
    Resolver,
    plan,
    system_resolver,
)
from backspace.orchestrator.sandboxes.daytona_tools import ClaudeCodeSnapshot, binary_in, install

log = logging.getLogger(__name__)

RUN_LABEL = "backspace.run"
INSTANCE_LABEL = "backspace.instance"
RETRYABLE_CREATE = (
    daytona.DaytonaInternalServerError,
    daytona.DaytonaBadGatewayError,
    daytona.DaytonaServiceUnavailableError,
    daytona.DaytonaRateLimitError,
    daytona.DaytonaConnectionError,
    daytona.DaytonaTimeoutError,
)


@dataclass(frozen=True)
class DaytonaOptions:
    api_key: str
    api_url: str
    target: str | None = None
    snapshot: str | None = None
    instance: str = "backspace"
    auto_stop_minutes: int = 30
    auto_delete_minutes: int = 60
    network_block_all: bool = True
    create_attempts: int = 3
    create_timeout: float = 120.0
    retry_delay: float = 1.0
    resolver: Resolver | None = None  # host names to addresses (default: the host's resolver)
    env_snapshots: int = 10  # environment snapshots kept (0: none)
    snapshot_timeout: float = 600.0


class DaytonaSandboxProvider:
    name = "daytona"

    def __init__(self, options: DaytonaOptions) -> None:
        self.options = options
        self._client: AsyncDaytona | None = None
        self.last_error: str | None = None
        self.layers: LayerStore | None = None
        self._store: DaytonaLayerStore | None = None
        if options.env_snapshots > 0:
            self._store = DaytonaLayerStore(
                lambda: self.client,
                instance=options.instance,
                snapshot=options.snapshot,
                max_snapshots=options.env_snapshots,
                timeout=options.snapshot_timeout,
            )
            self.layers = self._store
        self.claude_code = ClaudeCodeSnapshot(
            lambda: self.client, base=options.snapshot, timeout=options.snapshot_timeout
        )

    def check(self) -> tuple[bool, str]:
        where = self.options.api_url
        if self.last_error:
            return True, f"configured ({where}); last problem: {self.last_error}"
        return True, f"configured: {where}, snapshot {self.options.snapshot or '(default)'}"

    async def probe(self) -> tuple[bool, str]:
        """A real call (list one sandbox) to say whether Daytona answers and takes the key."""
        try:
            async for _ in self.client.list(
                ListSandboxesQuery(limit=1, labels={INSTANCE_LABEL: self.options.instance})
            ):
                break
        except daytona.DaytonaAuthenticationError:
            return False, f"{self.options.api_url} rejected DAYTONA_API_KEY"
        except daytona.DaytonaError as exc:
            return False, f"{self.options.api_url} did not answer properly: {_short(exc)}"
        return True, f"reachable at {self.options.api_url}"

    @property
    def client(self) -> AsyncDaytona:
        if self._client is None:
            config = DaytonaConfig(
                api_key=self.options.api_key,
                api_url=self.options.api_url,
                target=self.options.target or "us",
                connection_pool_maxsize=None,  # each running command holds a connection
            )
            try:
                self._client = AsyncDaytona(config)
            except daytona.DaytonaError as exc:
                raise SandboxUnavailable(f"Daytona cannot be used: {_short(exc)}") from exc
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]
            self._client = None

    # --- life cycle ------------------------------------------------------------------------------
    async def create(
        self,
        run_id: str,
        *,
        layer: Layer | None = None,
        gate: Gate | None = None,
        gateway: Path | None = None,
        model_url: str | None = None,
        claude_code: ClaudeCli | None = None,
    ) -> DaytonaSandbox:
        """`claude_code`: the CLI the run's sandbox must have; `model_url`: the server's public
        URL, where the sandbox reaches the model gateway in the agent phase."""
        if gateway is not None:
            raise SandboxError(
                "a Daytona sandbox cannot reach a socket on this host: the model gateway is "
                "reached over the network there (model_url, from BACKSPACE_PUBLIC_URL)"
            )
        base = self.options.snapshot
        if claude_code is not None and layer is None:
            base = await self.claude_code.ensure(claude_code)
        if layer is not None and self._store is not None:
            self._store.acquire(layer)
        try:
            sandbox = await self._create(run_id, layer, gate, base)
        except BaseException:
            if layer is not None and self._store is not None:
                self._store.release(layer)
            raise
        try:
            if model_url is not None:
                sandbox.model_host = urlsplit(model_url).hostname
            if claude_code is not None:
                sandbox.claude_code_binary = await sandbox.has_claude_code(claude_code)
        except BaseException:
            await asyncio.shield(sandbox.close())
            raise
        return sandbox

    async def _create(
        self, run_id: str, layer: Layer | None, gate: Gate | None, base: str | None
    ) -> DaytonaSandbox:
        labels = {RUN_LABEL: run_id, INSTANCE_LABEL: self.options.instance}
        params = CreateSandboxFromSnapshotParams(
            snapshot=layer.location if layer is not None else base,
            labels=labels,
            env_vars={},
            auto_stop_interval=self.options.auto_stop_minutes,
            auto_delete_interval=self.options.auto_delete_minutes,
            # With a gate the network opens phase by phase (open_network); closed until then.
            network_block_all=self.options.network_block_all,
        )
        attempts = self.options.create_attempts
        for attempt in range(1, attempts + 1):
            try:
                remote = await self.client.create(params, timeout=self.options.create_timeout)
                break
            except daytona.DaytonaAuthenticationError as exc:
                self.last_error = "DAYTONA_API_KEY was rejected"
                raise SandboxUnavailable(
                    "Daytona rejected DAYTONA_API_KEY: set a valid key"
                ) from exc
            except (daytona.DaytonaForbiddenError, daytona.DaytonaAuthorizationError) as exc:
                self.last_error = _short(exc)
                raise SandboxQuota(
                    f"Daytona refused to create a sandbox (quota or permissions): {_short(exc)}"
                ) from exc
            except RETRYABLE_CREATE as exc:
                await self._delete_half_created(exc, run_id)
                self.last_error = _short(exc)
                if attempt == attempts:
                    raise SandboxUnreachable(
                        f"Daytona could not create a sandbox after {attempts} attempts: {_short(exc)}"
                    ) from exc
                log.warning(
                    "Daytona create failed (attempt %d of %d), retrying: %s",
                    attempt,
                    attempts,
                    _short(exc),
                )
                await asyncio.sleep(self.options.retry_delay * attempt)
            except daytona.DaytonaError as exc:
                await self._delete_half_created(exc, run_id)
                self.last_error = _short(exc)
                raise SandboxError(f"Daytona could not create a sandbox: {_short(exc)}") from exc
        self.last_error = None
        sandbox = DaytonaSandbox(self, remote, layer=layer, gate=gate)
        try:
            await sandbox.start()
        except BaseException:
            await asyncio.shield(sandbox.close())
            raise
        return sandbox

    async def _delete_half_created(self, exc: BaseException, run_id: str) -> None:
        """A timed-out create may have made a sandbox: delete it (by id, or by its run label)."""
        sandbox_id = getattr(exc, "sandbox_id", None)
        with contextlib.suppress(daytona.DaytonaError):
            if sandbox_id:
                await self.client.delete(await self.client.get(sandbox_id))
                return
            async for stray in self.client.list(
                ListSandboxesQuery(
                    labels={RUN_LABEL: run_id, INSTANCE_LABEL: self.options.instance}
                )
            ):
                await self.client.delete(stray)

    async def cleanup_orphans(self, live_run_ids: set[str]) -> int:
        removed = 0
        try:
            query = ListSandboxesQuery(labels={INSTANCE_LABEL: self.options.instance})
            strays = [
                s
                async for s in self.client.list(query)
                if run_of((s.labels or {}).get(RUN_LABEL, "")) not in live_run_ids
            ]
            for stray in strays:
                with contextlib.suppress(daytona.DaytonaNotFoundError):
                    await self.client.delete(stray)
                    removed += 1
        except daytona.DaytonaError as exc:
            self.last_error = _short(exc)
            log.warning("the Daytona janitor could not list or delete sandboxes: %s", _short(exc))
        return removed


class DaytonaSandbox:
    def __init__(
        self,
        provider: DaytonaSandboxProvider,
        remote: AsyncSandbox,
        *,
        layer: Layer | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.provider = provider
        self.remote = remote
        self.layer = layer
        self.gate = gate
        self.network: NetworkPlan | None = None  # what the last open_network allowed and dropped
        self.model_host: str | None = None  # the model gateway's host, allowed in the agent phase
        self.claude_code_binary: str | None = None  # where the CLI is, for a Claude Code run
        self.home = "/home/daytona"
        self.id = f"daytona-{remote.id}"
        self.workdir = "/home/daytona/workspace"
        self.tmpdir = "/tmp"  # noqa: S108 - the remote machine's, deleted with it
        self._session: str | None = None
        self._closed = False

    async def start(self) -> None:
        home = await self._call(self.remote.get_user_home_dir)
        self.home = home.rstrip("/")
        self.workdir = f"{self.home}/workspace"
        await self._new_session()
        result = await self.exec(f"mkdir -p {shlex.quote(self.workdir)}", cwd="/", timeout=60)
        if result.exit_code != 0:
            raise SandboxError(f"could not prepare the sandbox: {result.output[-300:]}")

    async def _new_session(self) -> str:
        session = f"backspace-{uuid.uuid4().hex[:12]}"
        await self._call(self.remote.process.create_session, session)
        self._session = session
        return session

    # --- commands -------------------------------------------------------------------------------
    async def exec(
        self,
        command: str,
        *,
        cwd: str | None = None,
        timeout: float = 120.0,
        max_output: int = 16000,
        stdin: bytes | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        if self._closed:
            raise SandboxError("the sandbox is closed")
        started = time.monotonic()
        source = "/dev/null"
        if stdin is not None:
            source = f"/tmp/backspace-stdin-{uuid.uuid4().hex[:8]}"  # noqa: S108 - remote path
            await self.write_file(source, stdin)
        # A child shell: `exit` or `set -e` in the command cannot end the session's own shell.
        wrapped = (
            f"cd -- {shlex.quote(cwd or self.workdir)} && bash -c {shlex.quote(command)} < {source}"
        )
        request = SessionExecuteRequest(command=wrapped, run_async=True)
        session = self._session or await self._new_session()
        try:
            response = await self.remote.process.execute_session_command(session, request)
        except daytona.DaytonaSessionEndedError:  # the session's shell died: start a new one
            session = await self._new_session()
            response = await self._call(
                self.remote.process.execute_session_command, session, request
            )
        except daytona.DaytonaError as exc:
            raise self._error(exc, "could not start the command") from exc
        command_id = str(response.cmd_id)
        collector = OutputCollector(max_output)

        def take(chunk: str) -> None:
            collector.add(chunk)
            if on_output is not None and chunk:
                on_output(chunk)

        try:
            async with asyncio.timeout(timeout):
                exit_code = await self._follow(session, command_id, take)
        except TimeoutError:
            await self._kill_session(session)
            output = collector.text() + f"\n[command timed out after {timeout:g} s and was killed]"
            return ExecResult(124, output, collector.truncated, True, _ms(started))
        except asyncio.CancelledError:
            await asyncio.shield(self._kill_session(session))
            raise
        return ExecResult(exit_code, collector.text(), collector.truncated, False, _ms(started))

    async def _follow(self, session: str, command_id: str, take: OutputCallback) -> int:
        """Stream the command's output; fall back to polling when the log stream fails."""
        process = self.remote.process
        streamed = False
        try:
            await process.get_session_command_logs_async(session, command_id, take, take)
            streamed = True
        except daytona.DaytonaNotFoundError as exc:
            raise SandboxLost(f"the sandbox is gone: {_short(exc)}") from exc
        except daytona.DaytonaError as exc:
            log.warning("the Daytona log stream failed, polling instead: %s", _short(exc))
        delay = 0.05
        while True:
            status = await self._call(process.get_session_command, session, command_id)
            if status.exit_code is not None:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        if not streamed:
            logs = await self._call(process.get_session_command_logs, session, command_id)
            take((logs.stdout or "") + (logs.stderr or ""))
        return int(status.exit_code)

    async def _kill_session(self, session: str) -> None:
        """Deleting the session kills its process group; the next command gets a new session."""
        self._session = None
        with contextlib.suppress(daytona.DaytonaError, SandboxError):
            await self.remote.process.delete_session(session)

    async def has_claude_code(self, cli: ClaudeCli) -> str:
        """The CLI's path here: in the snapshot this sandbox came from, or uploaded now (an
        environment snapshot made by a run of the backspace engine has none)."""
        target = binary_in(self.home, cli.version or "unknown")
        found = await self.exec(f"test -x {shlex.quote(target)}", cwd="/", timeout=60)
        if found.exit_code == 0:
            return target
        log.info(
            "sandbox %s has no Claude Code (an environment snapshot without it): uploading", self.id
        )
        try:
            return await install(self.remote, self.home, cli)
        except daytona.DaytonaError as exc:
            raise self._error(exc, "could not upload Claude Code") from exc

    # --- files ----------------------------------------------------------------------------------
    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            await self._check_size(path, max_bytes)
        try:
            data: bytes = await self.remote.fs.download_file(path)
        except daytona.DaytonaError as exc:
            raise await self._read_error(path, exc) from exc
        if max_bytes is not None and len(data) > max_bytes:
            raise SandboxError(f"{path} is larger than the {max_bytes}-byte limit")
        return data

    async def write_file(self, path: str, data: bytes) -> None:
        try:
            await self.remote.fs.upload_file(data, path)
        except daytona.DaytonaError as exc:
            raise self._error(exc, f"could not write {path}") from exc

    async def upload(self, local: Path, path: str) -> None:
        try:
            await self.remote.fs.upload_file(str(local), path)
        except daytona.DaytonaError as exc:
            raise self._error(exc, f"could not upload {path}") from exc

    async def download(self, path: str, local: Path, *, max_bytes: int) -> None:
        await self._check_size(path, max_bytes)
        try:
            await self.remote.fs.download_file(path, str(local))
        except daytona.DaytonaError as exc:
            raise await self._read_error(path, exc) from exc

    async def _check_size(self, path: str, max_bytes: int) -> None:
        try:
            info = await self.remote.fs.get_file_info(path)
        except daytona.DaytonaFileNotFoundError:
            raise FileNotFoundError(path) from None
        except daytona.DaytonaError as exc:
            raise self._error(exc, f"could not read {path}") from exc
        if info.is_dir:
            raise IsADirectoryError(path)
        if info.size is not None and info.size > max_bytes:
            raise SandboxError(f"{path} is larger than the {max_bytes}-byte limit")

    async def _read_error(self, path: str, exc: daytona.DaytonaError) -> Exception:
        """Why a download failed: a missing file, a directory, or the sandbox itself."""
        try:
            info = await self.remote.fs.get_file_info(path)
        except daytona.DaytonaFileNotFoundError:  # the file is missing, the sandbox is there
            return FileNotFoundError(path)
        except daytona.DaytonaError as again:  # DaytonaNotFoundError: the sandbox is gone
            return self._error(again, f"could not read {path}")
        if info.is_dir:
            return IsADirectoryError(path)
        return self._error(exc, f"could not read {path}")

    # --- close ----------------------------------------------------------------------------------
    async def open_network(self, phase: Phase, hosts: HostList) -> None:
        """Daytona's firewall gets the phase's hosts as /32s (none: block all). What cannot be
        allowed is reported to the gate as refused, before any connection is tried."""
        if self._closed:
            raise SandboxError("the sandbox is closed")
        if self.gate is not None:
            self.gate.enter(phase, hosts)
        if not self.provider.options.network_block_all:
            return  # DAYTONA_NETWORK_BLOCK_ALL=false: the operator leaves the network open
        # The model gateway's host (BACKSPACE_PUBLIC_URL's) in the agent phase only, first, so
        # the five-address limit never drops it; resolved and vetted like every other host.
        first = self.model_host if phase == Phase.AGENT else None
        network = await plan(hosts, self.provider.options.resolver or system_resolver, first=first)
        for host, why in network.dropped:
            reason = why
            if host == first:
                reason = f"the model gateway (BACKSPACE_PUBLIC_URL): {why}"
            log.warning("%s phase: %s", phase, reason)
            if self.gate is not None:
                self.gate.refuse(host, 0, reason)
        if network.cidrs:
            await self._call_named(
                "could not set the sandbox's network",
                self.remote.update_network_settings(network_allow_list=",".join(network.cidrs)),
            )
        else:
            await self._call_named(
                "could not close the sandbox's network",
                self.remote.update_network_settings(network_block_all=True),
            )
        self.network = network

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.layer is not None and self.provider._store is not None:
            self.provider._store.release(self.layer)
        try:
            await asyncio.shield(self.provider.client.delete(self.remote))
        except daytona.DaytonaNotFoundError:
            pass
        except daytona.DaytonaError as exc:
            log.warning(
                "could not delete Daytona sandbox %s (the janitor will retry): %s",
                self.remote.id,
                _short(exc),
            )

    # --- errors ---------------------------------------------------------------------------------
    async def _call_named(self, what: str, call: Any) -> Any:
        try:
            return await call
        except daytona.DaytonaError as exc:
            raise self._error(exc, what) from exc

    async def _call(self, function: Any, *args: Any) -> Any:
        try:
            return await function(*args)
        except daytona.DaytonaError as exc:
            raise self._error(exc, "the sandbox call failed") from exc

    def _error(self, exc: daytona.DaytonaError, what: str) -> SandboxError:
        status = getattr(exc, "status_code", None)
        if isinstance(exc, daytona.DaytonaNotFoundError) or status == 404:
            return SandboxLost(f"the Daytona sandbox is gone ({what}): {_short(exc)}")
        if isinstance(exc, daytona.DaytonaAuthenticationError):
            return SandboxUnavailable(f"Daytona rejected DAYTONA_API_KEY ({what})")
        if isinstance(exc, daytona.DaytonaConnectionError) or status in (502, 503, 504):
            return SandboxUnreachable(f"the Daytona toolbox is unreachable ({what}): {_short(exc)}")
        return SandboxError(f"{what}: {_short(exc)}")


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text[:300] or type(exc).__name__


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
