"""The SSE frames written by hand for speed are exactly what sse-starlette would write."""

from __future__ import annotations

import pytest
from sse_starlette import ServerSentEvent

from backspace.http.sse import PING, encode
from backspace.orchestrator.events import Event

TRICKY = [
    "plain",
    "two\nlines",
    "carriage\rreturn and\r\nboth",
    "line\u2028separator \u2029 and NEL \x85",
    "ünïcödé ✓ 😀",
    "data: fake\n\nid: 99\n\n",
    "\x00\x1b[31mcontrol\x7f",
]


@pytest.mark.parametrize("text", TRICKY)
def test_each_event_is_one_frame_identical_to_the_librarys(text: str) -> None:
    event = Event("run-1", 7, "AI Message", "2026-11-23T00:00:00.000Z", {"text": text})
    library = ServerSentEvent(id="7", data=event.to_json(), sep="\n").encode()
    assert encode([event]) == library
    assert encode([event]).count(b"\ndata: ") == 1 and b"\r" not in encode([event])


def test_a_batch_is_the_frames_in_order_and_the_json_is_encoded_once() -> None:
    events = [Event("run-1", seq, "progress", "t", {"n": seq}) for seq in (1, 2, 3)]
    assert encode(events) == b"".join(encode([e]) for e in events)
    assert events[0].to_json() is events[0].to_json()
    assert PING == b": ping\n\n"
