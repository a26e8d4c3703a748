"""Scripted agent steps the end-to-end tests share."""

from __future__ import annotations

from tests.fakes.anthropic import Reply, Text, ToolCall

EDIT_SIGNUP = ToolCall(
    "str_replace_based_edit_tool",
    {
        "command": "str_replace",
        "path": "app.py",
        "old_str": "    return name\n",
        "new_str": "    if not name:\n        raise ValueError('name is required')\n    return name\n",
    },
)
SIGNUP_PY = "def signup(name):\n    return name\n"


def finish(
    title: str = "Validate the signup name", body: str = "Adds a check.", tests: str = "none"
) -> Reply:
    return Reply(
        [Text("Done."), ToolCall("finish", {"title": title, "body": body, "tests": tests})]
    )
