"""The engine protocol: given a run's sandbox, its first message, limits and inbox, do the work
and say how it ended (an AgentResult, as our own loop always has).

An engine is chosen per run (`RunRequest.engine`, else BACKSPACE_ENGINE). It is started before
the run's sandbox exists, because an engine may need something bound into the sandbox when it
is made (Claude Code: the model gateway's socket); `EngineRun.sandbox_options` says what.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from backspace.orchestrator.agent import AgentLimits, AgentResult, Model
from backspace.orchestrator.inbox import Inbox
from backspace.orchestrator.run import RunContext
from backspace.orchestrator.sandboxes.base import Sandbox

DEFAULT_ENGINE = "backspace"
ENGINES = ("backspace", "claude-code")
Emit = Callable[[str, dict[str, Any]], None]


def unknown_engine(name: str) -> str:
    """The error for an engine name nobody knows, saying which ones exist."""
    return f"unknown engine {name!r}: use one of {', '.join(ENGINES)}"


@dataclass(frozen=True)
class EngineJob:
    """What an engine works from: the same things our loop always had."""

    sandbox: Sandbox
    model: Model  # the host's model: our loop's, and Claude Code's summarising call
    first_message: str
    limits: AgentLimits  # with the run's deadline
    environment: str  # the environment note (setup, network, verify commands)
    inbox: Inbox
    emit: Emit


class EngineRun(Protocol):
    """One run's use of an engine."""

    @property
    def sandbox_options(self) -> Mapping[str, Any]:
        """Extra keyword arguments for `SandboxProvider.create` (empty for our loop)."""
        ...

    async def run(self, job: EngineJob) -> AgentResult: ...


class Engine(Protocol):
    name: str

    def check(self) -> tuple[bool, str]:
        """(usable, a sentence for /health and `backspace doctor`)."""
        ...

    async def start(
        self, ctx: RunContext, limits: AgentLimits, cleanup: contextlib.AsyncExitStack
    ) -> EngineRun:
        """Prepare a run (what outlives it is pushed onto `cleanup`); RunFailure when the
        engine cannot be used here."""
        ...
