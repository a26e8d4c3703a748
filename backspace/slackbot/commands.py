"""What a `/backspace` command (or an @mention) asks for, parsed from Slack's text."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

from backspace.orchestrator.githosts.base import RepoRef, RepoRefError

MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")
STEER = re.compile(r"steer\s*:\s*", re.IGNORECASE)
ENGINE = re.compile(r"(?:^|\s)engine=(\S*)", re.IGNORECASE)
ENGINES = ("backspace", "claude-code")


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class SetRepo:
    reference: str


@dataclass(frozen=True)
class Status:
    pass


@dataclass(frozen=True)
class StartRun:
    repo: RepoRef
    repo_text: str
    prompt: str
    engine: str | None = None  # `engine=claude-code` in the text; None: the server's default


@dataclass(frozen=True)
class Invalid:
    reason: str


Command = Help | SetRepo | Status | StartRun | Invalid


def parse(
    text: str,
    parse_repo: Callable[[str], RepoRef],
    channel_default: str | None,
) -> Command:
    """`help`, `repo <repo>`, `status`, `<repo> <prompt>`, or `<prompt>` with a channel default;
    `engine=NAME` anywhere picks the run's engine (and is not part of the prompt)."""
    text = MENTION.sub(" ", text).strip()
    engines = ENGINE.findall(text)
    if engines:
        engine = engines[-1].lower()
        if engine not in ENGINES:
            return Invalid(
                f"{_plain(engines[-1])!r} is not an engine: say `engine=backspace` or "
                "`engine=claude-code`"
            )
        run = parse(ENGINE.sub(" ", text), parse_repo, channel_default)
        return (
            StartRun(run.repo, run.repo_text, run.prompt, engine)
            if isinstance(run, StartRun)
            else run
        )
    words = text.split(maxsplit=1)
    first = words[0].lower() if words else ""
    rest = words[1].strip() if len(words) > 1 else ""
    if first in ("", "help", "-h", "--help", "?"):
        return Help()
    if first == "status" and not rest:
        return Status()
    if first == "repo":
        if not rest:
            return Invalid("say which repository: `repo owner/name`")
        return SetRepo(rest)
    try:
        repo = parse_repo(words[0])
    except RepoRefError as exc:
        if channel_default is None:
            return Invalid(f"{_plain(words[0])!r} is not a repository I can use: {exc}")
        try:
            default = parse_repo(channel_default)
        except RepoRefError as again:
            return Invalid(f"this channel's default repository cannot be used: {again}")
        return StartRun(default, channel_default, html.unescape(text))
    if not rest:
        return Invalid("say what to change after the repository: `owner/repo add a --verbose flag`")
    return StartRun(repo, words[0], html.unescape(rest))


@dataclass(frozen=True)
class FollowUpRequest:
    """A mention in a run's thread: more work on that run's pull request."""

    prompt: str
    mode: str  # "queue": a new run after the current one; "steer": into the running run


def follow_up(text: str) -> FollowUpRequest | None:
    """`<words>` (queued) or `steer: <words>` (into the running run); None for `help`, `status`
    or nothing, which are answered as commands."""
    text = MENTION.sub(" ", text).strip()
    first = text.split(maxsplit=1)[0].lower() if text else ""
    if first in ("", "help", "-h", "--help", "?") or text.lower() == "status":
        return None
    steer = STEER.match(text)
    if steer is not None:
        prompt = html.unescape(text[steer.end() :]).strip()
        return FollowUpRequest(prompt, "steer") if prompt else None
    return FollowUpRequest(html.unescape(text), "queue")


def _plain(value: str) -> str:
    value = value.strip("<>").split("|", 1)[0]
    return html.unescape(value)[:200]
