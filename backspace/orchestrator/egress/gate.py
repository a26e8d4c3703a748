"""One sandbox's network door: which phase it is in, what that phase may reach, who asks.

The pipeline moves a gate from phase to phase (`enter`); the sandbox names the command it is
running (`running`); the proxy asks `decide` for every connection and reports each refusal with
`refuse`. Refusals reach `on_blocked` on the event loop that made the gate, whatever thread the
proxy serves on, so a run's events stay in order with everything else it emits.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from backspace.orchestrator.egress.hosts import HostList


class Phase(StrEnum):
    SETUP = "setup"
    AGENT = "agent"
    VERIFY = "verify"


@dataclass(frozen=True, slots=True)
class BlockedAttempt:
    host: str
    port: int
    phase: Phase
    command: str | None  # the sandbox command that was running, when one was
    reason: str


class Gate:
    def __init__(self, on_blocked: Callable[[BlockedAttempt], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._phase = Phase.SETUP
        self._hosts = HostList()
        self._command: str | None = None
        self._on_blocked = on_blocked
        self._loop = asyncio.get_running_loop() if on_blocked is not None else None
        self.blocked: list[BlockedAttempt] = []  # every refusal, in order (for the receipt)

    def enter(self, phase: Phase, hosts: HostList) -> None:
        """From now on, connections are decided for `phase` against `hosts` (empty: none)."""
        with self._lock:
            self._phase, self._hosts = phase, hosts

    def running(self, command: str | None) -> None:
        """The command now running in the sandbox (None between commands)."""
        with self._lock:
            self._command = command

    @property
    def command(self) -> str | None:
        return self._command

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def hosts(self) -> HostList:
        return self._hosts

    def decide(self, host: str, port: int) -> str | None:
        """None when `host` may be reached now; otherwise why not, in a sentence."""
        with self._lock:
            phase, hosts = self._phase, self._hosts
        if hosts.allows(host):
            return None
        if not hosts:
            return f"the {phase} phase has no network access"
        return f"{host} is not in the {phase} phase's allowlist ({hosts})"

    def refuse(self, host: str, port: int, reason: str) -> BlockedAttempt:
        """Record a refused connection and report it on the gate's event loop."""
        with self._lock:
            attempt = BlockedAttempt(host, port, self._phase, self._command, reason)
            self.blocked.append(attempt)
        if self._on_blocked is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the run is over
                self._loop.call_soon_threadsafe(self._on_blocked, attempt)
        return attempt
