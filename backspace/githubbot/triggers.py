"""Which webhook deliveries ask backspace for something, read from GitHub's payloads alone.

No network here: the endpoint decides before it answers whether a delivery is worth a task.
A trigger is a mention of GITHUB_MENTION in a new comment (on a pull request, in a review
comment on a line of its diff, in a submitted review, or on an issue) or GITHUB_TRIGGER_LABEL
added to an issue. A mention inside a quote (``> ...``) or in code does not count: replying to
or quoting an earlier request must not run it again. Who may trigger is checked later
(access.py); the text is made visible (invisible.py) and bounded here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from backspace.githubbot.invisible import visible

MAX_CONTEXT_PART = 8000
"""Characters of one untrusted part (an issue body, a diff hunk) passed on to the agent."""

_FENCE = re.compile(r"^\s*(```|~~~)")
_QUOTE = re.compile(r"^\s*>")
_CODE_SPAN = re.compile(r"`[^`\n]*`")


@dataclass(frozen=True)
class Trigger:
    """One request found in a delivery."""

    event: str
    repo: str
    """owner/name of the repository the delivery is about."""
    number: int
    """The issue's or pull request's number (where the status comment goes)."""
    login: str
    bot: bool
    """GitHub says the sender is a bot (``sender.type`` "Bot" or a login ending in [bot])."""
    pr_url: str | None
    """A pull request's URL: a follow-up on the run that opened it. None: a new run."""
    request: str
    context: str
    react_to: tuple[str, int]
    """What gets the 👀: ("issue_comment" | "review_comment", comment id) or ("issue", number)."""


def normalise_mention(mention: str) -> str:
    mention = mention.strip()
    return mention if mention.startswith("@") else f"@{mention}"


def mentioned(body: str, mention: str) -> str | None:
    """The request in ``body`` with the mention taken out, or None when ``mention`` appears
    only in quotes or code, or not at all."""
    pattern = re.compile(
        r"(?<![\w@/.+-])" + re.escape(normalise_mention(mention)) + r"(?![\w-])", re.IGNORECASE
    )
    in_fence = False
    found = False
    for line in body.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence or _QUOTE.match(line):
            continue
        if pattern.search(_CODE_SPAN.sub("", line)):
            found = True
            break
    if not found:
        return None
    return pattern.sub("", body, count=1).strip()


def _clip(text: str, limit: int = MAX_CONTEXT_PART) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters not shown]"


def _login(payload: dict[str, Any]) -> tuple[str, bool]:
    sender = payload.get("sender")
    if not isinstance(sender, dict):
        return "", False
    login = sender.get("login")
    login = login if isinstance(login, str) else ""
    return login, sender.get("type") == "Bot" or login.lower().endswith("[bot]")


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse(event: str, payload: Any, mention: str, label: str) -> Trigger | str:
    """The trigger in a delivery, or a short reason why there is none (for the answer)."""
    if not isinstance(payload, dict):
        return "not a JSON object"
    repository = payload.get("repository")
    repo = _str(repository.get("full_name")) if isinstance(repository, dict) else ""
    if not repo:
        return "no repository in the payload"
    action = _str(payload.get("action"))
    login, bot = _login(payload)
    if not login:
        return "no sender in the payload"
    match event:
        case "issue_comment":
            return _issue_comment(payload, action, repo, login, bot, mention)
        case "pull_request_review_comment":
            return _review_comment(payload, action, repo, login, bot, mention)
        case "pull_request_review":
            return _review(payload, action, repo, login, bot, mention)
        case "issues":
            return _labeled(payload, action, repo, login, bot, label)
        case "ping":
            return "pong"
    return f"event {event or '(none)'} is not one backspace acts on"


def _issue_text(issue: dict[str, Any], number: int) -> str:
    """An issue's title and body, marked as the author's words (not the requester's)."""
    author = issue.get("user")
    by = _str(author.get("login")) if isinstance(author, dict) else ""
    title = visible(_str(issue.get("title")))
    body = _clip(visible(_str(issue.get("body")))) or "(no description)"
    return f"Issue #{number}, opened by @{by or 'someone'}: {title}\n\n{body}"


