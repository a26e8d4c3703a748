"""How runs read in Slack: the status message, thread lines, the final reply, help and status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backspace.orchestrator.service import Reason, Refusal
from backspace.orchestrator.store import Run

CANCEL_ACTION = "backspace_cancel"
SECTION_LIMIT = 2900
STATUS_ICON = {
    "queued": ":hourglass_flowing_sand:",
    "running": ":gear:",
    "succeeded": ":white_check_mark:",
    "no_changes": ":information_source:",
    "failed": ":x:",
    "cancelled": ":no_entry_sign:",
    "timed_out": ":alarm_clock:",
}
NEXT_STEP = {
    "model_not_configured": "An operator has to set ANTHROPIC_API_KEY.",
    "github_bad_token": "An operator has to renew GITHUB_TOKEN.",
    "github_app_not_installed": "Install the GitHub App on the repository (the link is above).",
    "github_app_permission": "An owner has to grant the GitHub App the permission named above.",
    "github_app_bad_key": "An operator has to fix GITHUB_APP_ID or GITHUB_APP_PRIVATE_KEY.",
    "github_app_clock": "An operator has to fix the server's clock.",
    "github_no_access": "Give the bot's GitHub account access to the repository.",
    "repo_not_found": "Check the repository name, and that the bot's token can see it.",
    "github_rate_limited": "GitHub is rate limiting us; try again in a few minutes.",
    "wall_clock_limit": "Try a smaller request, or ask an operator to raise MAX_SANDBOX_DURATION.",
    "turn_limit": "Try a smaller, more specific request.",
    "cost_limit": "Try a smaller request, or ask an operator to raise BACKSPACE_MAX_COST_USD.",
    "interrupted": "Run the command again.",
}
STAGE_LABEL = {"setup": "Environment setup", "verifying": "Verifying the change"}
"""Stages whose messages are details (a setup command, a verify command): named before them."""
RECEIPT_COMMANDS = 8
RECEIPT_TAIL_LINES = 8
RECEIPT_TAIL_CHARS = 600


def escape(text: str) -> str:
    """Slack's three control characters, so untrusted text cannot mention or link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def code(text: object, limit: int) -> str:
    """Untrusted text as one inline code span: escaped, its first line, no backtick to end it."""
    lines = str(text).splitlines() or [""]
    first = lines[0] + (" …" if len(lines) > 1 else "")
    return f"`{escape(clip(first.replace('`', 'ˋ'), limit))}`"


def seconds(duration_ms: object) -> str:
    try:
        return f"{int(str(duration_ms)) / 1000:.1f} s"
    except ValueError:
        return "? s"


def blocked_line(data: dict[str, Any]) -> str:
    """One refused network attempt, with what to change so that it is allowed."""
    where = code(f"{data.get('host', '')}:{data.get('port', '')}", 120)
    command = f" by {code(data['command'], 80)}" if data.get("command") else ""
    reason = escape(clip(str(data.get("reason") or ""), 200))
    hint = escape(clip(str(data.get("hint") or ""), 240))
    phase = escape(clip(str(data.get("phase", "?")), 20))
    return (
        f":no_entry: Blocked in the {phase} phase: {where}{command}"
        f"{' (' + reason + ')' if reason else ''}. {hint}"
    ).strip()


def receipt_text(data: dict[str, Any]) -> str:
    """backspace's own run of the verify commands, short: the verdict, then each command."""
    passed = data.get("passed") is True
    environment = escape(clip(str(data.get("environment") or "?"), 80))
    tree = code(str(data.get("tree") or "?")[:12], 20)
    head = (
        f":white_check_mark: Verification passed ({environment} environment, tree {tree})."
        if passed
        else f":x: Verification FAILED ({environment} environment, tree {tree})."
    )
    if not passed and data.get("draft"):
        head += " The pull request is opened as a draft because verification failed."
    lines = [head]
    commands = [c for c in data.get("commands") or [] if isinstance(c, dict)]
    for command in commands[:RECEIPT_COMMANDS]:
        if command.get("timed_out"):
            verdict = f"timed out after {seconds(command.get('duration_ms'))}"
        else:
            verdict = f"exit {command.get('exit_code')} · {seconds(command.get('duration_ms'))}"
        lines.append(f"• {code(command.get('command', ''), 80)} {verdict}")
    if len(commands) > RECEIPT_COMMANDS:
        lines.append(f"• and {len(commands) - RECEIPT_COMMANDS} more")
    blocked = data.get("blocked") or []
    if blocked:
        lines.append(f"• {len(blocked)} blocked network attempt(s) during verification")
    failing = next((c for c in commands if c.get("timed_out") or c.get("exit_code") != 0), None)
    if not passed and failing is not None and failing.get("output_tail"):
        tail = "\n".join(str(failing["output_tail"]).splitlines()[-RECEIPT_TAIL_LINES:])
        tail = escape(tail[-RECEIPT_TAIL_CHARS:]).replace("`", "ˋ")
        lines.append(f"```{tail}```")
    return "\n".join(lines)


