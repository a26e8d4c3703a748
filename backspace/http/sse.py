"""A run's events as Server-Sent Events: `id: <seq>` and `data: <json>`, no `event:` line, so
a browser's `EventSource.onmessage` sees every event; `: ping` after BACKSPACE_SSE_PING
seconds of silence (15 by default), so proxies keep the connection open."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent

from backspace.orchestrator.hub import EventHub

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event_stream(
    hub: EventHub, run_id: str, after: int = 0, *, ping_after: float = 15.0
) -> EventSourceResponse:
    async def frames() -> AsyncIterator[ServerSentEvent]:
        async for event in hub.stream(run_id, after, heartbeat=ping_after):
            if event is None:
                yield ServerSentEvent(comment="ping")
            else:
                yield ServerSentEvent(id=str(event.seq), data=event.to_json())

    # ping=0: our own ping, sent only after silence, replaces the library's fixed-interval one.
    return EventSourceResponse(frames(), headers=HEADERS, ping=0, sep="\n")
