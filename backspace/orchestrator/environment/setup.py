"""The setup stage: the environment a run's agent starts with.

`Setup.plan` runs on the host before any sandbox exists: it reads the repository's file from the
base commit, cuts its network lists to the operator's ceiling, computes the cache key and looks
the layer up, so that the sandbox is created from it at once. `Setup.prepare` then runs in the
sandbox: from a cached layer only `maintenance` runs; otherwise `setup` runs with the setup
phase's network, its result is kept as a layer, and the paths it wrote in the work tree become
the run's environment paths, which are never part of the published change.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass
from pathlib import Path

from backspace.orchestrator.egress.gate import Phase
from backspace.orchestrator.egress.hosts import HostList
from backspace.orchestrator.environment.cache_key import cache_key
from backspace.orchestrator.environment.layer import Layer, LayerManifest, LayerStoreFull
from backspace.orchestrator.environment.policy import (
    EnvironmentPolicy,
    NetworkPlan,
    network_plan,
    verify_commands,
)
from backspace.orchestrator.environment.repo_file import (
    RepoEnvironment,
    parse_repo_file,
)
from backspace.orchestrator.environment.repo_reader import (
    key_files,
    read_repo_file,
    top_level_names,
)
from backspace.orchestrator.environment.starter import suggestion
from backspace.orchestrator.errors import RunFailure
from backspace.orchestrator.events import Stage
from backspace.orchestrator.githosts.base import ResolvedRepo
from backspace.orchestrator.run import RunContext
from backspace.orchestrator.sandboxes.base import ExecResult, Sandbox, SandboxProvider

MAX_ENVIRONMENT_PATHS = 500
OUTPUT_CHARS = 16000
STATUS = (
    "git -c core.fsmonitor=false -c core.hooksPath=/dev/null status --porcelain=v1 -z "
    "--untracked-files=normal --ignored=traditional"
)


@dataclass(frozen=True)
class EnvironmentPlan:
    repo: RepoEnvironment
    network: NetworkPlan
    verify: tuple[str, ...]
    key: str | None = None
    layer: Layer | None = None  # a cached layer to start from
    starter: str | None = None  # a suggested `.backspace.toml`, when the repository has none


@dataclass(frozen=True)
class Prepared:
    """The environment the agent starts with."""

    description: str  # "cached 0123456789ab", "set up afresh", "no setup"
    environment_paths: tuple[str, ...] = ()
    layer: Layer | None = None  # what a verification sandbox can start from
    ran: str | None = None  # the setup or maintenance command that ran, for the agent's prompt


class Setup:
    def __init__(self, sandboxes: SandboxProvider, policy: EnvironmentPolicy) -> None:
        self.sandboxes = sandboxes
        self.policy = policy

    async def plan(self, ctx: RunContext, git_dir: Path, repo: ResolvedRepo) -> EnvironmentPlan:
        data = await read_repo_file(git_dir, repo.base_sha)
        environment = parse_repo_file(data) if data is not None else RepoEnvironment()
        network = network_plan(environment, self.policy)
        for notice in network.notices():
            ctx.progress(ctx.stage, notice)
        verify = verify_commands(environment, self.policy)
        if not environment.present:
            names = await top_level_names(git_dir, repo.base_sha)
            return EnvironmentPlan(environment, network, verify, starter=suggestion(names))
        layers = self.sandboxes.layers
        if environment.setup is None or layers is None:
            return EnvironmentPlan(environment, network, verify)
        files = await key_files(git_dir, repo.base_sha, environment.cache_key)
        key = cache_key(
            backend=self.sandboxes.name,
            identity=layers.identity(),
            repository=f"{repo.ref.host}:{repo.ref.name}",
            setup=environment.setup,
            maintenance=environment.maintenance,
            setup_hosts=network.setup,
            files=files,
        )
        return EnvironmentPlan(environment, network, verify, key, await layers.find(key))

    async def prepare(
        self, ctx: RunContext, sandbox: Sandbox, plan: EnvironmentPlan, start: str
    ) -> Prepared:
        setup = plan.repo.setup
        if setup is None:
            return Prepared("no setup")
        if plan.layer is not None:
            short = plan.layer.key[:12]
            maintenance = plan.repo.maintenance
            ctx.progress(
                Stage.SETUP,
                f"Using the cached environment {short}"
                + ("; running maintenance" if maintenance else "; setup skipped"),
            )
            paths = set(plan.layer.manifest.environment_paths)
            if maintenance:
                await self.run_step(ctx, sandbox, maintenance, plan.network.setup, "maintenance")
                paths.update(await environment_paths(sandbox))
            return Prepared(f"cached {short}", tuple(sorted(paths)), plan.layer, maintenance)
        await self.run_step(ctx, sandbox, setup, plan.network.setup, "setup")
        written = await environment_paths(sandbox)
        layer = await self._save(ctx, sandbox, plan, start, written)
        return Prepared("set up afresh", written, layer, setup)

    async def run_step(
        self, ctx: RunContext, sandbox: Sandbox, command: str, hosts: HostList, what: str
    ) -> ExecResult:
        """Run setup or maintenance with the setup phase's network; a failure ends the run."""
        ctx.progress(Stage.SETUP, f"Running {what}: {_short(command)}")
        await sandbox.open_network(Phase.SETUP, hosts)
        try:
            result = await sandbox.exec(
                command, timeout=self.policy.setup_timeout, max_output=OUTPUT_CHARS
            )
        finally:
            await sandbox.open_network(Phase.SETUP, HostList())
        ctx.command_ran(command, result)
        seconds = result.duration_ms / 1000
        if result.timed_out:
            raise RunFailure(
                "setup_timed_out",
                f"{what} did not finish within {self.policy.setup_timeout:g} s "
                "(BACKSPACE_SETUP_TIMEOUT); make it faster or raise the limit",
            )
        if result.exit_code != 0:
            tail = result.output.strip()[-600:]
            raise RunFailure(
                "setup_failed",
                f"{what} failed (exit {result.exit_code}) after {seconds:.1f} s: {tail}",
            )
        ctx.progress(Stage.SETUP, f"{what.capitalize()} finished in {seconds:.1f} s")
        return result

    async def _save(
        self,
        ctx: RunContext,
        sandbox: Sandbox,
        plan: EnvironmentPlan,
        start: str,
        paths: tuple[str, ...],
    ) -> Layer | None:
        layers = self.sandboxes.layers
        if layers is None or plan.key is None:
            return None
        started = time.monotonic()
        try:
            layer = await layers.save(sandbox, LayerManifest(plan.key, start, paths))
        except LayerStoreFull as exc:
            ctx.progress(Stage.SETUP, f"The environment was not cached: {exc}")
            return None
        megabytes = layer.size_bytes / (1024 * 1024)
        ctx.progress(
            Stage.SETUP,
            f"Cached the environment {layer.key[:12]} ({megabytes:.0f} MB) "
            f"in {time.monotonic() - started:.1f} s",
        )
        return layer


