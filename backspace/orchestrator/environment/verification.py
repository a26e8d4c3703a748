"""The verifying stage: backspace runs the verify commands itself, where the agent cannot reach.

A fresh sandbox starts from the cached layer (or sets the environment up again when there is no
layer), checks out exactly the published tree (its id is compared), and runs each command with
the agent's network policy. Nothing the agent did to its own sandbox, its environment included,
is there. The result is a Receipt; a failure does not end the run: the pull request opens as a
draft that says so.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from pathlib import Path

from backspace.orchestrator.egress.gate import Gate, Phase
from backspace.orchestrator.environment.receipt import CommandReceipt, Receipt
from backspace.orchestrator.environment.setup import EnvironmentPlan, Prepared, Setup
from backspace.orchestrator.errors import BackspaceError, RunFailure
from backspace.orchestrator.events import Stage
from backspace.orchestrator.family import BRANCH_REF
from backspace.orchestrator.githosts.base_payload import BasePayload, place
from backspace.orchestrator.run import RunContext
from backspace.orchestrator.sandboxes.base import VERIFY_SUFFIX, Sandbox, SandboxProvider

OUTPUT_CHARS = 16000


def verify_sandbox_name(run_id: str) -> str:
    """The verification sandbox's name: the run's own, so the orphan sweep knows its run."""
    return run_id + VERIFY_SUFFIX


class Verification:
    def __init__(self, sandboxes: SandboxProvider, setup: Setup) -> None:
        self.sandboxes = sandboxes
        self.setup = setup

    async def run(
        self,
        ctx: RunContext,
        *,
        plan: EnvironmentPlan,
        prepared: Prepared,
        base: BasePayload,
        change_bundle: Path,
        tree: str,
        gate: Gate,
        branch_bundle: Path | None = None,
    ) -> Receipt:
        """`branch_bundle`: a follow-up's commits between the base payload and the change."""
        environment = prepared.description if prepared.layer else "set up afresh for verification"
        if plan.repo.setup is None:
            environment = "no setup"
        receipt = Receipt(environment=environment, tree=tree)
        ctx.progress(Stage.VERIFYING, "Verifying the change in a fresh sandbox")
        sandbox = await self.sandboxes.create(
            verify_sandbox_name(ctx.run_id), layer=prepared.layer, gate=gate
        )
        try:
            layer = prepared.layer
            layer_base = layer.manifest.base_sha if layer is not None else None
            await self._check_out(
                ctx, sandbox, base, change_bundle, tree, layer_base, branch_bundle
            )
            if prepared.layer is None and plan.repo.setup is not None:
                try:
                    await self.setup.run_step(
                        ctx, sandbox, plan.repo.setup, plan.network.setup, "setup"
                    )
                except RunFailure as exc:  # the receipt says it; the PR still opens, as a draft
                    receipt.problem = f"setting the environment up again failed: {exc.message}"
                    return receipt
            await sandbox.open_network(Phase.VERIFY, plan.network.agent)
            for command in plan.verify:
                receipt.commands.append(await self._command(ctx, sandbox, command, receipt))
        finally:
            receipt.blocked = [b for b in gate.blocked if b.phase is Phase.VERIFY]
            await asyncio.shield(sandbox.close())
        verdict = "passed" if receipt.passed else "FAILED: the pull request opens as a draft"
        ctx.progress(Stage.VERIFYING, f"Verification {verdict}")
        return receipt

    async def _check_out(
        self,
        ctx: RunContext,
        sandbox: Sandbox,
        base: BasePayload,
        change: Path,
        tree: str,
        layer_base: str | None,
        branch: Path | None,
    ) -> None:
        q = shlex.quote
        base_remote = f"{sandbox.tmpdir}/backspace-{ctx.run_id[:8]}-verify-base.tar"
        change_remote = f"{sandbox.tmpdir}/backspace-{ctx.run_id[:8]}-verify-change.bundle"
        branch_remote = f"{sandbox.tmpdir}/backspace-{ctx.run_id[:8]}-verify-branch.bundle"
        await place(sandbox, base, base_remote, layer_base=layer_base)
        fetch_branch = ""
        if branch is not None:
            await sandbox.upload(branch, branch_remote)
            fetch_branch = (
                f"git fetch --quiet --no-tags {q(branch_remote)} {BRANCH_REF} "
                f"&& rm -f {q(branch_remote)} && "
            )
        await sandbox.upload(change, change_remote)
        result = await sandbox.exec(
            f"{fetch_branch}git fetch --quiet --no-tags {q(change_remote)} refs/heads/backspace "
            f"&& git -c core.hooksPath=/dev/null checkout --quiet --force --detach FETCH_HEAD "
            f"&& rm -f {q(change_remote)} && git rev-parse 'HEAD^{{tree}}'",
            timeout=600,
            max_output=4000,
        )
        found = result.output.split()[-1] if result.output.split() else ""
        if result.exit_code != 0 or found != tree:
            raise RunFailure(
                "tree_changed",
                "the verification sandbox could not check out the published tree "
                f"(got {found[:12] or 'nothing'}, expected {tree[:12]}); nothing was published",
            )

    async def _command(
        self, ctx: RunContext, sandbox: Sandbox, command: str, receipt: Receipt
    ) -> CommandReceipt:
        timeout = min(self.setup.policy.verify_timeout, max(1.0, ctx.deadline - time.monotonic()))
        ctx.progress(Stage.VERIFYING, f"Running {command}")
        try:
            result = await sandbox.exec(command, timeout=timeout, max_output=OUTPUT_CHARS)
        except BackspaceError as exc:
            receipt.problem = f"the sandbox failed while running {command}: {exc.message}"
            return CommandReceipt(command, -1, 0, False, "")
        if result.timed_out:
            receipt.limits.append(f"`{command}` was stopped after {timeout:g} s")
        if result.truncated:
            receipt.limits.append(f"the output of `{command}` was cut to {OUTPUT_CHARS} characters")
        ctx.command_ran(command, result)
        return CommandReceipt(
            command, result.exit_code, result.duration_ms, result.timed_out, result.output[-1500:]
        )