def _issue_comment(
    payload: dict[str, Any], action: str, repo: str, login: str, bot: bool, mention: str
) -> Trigger | str:
    if action != "created":
        return f"issue_comment {action}: only new comments trigger"
    issue, comment = payload.get("issue"), payload.get("comment")
    if not isinstance(issue, dict) or not isinstance(comment, dict):
        return "no issue or comment in the payload"
    number, comment_id = _int(issue.get("number")), _int(comment.get("id"))
    if number is None or comment_id is None:
        return "no issue number or comment id in the payload"
    body = visible(_str(comment.get("body")))
    request = mentioned(body, mention)
    if request is None:
        return f"no {normalise_mention(mention)} in the comment"
    pull = issue.get("pull_request")
    if isinstance(pull, dict):
        context = f"@{login} wrote this in a comment on pull request #{number}:\n\n{_clip(body)}"
        return Trigger(
            event="issue_comment", repo=repo, number=number, login=login, bot=bot,
            pr_url=_str(pull.get("html_url")) or _str(issue.get("html_url")),
            request=request, context=context, react_to=("issue_comment", comment_id),
        )  # fmt: skip
    context = (
        f"@{login} wrote this in a comment on issue #{number} of {repo}:\n\n{_clip(body)}\n\n"
        f"---\n{_issue_text(issue, number)}"
    )
    return Trigger(
        event="issue_comment", repo=repo, number=number, login=login, bot=bot, pr_url=None,
        request=request or visible(_str(issue.get("title"))), context=context,
        react_to=("issue_comment", comment_id),
    )  # fmt: skip


def _pull(payload: dict[str, Any]) -> tuple[int, str] | None:
    pull = payload.get("pull_request")
    if not isinstance(pull, dict):
        return None
    number, url = _int(pull.get("number")), _str(pull.get("html_url"))
    return (number, url) if number is not None and url else None


def _review_comment(
    payload: dict[str, Any], action: str, repo: str, login: str, bot: bool, mention: str
) -> Trigger | str:
    if action != "created":
        return f"pull_request_review_comment {action}: only new comments trigger"
    comment, pull = payload.get("comment"), _pull(payload)
    if not isinstance(comment, dict) or pull is None:
        return "no comment or pull request in the payload"
    comment_id = _int(comment.get("id"))
    if comment_id is None:
        return "no comment id in the payload"
    body = visible(_str(comment.get("body")))
    request = mentioned(body, mention)
    if request is None:
        return f"no {normalise_mention(mention)} in the review comment"
    path = visible(_str(comment.get("path")))
    line = _int(comment.get("line")) or _int(comment.get("original_line"))
    start = _int(comment.get("start_line"))
    lines = f"lines {start}-{line}" if start and line and start != line else f"line {line}"
    hunk = _clip(visible(_str(comment.get("diff_hunk"))), 4000)
    context = (
        f"@{login} wrote this in a review comment on pull request #{pull[0]}, on the file "
        f"`{path}` at {lines if line else 'the whole file'} (of the pull request's head):\n\n"
        f"{_clip(body)}\n\nThe part of the diff it is attached to:\n```diff\n{hunk}\n```"
    )
    return Trigger(
        event="pull_request_review_comment", repo=repo, number=pull[0], login=login, bot=bot,
        pr_url=pull[1], request=request, context=context,
        react_to=("review_comment", comment_id),
    )  # fmt: skip


def _review(
    payload: dict[str, Any], action: str, repo: str, login: str, bot: bool, mention: str
) -> Trigger | str:
    if action != "submitted":
        return f"pull_request_review {action}: only submitted reviews trigger"
    review, pull = payload.get("review"), _pull(payload)
    if not isinstance(review, dict) or pull is None:
        return "no review or pull request in the payload"
    body = visible(_str(review.get("body")))
    request = mentioned(body, mention)
    if request is None:
        return f"no {normalise_mention(mention)} in the review"
    state = _str(review.get("state")).replace("_", " ") or "commented"
    context = (
        f"@{login} wrote this in a review ({state}) of pull request #{pull[0]}:\n\n{_clip(body)}"
    )
    return Trigger(
        event="pull_request_review", repo=repo, number=pull[0], login=login, bot=bot,
        pr_url=pull[1], request=request, context=context, react_to=("issue", pull[0]),
    )  # fmt: skip


def _labeled(
    payload: dict[str, Any], action: str, repo: str, login: str, bot: bool, label: str
) -> Trigger | str:
    if action != "labeled":
        return f"issues {action}: only a label added triggers"
    given = payload.get("label")
    name = _str(given.get("name")) if isinstance(given, dict) else ""
    if not label or name.lower() != label.lower():
        return f"label {name!r} is not GITHUB_TRIGGER_LABEL"
    issue = payload.get("issue")
    number = _int(issue.get("number")) if isinstance(issue, dict) else None
    if not isinstance(issue, dict) or number is None:
        return "no issue in the payload"
    if "pull_request" in issue:
        return "a labelled pull request does not trigger"
    title = visible(_str(issue.get("title")))
    context = f"@{login} added the label {name!r} to issue #{number} of {repo}, asking for it to be resolved.\n\n---\n{_issue_text(issue, number)}"
    return Trigger(
        event="issues", repo=repo, number=number, login=login, bot=bot, pr_url=None,
        request=title or f"Resolve issue #{number}", context=context,
        react_to=("issue", number),
    )  # fmt: skip