async def environment_paths(sandbox: Sandbox) -> tuple[str, ...]:
    """The work-tree paths that are not the checkout: what setup (or maintenance) wrote."""
    result = await sandbox.exec(STATUS, timeout=120, max_output=1_000_000)
    if result.exit_code != 0 or result.truncated:
        raise RunFailure(
            "setup_failed",
            f"could not list what setup wrote in the work tree: {result.output[-300:]}",
        )
    paths = parse_status(result.output)
    if len(paths) > MAX_ENVIRONMENT_PATHS:
        raise RunFailure(
            "setup_failed",
            f"setup wrote {len(paths)} separate paths in the work tree (at most "
            f"{MAX_ENVIRONMENT_PATHS}): keep what it installs in a few directories",
        )
    return paths


def parse_status(output: str) -> tuple[str, ...]:
    """Paths from `git status --porcelain=v1 -z`, checked to be inside the work tree."""
    fields = output.split("\0")
    paths: set[str] = set()
    index = 0
    while index < len(fields):
        entry = fields[index]
        index += 1
        if len(entry) < 4 or entry[2] != " ":
            continue
        names = [entry[3:]]
        if entry[0] in "RC" and index < len(fields):
            names.append(fields[index])
            index += 1
        for name in names:
            path = name.rstrip("/")
            normal = posixpath.normpath(path)
            if path and not normal.startswith(("/", "../")) and normal not in (".", ".."):
                paths.add(normal)
    return tuple(sorted(paths))


def exclusion_pathspecs(paths: tuple[str, ...]) -> list[str]:
    """Pathspecs that leave the environment paths out of `git add`."""
    return [f":(top,literal,exclude){path}" for path in paths]


def _short(command: str, limit: int = 120) -> str:
    one = " ".join(command.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"
