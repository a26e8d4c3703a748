"""A run's events as Server-Sent Events: `id: <seq>` and `data: <json>`, no `event:` line, so
a browser's `EventSource.onmessage` sees every event; `: ping` after 15 s of silence."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent

from backspace.orchestrator.hub import EventHub

PING_AFTER = 15.0
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event_stream(
    hub: EventHub, run_id: str, after: int = 0, *, status: int = 200
) -> EventSourceResponse:
    async def frames() -> AsyncIterator[ServerSentEvent]:
        async for event in hub.stream(run_id, after, heartbeat=PING_AFTER):
            if event is None:
                yield ServerSentEvent(comment="ping")
            else:
                yield ServerSentEvent(id=str(event.seq), data=event.to_json())

    # ping=0: our own ping, sent only after silence, replaces the library's fixed-interval one.
    return EventSourceResponse(frames(), status_code=status, headers=HEADERS, ping=0, sep="\n")
