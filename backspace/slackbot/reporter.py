"""Following one run in Slack: a status message updated in place, milestones in its thread, and
one broadcast reply at the end.

Within Slack's limits: thread posts go through a per-channel pacer shared by every run (about one
post a second per channel), the status message is updated at most every SLACK_STATUS_INTERVAL
seconds with the latest state, and 429 answers are retried after Retry-After by the client. A
Slack error is logged and never reaches the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from backspace.orchestrator.events import Event, EventType
from backspace.slackbot.messages import (
    STAGE_LABEL,
    RunView,
    blocked_line,
    clip,
    escape,
    followup_line,
    receipt_text,
)

log = logging.getLogger(__name__)

THREAD_LINE_LIMIT = 300
THREAD_LINES_PER_POST = 12
BLOCKED_SHOWN = 3
"""Refused network attempts posted one by one; past these, counted in one line at the end."""


class Alone(str):
    """A thread line posted as a message of its own (the verification receipt)."""

    __slots__ = ()


class ChannelPacer:
    """At most one post per `interval` seconds per channel, for every run in it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._locks: dict[str, asyncio.Lock] = {}
        self._last: dict[str, float] = {}

    @contextlib.asynccontextmanager
    async def slot(self, channel: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(channel, asyncio.Lock())
        async with lock:
            wait = self._last.get(channel, 0.0) + self.interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                yield
            finally:
                self._last[channel] = time.monotonic()


ApiErrorHook = Callable[[str, str], None]  # (method, error): counted by the metrics


class SlackReporter:
    def __init__(
        self,
        client: AsyncWebClient,
        pacer: ChannelPacer,
        view: RunView,
        *,
        channel: str,
        thread_ts: str | None,
        status_interval: float,
        on_error: ApiErrorHook | None = None,
    ) -> None:
        self.on_error = on_error
        self.client = client
        self.pacer = pacer
        self.view = view
        self.channel = channel
        self.thread_ts = thread_ts  # a mention's ts: everything goes in its thread
        self.status_interval = status_interval
        self.status_ts: str | None = None
        self._pending: list[str] = []
        self._commands: list[str] = []
        self._edits: list[str] = []
        self._blocked = 0
        self._dirty = asyncio.Event()
        self._closing = False

    async def open(self) -> str | None:
        """Post the status message; the Slack error code when that failed (`not_in_channel`)."""
        return await self._post_status()

    async def follow(self, events: AsyncIterator[Event]) -> None:
        """Keep the status message and the thread current, and finish the run's story."""
        flusher = asyncio.create_task(self._flush_loop())
        try:
            async for event in events:
                self._take(event)
                self._dirty.set()
                if event.is_terminal:
                    break
            self._fold_activity()
            if self._blocked > BLOCKED_SHOWN:
                more = self._blocked - BLOCKED_SHOWN
                self._pending.append(f":no_entry: and {more} more blocked attempts")
            self._closing = True  # the flusher posts what is pending, then stops
            self._dirty.set()
            await flusher
        finally:
            if not flusher.done():
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
        await self._update_status()
        await self._post(self.view.final_text(), broadcast=True)

    def _take(self, event: Event) -> None:
        data, view = event.data, self.view
        match event.type:
            case EventType.PROGRESS:
                if data.get("stage") != view.stage and data.get("stage") != "queued":
                    self._fold_activity()
                    message = escape(str(data.get("message", "")))
                    label = STAGE_LABEL.get(str(data.get("stage")))
                    self._pending.append(f"*{label}*: {message}" if label else f"*{message}*")
                view.status = "running" if data.get("stage") != "queued" else "queued"
                view.stage = str(data.get("stage", view.stage))
                view.message = str(data.get("message", view.message))
                view.percentage = int(data.get("percentage", view.percentage))
            case EventType.AI_MESSAGE:
                self._fold_activity()
                text = clip(escape(str(data.get("message", "")).strip()), THREAD_LINE_LIMIT)
                self._pending.append(f":speech_balloon: {text}")
            case EventType.TOOL_BASH:
                self._commands.append(
                    clip(
                        str(data.get("command", "")).splitlines()[0] if data.get("command") else "",
                        60,
                    )
                )
            case EventType.TOOL_EDIT | EventType.TOOL_WRITE:
                path = str(data.get("filepath", ""))
                if path and path not in self._edits:
                    self._edits.append(path)
            case EventType.USAGE:
                view.cost_usd = float(data.get("cost_usd", view.cost_usd))
            case EventType.NETWORK_BLOCKED:
                self._blocked += 1
                if self._blocked <= BLOCKED_SHOWN:
                    self._fold_activity()
                    self._pending.append(blocked_line(data))
            case EventType.VERIFICATION:
                self._fold_activity()
                view.verification_failed = data.get("passed") is not True
                self._pending.append(Alone(receipt_text(data)))
            case EventType.PR_CREATED | EventType.PR_UPDATED:
                view.pr_url = data.get("pr_url")
                view.files_changed = data.get("files_changed")
                view.draft = data.get("draft") is True
                view.pr_updated = event.type == EventType.PR_UPDATED
            case EventType.FOLLOWUP_RECEIVED:
                self._fold_activity()
                self._pending.append(followup_line(data))
            case EventType.ERROR:
                view.error_code = data.get("code")
                view.error_message = data.get("message")
                self._pending.append(
                    f":warning: {clip(escape(str(data.get('message', ''))), THREAD_LINE_LIMIT)}"
                )
            case EventType.COMPLETE:
                view.status = str(data.get("status", "failed"))
                view.pr_url = data.get("pr_url") or view.pr_url
                view.duration_ms = int(data.get("duration_ms", 0))

    def _fold_activity(self) -> None:
        """Batch commands and edits into one short line each."""
        if self._commands:
            shown = ", ".join(f"`{escape(c)}`" for c in self._commands[:4] if c)
            more = f" and {len(self._commands) - 4} more" if len(self._commands) > 4 else ""
            self._pending.append(f":computer: ran {len(self._commands)} command(s): {shown}{more}")
            self._commands = []
        if self._edits:
            shown = ", ".join(f"`{escape(p)}`" for p in self._edits[:6])
            more = f" and {len(self._edits) - 6} more" if len(self._edits) > 6 else ""
            self._pending.append(f":pencil2: edited {shown}{more}")
            self._edits = []

    async def _flush_loop(self) -> None:
        """The one place that posts: thread batches as they come, status updates paced."""
        last_update = 0.0
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._post_thread()
            if self._closing:
                return
            wait = last_update + self.status_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._update_status()
            last_update = time.monotonic()

    async def _post_status(self) -> str | None:
        response = await self._call(
            "chat_postMessage",
            channel=self.channel,
            thread_ts=self.thread_ts,
            text=self.view.status_text(),
            blocks=self.view.status_blocks(),
            paced=True,
        )
        if isinstance(response, str):
            return response
        if response is not None:
            self.status_ts = response.get("ts")
        return None

    async def _update_status(self) -> None:
        if self.status_ts is None:
            return
        await self._call(
            "chat_update",
            channel=self.channel,
            ts=self.status_ts,
            text=self.view.status_text(),
            blocks=self.view.status_blocks(),
        )

    async def _post_thread(self) -> None:
        while self._pending:
            if isinstance(self._pending[0], Alone):
                await self._post(self._pending.pop(0))
                continue
            lines: list[str] = []
            while self._pending and len(lines) < THREAD_LINES_PER_POST:
                if isinstance(self._pending[0], Alone):
                    break
                lines.append(self._pending.pop(0))
            await self._post("\n".join(lines))

    async def _post(self, text: str, *, broadcast: bool = False) -> None:
        parent = self.thread_ts or self.status_ts
        if parent is None:
            return  # no status message: Slack is unreachable, and the run goes on regardless
        extra: dict[str, Any] = {"reply_broadcast": True} if broadcast else {}
        await self._call(
            "chat_postMessage",
            channel=self.channel,
            thread_ts=parent,
            text=text,
            paced=True,
            **extra,
        )

    async def _call(self, method: str, *, paced: bool = False, **kwargs: Any) -> Any:
        """The Slack response; on failure the error code (logged), never an exception."""
        try:
            if paced:
                async with self.pacer.slot(self.channel):
                    return await getattr(self.client, method)(**kwargs)
            return await getattr(self.client, method)(**kwargs)
        except SlackApiError as exc:
            error = str(exc.response.get("error") or exc.response.status_code)
        except Exception as exc:  # a Slack outage must never reach the run
            error = type(exc).__name__
        log.warning("Slack %s failed: %s", method, error)
        if self.on_error is not None:
            self.on_error(method, error)
        return error
