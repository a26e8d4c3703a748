"""The verification receipt: what backspace itself ran on the published tree, and how it went.

It goes into the pull request body, the `verification` event and Slack. Every command, its exit
code, duration and the tail of its output; the network attempts that were refused; the limits
that fired; the run's cost. Command text and output come from the repository and its tests:
they are made inert (sanitiser.py) and fenced so that nothing in them can end the fence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backspace.orchestrator.egress.gate import BlockedAttempt, Phase
from backspace.orchestrator.sanitiser import sanitise

if TYPE_CHECKING:
    from backspace.orchestrator.environment.setup import EnvironmentPlan, Prepared

TAIL_CHARS = 1500
SHOWN_BLOCKED = 20
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class CommandReceipt:
    command: str
    exit_code: int
    duration_ms: int
    timed_out: bool
    output_tail: str

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "exit_code": self.exit_code,
            "duration_ms": self.duration_ms,
            "timed_out": self.timed_out,
            "output_tail": self.output_tail,
        }


@dataclass
class Receipt:
    environment: str  # "cached 0123456789ab", "set up afresh", "no setup"
    tree: str
    commands: list[CommandReceipt] = field(default_factory=list)
    blocked: list[BlockedAttempt] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)
    problem: str | None = None  # verification could not run to the end, and why

    @property
    def passed(self) -> bool:
        return self.problem is None and bool(self.commands) and all(c.passed for c in self.commands)

    def to_event(self, *, draft: bool) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "draft": draft,
            "environment": self.environment,
            "tree": self.tree,
            "commands": [c.to_json() for c in self.commands],
            "blocked": [
                {"host": b.host, "port": b.port, "phase": str(b.phase), "command": b.command}
                for b in self.blocked
            ],
            "limits": list(self.limits),
            "problem": self.problem,
        }

    def markdown(self, *, cost_usd: float, keep_host: str | None) -> str:
        """The `## Verification` section of the pull request body."""
        verdict = "passed" if self.passed else "**FAILED**"
        lines = [
            "## Verification",
            "",
            f"backspace ran the verify commands itself on the published tree `{self.tree[:12]}`, "
            f"in a fresh sandbox ({self.environment}) the agent never touched: {verdict}.",
        ]
        if not self.passed:
            lines += [
                "",
                "> [!CAUTION]",
                "> Verification failed, so this pull request is a draft. Review the output below.",
            ]
        if self.problem:
            lines += ["", f"Verification could not finish: {_inline(self.problem, keep_host)}"]
        if self.commands:
            lines += ["", "| command | exit | time |", "|---|---|---|"]
            for c in self.commands:
                code = "timed out" if c.timed_out else str(c.exit_code)
                lines.append(f"| {_cell(c.command)} | {code} | {c.duration_ms / 1000:.1f} s |")
            for c in self.commands:
                if c.output_tail.strip():
                    lines += [
                        "",
                        f"<details><summary>{_inline(_short(c.command), keep_host)}</summary>",
                        "",
                    ]
                    lines += [_fenced(c.output_tail[-TAIL_CHARS:], keep_host), "", "</details>"]
        if self.blocked:
            lines += ["", blocked_section(self.blocked, keep_host)]
        if self.limits:
            lines += [
                "",
                "Limits that fired: " + "; ".join(_inline(x, keep_host) for x in self.limits),
            ]
        lines += ["", f"Cost of the run: ${cost_usd:.2f}"]
        return "\n".join(lines)


def blocked_section(blocked: list[BlockedAttempt], keep_host: str | None) -> str:
    """Refused network attempts as a list, with the line that would allow each host."""
    lines = ["**Network attempts refused:**", ""]
    for b in blocked[:SHOWN_BLOCKED]:
        command = f" by `{_code(_short(b.command))}`" if b.command else ""
        lines.append(f"- `{_code(b.host)}:{b.port}` in the {b.phase} phase{command}")
    if len(blocked) > SHOWN_BLOCKED:
        lines.append(f"- …and {len(blocked) - SHOWN_BLOCKED} more")
    return "\n".join(lines)


def hint(attempt: BlockedAttempt) -> str:
    """What would let the attempt through, for the events and Slack."""
    phase = "agent" if attempt.phase == "verify" else attempt.phase  # verify runs as the agent
    return f"add `{attempt.host}` to [network] {phase} in .backspace.toml"


def _short(text: str, limit: int = 80) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def _inline(text: str, keep_host: str | None) -> str:
    return " ".join(sanitise(CONTROL.sub("", text), keep_host).split())


def _code(text: str) -> str:
    return CONTROL.sub("", sanitise(text)).replace("`", "'")


def _cell(text: str) -> str:
    escaped = _code(_short(text)).replace("|", "\\|")
    return f"`{escaped}`"


def _fenced(text: str, keep_host: str | None) -> str:
    body = CONTROL.sub("", sanitise(text, keep_host))
    fence = "`" * max(3, max((len(r) for r in re.findall(r"`+", body)), default=0) + 1)
    return f"{fence}text\n{body.rstrip()}\n{fence}"


def environment_section(
    plan: EnvironmentPlan,
    prepared: Prepared,
    blocked: list[BlockedAttempt],
    keep_host: str | None,
) -> str | None:
    """The PR body's note on the environment: the starter file, or what setup did, and the
    network attempts refused during setup and the agent's work."""
    if plan.starter is not None and not blocked:
        return plan.starter
    lines = []
    if plan.starter is not None:
        lines.append(plan.starter)
    elif plan.repo.setup is not None:
        lines += ["## Environment", "", f"Set up from `.backspace.toml`: {prepared.description}."]
    lines += [*plan.network.notices()]
    shown = [b for b in blocked if b.phase is not Phase.VERIFY]
    if shown:
        lines += ["", blocked_section(shown, keep_host)]
    return "\n".join(lines) if lines else None
