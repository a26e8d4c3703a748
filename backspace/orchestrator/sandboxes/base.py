"""The `Sandbox` protocol: run a command, read and write files, close. Nothing more.

Every path given to a sandbox is a path inside it (the repository lives at `Sandbox.workdir`).
The host never resolves those paths itself, so a symlink planted by the agent can only ever point
at something inside the sandbox's own view of the world.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from backspace.orchestrator.errors import SandboxError as SandboxError
from backspace.orchestrator.errors import SandboxLost as SandboxLost
from backspace.orchestrator.errors import SandboxUnavailable as SandboxUnavailable

if TYPE_CHECKING:
    from backspace.orchestrator.egress.gate import Gate, Phase
    from backspace.orchestrator.egress.hosts import HostList
    from backspace.orchestrator.environment.layer import Layer, LayerStore

OutputCallback = Callable[[str], None]

VERIFY_SUFFIX = "-verify"


def run_of(sandbox_name: str) -> str:
    """The run a sandbox belongs to. A run has its own sandbox, named by its id, and one for
    verification, `<run id>-verify` (environment/verification.py): the orphan sweep must
    spare both while the run is live."""
    return sandbox_name.removesuffix(VERIFY_SUFFIX)


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    output: str
    truncated: bool = False
    timed_out: bool = False
    duration_ms: int = 0


class Sandbox(Protocol):
    id: str
    workdir: str
    tmpdir: str  # for scratch files such as bundles; removed with the sandbox

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
        """Run `command` with bash inside the sandbox; kill its whole process tree on timeout."""
        ...

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """Read a file; raises FileNotFoundError, IsADirectoryError or SandboxError."""
        ...

    async def write_file(self, path: str, data: bytes) -> None:
        """Write a file, creating parent directories."""
        ...

    async def upload(self, local: Path, path: str) -> None:
        """Copy a host file into the sandbox (streamed: bundles can be large)."""
        ...

    async def download(self, path: str, local: Path, *, max_bytes: int) -> None:
        """Copy a sandbox file to the host; SandboxError past `max_bytes`."""
        ...

    async def open_network(self, phase: Phase, hosts: HostList) -> None:
        """From now on, commands may reach `hosts` (none when empty) and nothing else; what
        they try beyond it is refused and reported to the sandbox's gate."""
        ...

    async def close(self) -> None:
        """Delete the sandbox and everything in it. Safe to call twice."""
        ...


class SandboxProvider(Protocol):
    name: str
    layers: LayerStore | None  # where set-up environments are kept; None: they are not

    def check(self) -> tuple[bool, str]:
        """(usable, a sentence for /health and `backspace doctor`)."""
        ...

    async def create(
        self,
        run_id: str,
        *,
        layer: Layer | None = None,
        gate: Gate | None = None,
        gateway: Path | None = None,
    ) -> Sandbox:
        """A new sandbox, started from `layer` when given. Its network is closed until
        `open_network`; `gate` decides and records its attempts to reach outside. `gateway`,
        the host side of a model gateway socket, is the engine's way to the model
        (ANTHROPIC_BASE_URL inside); a provider that cannot bind one in refuses it."""
        ...

    async def cleanup_orphans(self, live_run_ids: set[str]) -> int:
        """Delete sandboxes of runs that are not live (after a crash); return how many."""
        ...


class OutputCollector:
    """Keeps the head and the tail of a command's output within `limit` characters.

    Memory stays bounded however much a command prints; the cut is stated in the result.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._head: list[str] = []
        self._head_len = 0
        self._tail: list[str] = []
        self._tail_len = 0
        self.total = 0

    def add(self, chunk: str) -> None:
        self.total += len(chunk)
        half = self.limit // 2
        if self._head_len < half:
            take = chunk[: half - self._head_len]
            self._head.append(take)
            self._head_len += len(take)
            chunk = chunk[len(take) :]
        if chunk:
            self._tail.append(chunk)
            self._tail_len += len(chunk)
            while self._tail_len - len(self._tail[0]) >= half and len(self._tail) > 1:
                self._tail_len -= len(self._tail.pop(0))

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        head = "".join(self._head)
        tail = "".join(self._tail)
        if not self.truncated:
            return head + tail
        keep = self.limit - len(head)
        tail = tail[-keep:] if keep > 0 else ""
        cut = self.total - len(head) - len(tail)
        return (
            f"{head}\n\n[... {cut} characters cut from the middle of the output; "
            f"use head, tail, grep or redirect to a file to see it ...]\n\n{tail}"
        )
