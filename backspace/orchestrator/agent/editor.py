"""The text editor tool (`str_replace_based_edit_tool`), carried out through the sandbox's files.

Paths are repository paths: relative, or absolute under the sandbox's workdir. Anything that
leaves the repository is refused before the sandbox is asked. Reads and writes go through the
sandbox itself, so a symlink resolves inside the sandbox and never on the host.
"""

from __future__ import annotations

import posixpath
import shlex
from typing import Any

from backspace.orchestrator.agent.outcome import ToolOutcome
from backspace.orchestrator.errors import EditorError, SandboxError, SandboxLost
from backspace.orchestrator.events import EventType
from backspace.orchestrator.sandboxes.base import Sandbox

MAX_FILE_BYTES = 4 * 1024 * 1024
SNIPPET_LINES = 4
EVENT_TEXT_LIMIT = 4000


class Editor:
    def __init__(self, sandbox: Sandbox, max_characters: int) -> None:
        self.sandbox = sandbox
        self.max_characters = max_characters

    async def run(self, tool_input: dict[str, Any]) -> ToolOutcome:
        command = tool_input.get("command")
        raw_path = tool_input.get("path")
        display = str(raw_path)
        try:
            if not isinstance(raw_path, str) or not raw_path.strip():
                raise EditorError("`path` is required: a path relative to the repository root")
            path, display = self.resolve(raw_path)
            match command:
                case "view":
                    return await self._view(path, display, tool_input.get("view_range"))
                case "create":
                    return await self._create(path, display, tool_input.get("file_text"))
                case "str_replace":
                    return await self._str_replace(path, display, tool_input)
                case "insert":
                    return await self._insert(path, display, tool_input)
                case "undo_edit":
                    raise EditorError(
                        "undo_edit is not supported by this editor version; "
                        "use str_replace to restore the old text"
                    )
                case _:
                    raise EditorError(
                        f"unknown command {command!r}: use view, create, str_replace or insert"
                    )
        except EditorError as exc:
            return _failed(command, display, str(exc))
        except SandboxLost:
            raise  # nothing the model can do about it: the run ends
        except SandboxError as exc:
            return _failed(command, display, f"{display}: {exc}")

    def resolve(self, raw: str) -> tuple[str, str]:
        """(path inside the sandbox, path as shown: relative to the repository root)."""
        root = self.sandbox.workdir
        if "\x00" in raw:
            raise EditorError("the path contains a NUL byte")
        candidate = raw if raw.startswith("/") else posixpath.join(root, raw)
        normal = posixpath.normpath(candidate)
        if normal != root and not normal.startswith(root + "/"):
            raise EditorError(
                f"{raw} is outside the repository: use a path relative to the repository root "
                f"({root})"
            )
        relative = posixpath.relpath(normal, root)
        return normal, "." if relative == "." else relative

    async def _read_text(self, path: str, display: str) -> str:
        try:
            return _decode(await self.sandbox.read_file(path, max_bytes=MAX_FILE_BYTES), display)
        except FileNotFoundError:
            raise EditorError(f"{display} does not exist") from None
        except IsADirectoryError:
            raise EditorError(f"{display} is a directory, not a file") from None

    async def _view(self, path: str, display: str, view_range: Any) -> ToolOutcome:
        try:
            text = _decode(await self.sandbox.read_file(path, max_bytes=MAX_FILE_BYTES), display)
        except FileNotFoundError:
            raise EditorError(f"{display} does not exist") from None
        except IsADirectoryError:
            return await self._list_directory(path, display)
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        start, end = 1, len(lines)
        if view_range is not None:
            if (
                not isinstance(view_range, list)
                or len(view_range) != 2
                or not all(isinstance(n, int) for n in view_range)
            ):
                raise EditorError("view_range must be two integers: [start, end] (end -1 = last)")
            start, end = view_range
            end = len(lines) if end == -1 else end
            if not 1 <= start <= max(len(lines), 1) or end < start or end > len(lines):
                raise EditorError(
                    f"view_range {view_range} is invalid: {display} has {len(lines)} lines"
                )
        numbered = "\n".join(f"{n:6}\t{lines[n - 1]}" for n in range(start, end + 1))
        if len(numbered) > self.max_characters:
            numbered = (
                numbered[: self.max_characters]
                + f"\n[... output cut at {self.max_characters} characters: use view_range ...]"
            )
        return ToolOutcome(
            content=f"Here's the result of running `cat -n` on {display}:\n{numbered}\n",
            event=(EventType.TOOL_READ, {"filepath": display}),
        )

    async def _list_directory(self, path: str, display: str) -> ToolOutcome:
        # Hidden entries below the directory are skipped, not the directory itself (.github).
        listing = await self.sandbox.exec(
            f"cd -- {shlex.quote(path)} && find . -maxdepth 2 -not -path '*/.*' | sort | head -n 400",
            timeout=30,
            max_output=self.max_characters,
        )
        shown = "\n".join(
            posixpath.normpath(posixpath.join(display, line))
            for line in listing.output.splitlines()
            if line.strip()
        )
        return ToolOutcome(
            content=(
                f"Files and directories up to 2 levels deep in {display}, "
                f"excluding hidden items:\n{shown}\n"
            ),
            event=(EventType.TOOL_READ, {"filepath": display}),
        )

    async def _create(self, path: str, display: str, file_text: Any) -> ToolOutcome:
        if not isinstance(file_text, str):
            raise EditorError("`file_text` is required for create")
        try:
            await self.sandbox.write_file(path, file_text.encode("utf-8"))
        except IsADirectoryError:
            raise EditorError(f"{display} is a directory, not a file") from None
        return ToolOutcome(
            content=f"File created successfully at: {display}",
            event=(
                EventType.TOOL_WRITE,
                {"filepath": display, "content": _clip(file_text)},
            ),
        )

    async def _str_replace(
        self, path: str, display: str, tool_input: dict[str, Any]
    ) -> ToolOutcome:
        old = tool_input.get("old_str")
        new = tool_input.get("new_str", "")
        if not isinstance(old, str) or old == "":
            raise EditorError("`old_str` is required and must not be empty")
        if not isinstance(new, str):
            raise EditorError("`new_str` must be a string")
        text = await self._read_text(path, display)
        count = text.count(old)
        if count == 0:
            raise EditorError(
                f"No replacement was performed, old_str did not appear verbatim in {display}."
            )
        if count > 1:
            lines = sorted({text[:i].count("\n") + 1 for i in _find_all(text, old)})
            raise EditorError(
                f"No replacement was performed. Multiple occurrences of old_str in lines "
                f"{lines}. Include more context so that it is unique."
            )
        index = text.index(old)
        updated = text.replace(old, new, 1)
        await self.sandbox.write_file(path, updated.encode("utf-8"))
        first_line = text[:index].count("\n") + 1
        snippet = _snippet(updated, first_line, new.count("\n") + 1)
        return ToolOutcome(
            content=f"The file {display} has been edited. Here's a snippet of it:\n{snippet}\n",
            event=(
                EventType.TOOL_EDIT,
                {"filepath": display, "old_str": _clip(old), "new_str": _clip(new)},
            ),
        )

    async def _insert(self, path: str, display: str, tool_input: dict[str, Any]) -> ToolOutcome:
        line = tool_input.get("insert_line")
        new = tool_input.get("insert_text", tool_input.get("new_str"))
        if not isinstance(line, int) or isinstance(line, bool):
            raise EditorError("`insert_line` is required: the line after which to insert (0 = top)")
        if not isinstance(new, str):
            raise EditorError("`insert_text` is required for insert")
        text = await self._read_text(path, display)
        lines = text.split("\n")
        trailing = text.endswith("\n")
        if trailing:
            lines.pop()
        if not 0 <= line <= len(lines):
            raise EditorError(f"insert_line {line} is invalid: {display} has {len(lines)} lines")
        inserted = new.removesuffix("\n").split("\n")
        updated_lines = lines[:line] + inserted + lines[line:]
        updated = "\n".join(updated_lines) + ("\n" if trailing or not lines else "")
        await self.sandbox.write_file(path, updated.encode("utf-8"))
        snippet = _snippet(updated, line + 1, len(inserted))
        return ToolOutcome(
            content=f"The file {display} has been edited. Here's a snippet of it:\n{snippet}\n",
            event=(
                EventType.TOOL_EDIT,
                {"filepath": display, "insert_line": line, "new_str": _clip(new)},
            ),
        )


def _failed(command: Any, display: str, message: str) -> ToolOutcome:
    kind = EventType.TOOL_READ if command == "view" else EventType.TOOL_EDIT
    if command == "create":
        kind = EventType.TOOL_WRITE
    return ToolOutcome(
        content=message, is_error=True, event=(kind, {"filepath": display, "error": message})
    )


def _decode(data: bytes, display: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise EditorError(f"{display} is not a UTF-8 text file") from None


def _find_all(text: str, needle: str) -> list[int]:
    found, start = [], 0
    while (index := text.find(needle, start)) != -1:
        found.append(index)
        start = index + 1
    return found


def _snippet(text: str, first_line: int, count: int) -> str:
    lines = text.split("\n")
    start = max(1, first_line - SNIPPET_LINES)
    end = min(len(lines), first_line + count - 1 + SNIPPET_LINES)
    return "\n".join(f"{n:6}\t{lines[n - 1]}" for n in range(start, end + 1))


def _clip(text: str) -> str:
    if len(text) <= EVENT_TEXT_LIMIT:
        return text
    return text[:EVENT_TEXT_LIMIT] + f"\n[... {len(text) - EVENT_TEXT_LIMIT} more characters]"
