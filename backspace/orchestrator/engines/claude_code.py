"""Claude Code as an engine: the real CLI, non-interactive, inside the run's sandbox.

The CLI never holds the model key. Its ANTHROPIC_BASE_URL is the sandbox's loopback end of the
model gateway (backspace/orchestrator/gateway), relayed to this run's socket; its key is a
placeholder the gateway replaces with the real one on the host. The gateway counts spend and
refuses requests past the run's budget, which the CLI reports as an API error: the run ends
`cost_limit`. Everything else the CLI would reach (telemetry, updates, other hosts) goes to
the sandbox's egress door through the proxy variables, which refuses it and reports
`network_blocked`; the variables below also turn that traffic off.

On Daytona the sandbox runs on another machine, so it gets no socket: the engine is made with
`public_url` (BACKSPACE_PUBLIC_URL), the lease listens on a socket only this host sees, and for
the agent stage only the run is granted a capability: the CLI's ANTHROPIC_BASE_URL is
`<public_url>/gateway/<capability>` (backspace/http/model_gateway.py relays it to the lease).
The capability is revoked when the CLI ends; the CLI itself comes from a Daytona snapshot
(sandboxes/daytona_tools.py), at the path the sandbox names (`claude_code_binary`).

The CLI runs as one sandboxed command (`Sandbox.exec`), its output streamed line by line into
events (claude_stream.py). The run's wall clock is that command's timeout, and a cancelled run
cancels the command, whose whole process group (bubblewrap's PID namespace) is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backspace.orchestrator.agent import AgentLimits, AgentResult, ModelError
from backspace.orchestrator.engines import pr_summary
from backspace.orchestrator.engines.base import EngineJob, EngineRun
from backspace.orchestrator.engines.claude_cli import ClaudeCli
from backspace.orchestrator.engines.claude_stream import ClaudeStream
from backspace.orchestrator.errors import RunFailure
from backspace.orchestrator.events import EventType, Stage
from backspace.orchestrator.gateway import GatewayLease, ModelGateway
from backspace.orchestrator.run import RunContext

GATEWAY_URL = "http://127.0.0.1:3129"  # the sandbox's end of the model gateway
PLACEHOLDER_KEY = "backspace-gateway-placeholder"  # what the sandbox holds instead of a key
TOOLS = ("Bash", "Read", "Edit", "Write", "Glob", "Grep")  # no web, no subagents, no MCP
FINISH_LINE = "Make the change described in <task>, then call `finish`."  # prompts.first_message
OUTPUT_KEPT = 64_000  # of the CLI's raw output, for a failure's explanation
QUIET = {
    # No traffic but the model: no telemetry, error reports, feature flags, update checks.
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "CLAUDE_CODE_ENABLE_TELEMETRY": "0",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_UPDATES": "1",
    "DISABLE_GROWTHBOOK": "1",
    "DISABLE_INSTALLATION_CHECKS": "1",
    "DISABLE_BUG_COMMAND": "1",
    "DISABLE_COST_WARNINGS": "1",
}
STATUS_ERRORS = {
    401: "model_auth",
    403: "model_permission",
    404: "model_not_found",
    413: "model_request_too_large",
    429: "model_rate_limited",
    529: "model_overloaded",
}


class ClaudeCode:
    name = "claude-code"

    def __init__(
        self,
        cli: ClaudeCli,
        gateway: ModelGateway | None,
        *,
        model: str,
        retries: int = 4,
        owner_uid: int | None = None,
        public_url: str | None = None,
    ) -> None:
        self.cli = cli
        self.gateway = gateway
        self.model = model
        self.retries = retries
        self.owner_uid = owner_uid  # who may connect to the gateway's socket (the sandbox user)
        # Set for remote sandboxes (Daytona): the gateway is reached over the network there.
        self.public_url = public_url.rstrip("/") if public_url else None

    def check(self) -> tuple[bool, str]:
        usable, message = self.cli.check()
        if usable and self.gateway is None:
            return False, (
                f"{message}; but this server has no model gateway (it needs the local sandbox: "
                "BACKSPACE_SANDBOX=local)"
            )
        if usable and self.public_url is not None:
            where = urlsplit(self.public_url).hostname or ""
            message += (
                f"; on Daytona: from a snapshot, reaching the model gateway at {self.public_url}"
                "/gateway/<capability>"
            )
            if where in ("127.0.0.1", "localhost", "::1"):
                message += (
                    " (a loopback address: a remote sandbox cannot reach it; set "
                    "BACKSPACE_PUBLIC_URL to an address Daytona's sandboxes can reach)"
                )
        return usable, message

    async def start(
        self, ctx: RunContext, limits: AgentLimits, cleanup: contextlib.AsyncExitStack
    ) -> EngineRun:
        usable, message = self.check()
        if not usable or self.gateway is None:
            raise RunFailure("engine_unavailable", f"The claude-code engine cannot run: {message}")
        remote = self.public_url is not None
        # The socket's directory: the sandbox user may pass through it, not list it (remote:
        # nobody but this server, which relays the network entry to it).
        directory = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="backspace-model-"))
        cleanup.push_async_callback(asyncio.to_thread, shutil.rmtree, directory, True)
        await asyncio.to_thread(os.chmod, directory, 0o700 if remote else 0o711)
        socket_path = directory / "model.sock"
        lease = await self.gateway.open(
            ctx.run_id,
            budget_usd=limits.max_cost_usd,
            emit=ctx.emit,
            socket_path=socket_path,
            owner_uid=None if remote else self.owner_uid,
        )
        cleanup.push_async_callback(lease.close)
        if remote:
            return ClaudeCodeRun(
                self, lease, {"model_url": self.public_url, "claude_code": self.cli}
            )
        return ClaudeCodeRun(self, lease, {"gateway": socket_path})


class ClaudeCodeRun:
    def __init__(self, engine: ClaudeCode, lease: GatewayLease, options: Mapping[str, Any]) -> None:
        self.engine = engine
        self.lease = lease
        self.sandbox_options = options

    async def run(self, job: EngineJob) -> AgentResult:
        sandbox, limits = job.sandbox, job.limits
        if getattr(sandbox, "isolated", True) is False:
            raise RunFailure(
                "engine_unavailable",
                "The claude-code engine needs an isolated sandbox; this server runs commands "
                "unsandboxed (BACKSPACE_ALLOW_UNSANDBOXED), where the CLI could read its files",
            )
        version = self.engine.cli.version
        job.emit(
            EventType.PROGRESS,
            {
                "stage": Stage.AGENT,
                "message": f"Claude Code {version} is working (engine claude-code)",
                "percentage": Stage.AGENT.percentage,
            },
        )
        stream = ClaudeStream(
            job.emit,
            workdir=sandbox.workdir,
            max_turns=limits.max_turns,
            usage=lambda: self.lease.usage.to_event(),
        )
        timeout = 24 * 3600.0
        if limits.deadline is not None:
            timeout = max(1.0, limits.deadline - time.monotonic())
        gateway, public_url = self.engine.gateway, self.engine.public_url
        token: str | None = None
        base_url, binary, home = GATEWAY_URL, self.engine.cli.sandbox_binary, None
        if public_url is not None and gateway is not None:
            # The capability lives as long as the CLI's command: granted now, revoked after.
            token = gateway.grant(self.lease)
            base_url = f"{public_url}/gateway/{token}"
            binary = getattr(sandbox, "claude_code_binary", None) or binary
            home = getattr(sandbox, "home", None)
        claude_home = (
            f"{home}/.claude-home-{self.lease.run_id[:12]}"
            if home
            else f"{sandbox.tmpdir}/claude-home"
        )
        try:
            done = await sandbox.exec(
                self._command(
                    sandbox.workdir,
                    claude_home,
                    limits,
                    job.environment,
                    base_url=base_url,
                    binary=binary,
                ),
                cwd=sandbox.workdir,
                timeout=timeout,
                max_output=OUTPUT_KEPT,
                stdin=_first_message(job.first_message).encode(),
                on_output=stream.feed,
            )
        finally:
            if token is not None and gateway is not None:
                gateway.revoke(token)
        stream.close()
        result = await self._result(job, stream, done.exit_code, done.timed_out)
        # The PR body says which engine made the change.
        footer = f"_Engine: Claude Code {version} (`claude-code`)._"
        result.body = f"{result.body.rstrip()}\n\n{footer}" if result.body else footer
        return result

    def _command(
        self,
        workdir: str,
        home: str,
        limits: AgentLimits,
        environment: str,
        *,
        base_url: str,
        binary: str,
    ) -> str:
        """The CLI's command line: its home in the sandbox (gone with it), the gateway and a
        placeholder key, the prompt on stdin."""
        env = {
            "HOME": home,
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": PLACEHOLDER_KEY,
            "CLAUDE_CODE_MAX_RETRIES": str(self.engine.retries),
            # It is one: without this the CLI refuses --dangerously-skip-permissions as root
            # (a Daytona sandbox's user may be root).
            "IS_SANDBOX": "1",
            **QUIET,
        }
        argv = [
            binary,
            "-p",
            "--output-format=stream-json",
            "--verbose",
            f"--model={self.engine.model}",
            f"--max-turns={limits.max_turns}",
            f"--tools={','.join(TOOLS)}",
            f"--allowedTools={','.join(TOOLS)}",
            "--dangerously-skip-permissions",  # the sandbox is the boundary; nobody is asked
            "--no-session-persistence",
            "--strict-mcp-config",
            "--append-system-prompt",
            pr_summary.instructions(workdir, environment),
        ]
        assignments = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
        return (
            f"mkdir -p -- {shlex.quote(home)} && cd -- {shlex.quote(workdir)} && "
            f"exec env {assignments} {shlex.join(argv)}"
        )

    async def _result(
        self, job: EngineJob, stream: ClaudeStream, exit_code: int, timed_out: bool
    ) -> AgentResult:
        limits = job.limits
        usage = replace(self.lease.usage)
        final = stream.result or {}
        turns = int(final.get("num_turns") or stream.turns)
        spent = self.lease.spent_usd

        def ended(outcome: Any, message: str) -> AgentResult:
            return AgentResult(outcome=outcome, turns=turns, usage=usage, message=message)

        if self.lease.exceeded:
            return ended(
                "cost_limit",
                f"the spend limit was reached (${spent:.2f} of ${limits.max_cost_usd:.2f}); "
                "the model gateway refused further model calls",
            )
        if timed_out:
            return ended("ended", "the run's time ran out while Claude Code worked")
        if not final:
            noise = " | ".join(stream.noise) or "no output"
            raise RunFailure(
                "engine_failed",
                f"Claude Code ended (exit code {exit_code}) without a result: {noise[-1500:]}",
            )
        if final.get("subtype") == "error_max_turns" or final.get("terminal_reason") == "max_turns":
            return ended("turn_limit", f"the turn limit was reached ({limits.max_turns} turns)")
        status = final.get("api_error_status")
        if final.get("terminal_reason") == "api_error" or status:
            raise _model_error(final, self.engine.retries)
        if final.get("is_error"):
            detail = str(final.get("result") or final.get("errors") or final.get("subtype"))
            raise RunFailure("engine_failed", f"Claude Code failed: {detail[:1500]}")
        last = str(final.get("result") or stream.last_text)
        summary = pr_summary.parse(last)
        if summary is None:
            changed = await job.sandbox.exec(
                "git status --short | head -n 100", timeout=30, max_output=8000
            )
            job.emit(
                EventType.PROGRESS,
                {
                    "stage": Stage.AGENT,
                    "message": "Claude Code gave no PR summary: asking the model for one",
                    "percentage": 80,
                },
            )
            summary = await pr_summary.summarise(job.model, last, changed.output, usage)
        result = ended("finished", "Claude Code finished")
        if summary is not None:
            result.title, result.body = summary.title, summary.body
        return result


def _first_message(text: str) -> str:
    """Our first message, whose last line tells our loop to call `finish`: Claude Code has no
    such tool; it ends with the summary block its system prompt describes instead."""
    return text.replace(
        FINISH_LINE,
        "Make the change described in <task>, then end with the PR title and body block.",
    )


def _model_error(final: dict[str, Any], retries: int) -> ModelError:
    status = final.get("api_error_status")
    detail = str(final.get("result") or final.get("api_error_type") or "")[:1000]
    code = "model_error"
    if isinstance(status, int):
        code = STATUS_ERRORS.get(status, "model_unavailable" if status >= 500 else "model_error")
    return ModelError(
        code,
        f"the model call failed in Claude Code after its {retries} retries "
        f"(HTTP {status or '?'}): {detail}",
        retryable=isinstance(status, int) and (status >= 500 or status == 429),
        attempts=retries + 1,
    )
