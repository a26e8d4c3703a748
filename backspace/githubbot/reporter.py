"""Following one run on GitHub: ONE comment, posted when the run is accepted and edited in
place as it goes (stage, then the result and the pull request).

Edits are paced (at most one every ``interval`` seconds, with the latest state), not one per
event: a run sends hundreds of events and GitHub limits content-creating requests. A GitHub
error is logged and never reaches the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from backspace.githubbot.api import GitHubApi
from backspace.githubbot.status import StatusView
from backspace.orchestrator.events import Event, EventType

log = logging.getLogger(__name__)


class StatusComment:
    def __init__(
        self, api: GitHubApi, repo: str, number: int, view: StatusView, *, interval: float
    ) -> None:
        self.api = api
        self.repo = repo
        self.number = number
        self.view = view
        self.interval = interval
        self.comment_id: int | None = None
        self._dirty = asyncio.Event()
        self._shown = ""
        self._closing = False

    async def open(self) -> bool:
        """Post the comment; False (logged) when GitHub refused."""
        text = self.view.text()
        try:
            self.comment_id = await self.api.comment(self.repo, self.number, text)
        except Exception as exc:
            log.warning("GitHub: posting the status comment failed: %s", type(exc).__name__)
            return False
        self._shown = text
        return True

    async def follow(self, events: AsyncIterator[Event]) -> None:
        """Take the run's events until it completes; edit the comment along, then at the end.

        Only the editor task edits, so two edits never race (an older text landing last).
        """
        editor = asyncio.create_task(self._edit_loop())
        try:
            async for event in events:
                self._take(event)
                self._dirty.set()
                if event.is_terminal:
                    break
            self._closing = True
            self._dirty.set()
            await editor
        finally:
            if not editor.done():
                editor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await editor

    def _take(self, event: Event) -> None:
        data, view = event.data, self.view
        match event.type:
            case EventType.PROGRESS:
                view.stage = str(data.get("stage", view.stage))
                view.status = "queued" if view.stage == "queued" else "running"
                view.message = str(data.get("message", ""))
                view.percentage = int(data.get("percentage", view.percentage) or 0)
            case EventType.USAGE:
                view.cost_usd = float(data.get("cost_usd", view.cost_usd) or 0.0)
            case EventType.PR_CREATED | EventType.PR_UPDATED:
                view.pr_url = data.get("pr_url") or view.pr_url
                view.pr_updated = event.type == EventType.PR_UPDATED
            case EventType.ERROR:
                view.error = str(data.get("message", "")) or view.error
            case EventType.COMPLETE:
                view.status = str(data.get("status", "failed"))
                view.pr_url = data.get("pr_url") or view.pr_url
                view.duration_ms = int(data.get("duration_ms", 0) or 0)

    async def _edit_loop(self) -> None:
        last = 0.0
        while True:
            await self._dirty.wait()
            wait = last + self.interval - time.monotonic()
            if wait > 0 and not self._closing:
                with contextlib.suppress(TimeoutError):  # the end does not wait for the pace
                    await asyncio.wait_for(self._closed(), wait)
            self._dirty.clear()
            await self._edit()
            last = time.monotonic()
            if self._closing:
                await self._edit()  # whatever arrived during the last edit
                return

    async def _closed(self) -> None:
        while not self._closing:
            await self._dirty.wait()
            self._dirty.clear()
        self._dirty.set()

    async def _edit(self) -> None:
        text = self.view.text()
        if self.comment_id is None or text == self._shown:
            return
        try:
            await self.api.edit_comment(self.repo, self.number, self.comment_id, text)
            self._shown = text
        except Exception as exc:
            log.warning("GitHub: editing the status comment failed: %s", type(exc).__name__)
