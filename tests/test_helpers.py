"""The shared `/proc` scanner finds every process of a sandbox root, by the root's mark alone.

bubblewrap reads its options from a memfd, so no command line names the sandbox directory; and
once a run ends its directory is gone, so a sandbox's own mark cannot be recomputed. `assert_clean`
rests on this scanner: if it found nothing, every "nothing is left" check would pass vacuously.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from backspace.orchestrator.sandboxes.local import LocalSandbox, LocalSandboxProvider
from tests.helpers import processes_running, sandbox_processes

pytestmark = pytest.mark.timeout(60)


async def test_a_running_sandbox_is_found_by_its_roots_mark_not_its_path(
    provider: LocalSandboxProvider, sandbox: LocalSandbox
) -> None:
    mark = uuid.uuid4().hex[:12]
    task = asyncio.create_task(sandbox.exec(f"sleep 303; echo {mark}", timeout=60))
    deadline = time.monotonic() + 20
    while not processes_running(f"echo {mark}"):
        assert time.monotonic() < deadline, "the command never started"
        await asyncio.sleep(0.05)

    found = sandbox_processes(provider.root)
    root = str(provider.root).encode()
    unnamed = [pid for pid in found if root not in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert unnamed, "bubblewrap names no directory on its command line: the mark must find it"
    for pid in found:  # a digest: the sandbox may read its PID 1's environment
        assert root not in Path(f"/proc/{pid}/environ").read_bytes()

    task.cancel()
    await sandbox.close()
    deadline = time.monotonic() + 10
    while sandbox_processes(provider.root):
        assert time.monotonic() < deadline, "the sandbox's processes outlived it"
        await asyncio.sleep(0.05)
