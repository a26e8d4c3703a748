"""HTML pages. Everything shown is escaped: the agent's output is untrusted. The style is the web
interface's (static/app.css)."""

from __future__ import annotations

from html import escape
from typing import Any

from backspace.orchestrator.store import PullRequestRecord


def _diff_sections(diff: str) -> list[tuple[str, list[str]]]:
    sections: list[tuple[str, list[str]]] = []
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            name = line.split(" b/", 1)[-1] if " b/" in line else line[11:]
            sections.append((name, []))
        elif sections:
            sections[-1][1].append(line)
    return sections


def _line(line: str) -> str:
    css = ""
    if line.startswith("+") and not line.startswith("+++"):
        css = "add"
    elif line.startswith("-") and not line.startswith("---"):
        css = "del"
    elif line.startswith("@@"):
        css = "hunk"
    return f'<span class="l {css}">{escape(line) or " "}</span>'


def _comments(comments: list[dict[str, Any]]) -> str:
    """The follow-ups' comments, oldest first, as text (their Markdown is not rendered)."""
    if not comments:
        return '<p class="meta">No comments yet.</p>'
    return "".join(
        f'<li class="comment" id="comment-{int(c["id"])}"><p class="meta">'
        f'{escape(str(c["created_at"]))}</p><div class="body">{escape(str(c["body"]))}</div></li>'
        for c in comments
    )


def pull_request_page(pr: PullRequestRecord, comments: list[dict[str, Any]] | None = None) -> str:
    """The pull request as its host would show it: the body (its Runs table too) and the
    comments as text, the files, the diff."""
    rows = "".join(
        f"<tr><td><code>{escape(f['path'])}</code></td><td>{escape(f['status'])}</td>"
        f"<td>+{int(f['additions'])}</td><td>−{int(f['deletions'])}</td></tr>"
        for f in pr.files
    )
    files = "".join(
        f'<section class="file"><h3>{escape(name)}</h3><pre>{"".join(_line(x) for x in lines)}</pre></section>'
        for name, lines in _diff_sections(pr.diff)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>#{pr.id} {escape(pr.title)} · backspace</title><link rel="stylesheet" href="/static/app.css"></head>
<body>
<header class="site"><a class="brand" href="/">backspace</a><a href="/">All runs</a></header>
<main id="main">
<p class="meta">{escape(pr.repo)} · pull request #{pr.id}</p>
<h1>{escape(pr.title)}</h1>
<p class="meta"><code>{escape(pr.branch)}</code> → <code>{escape(pr.base)}</code> ·
{len(pr.files)} files, +{pr.additions} −{pr.deletions} · {escape(pr.created_at)}</p>
<div class="body">{escape(pr.body)}</div>
<h2 id="comments-heading">Comments</h2>
<ol class="comments" id="comments" aria-labelledby="comments-heading">{_comments(comments or [])}</ol>
<h2>Files</h2><div class="table-wrap"><table><thead><tr><th>file</th><th>status</th><th>added</th><th>removed</th></tr></thead>
<tbody>{rows}</tbody></table></div>
<h2>Diff</h2>{files}
</main></body></html>"""
