"""Slack's retries of an event: one event starts at most one run."""

from __future__ import annotations

import time

EVENT_TTL = 15 * 60  # longer than Slack's retry window


class SeenEvents:
    """The `event_id`s of the last quarter of an hour."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def duplicate(self, event_id: str) -> bool:
        """True when this event was seen already (Slack retries events it thinks we missed)."""
        now = time.monotonic()
        for seen, at in list(self._seen.items()):
            if now - at > EVENT_TTL:
                del self._seen[seen]
        if not event_id:
            return False
        if event_id in self._seen:
            return True
        self._seen[event_id] = now
        return False
