"""The bash tool: each call is a fresh `bash -c` in the sandbox; the working directory persists.

Claude is trained on a persistent shell. A fresh process per call is more robust (a hung or
killed command cannot wedge the next one), so the one piece of state that matters, the working
directory, is carried over with a marker line the wrapper prints and this module strips.
"""

from __future__ import annotations

import shlex
from typing import Any

from backspace.orchestrator.agent.outcome import ToolOutcome
from backspace.orchestrator.events import EventType
from backspace.orchestrator.sandboxes.base import Sandbox

CWD_MARKER = "__BACKSPACE_CWD_6d1f__"
EVENT_OUTPUT_LIMIT = 8000


class BashTool:
    def __init__(self, sandbox: Sandbox, *, timeout: float, max_output: int) -> None:
        self.sandbox = sandbox
        self.timeout = timeout
        self.max_output = max_output
        self.cwd = sandbox.workdir

    async def run(self, tool_input: dict[str, Any]) -> ToolOutcome:
        if tool_input.get("restart"):
            self.cwd = self.sandbox.workdir
            return ToolOutcome(content="The shell was restarted; the working directory is reset.")
        command = tool_input.get("command")
        if not isinstance(command, str) or not command.strip():
            return ToolOutcome(
                content="`command` is required: the bash command to run", is_error=True
            )
        script = (
            f"cd -- {shlex.quote(self.cwd)} 2>/dev/null || cd -- {shlex.quote(self.sandbox.workdir)}\n"
            f"{command}\n"
            f"__bs_rc=$?; printf '\\n{CWD_MARKER}%s\\n' \"$PWD\"; exit $__bs_rc"
        )
        result = await self.sandbox.exec(script, timeout=self.timeout, max_output=self.max_output)
        output = self._take_cwd(result.output)
        shown = output if output.strip() else "(no output)"
        note = f"\n[exit code {result.exit_code}]"
        event = {
            "command": command,
            "output": output[-EVENT_OUTPUT_LIMIT:] if len(output) > EVENT_OUTPUT_LIMIT else output,
            "exit_code": result.exit_code,
            "duration_ms": result.duration_ms,
        }
        if result.timed_out:
            event["timed_out"] = True
        if result.truncated:
            event["truncated"] = True
        return ToolOutcome(
            content=shown + note,
            is_error=result.timed_out,
            event=(EventType.TOOL_BASH, event),
        )

    def _take_cwd(self, output: str) -> str:
        """Strip the marker line and remember the directory it names (if it is sane)."""
        index = output.rfind(CWD_MARKER)
        if index == -1:
            return output
        end = output.find("\n", index)
        cwd = output[index + len(CWD_MARKER) : end if end != -1 else None].strip()
        if cwd.startswith("/"):
            self.cwd = cwd  # any directory the sandbox lets the command reach is fine
        before = output[:index]
        if before.endswith("\n"):
            before = before[:-1]
        return before + (output[end + 1 :] if end != -1 else "")
