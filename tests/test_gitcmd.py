"""Host git: a timeout or a cancel kills it with its children, and its errors are redacted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from backspace.orchestrator.githosts.gitcmd import GitError, git
from backspace.orchestrator.redact import Redactor


def running(marker: str) -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


async def gone(marker: str, within: float = 5) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not running(marker):
            return True
        await asyncio.sleep(0.05)
    return False


def hang(seconds: str) -> tuple[str, ...]:
    # A shell alias runs as git's child: a kill must reach it too.
    return ("-c", f"alias.hang=!sleep {seconds}; true", "hang")


async def test_stdout_comes_back_and_failures_are_redacted(tmp_path: Path) -> None:
    await git("init", "-q", str(tmp_path / "r"))
    assert (await git("rev-parse", "--is-inside-work-tree", cwd=tmp_path / "r")).strip() == "true"
    with pytest.raises(GitError) as failure:
        await git("checkout", "s3cr3t-branch", cwd=tmp_path / "r", redactor=Redactor(["s3cr3t"]))
    assert failure.value.returncode != 0
    assert "s3cr3t" not in str(failure.value) and "[REDACTED]" in str(failure.value)


async def test_a_timeout_kills_git_and_its_children(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await git(*hang("31.5"), cwd=tmp_path, timeout=0.5)
    assert time.monotonic() - started < 5
    assert await gone("sleep 31.5")


async def test_a_cancelled_caller_kills_git_and_its_children(tmp_path: Path) -> None:
    task = asyncio.create_task(git(*hang("32.5"), cwd=tmp_path))
    deadline = time.monotonic() + 5
    while not running("sleep 32.5"):
        assert time.monotonic() < deadline, "git never started"
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await gone("sleep 32.5")
