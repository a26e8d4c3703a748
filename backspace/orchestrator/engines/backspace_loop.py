"""Our own loop as an engine: backspace/orchestrator/agent/loop.py's Agent, unchanged."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Literal

from backspace.orchestrator.agent import Agent, AgentLimits, AgentResult
from backspace.orchestrator.engines.base import EngineJob, EngineRun
from backspace.orchestrator.run import RunContext


class BackspaceLoop:
    name = "backspace"

    def __init__(self, tool_mode: Literal["builtin", "schema"] = "builtin") -> None:
        self.tool_mode = tool_mode

    def check(self) -> tuple[bool, str]:
        return True, "backspace's own loop (built in)"

    async def start(
        self, ctx: RunContext, limits: AgentLimits, cleanup: contextlib.AsyncExitStack
    ) -> EngineRun:
        return _LoopRun(self.tool_mode)


class _LoopRun:
    sandbox_options: Mapping[str, Any] = {}

    def __init__(self, tool_mode: Literal["builtin", "schema"]) -> None:
        self.tool_mode = tool_mode

    async def run(self, job: EngineJob) -> AgentResult:
        agent = Agent(
            job.model,
            job.sandbox,
            job.emit,
            job.limits,
            tool_mode=self.tool_mode,
            environment=job.environment,
            inbox=job.inbox,
        )
        return await agent.run(job.first_message)
