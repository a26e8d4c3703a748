"""Workarounds for slack-bolt (1.30): what it would fail on, or read wrongly.

Bolt's listeners and middleware fail with a 500 on bodies of an odd shape, and Bolt reads a
slash command whose text contains the word "payload" as a button click. Both are corrected here,
before Bolt sees the request.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_internals import build_async_context
from slack_bolt.request.async_request import AsyncBoltRequest


def shape_problem(body: Any) -> str | None:
    """What Bolt's listeners and middleware cannot handle (they would fail with a 500), or None."""
    if not isinstance(body, dict):
        return "the body is not an object"
    if (body.get("type") == "event_callback" or "event" in body) and not isinstance(
        body.get("event"), dict
    ):
        return "an event callback without an event object"
    if body.get("type") == "block_actions" or "actions" in body:
        actions = body.get("actions")
        if not isinstance(actions, list) or not actions:
            return "a block_actions payload without actions"
        if not all(isinstance(a, dict) for a in actions):
            return "an action that is not an object"
    return None


def reparse_form(request: AsyncBoltRequest, text: str) -> None:
    """Read a form body that mentions "payload" as the form it is (a slash command).

    Bolt reads any form body containing the word "payload" as a button click, so
    `/backspace fix the payload parser` would match nothing.
    """
    if "payload" in text and not text.startswith("{") and request.body == {}:
        fields = dict(parse_qsl(text, keep_blank_values=True))
        if "payload" not in fields:
            request.body = fields
            request.context = build_async_context(AsyncBoltContext({}), fields)
