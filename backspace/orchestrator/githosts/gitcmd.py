"""Host-side git, hardened: it never trusts configuration, hooks or transports it did not choose.

Every call runs with no system or user configuration (an empty HOME), hooks pointed at
/dev/null, no terminal prompt, only the protocols the caller allows, and argv lists (no shell).
A bare repository is only used when named with --git-dir (safe.bareRepository=explicit), so a
directory shaped like one inside some work tree is never picked up. Objects received are fsck'd,
with the path checks (`.git`, `..` in a tree) as errors. Output can be capped: git is killed at
the cap, so a huge diff never reaches memory. Credentials, when a host needs them, come in
through `env` only and are redacted from errors.
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
from typing import TypedDict, Unpack

from backspace.orchestrator.errors import GitError as GitError
from backspace.orchestrator.redact import Redactor

_EMPTY_HOME = Path(tempfile.gettempdir()) / "backspace-git-home"
_STDERR_LIMIT = 64 * 1024
_CHUNK = 64 * 1024

# fsck findings that are only warnings by default but name paths a checkout would trip over.
FSCK_ERRORS = (
    "hasDot", "hasDotdot", "hasDotgit", "fullPathname", "emptyName", "zeroPaddedFilemode",
    "badFilemode", "nulInHeader", "badTimezone", "missingSpaceBeforeDate",
)  # fmt: skip


class GitOptions(TypedDict, total=False):
    """What `git` takes besides its arguments: the keywords of `git_capped` but the cap."""

    cwd: Path | None
    git_dir: Path | None
    env: Mapping[str, str] | None
    stdin: bytes | None
    stdin_path: Path | None
    stdin_offset: int
    allow_file: bool
    allow_http: bool
    redactor: Redactor | None
    timeout: float
    check: bool


async def git(*args: str, **options: Unpack[GitOptions]) -> str:
    """Run git and return its stdout; raise GitError (redacted) on failure."""
    out, _ = await git_capped(*args, limit=None, **options)
    return out


async def git_capped(
    *args: str,
    limit: int | None,
    cwd: Path | None = None,
    git_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    stdin_path: Path | None = None,
    stdin_offset: int = 0,
    allow_file: bool = False,
    allow_http: bool = False,
    redactor: Redactor | None = None,
    timeout: float = 300.0,
    check: bool = True,
) -> tuple[str, bool]:
    """Like `git`, reading at most `limit` bytes of stdout: (output, whether it was cut).

    When the output reaches the limit, git is killed and its exit status is not checked.
    `stdin_path` is streamed to git from `stdin_offset` on (a bundle's pack, past its header).
    """
    _EMPTY_HOME.mkdir(mode=0o700, exist_ok=True)
    config = [
        "-c", "core.hooksPath=/dev/null",
        "-c", "core.fsmonitor=false",
        "-c", "protocol.allow=never",
        "-c", "protocol.https.allow=always",
        "-c", f"protocol.file.allow={'always' if allow_file else 'never'}",
        "-c", f"protocol.http.allow={'always' if allow_http else 'never'}",
        "-c", "transfer.fsckObjects=true",
        "-c", "safe.bareRepository=explicit",
        *[item for msg in FSCK_ERRORS for item in ("-c", f"fetch.fsck.{msg}=error")],
        *[item for msg in FSCK_ERRORS for item in ("-c", f"receive.fsck.{msg}=error")],
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
    returncode, out, err, cut = await _run(
        ["git", *config, *args], cwd=cwd, env=full_env, stdin=stdin, stdin_path=stdin_path,
        stdin_offset=stdin_offset, timeout=timeout, limit=limit,
    )  # fmt: skip
    if check and returncode != 0 and not cut:
        stderr = err.decode(errors="replace")
        shown: Sequence[str] = args
        if redactor:
            stderr = redactor.text(stderr)
            shown = [redactor.text(arg) for arg in args]
        raise GitError(shown, returncode, stderr)
    return out.decode(errors="replace"), cut


# Host git runs on its own few threads, not on the event loop: starting a process and reading
# its pipes there stalls every other run and viewer (bench/concurrent.py measured 740 ms p99).
# The pool's size also caps how many git processes share the CPUs at once, so a burst of runs
# queues for them instead of all slowing down together.
_POOL = ThreadPoolExecutor(max_workers=max(8, 4 * (os.cpu_count() or 1)), thread_name_prefix="git")


class _Cancelled(Exception):
    """The caller went away before git started."""


async def _run(
    argv: list[str],
    *,
    cwd: Path | None,
    env: dict[str, str],
    stdin: bytes | None,
    stdin_path: Path | None,
    stdin_offset: int,
    timeout: float,
    limit: int | None,
) -> tuple[int, bytes, bytes, bool]:
    """Run `argv` on the pool; kill it when the caller is cancelled, `timeout` passes or its
    output reaches `limit` bytes (then the output so far, cut at the limit, and True)."""
    lock = threading.Lock()
    started: list[subprocess.Popen[bytes]] = []
    cancelled = False

    def run() -> tuple[int, bytes, bytes, bool]:
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(stdin_path.open("rb")) if stdin_path else None
            if source is not None:
                source.seek(stdin_offset)  # git inherits the descriptor at this position
            with lock:
                if cancelled:
                    raise _Cancelled
                proc = subprocess.Popen(
                    argv,
                    cwd=str(cwd) if cwd else None,
                    env=env,
                    stdin=source or (subprocess.PIPE if stdin is not None else subprocess.DEVNULL),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    process_group=0,  # so a kill reaches its helpers (remote-https, index-pack)
                )
                started.append(proc)
            with proc:
                return _collect(proc, stdin, timeout, limit)

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


def _collect(
    proc: subprocess.Popen[bytes], stdin: bytes | None, timeout: float, limit: int | None
) -> tuple[int, bytes, bytes, bool]:
    """Read stdout in chunks up to `limit`, stderr (its head) on a helper thread, feed stdin."""
    assert proc.stdout is not None and proc.stderr is not None
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        _kill_group(proc)

    err = bytearray()

    def read_stderr() -> None:
        assert proc.stderr is not None
        while chunk := proc.stderr.read(_CHUNK):
            if len(err) < _STDERR_LIMIT:
                err.extend(chunk[: _STDERR_LIMIT - len(err)])

    def write_stdin() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.write(stdin or b"")
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.close()

    helpers = [threading.Thread(target=read_stderr, daemon=True)]
    if stdin is not None and proc.stdin is not None:
        helpers.append(threading.Thread(target=write_stdin, daemon=True))
    timer = threading.Timer(timeout, on_timeout)
    timer.daemon = True
    for helper in helpers:
        helper.start()
    timer.start()
    out = bytearray()
    cut = False
    try:
        while chunk := os.read(proc.stdout.fileno(), _CHUNK):
            out.extend(chunk)
            if limit is not None and len(out) >= limit:
                del out[limit:]
                cut = True
                _kill_group(proc)
                break
        proc.wait()
        for helper in helpers:
            helper.join()
    finally:
        timer.cancel()
    if timed_out.is_set():
        raise TimeoutError(f"git took longer than {timeout:g} s")
    return proc.returncode, bytes(out), bytes(err), cut


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is not None:
        return  # reaped: its group id may belong to someone else by now
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
