"""A run's refused network attempts, as `network_blocked` events.

Every sandbox of a run (the agent's, the verifier's) has its own Gate; all of them report here,
so the run's events and its pull request list the attempts in the order they happened.
"""

from __future__ import annotations

from backspace.orchestrator.egress.gate import BlockedAttempt
from backspace.orchestrator.environment.receipt import hint
from backspace.orchestrator.events import EventType
from backspace.orchestrator.run import RunContext


class BlockedReporter:
    """Turns a run's refused network attempts into `network_blocked` events (the first
    MAX_BLOCKED_EVENTS of them: a loop retrying a closed door must not flood the run)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.attempts: list[BlockedAttempt] = []

    def __call__(self, attempt: BlockedAttempt) -> None:
        self.attempts.append(attempt)
        if len(self.attempts) > MAX_BLOCKED_EVENTS:
            return
        self.ctx.emit(
            EventType.NETWORK_BLOCKED,
            {
                "host": attempt.host,
                "port": attempt.port,
                "phase": str(attempt.phase),
                "command": attempt.command,
                "reason": attempt.reason,
                "hint": hint(attempt),
            },
        )


MAX_BLOCKED_EVENTS = 50
