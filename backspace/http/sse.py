"""A run's events as Server-Sent Events: `id: <seq>` and `data: <json>`, no `event:` line, so
a browser's `EventSource.onmessage` sees every event; `: ping` after BACKSPACE_SSE_PING
seconds of silence (15 by default), so proxies keep the connection open.

With a thousand viewers of one run, every per-viewer cost is paid a thousand times per event.
So each event's JSON is encoded once (`Event.to_json` caches it), and a viewer writes whatever
arrived since its last write as one chunk: one socket write per batch, not per event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from sse_starlette import EventSourceResponse, ServerSentEvent

from backspace.orchestrator.events import Event
from backspace.orchestrator.hub import EventHub

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PING = ServerSentEvent(comment="ping", sep="\n").encode()


def encode(events: Iterable[Event]) -> bytes:
    """SSE frames for `events`. The JSON never holds a raw line break (json.dumps escapes
    them), so each event is exactly one `data:` line."""
    return b"".join(b"id: %d\ndata: %s\n\n" % (e.seq, e.to_json().encode()) for e in events)


class Viewers(Protocol):
    """What counts the open streams (the metrics' gauge)."""

    def inc(self) -> None: ...
    def dec(self) -> None: ...


def event_stream(
    hub: EventHub,
    run_id: str,
    after: int = 0,
    *,
    ping_after: float = 15.0,
    viewers: Viewers | None = None,
) -> EventSourceResponse:
    async def chunks() -> AsyncIterator[bytes]:
        if viewers is not None:
            viewers.inc()
        try:
            async for batch in hub.batches(run_id, after, heartbeat=ping_after):
                yield encode(batch) if batch else PING
                if batch and batch[-1].is_terminal:
                    # Closing a response costs more than a write. Step aside once, so every
                    # other viewer writes the end before any viewer spends time closing.
                    await asyncio.sleep(0)
        finally:
            if viewers is not None:
                viewers.dec()

    # ping=0: our own ping, sent only after silence, replaces the library's fixed-interval one.
    return EventSourceResponse(chunks(), headers=HEADERS, ping=0, sep="\n")
