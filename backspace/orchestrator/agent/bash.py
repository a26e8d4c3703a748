"""The bash tool: each call is a fresh `bash -c` in the sandbox; the working directory persists.

Claude is trained on a persistent shell. A fresh process per call is more robust (a hung or
killed command cannot wedge the next one), so the one piece of state that matters, the working
directory, is carried over with a marker line the wrapper prints and this module strips.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Callable
from typing import Any

from backspace.orchestrator.agent.outcome import ToolOutcome
from backspace.orchestrator.events import EventType
from backspace.orchestrator.sandboxes.base import Sandbox

CWD_MARKER = "__BACKSPACE_CWD_6d1f__"
EVENT_OUTPUT_LIMIT = 8000
Emit = Callable[[str, dict[str, Any]], None]


class LiveOutput:
    """A running command's output as `output` events, whole lines at a time.

    Coalesced (one event per FLUSH_AFTER seconds or CHUNK_CHARS characters) and capped per
    command, so a chatty command cannot flood the event log. The working-directory marker line
    is never shown.
    """

    FLUSH_AFTER = 0.25
    CHUNK_CHARS = 4000
    LIMIT_CHARS = 64_000

    def __init__(self, emit: Emit, call_id: str, command: str) -> None:
        self.emit = emit
        self.call_id = call_id
        self.command = command[:200]
        self.pending = ""
        self.sent = 0
        self._timer: asyncio.TimerHandle | None = None

    def feed(self, text: str) -> None:
        self.pending += text
        if len(self.pending) >= self.CHUNK_CHARS:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.FLUSH_AFTER, self.flush)

    def flush(self, final: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        cut = len(self.pending) if final else self.pending.rfind("\n") + 1
        if not final and cut == 0 and not CWD_MARKER.startswith(self.pending[: len(CWD_MARKER)]):
            cut = len(self.pending)  # a long partial line that is not the marker
        ready, self.pending = self.pending[:cut], self.pending[cut:]
        lines = ready.splitlines(keepends=True)
        if not final and lines and lines[-1] == "\n":
            self.pending = lines.pop() + self.pending  # maybe the blank line before the marker
        shown: list[str] = []
        for line in lines:
            if line.startswith(CWD_MARKER):
                if shown and shown[-1] == "\n":
                    shown.pop()  # the wrapper's own newline before its marker
                continue
            shown.append(line)
        text = "".join(shown)
        if not text or self.sent >= self.LIMIT_CHARS:
            return
        room = self.LIMIT_CHARS - self.sent
        if len(text) > room:
            text = text[:room] + "\n[... live output stops here; the result has the tail ...]\n"
        self.sent += len(text)
        self.emit(
            EventType.OUTPUT, {"call_id": self.call_id, "command": self.command, "output": text}
        )


class BashTool:
    def __init__(
        self, sandbox: Sandbox, *, timeout: float, max_output: int, emit: Emit | None = None
    ) -> None:
        self.sandbox = sandbox
        self.emit = emit
        self.timeout = timeout
        self.max_output = max_output
        self.cwd = sandbox.workdir

    async def run(self, tool_input: dict[str, Any], call_id: str = "") -> ToolOutcome:
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
        live = LiveOutput(self.emit, call_id, command) if self.emit else None
        try:
            result = await self.sandbox.exec(
                script,
                timeout=self.timeout,
                max_output=self.max_output,
                on_output=live.feed if live else None,
            )
        finally:
            if live:
                live.flush(final=True)
        output = self._take_cwd(result.output)
        shown = output if output.strip() else "(no output)"
        note = f"\n[exit code {result.exit_code}]"
        event: dict[str, Any] = {
            "call_id": call_id,
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
