"""Starting a local sandbox from a set-up layer, against an empty one plus a clone.

    uv run python -m bench.layers [--starts 10] [--files 5000] [--layer-mb 200] [--repo-mb 4]

The layer (FILES files, LAYER_MB in all, random bytes) is made by a real sandbox and saved by
`LocalLayerStore.save`; each start is `create(run_id, layer=L)` until `true` exits in it. The
baseline is what a run without a layer pays: `create(run_id)`, then the pipeline's clone
(`git bundle create` of the base branch on the host, upload, `git init && git fetch && git
reset --hard` in the sandbox) of a repository of FILES tracked files, REPO_MB in all. Closing
a sandbox is not timed. As root, layers are overlays (no copy); otherwise they are copied in.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from backspace.orchestrator.environment.layer import Layer, LayerManifest
from backspace.orchestrator.environment.local_layers import LocalLayerStore
from backspace.orchestrator.sandboxes.local import LocalSandboxProvider
from bench.common import GIT_ENV, print_table, summary


def make_repo(path: Path, files: int, megabytes: float) -> Path:
    """A repository of `files` tracked text files, `megabytes` in all, in 50 directories."""
    size = max(1, int(megabytes * 1024 * 1024 / files))
    line = "x = 'a line of ordinary source code'\n"
    text = (line * (size // len(line) + 1))[:size]
    for i in range(files):
        target = path / f"pkg{i % 50}" / f"mod{i}.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"# {i}\n{text}")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "base"]):
        subprocess.run(["git", *args], cwd=path, env=GIT_ENV, check=True)
    return path


async def make_layer(
    provider: LocalSandboxProvider, store: LocalLayerStore, files: int, megabytes: int
) -> tuple[Layer, float]:
    """The layer, and how long `save` took (cp -a of the work tree and home, then rename)."""
    sandbox = await provider.create(f"bench-setup-{uuid.uuid4().hex[:8]}")
    try:
        chunk = max(1, megabytes * 1024 * 1024 // files)
        result = await sandbox.exec(
            f"mkdir -p .venv/lib && cd .venv/lib && head -c {megabytes}M /dev/urandom "
            f"| split -b {chunk} -a 5 -d - f && ls | wc -l",
            timeout=600,
        )
        assert result.exit_code == 0, result.output
        key = uuid.uuid4().hex
        begin = time.perf_counter()
        layer = await store.save(sandbox, LayerManifest(key, "0" * 40, (".venv",)))
        return layer, time.perf_counter() - begin
    finally:
        await sandbox.close()


async def start_from_layer(provider: LocalSandboxProvider, layer: Layer) -> float:
    begin = time.perf_counter()
    sandbox = await provider.create(f"bench-{uuid.uuid4().hex[:8]}", layer=layer)
    try:
        result = await sandbox.exec("true")
        elapsed = time.perf_counter() - begin
        assert result.exit_code == 0, result.output
        return elapsed
    finally:
        await sandbox.close()


async def start_and_clone(provider: LocalSandboxProvider, repo: Path, scratch: Path) -> float:
    """An empty sandbox, then pipeline._clone's steps for `repo`."""
    begin = time.perf_counter()
    sandbox = await provider.create(f"bench-{uuid.uuid4().hex[:8]}")
    try:
        bundle = scratch / f"{uuid.uuid4().hex}.bundle"
        done = await asyncio.create_subprocess_exec(
            "git", "bundle", "create", "--quiet", str(bundle), "refs/heads/main",
            cwd=repo, env=GIT_ENV,
        )  # fmt: skip
        assert await done.wait() == 0
        remote = f"{sandbox.tmpdir}/base.bundle"
        await sandbox.upload(bundle, remote)
        q = shlex.quote
        result = await sandbox.exec(
            "git init --quiet -b main . "
            f"&& git fetch --quiet --no-tags --update-head-ok {q(remote)} "
            "refs/heads/main:refs/heads/main "
            f"&& git reset --quiet --hard && rm -f {q(remote)}",
            timeout=600,
        )
        elapsed = time.perf_counter() - begin
        assert result.exit_code == 0, result.output
        bundle.unlink()
        return elapsed
    finally:
        await sandbox.close()


async def measure(args: argparse.Namespace, work: Path) -> dict[str, float]:
    provider = LocalSandboxProvider(
        work / "root", layers=LocalLayerStore(work / "cache", limit_mb=4 * args.layer_mb)
    )
    usable, message = provider.check()
    if not usable:
        raise SystemExit(message)
    store = provider.layers
    assert isinstance(store, LocalLayerStore)
    overlaid = "layers" not in provider.limits_report()["degraded"]
    layer, saved = await make_layer(provider, store, args.files, args.layer_mb)
    repo = make_repo(work / "repo", args.files, args.repo_mb)
    scratch = work / "scratch"
    scratch.mkdir()
    await start_from_layer(provider, layer)  # warm: page cache, seccomp filter
    await start_and_clone(provider, repo, scratch)
    layered, cloned = [], []
    for _ in range(args.starts):
        layered.append(await start_from_layer(provider, layer))
        cloned.append(await start_and_clone(provider, repo, scratch))
    lay, clone = summary(layered), summary(cloned)
    rows = [
        (
            f"from a layer ({args.files} files, {layer.size_bytes / 2**20:.0f} MB, "
            f"{'overlay' if overlaid else 'copied'})",
            *(f"{lay[k] * 1000:.0f}" for k in ("p50", "p90", "mean")),
        ),
        (
            f"empty + clone ({args.files} files, {args.repo_mb:g} MB)",
            *(f"{clone[k] * 1000:.0f}" for k in ("p50", "p90", "mean")),
        ),
    ]
    print_table(
        f"create until `true` exits, {args.starts} starts each (ms)",
        rows,
        ("start", "p50", "p90", "mean"),
    )
    ratio = lay["p50"] / clone["p50"]
    print(f"saving the layer took {saved:.2f} s (once per cache key)")
    print(f"layer start p50 / empty start + clone p50: {ratio:.2f}x (target <= 1.5x, <= 1 s)")
    return {"save_s": saved, "layer_p50_s": lay["p50"], "clone_p50_s": clone["p50"], "ratio": ratio}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--layer-mb", type=int, default=200)
    parser.add_argument("--repo-mb", type=float, default=4)
    args = parser.parse_args(argv)
    parent = Path(tempfile.mkdtemp(prefix="backspace-bench-layers-"))
    parent.chmod(0o711)  # as root, sandboxes run as nobody, who must reach the root
    try:
        return asyncio.run(measure(args, parent))
    finally:
        shutil.rmtree(parent, ignore_errors=True)
        if os.path.exists(parent):
            print(f"left behind: {parent}")


if __name__ == "__main__":
    main()
