"""Making untrusted text inert before a git host renders it as Markdown.

A pull request's title and body are rendered for whoever opens them: GitHub fetches every image
at once through its proxy (so an image URL can carry private code out), links go anywhere,
`@team` pings people and `Closes #1` closes an issue. The agent's text and the request it quotes
are untrusted. Rather than parse Markdown as GitHub does (a parser that differs is a hole),
plain-text rules make each construct impossible whatever the parser:

1. character references are decoded once (`&#58;` cannot hide a scheme) and what is left of
   one (`&amp;#58;` decoded) is broken; HTML comments are removed (hidden text, forged markers);
2. every URL naming a host other than `keep_host`, and every `data:`, `javascript:`... URL, is
   replaced by `[link removed: host[.]tld]`; links to the repository's own host stay as text;
3. a zero-width space (U+200B), invisible to a reader, is put where it breaks syntax: after
   `<` before a letter, `/`, `!` or `?` (no HTML, comment or autolink), between `!` and `[` (no
   image), between `]` and `(` or `:` (no link, no link definition), after `@` (no mention),
   after `#` before a digit and inside `GH-1` (no issue reference), and after the first letter
   of a closing keyword (close, closes, closed, fix, fixes, fixed, resolve, resolves, resolved)
   that comes before something like a reference (`#`, `GH-`, `owner/repo#`, a URL): "Fix the
   signup" stays searchable.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

ZWSP = "\u200b"
_END = r"[^\s<>\"'`()\[\]{}|^]"  # where a URL stops: whitespace, quotes, brackets, markup
# `scheme://host`, and `http:host` (a browser reads it as `http://host` on an https page).
_SCHEME_URL = re.compile(
    r"(?i)(?<![a-z0-9+.-])(?:[a-z][a-z0-9+.-]+\\?:(?:\\?[/\\])+|(?:https?|ftp|wss?)\\?:(?=\w))"
    rf"{_END}*"
)
_WWW_URL = re.compile(rf"(?i)(?<![\w.@/\\-])www\\?\.{_END}*")
_RELATIVE_URL = re.compile(rf"(?<![\w:/\\.-])[/\\]{{2}}(?=[\w-]+(?:\\?\.[\w-]+)+){_END}*")
_OPAQUE_URL = re.compile(
    r"(?i)(?<![a-z0-9+.-])(?:data|javascript|vbscript|file|mailto|xmpp|tel|sms|blob)\\?:"
    rf"{_END}+"
)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_ENTITY = re.compile(r"&(?=#[0-9]{1,8};|#[xX][0-9a-fA-F]{1,8};|[A-Za-z][A-Za-z0-9]{1,31};)")
_BREAKS: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"<(?=[A-Za-z/!?])"), "<" + ZWSP),
    (re.compile(r"!(?=\[)"), "!" + ZWSP),
    (re.compile(r"\](?=[(:])"), "]" + ZWSP),
    (re.compile(r"@"), "@" + ZWSP),
    (re.compile(r"#(?=[0-9])"), "#" + ZWSP),
    (re.compile(r"(?i)\b(g)(?=h-[0-9])"), r"\1" + ZWSP),
    (
        re.compile(
            r"(?i)\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\b"
            r"(?=[^\w\n]{0,10}(?:https?:|#|gh-|[\w.-]+/[\w.-]+#))"
        ),
        lambda m: m[0][0] + ZWSP + m[0][1:],
    ),
]
_HOST = re.compile(r"[a-z0-9.-]+(?::[0-9]{1,5})?")


def sanitise(text: str, keep_host: str | None = None) -> str:
    """`text` with nothing a Markdown renderer would fetch, link out, ping or close.

    Ordinary prose and code read the same (the inserted characters are invisible);
    `keep_host` (the repository's web host, e.g. github.com) is the one host URLs may name.
    """
    text = _ENTITY.sub("&" + ZWSP, html.unescape(text))
    text = _COMMENT.sub("", text)
    keep = (keep_host or "").lower().rstrip(".")
    text = _SCHEME_URL.sub(lambda m: _url(m.group(0), keep, scheme=True), text)
    text = _WWW_URL.sub(lambda m: _url(m.group(0), keep, scheme=False), text)
    text = _RELATIVE_URL.sub(lambda m: _url(m.group(0), keep, scheme=False), text)
    text = _OPAQUE_URL.sub("[link removed]", text)
    for pattern, replacement in _BREAKS:
        text = pattern.sub(replacement, text)
    return text


def _url(url: str, keep: str, *, scheme: bool) -> str:
    """The URL itself when it names `keep`, else a note naming its host, defanged."""
    rest = url.split(":", 1)[1] if scheme else url
    authority = re.split(r"[/\\?#]", rest.lstrip("/\\"), maxsplit=1)[0].lower()
    host = authority.rstrip(".")
    if keep and _HOST.fullmatch(host) and host.split(":")[0].rstrip(".") == keep:
        return url
    shown = authority[:100].replace(".", "[.]")
    return f"[link removed: {shown}]" if shown else "[link removed]"
