"""The tools the model is offered: Anthropic's bash and text editor, and our `finish`.

`builtin` mode sends the Anthropic-defined tool types Claude is trained on. `schema` mode sends
the same tools as custom tools with explicit JSON schemas, for Anthropic-compatible servers
(vLLM, llama.cpp, Ollama, LiteLLM) that do not know the built-in types. Execution is identical.
"""

from __future__ import annotations

from typing import Any, Literal

BASH = "bash"
EDITOR = "str_replace_based_edit_tool"
FINISH = "finish"

FINISH_TOOL: dict[str, Any] = {
    "name": FINISH,
    "description": (
        "Call this once, when the change is complete and checked, to end the task. The "
        "orchestrator then commits your changes and opens a pull request with this title and "
        "body. Do not commit or push yourself."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "title": {
                "type": "string",
                "description": "Pull request title: imperative, at most 72 characters.",
            },
            "body": {
                "type": "string",
                "description": "Pull request body in Markdown: what changed and why, by file.",
            },
            "tests": {
                "type": "string",
                "description": "Which tests or checks you ran and their result, or 'not run'.",
            },
        },
        "required": ["title", "body"],
    },
}

BASH_SCHEMA_TOOL: dict[str, Any] = {
    "name": BASH,
    "description": (
        "Run a bash command in the repository's sandbox and get its combined output and exit "
        "code. The working directory persists between calls; environment variables do not."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The bash command to run."},
            "restart": {"type": "boolean", "description": "Reset the shell state."},
        },
    },
}

EDITOR_SCHEMA_TOOL: dict[str, Any] = {
    "name": EDITOR,
    "description": (
        "View, create and edit files. `view` shows a file with line numbers (or a directory "
        "listing); `create` writes a file; `str_replace` replaces one exact, unique occurrence "
        "of old_str with new_str; `insert` inserts text after line insert_line (0 = top)."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "command": {"type": "string", "enum": ["view", "create", "str_replace", "insert"]},
            "path": {"type": "string", "description": "Path relative to the repository root."},
            "file_text": {"type": "string"},
            "view_range": {"type": "array", "items": {"type": "integer"}},
            "old_str": {"type": "string"},
            "new_str": {"type": "string"},
            "insert_line": {"type": "integer"},
            "insert_text": {"type": "string"},
        },
        "required": ["command", "path"],
    },
}


def tool_definitions(mode: Literal["builtin", "schema"]) -> list[dict[str, Any]]:
    """The tools for one request; the last one carries the cache breakpoint for the tool list."""
    if mode == "builtin":
        tools: list[dict[str, Any]] = [
            {"type": "bash_20250124", "name": BASH},
            {"type": "text_editor_20250728", "name": EDITOR},
        ]
    else:
        tools = [dict(BASH_SCHEMA_TOOL), dict(EDITOR_SCHEMA_TOOL)]
    tools.append({**FINISH_TOOL, "cache_control": {"type": "ephemeral"}})
    return tools
