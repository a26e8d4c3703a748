"""Host-side git, hardened: it never trusts configuration, hooks or transports it did not choose.

Every call runs with no system or user configuration (an empty HOME), hooks pointed at
/dev/null, no terminal prompt, only the protocols the caller allows, and argv lists (no shell).
Credentials, when a host needs them, come in through `env` only and are redacted from errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from backspace.orchestrator.redact import Redactor

_EMPTY_HOME = Path(tempfile.gettempdir()) / "backspace-git-home"


class GitError(Exception):
    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"git {' '.join(args[:2])} failed ({returncode}): {stderr.strip()[:500]}")


async def git(
    *args: str,
    cwd: Path | None = None,
    git_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    allow_file: bool = False,
    allow_http: bool = False,
    redactor: Redactor | None = None,
    timeout: float = 300.0,
    check: bool = True,
) -> str:
    """Run git and return its stdout; raise GitError (redacted) on failure."""
    _EMPTY_HOME.mkdir(mode=0o700, exist_ok=True)
    config = [
        "-c", "core.hooksPath=/dev/null",
        "-c", "core.fsmonitor=false",
        "-c", "protocol.allow=never",
        "-c", "protocol.https.allow=always",
        "-c", f"protocol.file.allow={'always' if allow_file else 'never'}",
        "-c", f"protocol.http.allow={'always' if allow_http else 'never'}",
        "-c", "transfer.fsckObjects=true",
        "-c", "init.defaultBranch=main",
        "-c", "advice.detachedHead=false",
    ]  # fmt: skip
    if git_dir is not None:
        config = ["--git-dir", str(git_dir), *config]
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(_EMPTY_HOME),
        "XDG_CONFIG_HOME": str(_EMPTY_HOME),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "LANG": "C",
        "LC_ALL": "C",
        **(env or {}),
    }
    returncode, out, err = await _run(
        ["git", *config, *args], cwd=cwd, env=full_env, stdin=stdin, timeout=timeout
    )
    if check and returncode != 0:
        stderr = err.decode(errors="replace")
        shown: Sequence[str] = args
        if redactor:
            stderr = redactor.text(stderr)
            shown = [redactor.text(arg) for arg in args]
        raise GitError(shown, returncode, stderr)
    return out.decode(errors="replace")


# Host git runs on its own few threads, not on the event loop: starting a process and reading
# its pipes there stalls every other run and viewer (bench/concurrent.py measured 740 ms p99).
# The pool's size also caps how many git processes share the CPUs at once, so a burst of runs
# queues for them instead of all slowing down together.
_POOL = ThreadPoolExecutor(max_workers=max(8, 4 * (os.cpu_count() or 1)), thread_name_prefix="git")


class _Cancelled(Exception):
    """The caller went away before git started."""


async def _run(
    argv: list[str], *, cwd: Path | None, env: dict[str, str], stdin: bytes | None, timeout: float
) -> tuple[int, bytes, bytes]:
    """Run `argv` on the pool; kill it when the caller is cancelled or `timeout` passes."""
    lock = threading.Lock()
    started: list[subprocess.Popen[bytes]] = []
    cancelled = False

    def run() -> tuple[int, bytes, bytes]:
        with lock:
            if cancelled:
                raise _Cancelled
            proc = subprocess.Popen(
                argv,
                cwd=str(cwd) if cwd else None,
                env=env,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                process_group=0,  # so a kill reaches its helpers (remote-https, index-pack)
            )
            started.append(proc)
        with proc:
            try:
                out, err = proc.communicate(stdin, timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.communicate()
                raise TimeoutError(f"git took longer than {timeout:g} s") from None
            return proc.returncode, out, err

    future = asyncio.get_running_loop().run_in_executor(_POOL, run)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with lock:
            cancelled = True
            if started:
                _kill_group(started[0])  # the thread then reaps it and ends
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        raise


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is not None:
        return  # reaped: its group id may belong to someone else by now
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
