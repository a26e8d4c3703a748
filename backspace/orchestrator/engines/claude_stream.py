"""Claude Code's `--output-format stream-json` lines, as the events our own loop emits.

Viewers (SSE, Slack, the web page, the CLI) know one vocabulary: `progress` per model turn,
`AI Message` for text, `Tool: Bash` (command, output, exit code, duration) when a command ends,
`Tool: Read` / `Tool: Edit` / `Tool: Write` with the path relative to the repository, and a
cumulative `usage` with cost. The CLI prints one JSON object per line: an `assistant` line per
content block of a model turn, a `user` line with the tool results, `system` lines (init, API
retries) and one `result` line at the end. Lines that are not JSON (the CLI's stderr, which
the sandbox merges in) are kept, the last few, to explain a failure.
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backspace.orchestrator.agent.bash import EVENT_OUTPUT_LIMIT
from backspace.orchestrator.events import AGENT_PERCENT_END, EventType, Stage

Emit = Callable[[str, dict[str, Any]], None]
EVENT_TEXT_LIMIT = 4000
MAX_LINE = 4 * 1024 * 1024  # a longer line is not the CLI's: dropped, not buffered forever
EXIT_CODE = re.compile(r"^(?:Error: )?Exit code (\d+)")


@dataclass
class _Call:
    name: str
    input: dict[str, Any]
    started: float


class ClaudeStream:
    """Feed it the CLI's output as it comes (`feed`); it emits events and remembers the end."""

    def __init__(
        self,
        emit: Emit,
        *,
        workdir: str,
        max_turns: int,
        usage: Callable[[], dict[str, Any]],
    ) -> None:
        self.emit = emit
        self.workdir = workdir
        self.max_turns = max(1, max_turns)
        self.usage = usage  # the cumulative usage so far (the gateway counts it)
        self.turns = 0
        self.result: dict[str, Any] | None = None
        self.last_text = ""
        self.noise: deque[str] = deque(maxlen=20)
        self._pending = ""
        self._messages: set[str] = set()
        self._calls: dict[str, _Call] = {}

    # --- input ----------------------------------------------------------------------------------
    def feed(self, text: str) -> None:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        if len(self._pending) > MAX_LINE:
            self.noise.append(f"[a {len(self._pending)}-character line was dropped]")
            self._pending = ""
        for line in lines:
            self._line(line)

    def close(self) -> None:
        """The process ended: a last line without its newline is read too."""
        if self._pending:
            self._line(self._pending)
            self._pending = ""
        self.emit(EventType.USAGE, self.usage())

    def _line(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            item = json.loads(line)
        except ValueError:
            self.noise.append(line[:500])
            return
        if not isinstance(item, dict):
            return
        kind = item.get("type")
        if kind == "assistant":
            self._assistant(item.get("message") or {})
        elif kind == "user":
            self._tool_results(item)
        elif kind == "system":
            self._system(item)
        elif kind == "result":
            self.result = item

    # --- lines ----------------------------------------------------------------------------------
    def _assistant(self, message: dict[str, Any]) -> None:
        message_id = str(message.get("id") or "")
        if message_id not in self._messages:  # one model turn may print several lines
            if self._messages:
                self.emit(EventType.USAGE, self.usage())  # the previous turn is counted by now
            self._messages.add(message_id)
            self.turns += 1
            span = AGENT_PERCENT_END - Stage.AGENT.percentage
            percentage = Stage.AGENT.percentage + span * min(self.turns - 1, self.max_turns) // (
                self.max_turns
            )
            self.emit(
                EventType.PROGRESS,
                {
                    "stage": Stage.AGENT,
                    "message": f"Model turn {self.turns}",
                    "percentage": percentage,
                },
            )
        for block in message.get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and str(block.get("text", "")).strip():
                self.last_text = str(block["text"])
                self.emit(EventType.AI_MESSAGE, {"message": self.last_text})
            elif block.get("type") == "tool_use":
                tool_input = block.get("input")
                self._calls[str(block.get("id"))] = _Call(
                    str(block.get("name")),
                    tool_input if isinstance(tool_input, dict) else {},
                    time.monotonic(),
                )

    def _tool_results(self, item: dict[str, Any]) -> None:
        content = (item.get("message") or {}).get("content")
        if not isinstance(content, list):
            return
        detail = item.get("tool_use_result")
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "tool_result":
                continue
            call_id = str(block.get("tool_use_id"))
            call = self._calls.pop(call_id, None)
            if call is None:
                continue
            text = _text(block.get("content"))
            event = self._tool_event(call, call_id, text, bool(block.get("is_error")), detail)
            if event is not None:
                self.emit(*event)

    def _tool_event(
        self, call: _Call, call_id: str, text: str, is_error: bool, detail: Any
    ) -> tuple[str, dict[str, Any]] | None:
        tool_input = call.input
        if call.name == "Bash":
            return EventType.TOOL_BASH, self._bash(call, call_id, text, is_error, detail)
        path = self._shown(str(tool_input.get("file_path") or tool_input.get("path") or "."))
        error = {"error": _clip(text)} if is_error else {}
        if call.name == "Read":
            return EventType.TOOL_READ, {"filepath": path, **error}
        if call.name == "Edit":
            return EventType.TOOL_EDIT, {
                "filepath": path,
                "old_str": _clip(str(tool_input.get("old_string", ""))),
                "new_str": _clip(str(tool_input.get("new_string", ""))),
                **error,
            }
        if call.name == "Write":
            return EventType.TOOL_WRITE, {
                "filepath": path,
                "content": _clip(str(tool_input.get("content", ""))),
                **error,
            }
        if call.name in ("Glob", "Grep"):  # they read the tree: shown as a read of where
            return EventType.TOOL_READ, {
                "filepath": path,
                "pattern": str(tool_input.get("pattern", ""))[:500],
                **error,
            }
        return None

    def _bash(
        self, call: _Call, call_id: str, text: str, is_error: bool, detail: Any
    ) -> dict[str, Any]:
        output = text
        exit_code = 0
        timed_out = False
        if isinstance(detail, dict) and "stdout" in detail:
            parts = [str(detail.get("stdout") or ""), str(detail.get("stderr") or "")]
            output = "\n".join(part for part in parts if part)
            timed_out = bool(detail.get("interrupted"))
        if is_error:
            found = EXIT_CODE.match(text)
            exit_code = int(found.group(1)) if found else 1
            if found:
                output = text[found.end() :].lstrip("\n")
        event: dict[str, Any] = {
            "call_id": call_id,
            "command": str(call.input.get("command", "")),
            "output": output[-EVENT_OUTPUT_LIMIT:],
            "exit_code": exit_code,
            "duration_ms": int((time.monotonic() - call.started) * 1000),
        }
        if timed_out:
            event["timed_out"] = True
        return event

    def _system(self, item: dict[str, Any]) -> None:
        if item.get("subtype") != "api_retry":
            return
        status = item.get("error_status")
        self.emit(
            EventType.PROGRESS,
            {
                "stage": Stage.AGENT,
                "message": f"The model API failed ({status or item.get('error') or 'no answer'}); "
                f"Claude Code retries (attempt {item.get('attempt')} of "
                f"{item.get('max_retries')})",
                "percentage": Stage.AGENT.percentage,
            },
        )

    def _shown(self, path: str) -> str:
        """A path as our editor shows it: relative to the repository root when inside it."""
        root = self.workdir
        normal = posixpath.normpath(path if path.startswith("/") else posixpath.join(root, path))
        if normal == root:
            return "."
        if normal.startswith(root + "/"):
            return posixpath.relpath(normal, root)
        return normal


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def _clip(text: str) -> str:
    if len(text) <= EVENT_TEXT_LIMIT:
        return text
    return text[:EVENT_TEXT_LIMIT] + f"\n[... {len(text) - EVENT_TEXT_LIMIT} more characters]"
