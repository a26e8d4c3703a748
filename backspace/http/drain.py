"""A replica stops taking runs the moment it is told to stop, not when uvicorn gets round to it.

On SIGTERM (or SIGINT) uvicorn first stops listening and waits up to its graceful timeout for
open connections, and only then runs the app's shutdown, where the runner drains. Until then the
runner would go on claiming queued runs, which a deploy would then interrupt. So the signal's
handler (uvicorn's, chained) first tells the runner to claim nothing more.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol


class Drainable(Protocol):
    def stop_claiming(self) -> None: ...


def drain_on_signal(runner: Drainable) -> None:
    """Chain onto the process's SIGTERM and SIGINT handlers (uvicorn's): stop claiming first."""
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(number)
        if not callable(previous):  # not uvicorn's (a test's app, say): leave the signal alone
            continue
        signal.signal(number, _chained(loop, runner, previous))


def _chained(
    loop: asyncio.AbstractEventLoop,
    runner: Drainable,
    previous: Callable[[int, FrameType | None], Any],
) -> Callable[[int, FrameType | None], None]:
    def handler(number: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(runner.stop_claiming)
        previous(number, frame)

    return handler
