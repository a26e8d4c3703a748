"""How a pull request reads: branch name, title and body.

Everything in them that the agent or the requester wrote goes through `sanitise` (one sanitiser
for all of it): a git host renders it, and rendered Markdown can fetch, link, ping and close.
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING

from backspace.orchestrator.sanitiser import sanitise

if TYPE_CHECKING:
    from backspace.orchestrator.agent import AgentResult
    from backspace.orchestrator.publish import Change

SLUG_LIMIT = 40
TITLE_LIMIT = 72
BODY_LIMIT = 60_000
REQUEST_QUOTE_LIMIT = 2000
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    words = [w for w in re.split(r"[^a-z0-9]+", ascii_text) if w]
    out = ""
    for word in words:
        candidate = f"{out}-{word}" if out else word
        if len(candidate) > SLUG_LIMIT:
            break
        out = candidate
    return out or "change"


def branch_name(prompt: str, run_id: str) -> str:
    return f"backspace/{slug(prompt)}-{run_id.replace('-', '')[:8]}"


def title_for(agent_title: str | None, prompt: str, keep_host: str | None = None) -> str:
    """The agent's title, or the request's first line; one inert line, at most 72 characters."""
    title = (
        (agent_title or prompt).strip().splitlines()[0]
        if (agent_title or prompt).strip()
        else "Change"
    )
    # The model's title is untrusted text: nothing that renders as an image, link, mention or
    # closing keyword (it is also the commit's subject), no control characters (a NUL cannot be
    # in a commit). Whitespace controls (tab, form feed, ...) become spaces; the others go.
    title = sanitise(title, keep_host)
    title = " ".join(CONTROL.sub("", " ".join(title.split())).split()) or "Change"
    if len(title) > TITLE_LIMIT:
        title = title[: TITLE_LIMIT - 1].rstrip() + "…"
    return title


def commit_message(title: str, run_id: str, co_author: str | None) -> str:
    """The one commit's message: the title, where it came from, and the requester's credit."""
    lines = [title, "", f"Made by backspace run {run_id}."]
    if co_author:
        lines += ["", f"Co-authored-by: {co_author}"]
    return "\n".join(lines) + "\n"


def _quote(text: str, keep_host: str | None) -> str:
    """The request as a Markdown quote, made inert like the agent's text."""
    clipped = text if len(text) <= REQUEST_QUOTE_LIMIT else text[:REQUEST_QUOTE_LIMIT] + " […]"
    defused = sanitise(clipped, keep_host)
    return "\n".join(f"> {line}" for line in defused.splitlines() or [""])


def _path_cell(path: str) -> str:
    """A file path as one table cell: a code span that no backtick, pipe or newline ends."""
    text = sanitise(CONTROL.sub("?", path)).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render_body(
    *,
    prompt: str,
    requester: str | None,
    result: AgentResult,
    change: Change,
    tests: str | None,
    run_url: str,
    environment: str | None = None,
    run_id: str,
    keep_host: str | None = None,
    runs_row: str | None = None,
    notes: list[str] | None = None,
    closes_issue: int | None = None,
) -> str:
    """The body; `keep_host` is the one host the untrusted parts may link to (as text).

    `tests` is the verification receipt's section and `environment` the note on setup and
    refused network attempts, both already made inert by environment/receipt.py."""
    parts: list[str] = []
    summary = sanitise((result.body or "").strip(), keep_host)
    parts.append(summary or "_The agent did not write a summary._")
    if closes_issue is not None:
        # backspace's own words: the one closing keyword in the body, for the issue that asked.
        parts.append(f"Closes #{closes_issue}")
    for note in notes or []:
        parts.append(f"> [!NOTE]\n> {note}")
    if result.outcome != "finished":
        message = " ".join(sanitise(result.message, keep_host).split())
        parts.append(f"> [!WARNING]\n> The agent did not finish: {message}. Review with care.")
    who = " by " + " ".join(sanitise(requester, keep_host).split()) if requester else ""
    parts.append(f"## Request{who}\n\n{_quote(prompt, keep_host)}")
    rows = "\n".join(
        f"| {_path_cell(f.path)} | {f.status} | +{f.additions} | −{f.deletions} |"
        for f in change.files[:100]
    )
    more = f"\n\n…and {len(change.files) - 100} more files." if len(change.files) > 100 else ""
    parts.append(
        f"## Changes\n\n{len(change.files)} files, +{change.additions} −{change.deletions}\n\n"
        f"| file | status | added | removed |\n|---|---|---|---|\n{rows}{more}"
    )
    agent_tests = " ".join(sanitise(result.tests or "", keep_host).split())
    test_lines = [f"- Agent: {agent_tests}" if agent_tests else "- Agent: did not report tests"]
    test_lines.append(
        "- backspace: verified the published tree itself, see Verification below"
        if tests
        else "- backspace: nothing to verify with: add `[verify] run` to `.backspace.toml` "
        "(or set BACKSPACE_TEST_COMMAND on the server)"
    )
    parts.append("## Tests\n\n" + "\n".join(test_lines))
    if tests:
        parts.append(tests)
    if environment:
        parts.append(environment)
    if runs_row:
        parts.append(with_run("", runs_row))
    usage = result.usage
    parts.append(
        f"---\nOpened by [backspace run {run_id[:8]}]({run_url}) · {result.turns} model turns · "
        f"${usage.cost_usd:.2f}\n\n<!-- backspace:run={run_id} -->"
    )
    body = "\n\n".join(parts)
    if len(body) > BODY_LIMIT:
        body = body[: BODY_LIMIT - 200] + f"\n\n[… cut …]\n\n<!-- backspace:run={run_id} -->"
    return body


