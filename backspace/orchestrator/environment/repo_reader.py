"""Reading the base commit on the host, before any sandbox exists: the repository's
`.backspace.toml` and the blobs of its `cache_key` files.

Both are read from the host's git objects of the base commit (plumbing only, size-capped), so
the sandbox can be created from the right cached environment at once, and nothing a sandbox
command did can change what keys the cache.
"""

from __future__ import annotations

from pathlib import Path

import pathspec

from backspace.orchestrator.environment.repo_file import FILE_NAME, MAX_BYTES
from backspace.orchestrator.errors import GitError
from backspace.orchestrator.githosts.gitcmd import git, git_capped

TREE_LISTING_LIMIT = 64 * 1024 * 1024  # `ls-tree -r` of a very large repository


async def read_repo_file(git_dir: Path, commit: str) -> bytes | None:
    """The base commit's `.backspace.toml` (at most MAX_BYTES + 1 bytes), or None."""
    try:
        kind = (await git("cat-file", "-t", f"{commit}:{FILE_NAME}", git_dir=git_dir)).strip()
    except GitError:
        return None
    if kind != "blob":
        return None
    text, _ = await git_capped(
        "cat-file", "blob", f"{commit}:{FILE_NAME}", limit=MAX_BYTES + 1, git_dir=git_dir
    )
    return text.encode()


async def key_files(git_dir: Path, commit: str, patterns: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path, blob id) of every file of the base commit that a `cache_key` pattern matches
    (patterns as in .gitignore), sorted: their content is what the blob ids name."""
    if not patterns:
        return []
    spec = pathspec.PathSpec.from_lines("gitwildmatch", patterns)
    listing, _ = await git_capped(
        "ls-tree", "-r", "-z", "--full-tree", commit, limit=TREE_LISTING_LIMIT, git_dir=git_dir
    )
    found = []
    for entry in listing.split("\0"):
        meta, _, path = entry.partition("\t")
        parts = meta.split()
        if len(parts) == 3 and parts[1] == "blob" and spec.match_file(path):
            found.append((path, parts[2]))
    return sorted(found)


async def top_level_names(git_dir: Path, commit: str) -> set[str]:
    """The names at the root of the base commit (to guess its ecosystem)."""
    listing, _ = await git_capped(
        "ls-tree", "-z", "--name-only", commit, limit=1024 * 1024, git_dir=git_dir
    )
    return {name for name in listing.split("\0") if name}
