"""HTML pages. Everything shown is escaped: the agent's output is untrusted."""

from __future__ import annotations

from html import escape

from backspace.orchestrator.store import PullRequestRecord

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1rem;color:#1f2328}
h1{font-size:1.4rem;margin:.2rem 0}.meta{color:#59636e}pre{margin:0}
.body{white-space:pre-wrap;background:#f6f8fa;border:1px solid #d1d9e0;border-radius:6px;padding:1rem}
table{border-collapse:collapse}td,th{padding:.2rem .6rem;border-bottom:1px solid #d1d9e0;text-align:left}
.file{border:1px solid #d1d9e0;border-radius:6px;margin:1rem 0;overflow:auto}
.file h3{margin:0;padding:.4rem .8rem;background:#f6f8fa;font:600 14px ui-monospace,monospace}
.l{display:block;padding:0 .8rem;font:13px/1.45 ui-monospace,monospace;white-space:pre}
.add{background:#dafbe1}.del{background:#ffebe9}.hunk{background:#ddf4ff;color:#59636e}
"""


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


def pull_request_page(pr: PullRequestRecord) -> str:
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
<title>#{pr.id} {escape(pr.title)} · backspace</title><style>{STYLE}</style></head>
<body><main>
<p class="meta">{escape(pr.repo)} · pull request #{pr.id}</p>
<h1>{escape(pr.title)}</h1>
<p class="meta"><code>{escape(pr.branch)}</code> → <code>{escape(pr.base)}</code> ·
{len(pr.files)} files, +{pr.additions} −{pr.deletions} · {escape(pr.created_at)}</p>
<div class="body">{escape(pr.body)}</div>
<h2>Files</h2><table><thead><tr><th>file</th><th>status</th><th>added</th><th>removed</th></tr></thead>
<tbody>{rows}</tbody></table>
<h2>Diff</h2>{files}
</main></body></html>"""
