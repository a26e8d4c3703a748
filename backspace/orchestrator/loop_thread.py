"""An event loop on a thread of its own, for the host's doors (the egress proxy, the model
gateway): a sandbox's slow or hostile connection is served there, never on the server's loop."""

from __future__ import annotations

import asyncio
import threading


class LoopThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The running loop, or None before `start` and after `stop`."""
        return self._loop

    def start(self) -> tuple[asyncio.AbstractEventLoop, bool]:
        """Start the thread once; its loop, and whether this call started it."""
        with self._lock:
            if self._loop is not None:
                return self._loop, False
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(
                target=self._serve, args=(loop, ready), name=self.name, daemon=True
            )
            thread.start()
            ready.wait()
            self._loop, self._thread = loop, thread
            return loop, True

    def take(self) -> tuple[asyncio.AbstractEventLoop, threading.Thread] | None:
        """Mark it stopping (a later `start` begins again); the loop and thread to wind down,
        or None when it was not running."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        return (loop, thread) if loop is not None and thread is not None else None

    @staticmethod
    def finish(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        """Stop a loop `take` handed out (after its owner closed what runs on it)."""
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
