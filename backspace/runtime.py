"""Process-wide tuning of the event loop and the garbage collector.

Both are measured in bench/ (docs/benchmarks.md): the server applies them at start-up, and the
in-process benchmarks apply them the same way so they measure what the server does.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import sys

DESCRIPTOR_RESERVE = 256
"""Descriptors kept for the server's own work (database, git and sandbox pipes), not clients."""


def tune_garbage_collector() -> None:
    """Keep full garbage collections rare and short: they stop the event loop.

    The imported SDKs leave ~300,000 objects that every full collection walks again: 180 to
    650 ms with the loop stopped, which a thousand SSE viewers see as one long stall. Frozen,
    they are never walked again. A larger first generation (10,000 allocations rather than
    700) lets the short-lived objects of each event delivery die young instead of being
    promoted, which is what set off the remaining full collections (bench/fanout.py: three
    of 20 to 750 ms per run before, none after).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def watch_children_with_pidfds() -> None:
    """On Python 3.11, learn of a child's exit from a pidfd on the running loop.

    3.11's default watcher starts a thread per child process and waits for it to start, on
    the loop; a run spawns dozens of git and sandbox commands. 3.12 uses pidfds by itself.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.get_event_loop_policy().set_child_watcher(watcher)


def raise_descriptor_limit() -> int:
    """Raise the soft limit of open files to the hard limit; return the soft limit now in force.

    The soft limit is often 1,024: fewer than a thousand idle clients then stopped the server
    from accepting anything, `/health` included. The hard limit is what the system allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target
