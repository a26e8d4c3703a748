"""An open tunnel's bytes moved in the kernel: splice(2) from one socket into a pipe, and from
the pipe into the other socket, driven by an asyncio loop's readers and writers.

Copying them through Python costs about twice the time on loopback (docs/benchmarks.md); the
proxy falls back to its Protocols where splice is missing or cannot be set up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Callable

AVAILABLE = hasattr(os, "splice")

SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux's value where Python has no name
PIPE_SIZE = 1024 * 1024
SPLICE_ROUNDS = 8


class SpliceTunnel:
    """A tunnel moved kernel to kernel with splice(2), through a pipe per direction: no byte is
    copied into Python. It works on duplicates of the two transports' sockets, whose own
    reading is paused; a direction stops reading while its pipe holds bytes the other side
    cannot take yet (flow control), so a tunnel holds at most two pipes' worth (1 MiB each, in
    the kernel, only while bytes are in flight). `touch` is called on traffic; `ended` once,
    when the tunnel ends by itself (both sides finished, or an error)."""

    def __init__(
        self,
        sides: tuple[asyncio.Transport, asyncio.Transport],
        *,
        touch: Callable[[], None],
        ended: Callable[[], None],
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.touch, self.ended = touch, ended
        self.sockets = [
            socket.socket(fileno=os.dup(side.get_extra_info("socket").fileno())) for side in sides
        ]
        self.ways: list[_Way] = []
        self.closed = False
        try:
            self.ways.append(_Way(self, *self.sockets))
            self.ways.append(_Way(self, *reversed(self.sockets)))
        except OSError:  # out of descriptors, say: the caller falls back to the Protocols
            self.close(abort=False)
            raise

    def start(self) -> None:
        for way in self.ways:
            way.want_read()

    def close(self, *, abort: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        for way in self.ways:
            way.close()
        for sock in self.sockets:
            sock.close()
        if abort:
            self.ended()


class _Way:
    """One direction of a spliced tunnel: `source` into the pipe, the pipe into `sink`."""

    def __init__(self, tunnel: SpliceTunnel, source: socket.socket, sink: socket.socket) -> None:
        self.tunnel = tunnel
        self.loop = tunnel.loop
        self.source, self.sink = source, sink
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # past the user's pipe quota: the default 64 KiB
            fcntl.fcntl(self.write_end, F_SETPIPE_SZ, PIPE_SIZE)
        self.pending = 0  # bytes in the pipe, not yet in the sink
        self.reading = self.writing = self.eof = False

    def want_read(self) -> None:
        if not self.reading and not self.tunnel.closed:
            self.reading = True
            self.loop.add_reader(self.source.fileno(), self._readable)

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.source.fileno())

    def _readable(self) -> None:
        for _ in range(SPLICE_ROUNDS):  # a few rounds per wake-up, then the other tunnels' turn
            try:
                moved = os.splice(
                    self.source.fileno(), self.write_end, PIPE_SIZE, flags=SPLICE_FLAGS
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.tunnel.close()
                return
            if moved == 0:
                self.eof = True
                self._stop_reading()
                self._finish()
                return
            self.pending += moved
            self.tunnel.touch()
            self._flush()
            if self.pending or not self.reading:
                return

    def _flush(self) -> None:
        while self.pending:
            try:
                moved = os.splice(
                    self.read_end, self.sink.fileno(), self.pending, flags=SPLICE_FLAGS
                )
            except (BlockingIOError, InterruptedError):
                self._stop_reading()
                if not self.writing:
                    self.writing = True
                    self.loop.add_writer(self.sink.fileno(), self._flush)
                return
            except OSError:
                self.tunnel.close()
                return
            self.pending -= moved
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.sink.fileno())
        if self.eof:
            self._finish()
        else:
            self.want_read()

    def _finish(self) -> None:
        """The source has ended: once the pipe is empty, end the sink's direction too."""
        if self.pending:
            return
        with contextlib.suppress(OSError):
            self.sink.shutdown(socket.SHUT_WR)
        if all(way.eof and not way.pending for way in self.tunnel.ways):
            self.tunnel.close()

    def close(self) -> None:
        self._stop_reading()
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.sink.fileno())
        os.close(self.read_end)
        os.close(self.write_end)