def bar(percentage: int) -> str:
    filled = max(0, min(10, round(percentage / 10)))
    return "▓" * filled + "░" * (10 - filled) + f" {percentage}%"


@dataclass
class RunView:
    """What the status message shows; the reporter keeps it current from the run's events."""

    run_id: str
    run_url: str
    user: str
    repo: str
    prompt: str
    status: str = "queued"
    stage: str = "queued"
    message: str = "Waiting to start"
    percentage: int = 0
    pr_url: str | None = None
    files_changed: int | None = None
    cost_usd: float = 0.0
    duration_ms: int = 0
    error_code: str | None = None
    error_message: str | None = None
    draft: bool = False
    verification_failed: bool = False
    parent_id: str | None = None  # a follow-up: the run it continues
    pr_updated: bool = False  # a follow-up pushed a new commit to the family's open PR

    @property
    def finished(self) -> bool:
        return self.status not in ("queued", "running")

    def summary(self) -> str:
        icon = STATUS_ICON.get(self.status, ":gear:")
        if self.status == "succeeded" and self.pr_url:
            if self.pr_updated:
                return f"{icon} Pull request updated with a new commit: {self.pr_url}"
            if self.draft:
                return f":warning: Draft pull request ready: {self.pr_url}{self._why_draft()}"
            return f"{icon} Pull request ready: {self.pr_url}"
        if self.status == "no_changes":
            return f"{icon} Finished: the agent made no changes, so there is no pull request."
        if self.status == "cancelled":
            return f"{icon} Cancelled."
        if self.status == "timed_out":
            return f"{icon} Stopped at the time limit. {NEXT_STEP['wall_clock_limit']}"
        if self.status == "failed":
            why = escape(self.error_message or "unknown error")
            hint = NEXT_STEP.get(self.error_code or "", "")
            return f"{icon} Failed: {clip(why, 600)} {hint}".strip()
        label = STAGE_LABEL.get(self.stage)
        doing = f"*{label}*: {escape(self.message)}" if label else escape(self.message)
        return f"{icon} {doing}\n`{bar(self.percentage)}`"

    def _why_draft(self) -> str:
        return " (verification failed, so it opened as a draft)" if self.verification_failed else ""

    def status_blocks(self) -> list[dict[str, Any]]:
        kind = f"follow-up of {self.parent_id[:8]} " if self.parent_id else ""
        head = (
            f"*<{self.run_url}|backspace run {self.run_id[:8]}>* {kind}for <@{self.user}> on "
            f"`{escape(self.repo)}`\n>{clip(escape(self.prompt), 500)}"
        )
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": clip(head, SECTION_LIMIT)}},
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": clip(self.summary(), SECTION_LIMIT)},
            },
        ]
        if not self.finished:
            blocks.append(
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "action_id": CANCEL_ACTION,
                            "text": {"type": "plain_text", "text": "Cancel"},
                            "style": "danger",
                            "value": self.run_id,
                        }
                    ],
                }
            )
        return blocks

    def status_text(self) -> str:
        return f"backspace run {self.run_id[:8]} on {self.repo}: {self.summary()}"

    def final_text(self) -> str:
        seconds = self.duration_ms / 1000
        facts = f"{seconds:.0f} s, ${self.cost_usd:.2f}"
        if self.status == "succeeded" and self.pr_url:
            files = (
                f"{self.files_changed} files changed, " if self.files_changed is not None else ""
            )
            if self.pr_updated:
                return (
                    f":white_check_mark: <@{self.user}> your pull request is updated with a new "
                    f"commit: {self.pr_url} ({files}{facts})"
                )
            if self.draft:
                return (
                    f":warning: <@{self.user}> your draft pull request is ready: {self.pr_url}"
                    f"{self._why_draft()} ({files}{facts})"
                )
            return f":white_check_mark: <@{self.user}> your pull request is ready: {self.pr_url} ({files}{facts})"
        return f"{self.summary()} ({facts})"


