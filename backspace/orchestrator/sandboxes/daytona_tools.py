"""Claude Code on Daytona: the pinned CLI, made once per version into a snapshot sandboxes start from.

The CLI is a native binary of about 370 MB (node_modules/@anthropic-ai/claude-code, installed by
scripts/bootstrap). Uploading it into every sandbox would cost a run that much traffic, so it is
uploaded once: into a sandbox made from the base snapshot (DAYTONA_SNAPSHOT), which is then kept
as the snapshot `backspace-claude-code-<version>` and deleted. A Claude Code run's sandbox starts
from that snapshot; the next run finds it and reuses it; a version change makes a new one; one
deleted (or broken) is made again at the next run's look.

The binary lives in the sandbox user's home (`BIN_DIR`), so a sandbox made from the snapshot
has it, and so does an environment snapshot made from such a sandbox (daytona_layers.py keeps the
whole sandbox). An environment snapshot made by a backspace-engine run has no CLI: a Claude Code
run started from one gets the binary uploaded into its own sandbox (`ensure_in`), the simple
correct way, at the cost of that upload for each such run.

Snapshot names are shared by every backspace instance of a Daytona organisation: the content of
`backspace-claude-code-<version>` is the same for all of them, so none deletes another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING

import daytona
from daytona import AsyncDaytona, CreateSandboxFromSnapshotParams
from daytona_api_client import SnapshotState

from backspace.orchestrator.engines.claude_cli import BINARY, ClaudeCli
from backspace.orchestrator.errors import SandboxError

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

PREFIX = "backspace-claude-code-"
BIN_DIR = ".backspace-tools/claude-code"  # under the sandbox user's home


def binary_in(home: str, version: str) -> str:
    """Where the CLI of `version` is in a sandbox whose user's home is `home`."""
    return f"{home.rstrip('/')}/{BIN_DIR}/{version}/claude"


class ClaudeCodeSnapshot:
    """The CLI snapshot of one Daytona provider: looked up for each Claude Code run, made when
    missing (one maker at a time in this process)."""

    def __init__(
        self,
        client: Callable[[], AsyncDaytona],
        *,
        base: str | None,
        timeout: float,
    ) -> None:
        self._client = client
        self.base = base  # the snapshot the CLI snapshot is made from (None: Daytona's default)
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self.made = 0  # snapshots this process made (for the tests and the logs)

    @staticmethod
    def name_for(cli: ClaudeCli) -> str:
        version = cli.version or "unknown"
        return PREFIX + re.sub(r"[^0-9A-Za-z.-]", "-", version)

    async def ensure(self, cli: ClaudeCli) -> str:
        """The name of an active snapshot with `cli` in it, made now when there is none."""
        usable, message = cli.check()
        if not usable:
            raise SandboxError(f"Claude Code cannot be put into a Daytona snapshot: {message}")
        name = self.name_for(cli)
        async with self._lock:
            if await self._active(name):
                return name
            await self._make(name, cli)
            return name

    async def _active(self, name: str) -> bool:
        client = self._client()
        try:
            snapshot = await client.snapshot.get(name)
        except daytona.DaytonaNotFoundError:
            return False
        except daytona.DaytonaError as exc:
            raise SandboxError(f"could not look up snapshot {name}: {_short(exc)}") from exc
        if snapshot.state == SnapshotState.ACTIVE:
            return True
        log.warning("Claude Code snapshot %s is %s: making it again", name, snapshot.state)
        with contextlib.suppress(daytona.DaytonaError):
            await client.snapshot.delete(name)
        return False

    async def _make(self, name: str, cli: ClaudeCli) -> None:
        client = self._client()
        log.info("making Daytona snapshot %s (Claude Code, once per version)", name)
        try:
            remote = await client.create(
                CreateSandboxFromSnapshotParams(
                    snapshot=self.base,
                    # No instance label: the janitor must not delete it while it is being made
                    # (it owns no run); auto-stop, then auto-delete, is its backstop.
                    labels={"backspace.purpose": "claude-code-snapshot"},
                    env_vars={},
                    auto_stop_interval=30,
                    auto_delete_interval=0,
                    network_block_all=True,
                ),
                timeout=self.timeout,
            )
        except daytona.DaytonaError as exc:
            raise SandboxError(
                f"could not create a sandbox to make snapshot {name}: {_short(exc)}"
            ) from exc
        try:
            home = str(await remote.get_user_home_dir())
            await install(remote, home, cli)
            with contextlib.suppress(daytona.DaytonaConflictError):  # another server made it
                await remote.create_snapshot(name, timeout=self.timeout)
            if not await self._active(name):
                raise SandboxError(f"snapshot {name} was made but is not active")
            self.made += 1
        except daytona.DaytonaError as exc:
            raise SandboxError(f"could not make snapshot {name}: {_short(exc)}") from exc
        finally:
            with contextlib.suppress(daytona.DaytonaError):
                await asyncio.shield(client.delete(remote))


async def install(remote: object, home: str, cli: ClaudeCli) -> str:
    """Upload the CLI into a sandbox (an AsyncSandbox) at `binary_in(home, version)`."""
    version = cli.version or "unknown"
    target = binary_in(home, version)
    directory = target.rsplit("/", 1)[0]
    process = remote.process  # type: ignore[attr-defined]
    made = await process.exec(f"mkdir -p {shlex.quote(directory)}", timeout=60)
    if made.exit_code != 0:
        raise SandboxError(f"could not make {directory} in the sandbox: {made.result[-300:]}")
    await remote.fs.upload_file(str(cli.directory / BINARY), target)  # type: ignore[attr-defined]
    checked = await process.exec(
        f"chmod 0555 {shlex.quote(target)} && test -x {shlex.quote(target)}", timeout=60
    )
    if checked.exit_code != 0:
        raise SandboxError(f"the uploaded Claude Code is not executable: {checked.result[-300:]}")
    return target


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text[:300] or type(exc).__name__
