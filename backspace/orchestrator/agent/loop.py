"""The agent loop: ask the model, carry out its tool calls in the sandbox, repeat until `finish`.

Control follows `stop_reason`, never phrases in the text. Turn, spend and time limits are
checked between turns; near one the model is told to wrap up, and the limit is named when it
ends the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from backspace.orchestrator.agent import prompts
from backspace.orchestrator.agent.bash import BashTool
from backspace.orchestrator.agent.editor import Editor
from backspace.orchestrator.agent.model import Model, ModelTurn
from backspace.orchestrator.agent.outcome import ToolOutcome
from backspace.orchestrator.agent.pricing import Usage
from backspace.orchestrator.agent.tools import BASH, EDITOR, FINISH, tool_definitions
from backspace.orchestrator.events import AGENT_PERCENT_END, EventType, Stage
from backspace.orchestrator.inbox import Inbox
from backspace.orchestrator.sandboxes.base import Sandbox
from backspace.telemetry import tracing

Emit = Callable[[str, dict[str, Any]], None]
Outcome = Literal["finished", "ended", "turn_limit", "cost_limit", "refusal"]

CONTEXT_SOFT_LIMIT = 120_000  # input tokens; above it, old tool output is cleared in one chunk
KEEP_RECENT_RESULTS = 6
FINISHED = "Finished. The orchestrator will open the pull request."


@dataclass
class AgentLimits:
    max_turns: int = 60
    max_cost_usd: float = 5.0
    max_tokens: int = 16000
    command_timeout: float = 120.0
    max_output_chars: int = 16000
    deadline: float | None = None  # time.monotonic() by which the run must be over


@dataclass
class AgentResult:
    outcome: Outcome
    title: str | None = None
    body: str | None = None
    tests: str | None = None
    turns: int = 0
    usage: Usage = field(default_factory=Usage)
    message: str = ""


class Agent:
    def __init__(
        self,
        model: Model,
        sandbox: Sandbox,
        emit: Emit,
        limits: AgentLimits,
        tool_mode: Literal["builtin", "schema"] = "builtin",
        environment: str = "",
        inbox: Inbox | None = None,
    ) -> None:
        self.model = model
        self.inbox = inbox if inbox is not None else Inbox()
        self.emit = emit
        self.limits = limits
        self.tools = tool_definitions(tool_mode)
        self.bash = BashTool(
            sandbox, timeout=limits.command_timeout, max_output=limits.max_output_chars, emit=emit
        )
        self.editor = Editor(sandbox, max_characters=limits.max_output_chars)
        self.system = [
            {
                "type": "text",
                "text": prompts.system_prompt(
                    workdir=sandbox.workdir,
                    command_timeout=limits.command_timeout,
                    max_output=limits.max_output_chars,
                    environment=environment,
                ),
                "cache_control": {"type": "ephemeral"},
            }
        ]
        self.usage = Usage()
        self.turns = 0

    async def run(self, first_message: str) -> AgentResult:
        """The loop; follow-ups steered into the run reach the model while it is open."""
        self.inbox.open = True
        try:
            return await self._loop(first_message)
        finally:
            self.inbox.open = False

    async def _loop(self, first_message: str) -> AgentResult:
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "text", "text": first_message}]}
        ]
        nudged = False
        while True:
            if stop := self._limit_reached():
                return stop
            turn = await self._ask(messages)
            messages.append({"role": "assistant", "content": turn.content})
            calls = [block for block in turn.content if block.get("type") == "tool_use"]
            if turn.stop_reason == "refusal":
                return self._result(
                    "refusal", f"the model refused to continue: {turn.stop_details}"
                )
            if not calls:
                if steered := self._steered():
                    messages.append({"role": "user", "content": steered})
                    continue
                if turn.stop_reason == "pause_turn":
                    continue
                if nudged:
                    return self._result("ended", "the model ended without calling finish")
                nudged = True
                messages.append(
                    {"role": "user", "content": [{"type": "text", "text": prompts.NUDGE_FINISH}]}
                )
                continue
            results, finish = await self._carry_out(calls, cut_off=turn.stop_reason == "max_tokens")
            steered = self._steered()
            if finish is not None:
                if not steered:
                    return finish
                # A follow-up arrived during the last turn: it is read before the run ends.
                for result in results:
                    if result["content"] == FINISHED:
                        result["content"] = prompts.FINISH_DECLINED
            messages.append({"role": "user", "content": results + steered + self._wrap_up_notes()})

    def _steered(self) -> list[dict[str, Any]]:
        """The follow-ups that arrived since the last turn, as text blocks (and as events)."""
        blocks = []
        for steer in self.inbox.take():
            blocks.append({"type": "text", "text": prompts.steer_message(steer)})
        return blocks

    async def _ask(self, messages: list[dict[str, Any]]) -> ModelTurn:
        self.turns += 1
        span = AGENT_PERCENT_END - Stage.AGENT.percentage
        percentage = Stage.AGENT.percentage + span * (self.turns - 1) // self.limits.max_turns
        self.emit(
            EventType.PROGRESS,
            {"stage": Stage.AGENT, "message": f"Model turn {self.turns}", "percentage": percentage},
        )
        _mark_cache_breakpoint(messages)
        # The model SDK's own `chat <model>` span nests in this one (same task, same context).
        with tracing.span("agent.turn", {"backspace.turn": self.turns}):
            turn = await self.model.respond(
                system=self.system,
                messages=messages,
                tools=self.tools,
                max_tokens=self.limits.max_tokens,
            )
        self.usage.add(self.model.name, turn.usage)
        _clear_old_results_if_large(messages, turn.usage)
        for block in turn.content:
            if block.get("type") == "text" and block.get("text", "").strip():
                self.emit(EventType.AI_MESSAGE, {"message": block["text"]})
        self.emit(EventType.USAGE, self.usage.to_event())
        return turn

    async def _carry_out(
        self, calls: list[dict[str, Any]], *, cut_off: bool
    ) -> tuple[list[dict[str, Any]], AgentResult | None]:
        results: list[dict[str, Any]] = []
        finish: AgentResult | None = None
        for call in calls:
            if cut_off and call is calls[-1]:
                outcome = ToolOutcome(
                    "This call was cut off by the max_tokens limit and was not run. Split large "
                    "content into smaller edits.",
                    is_error=True,
                )
            else:
                with tracing.span(*_tool_span(call)) as current:
                    if call["name"] == FINISH:
                        outcome, finish = self._finish(call.get("input") or {})
                    else:
                        outcome = await self._tool(
                            call["name"], call.get("input") or {}, call["id"]
                        )
                    if current is not None and outcome.is_error:
                        current.set_attribute("error.type", "tool_error")
            if outcome.event is not None:
                self.emit(*outcome.event)
            results.append(
                {
                    "type": "tool_result",
                    "tool_use_id": call["id"],
                    "content": outcome.content,
                    **({"is_error": True} if outcome.is_error else {}),
                }
            )
        return results, finish

    async def _tool(self, name: str, tool_input: dict[str, Any], call_id: str) -> ToolOutcome:
        if name == BASH:
            return await self.bash.run(tool_input, call_id)
        if name == EDITOR:
            return await self.editor.run(tool_input)
        return ToolOutcome(f"unknown tool {name!r}: use bash, {EDITOR} or finish", is_error=True)

    def _finish(self, tool_input: dict[str, Any]) -> tuple[ToolOutcome, AgentResult | None]:
        title = str(tool_input.get("title") or "").strip()
        body = str(tool_input.get("body") or "").strip()
        if not title:
            return ToolOutcome(
                "`title` is required: a short imperative PR title", is_error=True
            ), None
        result = self._result("finished", "the agent finished")
        result.title, result.body = title[:200], body
        result.tests = str(tool_input.get("tests") or "").strip() or None
        return ToolOutcome(FINISHED), result

    def _limit_reached(self) -> AgentResult | None:
        if self.turns >= self.limits.max_turns:
            return self._result(
                "turn_limit", f"the turn limit was reached ({self.limits.max_turns} model turns)"
            )
        if self.usage.cost_usd >= self.limits.max_cost_usd:
            return self._result(
                "cost_limit",
                f"the spend limit was reached (${self.usage.cost_usd:.2f} of "
                f"${self.limits.max_cost_usd:.2f})",
            )
        return None

    def _wrap_up_notes(self) -> list[dict[str, Any]]:
        limits = self.limits
        reasons = []
        turns_left = limits.max_turns - self.turns
        if turns_left <= 3:
            reasons.append(f"only {turns_left} model turn(s) are left")
        if self.usage.cost_usd >= 0.8 * limits.max_cost_usd:
            reasons.append(
                f"${self.usage.cost_usd:.2f} of the ${limits.max_cost_usd:.2f} budget is spent"
            )
        if limits.deadline is not None and limits.deadline - time.monotonic() < 60:
            reasons.append("less than a minute of the run's time is left")
        if not reasons:
            return []
        return [{"type": "text", "text": prompts.wrap_up_note("; ".join(reasons))}]

    def _result(self, outcome: Outcome, message: str) -> AgentResult:
        return AgentResult(outcome=outcome, turns=self.turns, usage=self.usage, message=message)


def _tool_span(call: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The GenAI tool span of one call: its name and id, never its input (code, secrets)."""
    name = str(call.get("name", ""))[:64]
    return f"execute_tool {name}", {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": str(call.get("id", ""))[:128],
        "gen_ai.tool.type": "function",
    }


def _mark_cache_breakpoint(messages: list[dict[str, Any]]) -> None:
    """Keep one moving cache breakpoint, on the last block of the newest message."""
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            for block in content:
                block.pop("cache_control", None)
    last = messages[-1]["content"]
    if isinstance(last, list) and last:
        last[-1]["cache_control"] = {"type": "ephemeral"}


def _clear_old_results_if_large(messages: list[dict[str, Any]], usage: Any) -> None:
    """Observation masking: past the soft limit, old tool output is replaced in one chunk."""
    total = sum(
        int(getattr(usage, name, 0) or 0)
        for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    )
    if total < CONTEXT_SOFT_LIMIT:
        return
    user_turns = [m for m in messages if m["role"] == "user" and isinstance(m["content"], list)]
    for message in user_turns[:-KEEP_RECENT_RESULTS]:
        for block in message["content"]:
            if block.get("type") == "tool_result" and block.get("content") != _CLEARED:
                block["content"] = _CLEARED


_CLEARED = "[older tool output cleared to save context]"