RUNS_START = "<!-- backspace:runs -->"
RUNS_END = "<!-- /backspace:runs -->"
RUNS_HEADER = "## Runs\n\n| run | request | verification | cost |\n|---|---|---|---|"


def runs_row(
    *,
    run_id: str,
    run_url: str,
    prompt: str,
    verification: str,
    cost_usd: float,
    keep_host: str | None = None,
) -> str:
    """One run of a PR's family as a row of the body's Runs table, every cell inert."""
    request = " ".join(sanitise(prompt, keep_host).split()).replace("|", "\\|")
    if len(request) > 100:
        request = request[:99] + "…"
    return f"| [{run_id[:8]}]({run_url}) | {request} | {verification} | ${cost_usd:.2f} |"


def with_run(body: str, row: str) -> str:
    """The body with `row` added to its Runs section (made when missing); the rest of the
    body, people's edits included, is kept as it is."""
    start, end = body.find(RUNS_START), body.find(RUNS_END)
    if start != -1 and end > start:
        section = body[start + len(RUNS_START) : end].rstrip()
        return f"{body[:start]}{RUNS_START}{section}\n{row}\n{body[end:]}"
    block = f"{RUNS_START}\n{RUNS_HEADER}\n{row}\n{RUNS_END}"
    if not body:
        return block
    footer = body.find("\n---\nOpened by [backspace run")
    if footer == -1:
        return f"{body}\n\n{block}"
    return f"{body[:footer]}\n\n{block}\n{body[footer:]}"


def followup_comment(
    *,
    prompt: str,
    requester: str | None,
    result: AgentResult,
    change: Change,
    commit: str,
    tests: str | None,
    run_url: str,
    run_id: str,
    keep_host: str | None = None,
) -> str:
    """The comment a follow-up leaves on the PR it updated: what was asked, what changed."""
    who = " by " + " ".join(sanitise(requester, keep_host).split()) if requester else ""
    summary = sanitise((result.body or "").strip(), keep_host) or "_No summary._"
    files = ", ".join(_path_cell(f.path) for f in change.files[:20])
    more = f" and {len(change.files) - 20} more" if len(change.files) > 20 else ""
    parts = [
        f"**backspace pushed `{commit[:12]}`** for a follow-up{who}:",
        _quote(prompt, keep_host),
        summary,
        f"{len(change.files)} files, +{change.additions} −{change.deletions}: {files}{more}",
    ]
    if result.outcome != "finished":
        message = " ".join(sanitise(result.message, keep_host).split())
        parts.append(f"> [!WARNING]\n> The agent did not finish: {message}. Review with care.")
    if tests:
        parts.append(tests)
    parts.append(f"[backspace run {run_id[:8]}]({run_url})\n\n<!-- backspace:run={run_id} -->")
    text = "\n\n".join(parts)
    return text if len(text) <= BODY_LIMIT else text[: BODY_LIMIT - 100] + "\n\n[… cut …]"
