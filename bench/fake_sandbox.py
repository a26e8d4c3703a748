"""A fake remote sandbox: every call waits `latency` seconds (the network round trip to a remote
sandbox service), then does the real work on the host, in a per-run temp directory.

Commands run with real `bash` and real `git` (subprocesses started on worker threads that stand
for the remote side, so the fork is not charged to the orchestrator's event loop), so the pipeline's git steps
(clone from the base bundle, commit, bundle the change) succeed exactly as in a real sandbox: one
`exec` costs `latency` plus the real command. There is no isolation whatsoever: it is for
benchmarks of the orchestrator only.

Paths: relative paths are relative to the workdir (a host temp dir, which the sandbox reports as
its `workdir`); absolute paths are host paths (the pipeline's bundles go to `/tmp/backspace-<id>-*`,
unique per run, and are removed on close).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from backspace.orchestrator.egress.gate import Gate, Phase
from backspace.orchestrator.egress.hosts import HostList
from backspace.orchestrator.environment.layer import Layer, LayerStore
from backspace.orchestrator.sandboxes.base import (
    ExecResult,
    OutputCallback,
    OutputCollector,
    SandboxError,
)

DEFAULT_LATENCY = 0.05


class FakeRemoteSandbox:
    def __init__(self, provider: FakeRemoteSandboxProvider, run_id: str, base: Path) -> None:
        self.provider = provider
        self.run_id = run_id
        self.id = f"fake-{run_id}"
        self.base = base
        self.workdir = str(base / "workspace")
        self.tmpdir = "/tmp"  # host paths, as a remote sandbox's would be
        self.calls = 0  # the tiny in-memory state: how many remote calls this sandbox served
        self._outside: set[Path] = set()  # files written outside the workdir (bundles in /tmp)
        self._closed = False

    def _path(self, path: str) -> Path:
        resolved = Path(path) if os.path.isabs(path) else Path(self.workdir) / path
        if not str(resolved).startswith(str(self.base)):
            self._outside.add(resolved)
        return resolved

    async def _round_trip(self) -> None:
        if self._closed:
            raise SandboxError("the sandbox is closed")
        self.calls += 1
        self.provider.calls += 1
        await asyncio.sleep(self.provider.latency)

    async def exec(
        self,
        command: str,
        *,
        cwd: str | None = None,
        timeout: float = 120.0,
        max_output: int = 16000,
        stdin: bytes | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        await self._round_trip()
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        # The command runs on a worker thread (the "remote" side), not on the event loop: a
        # remote sandbox costs the orchestrator a network round trip, not a fork.
        code, raw, timed_out = await loop.run_in_executor(
            self.provider.pool,
            functools.partial(self._run, command, cwd, timeout, stdin),
        )
        collector = OutputCollector(max_output)
        text = raw.decode("utf-8", errors="replace")
        collector.add(text)
        if on_output is not None and text:
            on_output(text)
        return ExecResult(
            exit_code=124 if timed_out else (128 - code if code < 0 else code),
            output=collector.text(),
            truncated=collector.truncated,
            timed_out=timed_out,
            duration_ms=int((time.monotonic() - started) * 1000),
        )

    def _run(
        self, command: str, cwd: str | None, timeout: float, stdin: bytes | None
    ) -> tuple[int, bytes, bool]:
        with subprocess.Popen(
            ["bash", "-c", command],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=str(self._path(cwd)) if cwd else self.workdir,
            env=self.provider.env(self.base),
            start_new_session=True,
        ) as proc:
            try:
                out, _ = proc.communicate(stdin, timeout=timeout)
                return proc.returncode, out, False
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
                return -9, out, True

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        await self._round_trip()
        target = self._path(path)
        if target.is_dir():
            raise IsADirectoryError(path)
        data = target.read_bytes()  # raises FileNotFoundError
        if max_bytes is not None and len(data) > max_bytes:
            raise SandboxError(f"the file is larger than the {max_bytes}-byte limit")
        return data

    async def write_file(self, path: str, data: bytes) -> None:
        await self._round_trip()
        target = self._path(path)
        if target.is_dir():
            raise IsADirectoryError(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    async def upload(self, local: Path, path: str) -> None:
        await self._round_trip()
        target = self._path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)

    async def download(self, path: str, local: Path, *, max_bytes: int) -> None:
        await self._round_trip()
        source = self._path(path)
        if not source.is_file():
            raise FileNotFoundError(path)
        if source.stat().st_size > max_bytes:
            raise SandboxError(f"{path} is larger than the {max_bytes}-byte limit")
        shutil.copyfile(source, local)

    async def open_network(self, phase: Phase, hosts: HostList) -> None:
        """The benchmark's sandboxes never reach out: nothing to open."""

    async def close(self) -> None:
        if self._closed:
            return
        await self._round_trip()
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self.provider.pool, self._remove)
        self.provider.live.discard(self.run_id)

    def _remove(self) -> None:
        for path in self._outside:
            with contextlib.suppress(OSError):
                path.unlink()
        shutil.rmtree(self.base, ignore_errors=True)


class FakeRemoteSandboxProvider:
    name = "fake-remote"
    layers: LayerStore | None = None

    def __init__(
        self, root: Path | None = None, latency: float = DEFAULT_LATENCY, workers: int = 64
    ) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="backspace-fake-sandbox-"))
        self.latency = latency
        self.calls = 0
        self.live: set[str] = set()
        # the "remote" side: commands and file copies run on these threads, off the event loop
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fake-sandbox")

    def check(self) -> tuple[bool, str]:
        return True, f"fake remote sandbox: {self.latency * 1000:g} ms per call, no isolation"

    def env(self, base: Path) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(base / "home"),
            "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
        }

    async def create(
        self,
        run_id: str,
        *,
        layer: Layer | None = None,
        gate: Gate | None = None,
        gateway: Path | None = None,
    ) -> FakeRemoteSandbox:
        await asyncio.sleep(self.latency)
        self.calls += 1
        base = self.root / run_id
        for sub in ("workspace", "home"):
            (base / sub).mkdir(parents=True)
        self.live.add(run_id)
        return FakeRemoteSandbox(self, run_id, base)

    async def cleanup_orphans(self, live_run_ids: set[str]) -> int:
        orphans = [run_id for run_id in self.live if run_id not in live_run_ids]
        for run_id in orphans:
            shutil.rmtree(self.root / run_id, ignore_errors=True)
            self.live.discard(run_id)
        return len(orphans)

    def remove(self) -> None:
        self.pool.shutdown(wait=True)
        shutil.rmtree(self.root, ignore_errors=True)
