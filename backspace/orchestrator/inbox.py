"""A running run's inbox: follow-ups steered into it, delivered to the model between turns.

The agent loop is its only reader. It takes what arrived at each turn boundary and, before it
accepts `finish`, once more: a message that arrived during the model's last turn is delivered
(the finish is declined) rather than lost. Once the loop has ended the inbox is closed, and a
steer that comes later is refused here, so the door queues it as a follow-up run instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Steer:
    """A follow-up delivered into a running run: who sent it, from where, and their words."""

    prompt: str
    requester: str | None = None
    source: str = "api"
    context: str | None = None


@dataclass
class Inbox:
    open: bool = False  # True only while the agent loop runs
    _pending: list[Steer] = field(default_factory=list)

    def put(self, message: Steer) -> bool:
        """Leave a message for the model; False when no agent loop will read it."""
        if not self.open:
            return False
        self._pending.append(message)
        return True

    def take(self) -> list[Steer]:
        """Everything that arrived since the last take, oldest first."""
        taken, self._pending = self._pending, []
        return taken

    def __bool__(self) -> bool:
        return bool(self._pending)
