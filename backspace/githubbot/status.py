"""The text of a run's status comment on GitHub: what it is doing now, then how it ended.

Text that came from outside (the request, the agent's progress messages, an error) is made
inert with the PR sanitiser: no image fetched, no link out, no @mention, no "Closes #1".
The links backspace makes itself (the run page, the pull request) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from backspace.orchestrator.sanitiser import sanitise

MARKER = "<!-- backspace:status run={run_id} -->"
ICON = {
    "queued": "⏳",
    "running": "🔄",
    "succeeded": "✅",
    "no_changes": "➖",
    "failed": "❌",
    "cancelled": "🚫",
    "timed_out": "⌛",
}
WORDS = {
    "queued": "queued",
    "running": "working",
    "succeeded": "done",
    "no_changes": "finished without changes",
    "failed": "failed",
    "cancelled": "cancelled",
    "timed_out": "timed out",
}


def clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class StatusView:
    run_id: str
    run_url: str
    login: str
    request: str
    web_host: str
    note: str = ""
    status: str = "queued"
    stage: str = "queued"
    message: str = ""
    percentage: int = 0
    pr_url: str | None = None
    pr_updated: bool = False
    error: str | None = None
    duration_ms: int | None = None
    cost_usd: float = 0.0

    def _safe(self, text: str, limit: int) -> str:
        return sanitise(clip(text, limit), keep_host=self.web_host)

    def text(self) -> str:
        status = self.status
        head = f"{ICON.get(status, '•')} **backspace** {WORDS.get(status, status)}"
        lines = [
            MARKER.format(run_id=self.run_id),
            f"{head} · [run {self.run_id[:8]}]({self.run_url})",
            "",
            f"> {self._safe(self.request, 300)}",
            f"\nasked by @{self.login}" + (f" · {self._safe(self.note, 200)}" if self.note else ""),
        ]
        if status in ("queued", "running"):
            stage = f"**{self.stage}**" + (f" ({self.percentage}%)" if self.percentage else "")
            message = f": {self._safe(self.message, 200)}" if self.message else ""
            lines.append(f"\nStage {stage}{message}")
        else:
            seconds = f" in {self.duration_ms / 1000:.0f} s" if self.duration_ms else ""
            cost = f" · ${self.cost_usd:.2f}" if self.cost_usd else ""
            lines.append(f"\nFinished{seconds}{cost}.")
            if self.pr_url:
                verb = "Updated" if self.pr_updated else "Opened"
                lines.append(f"{verb} pull request: {self.pr_url}")
            if self.error:
                lines.append(f"\n{self._safe(self.error, 600)}")
        return "\n".join(lines)