def help_text(command: str) -> str:
    return (
        f"*{command}* turns a sentence into a pull request.\n"
        f"• `{command} owner/repo <what to change>` starts a run; progress appears in this channel\n"
        f"• `{command} repo owner/repo` sets this channel's default repository, so that "
        f"`{command} <what to change>` works alone\n"
        f"• `{command} status` lists this channel's recent runs\n"
        f"• mention me with the same words to start a run in a thread\n"
        f"• in a run's thread, mention me with more to do (`@backspace also handle empty "
        f"names`): a new run on the same pull request; `@backspace steer: …` tells the running "
        f"run instead\n"
        "Repositories: `owner/repo`, a GitHub URL (a `/tree/<branch>` URL picks the base branch)."
    )


def status_text(runs: list[Run], public_url: str) -> str:
    """The channel's recent runs, newest family first; a family's follow-ups under its first
    run, oldest first (each says which run it continues)."""
    if not runs:
        return "No runs in this channel yet."
    families: dict[str, list[Run]] = {}
    for run in runs:
        families.setdefault(run.family_id or run.id, []).append(run)
    lines = ["*Recent runs in this channel*"]
    for members in families.values():
        for place, run in enumerate(sorted(members, key=lambda r: r.created_at)):
            icon = STATUS_ICON.get(run.status, ":grey_question:")
            link = f"<{public_url}/api/runs/{run.id}|{run.id[:8]}>"
            pr = f" · <{run.pr_url}|pull request>" if run.pr_url else ""
            prompt = clip(escape(run.prompt), 80)
            if place == 0 and not run.parent_id:
                lines.append(f"{icon} {link} `{escape(run.repo_url)}` {prompt}{pr}")
            else:
                parent = f" of {run.parent_id[:8]}" if run.parent_id else ""
                lines.append(f"    ↳ {icon} {link} follow-up{parent}: {prompt}{pr}")
    return "\n".join(lines)


def followup_line(data: dict[str, Any]) -> str:
    """A follow-up this run received: steered into it, or queued behind it as a new run."""
    prompt = clip(escape(str(data.get("prompt", ""))), 300)
    if data.get("mode") == "steer":
        return f":incoming_envelope: Follow-up delivered to the agent: {prompt}"
    queued = str(data.get("run_id") or "")
    return f":inbox_tray: Follow-up queued as run {escape(queued[:8])}: {prompt}"


def refusal_text(refusal: Refusal, command: str, *, in_thread: bool = False) -> str:
    """Slack's words for a refusal of the orchestrator's door (shown only to the asker, or in
    the mention's thread)."""
    message = refusal.message
    match refusal.reason:
        case Reason.PROMPT:
            return f"Your request {escape(message)}."
        case Reason.REPOSITORY:
            return f"{escape(message)}\nTry `{command} help`."
        case Reason.GIT_HOST:
            return f"I cannot use `{escape(refusal.subject or '')}` right now: {escape(message)}"
        case Reason.MODEL:
            return (
                "backspace has no model configured yet: an operator has to set ANTHROPIC_API_KEY."
            )
        case Reason.SANDBOX:
            return f"backspace cannot start sandboxes right now: {escape(message)}"
        case Reason.SHUTTING_DOWN:
            if in_thread:
                return f"backspace is restarting ({message})."
            return f"backspace is restarting ({message}); try again in a minute."
        case Reason.STORE_FULL | Reason.STORE_FAILING:
            return f"backspace cannot take runs now: {message}"
        case Reason.MODE | Reason.UNKNOWN_RUN:
            return f"I cannot follow that up: {escape(message)}"
