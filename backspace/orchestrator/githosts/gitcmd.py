"""Host-side git, hardened: it never trusts configuration, hooks or transports it did not choose.

Every call runs with no system or user configuration (an empty HOME), hooks pointed at
/dev/null, no terminal prompt, only the protocols the caller allows, and argv lists (no shell).
Credentials, when a host needs them, come in through `env` only and are redacted from errors.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Mapping, Sequence
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
    proc = await asyncio.create_subprocess_exec(
        "git",
        *config,
        *args,
        cwd=str(cwd) if cwd else None,
        env=full_env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if check and proc.returncode != 0:
        stderr = err.decode(errors="replace")
        if redactor:
            stderr = redactor.text(stderr)
        raise GitError(args, proc.returncode or 0, stderr)
    return out.decode(errors="replace")
