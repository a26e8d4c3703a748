"""Claude Code's pull request summary: asked for in a fixed form, parsed, or made by the host.

Our loop ends with a `finish` tool call that carries the title and body. Claude Code has no
such tool: its system prompt (`instructions`) asks it to end its last message with a block

    PR title: <one line>
    PR body:
    <Markdown>

which `parse` reads. When the block is missing, `summarise` asks the host's model (the real
key stays on the host) for one, from the CLI's last message and the files it changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from backspace.orchestrator.agent import Model
from backspace.orchestrator.agent.pricing import Usage

TITLE = re.compile(r"^[ \t>*_#]*PR title[*_]*:[*_]*[ \t]*(?P<title>\S.*)$", re.IGNORECASE | re.M)
BODY = re.compile(r"^[ \t>*_#]*PR body[*_]*:[*_]*[ \t]*", re.IGNORECASE | re.MULTILINE)
MAX_TITLE = 200
SUMMARY_MARKER = "backspace needs a pull request title and summary"


@dataclass(frozen=True)
class Summary:
    title: str
    body: str


def instructions(workdir: str, environment: str) -> str:
    """What `--append-system-prompt` adds: how backspace publishes, and the summary's form."""
    note = f"\n\n{environment.strip()}" if environment.strip() else ""
    return (
        "You are running inside backspace, in a sandbox, non-interactively: nobody answers "
        f"questions. The repository is checked out at {workdir}; work only there. backspace "
        "publishes your work itself: when you end, it commits every change you leave in the "
        "working tree, pushes a branch and opens a pull request. So never run `git commit`, "
        "`git push`, create branches, or open pull requests, and do not try to reach the "
        "network: only the model is reachable.\n\n"
        "End your final message with exactly this block (nothing after it):\n"
        "PR title: <a short imperative title, one line>\n"
        "PR body:\n"
        "<what you changed and why, and how you checked it, in Markdown>" + note
    )


def parse(text: str) -> Summary | None:
    """The last `PR title:` / `PR body:` block of the text, or None."""
    titles = list(TITLE.finditer(text or ""))
    if not titles:
        return None
    found = titles[-1]
    title = found.group("title").strip().strip("*_`").strip()
    if not title:
        return None
    rest = text[found.end() :]
    body_at = BODY.search(rest)
    body = rest[body_at.end() :].strip() if body_at else ""
    return Summary(title[:MAX_TITLE], body)


async def summarise(model: Model, last_message: str, changed: str, usage: Usage) -> Summary | None:
    """A title and body from the host's model (its usage is added to `usage`); None when its
    answer has no title (the pipeline then titles the PR from the request)."""
    prompt = (
        f"{SUMMARY_MARKER}. A coding agent changed a repository. Its last message and the "
        "files it changed follow. Answer with only this block:\n"
        "PR title: <a short imperative title, one line>\nPR body:\n<a short Markdown summary>\n\n"
        f"<last-message>\n{last_message[-6000:]}\n</last-message>\n"
        f"<changed-files>\n{changed[:4000]}\n</changed-files>"
    )
    turn = await model.respond(
        system=[{"type": "text", "text": "You write pull request titles and summaries."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": prompt}]}],
        tools=[],
        max_tokens=1000,
    )
    usage.add(model.name, turn.usage)
    text = "\n".join(
        str(block.get("text", "")) for block in turn.content if block.get("type") == "text"
    )
    return parse(text)
