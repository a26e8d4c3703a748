"""A small Server-Sent Events reader over httpx: it parses the real bytes on the wire."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.tls import TLS


@dataclass
class Frame:
    id: str | None = None
    event: str | None = None
    data: str = ""
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data)
        return value


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """Yield each frame (events and comment-only frames) as the server sends it."""
    frame = Frame()
    data_lines: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data_lines or frame.comments or frame.id is not None:
                frame.data = "\n".join(data_lines)
                yield frame
            frame, data_lines = Frame(), []
            continue
        if line.startswith(":"):
            frame.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value
        elif name == "data":
            data_lines.append(value)


async def collect(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    stop_after: int | None = None,
    **kwargs: Any,
) -> tuple[httpx.Response, list[Frame]]:
    """Read frames until the server ends the stream (after `complete`) or `stop_after` events."""
    got: list[Frame] = []
    async with client.stream(method, url, **kwargs) as response:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            async for frame in frames(response):
                got.append(frame)
                events = [f for f in got if f.data]
                if stop_after is not None and len(events) >= stop_after:
                    break
        else:
            await response.aread()
    return response, got


def events_of(got: list[Frame]) -> list[dict[str, Any]]:
    return [f.json for f in got if f.data]


async def post_run(base_url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST /api/code and read the run's whole stream; the events as dicts."""
    async with httpx.AsyncClient(verify=TLS, timeout=60) as client:
        response, got = await collect(client, "POST", f"{base_url}/api/code", json=body)
    assert response.status_code == 200, response.text
    return events_of(got)


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]
