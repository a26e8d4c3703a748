"""The usage of one model answer, read from the bytes the gateway passes back.

The gateway forwards the answer unchanged and, on the side, reads what spend needs: for a stream,
the `message_start` event (the model, input and cache tokens) and the `message_delta` events
(cumulative counts: each later value replaces the earlier one, as the SDK's own accumulator does);
for a JSON answer, its `model` and `usage`. Only those small events are parsed: a line longer than
MAX_LINE (a huge text delta) is skipped, so a hostile answer cannot make the meter hold much.
A stream cut in the middle still counts what its message_start said.
"""

from __future__ import annotations

import json
from typing import Any

MAX_LINE = 256 * 1024
MAX_JSON = 16 * 1024 * 1024
FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


class UsageMeter:
    def __init__(self, *, stream: bool, model: str) -> None:
        self.stream = stream
        self.model = model  # the request's, until the answer names its own
        self.usage: dict[str, int] = {}
        self._line = bytearray()
        self._skipping = False
        self._body = bytearray()
        self._too_big = False

    def feed(self, data: bytes) -> None:
        if not self.stream:
            if len(self._body) + len(data) > MAX_JSON:
                self._too_big = True
            else:
                self._body += data
            return
        start = 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start:] if end == -1 else data[start:end]
            if not self._skipping:
                if len(self._line) + len(piece) > MAX_LINE:
                    self._skipping, self._line = True, bytearray()
                else:
                    self._line += piece
            if end == -1:
                return
            if not self._skipping:
                self._event_line(bytes(self._line))
            self._line, self._skipping = bytearray(), False
            start = end + 1

    def finish(self) -> dict[str, int]:
        """The answer's usage (empty when it had none: an error, say)."""
        if not self.stream and self._body and not self._too_big:
            try:
                message = json.loads(self._body)
            except ValueError:
                return self.usage
            if isinstance(message, dict) and message.get("type") == "message":
                self._take(message.get("usage"), message.get("model"))
        return self.usage

    def _event_line(self, line: bytes) -> None:
        if not line.startswith(b"data:") or b'"message_' not in line:
            return
        try:
            event = json.loads(line[5:])
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            message = event["message"]
            self._take(message.get("usage"), message.get("model"))
        elif event.get("type") == "message_delta":
            self._take(event.get("usage"), None)

    def _take(self, usage: Any, model: Any) -> None:
        if isinstance(model, str) and model:
            self.model = model
        if not isinstance(usage, dict):
            return
        for name in FIELDS:
            value = usage.get(name)
            if isinstance(value, int) and value >= 0:
                self.usage[name] = value
