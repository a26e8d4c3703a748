"""GitHub repository references people paste, reduced to (host, owner, repo) with strict rules.

Accepted: `https://github.com/owner/repo` (with or without `.git`, a trailing slash,
`/tree/<branch>/...`, `/pull/N` and other deep links), `git@github.com:owner/repo.git`,
`ssh://git@github.com/owner/repo`, `github.com/owner/repo`, `owner/repo`, and Slack's
`<https://github.com/owner/repo|owner/repo>`. Everything else is refused with the reason:
credentials in the URL, another host or a port, `ext::`, `file://`, a leading `-`, odd names.

backspace builds every URL it uses itself from (host, owner, repo); the user's string is never
handed to git, an HTTP client or a shell.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from backspace.orchestrator.githosts.base import RepoRefError

OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
REPO = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
BRANCH_PART = re.compile(r"^[A-Za-z0-9._/+-]{1,250}$")
SHORTHAND = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*)/([A-Za-z0-9._-]+?)(?:\.git)?/?$")


@dataclass(frozen=True)
class GitHubRef:
    host: str
    owner: str
    repo: str
    branch: str | None = None
    pull: int | None = None

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo}"


def unwrap_slack(value: str) -> str:
    """`<https://github.com/o/r|o/r>` and `<https://github.com/o/r>` → the URL; entities decoded."""
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].split("|", 1)[0]
    return html.unescape(value).strip()


def looks_like_github(value: str) -> bool:
    """Whether a reference is meant for GitHub at all (so its errors should be GitHub's)."""
    value = unwrap_slack(value)
    lowered = value.lower()
    return (
        "://" in value
        or lowered.startswith(("git@", "ext::", "file:"))
        or bool(SHORTHAND.match(value))
        or "github" in lowered
    )


def parse_github_reference(value: str, hosts: Iterable[str] = ("github.com",)) -> GitHubRef:
    """Reduce a reference to a GitHubRef on one of `hosts`, or raise RepoRefError saying why."""
    allowed = {h.lower().rstrip(".") for h in hosts}
    default_host = next(iter(hosts), "github.com").lower()
    text = unwrap_slack(value)
    if not text:
        raise RepoRefError("the repository is empty: give owner/repo or a GitHub URL")
    if text.startswith("-"):
        raise RepoRefError("a repository reference cannot start with '-'")
    if any(ord(c) < 32 or ord(c) == 127 or c.isspace() for c in text):
        raise RepoRefError("the repository reference contains spaces or control characters")
    lowered = text.lower()
    if lowered.startswith("ext::") or "::" in text:
        raise RepoRefError("git transport helpers (ext::) are not allowed")
    if lowered.startswith("file:"):
        raise RepoRefError("file:// URLs are not allowed: use owner/repo or a GitHub URL")

    if match := SHORTHAND.match(text):
        return _checked(default_host, match.group(1), match.group(2), [], allowed)
    if lowered.startswith("git@"):
        host, _, path = text[4:].partition(":")
        if not path or "/" in host:
            raise RepoRefError("an SSH reference looks like git@github.com:owner/repo.git")
        return _from_path(host, path, allowed)
    if "://" not in text:
        if "." not in text.split("/", 1)[0]:
            raise RepoRefError(
                f"{text!r} is not a repository reference: use owner/repo or a GitHub URL"
            )
        text = "https://" + text  # github.com/owner/repo
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. a host with characters that NFKC-normalize to '/' or '@'
        raise RepoRefError("the URL is not valid: use an https:// GitHub URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http", "ssh", "git"):
        raise RepoRefError(f"{scheme}:// URLs are not allowed: use an https:// GitHub URL")
    if parts.password is not None or (parts.username and scheme != "ssh"):
        raise RepoRefError(
            "the URL carries credentials: remove them (and revoke that token, it has been shared)"
        )
    if scheme == "ssh" and parts.username not in (None, "git"):
        raise RepoRefError("an ssh:// reference must use the git user: ssh://git@github.com/o/r")
    try:
        port = parts.port
    except ValueError:
        raise RepoRefError("the URL has an invalid port") from None
    if port is not None and port not in (443, 80, 22):
        raise RepoRefError(f"the URL names port {port}: only the host's standard port is allowed")
    if "%" in parts.path:
        raise RepoRefError("percent-encoded repository paths are not allowed")
    return _from_path(parts.hostname or "", parts.path, allowed)


def _from_path(host: str, path: str, allowed: set[str]) -> GitHubRef:
    _check_host(host, allowed)
    segments = path.strip("/").split("/")
    if len(segments) < 2:
        raise RepoRefError("a GitHub reference needs both an owner and a repository: owner/repo")
    owner, repo, *rest = segments
    return _checked(host, owner, repo, rest, allowed)


def _check_host(host: str, allowed: set[str]) -> str:
    host = host.lower().rstrip(".")
    if host.startswith("www."):
        host = host[4:]
    if host not in allowed:
        names = ", ".join(sorted(allowed))
        raise RepoRefError(f"{host or 'that host'} is not a GitHub host this server uses ({names})")
    return host


def _checked(host: str, owner: str, repo: str, rest: list[str], allowed: set[str]) -> GitHubRef:
    host = _check_host(host, allowed)
    if repo.lower().endswith(".git"):
        repo = repo[:-4]
    if not OWNER.match(owner) or owner.endswith("-"):
        raise RepoRefError(f"{owner!r} is not a valid GitHub owner name")
    if not REPO.match(repo) or repo in (".", ".."):
        raise RepoRefError(f"{repo!r} is not a valid GitHub repository name")
    branch: str | None = None  # for /tree/<branch>/<path>: the whole remainder; the host
    pull: int | None = None  # finds the longest prefix that is a branch
    if len(rest) >= 2 and rest[0] == "tree":
        branch = check_branch_name("/".join(rest[1:]).strip("/"))
    elif len(rest) >= 2 and rest[0] == "pull":
        if not rest[1].isdigit():
            raise RepoRefError("a pull request link ends in /pull/<number>")
        pull = int(rest[1])
    return GitHubRef(host=host, owner=owner, repo=repo, branch=branch, pull=pull)


def check_branch_name(branch: str) -> str:
    """A branch name safe to put in a refspec and a URL: letters, digits, `._/+-`, no `..`,
    no leading `-`; RepoRefError otherwise. The one check every host and front end uses."""
    if (
        not BRANCH_PART.match(branch)
        or ".." in branch
        or branch.startswith(("-", "/"))
        or branch.endswith(("/", ".lock", "."))
        or "//" in branch
    ):
        raise RepoRefError(f"{branch!r} is not a valid branch name")
    return branch


class RepoAllowlist:
    """ALLOWED_REPOS: patterns such as `acme/*` or `acme/widgets`; empty allows everything.

    `*` and `?` stay within one path segment (fnmatch's would cross `/`, so `widgets*` allowed
    `widgets/vendor/lib.git`); `**` is the explicit way to say any depth.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = [p.strip().lower() for p in patterns if p.strip()]
        self._compiled = [re.compile(_glob_to_regex(p)) for p in self.patterns]

    def allows(self, name: str) -> bool:
        if not self.patterns:
            return True
        return any(pattern.fullmatch(name.lower()) for pattern in self._compiled)

    def check(self, name: str) -> None:
        if not self.allows(name):
            raise RepoRefError(
                f"{name} is not in ALLOWED_REPOS on this server ({', '.join(self.patterns)})"
            )


def _glob_to_regex(pattern: str) -> str:
    """`**` any characters, `*` any but `/`, `?` one but `/`; everything else literal."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    table = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return "".join(table.get(part, re.escape(part)) for part in parts)
