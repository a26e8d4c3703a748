"""Repository references: every form people paste is reduced to (host, owner, repo) or refused
with the reason; ALLOWED_REPOS limits what may be touched at all."""

from __future__ import annotations

import pytest

from backspace.orchestrator.githosts.base import RepoRefError
from backspace.orchestrator.githosts.references import (
    GitHubRef,
    RepoAllowlist,
    looks_like_github,
    parse_github_reference,
)

ACCEPTED: list[tuple[str, GitHubRef]] = [
    ("https://github.com/acme/widgets", GitHubRef("github.com", "acme", "widgets")),
    ("https://github.com/acme/widgets.git", GitHubRef("github.com", "acme", "widgets")),
    ("https://github.com/acme/widgets/", GitHubRef("github.com", "acme", "widgets")),
    ("http://github.com/acme/widgets", GitHubRef("github.com", "acme", "widgets")),
    ("https://www.github.com/acme/widgets", GitHubRef("github.com", "acme", "widgets")),
    ("https://GitHub.com/acme/widgets", GitHubRef("github.com", "acme", "widgets")),
    ("github.com/acme/widgets", GitHubRef("github.com", "acme", "widgets")),
    ("https://github.com/acme/widgets?tab=readme#top", GitHubRef("github.com", "acme", "widgets")),
    (
        "https://github.com/acme/widgets/tree/develop",
        GitHubRef("github.com", "acme", "widgets", "develop"),
    ),
    (
        "https://github.com/acme/widgets/tree/feature/x/src/a.py",
        GitHubRef("github.com", "acme", "widgets", "feature/x/src/a.py"),
    ),
    (
        "https://github.com/acme/widgets/pull/12",
        GitHubRef("github.com", "acme", "widgets", pull=12),
    ),
    ("https://github.com/acme/widgets/issues/3", GitHubRef("github.com", "acme", "widgets")),
    ("git@github.com:acme/widgets.git", GitHubRef("github.com", "acme", "widgets")),
    ("git@github.com:acme/widgets", GitHubRef("github.com", "acme", "widgets")),
    ("ssh://git@github.com/acme/widgets.git", GitHubRef("github.com", "acme", "widgets")),
    ("acme/widgets", GitHubRef("github.com", "acme", "widgets")),
    ("acme/widgets.git", GitHubRef("github.com", "acme", "widgets")),
    ("Acme-Corp/my.repo_name-2", GitHubRef("github.com", "Acme-Corp", "my.repo_name-2")),
    ("<https://github.com/acme/widgets|acme/widgets>", GitHubRef("github.com", "acme", "widgets")),
    ("<https://github.com/acme/widgets>", GitHubRef("github.com", "acme", "widgets")),
    ("  acme/widgets  ", GitHubRef("github.com", "acme", "widgets")),
]

REFUSED: list[tuple[str, str]] = [
    ("https://x-access-token:ghp_secret@github.com/acme/widgets", "credentials"),
    ("https://user@github.com/acme/widgets", "credentials"),
    ("https://github.com@evil.com/acme/widgets", "credentials"),
    ("https://evil.com#@github.com/acme/widgets", "evil.com is not a GitHub host"),
    ("https://github.com.evil.com/acme/widgets", "not a GitHub host"),
    ("https://gitlab.com/acme/widgets", "not a GitHub host"),
    ("https://github.com:8443/acme/widgets", "port 8443"),
    ("https://github.com:99999/acme/widgets", "invalid port"),
    ("git@evil.com:acme/widgets.git", "not a GitHub host"),
    ("ssh://root@github.com/acme/widgets", "git user"),
    ("ext::sh -c touch% /tmp/pwned", "spaces"),
    ("ext::sh", "ext::"),
    ("file:///etc/passwd", "file://"),
    ("FILE:///etc/passwd", "file://"),
    ("ftp://github.com/acme/widgets", "ftp://"),
    ("--upload-pack=touch /tmp/x", "cannot start with '-'"),
    ("-oProxyCommand=x", "cannot start with '-'"),
    ("ssh://-oProxyCommand=x/acme/widgets", "not a GitHub host"),
    ("https://github.com/acme", "owner and a repository"),
    ("https://github.com/-acme/widgets", "not a valid GitHub owner"),
    ("https://github.com/acme-/widgets", "not a valid GitHub owner"),
    ("https://github.com/acme/..", "not a valid GitHub repository"),
    ("https://github.com/acme/wid%2Fgets", "percent-encoded"),
    ("acme/wid gets", "spaces"),
    ("acme/widgets\n", "acme/widgets"),  # a trailing newline is trimmed, so this one is fine...
    ("acme/../etc", "not a repository reference"),
    ("https://github.com/acme/widgets/tree/--exec=id", "not a valid branch"),
    ("https://github.com/acme/widgets/tree/a..b", "not a valid branch"),
    ("https://github.com/acme/widgets/pull/abc", "/pull/<number>"),
    ("", "empty"),
    ("<>", "empty"),
    ("a" * 40 + "/widgets", "not a valid GitHub owner"),
    ("acme/" + "r" * 101, "not a valid GitHub repository"),
    ("acme/widgets\x00", "control characters"),
]


@pytest.mark.parametrize(("reference", "expected"), ACCEPTED)
def test_accepted_forms(reference: str, expected: GitHubRef) -> None:
    assert parse_github_reference(reference) == expected
    assert looks_like_github(reference)


@pytest.mark.parametrize(("reference", "reason"), REFUSED)
def test_refused_forms_say_why(reference: str, reason: str) -> None:
    if reference == "acme/widgets\n":  # stripped like any pasted value
        assert parse_github_reference(reference).full_name == "acme/widgets"
        return
    with pytest.raises(RepoRefError) as caught:
        parse_github_reference(reference)
    assert reason in str(caught.value)
    assert "ghp_secret" not in str(caught.value)


def test_enterprise_hosts_are_accepted_only_when_configured() -> None:
    ghe = parse_github_reference("https://ghe.corp.example/team/tool", ["ghe.corp.example"])
    assert ghe == GitHubRef("ghe.corp.example", "team", "tool")
    assert parse_github_reference("team/tool", ["ghe.corp.example"]).host == "ghe.corp.example"
    with pytest.raises(RepoRefError, match="not a GitHub host"):
        parse_github_reference("https://github.com/team/tool", ["ghe.corp.example"])
    with pytest.raises(RepoRefError, match="not a GitHub host"):
        parse_github_reference("https://ghe.corp.example/team/tool")


def test_local_forms_are_not_mistaken_for_github() -> None:
    for value in ("/srv/repos/widgets", "local:widgets", "widgets"):
        assert not looks_like_github(value)


def test_allowed_repos_patterns() -> None:
    everyone = RepoAllowlist([])
    assert everyone.allows("anyone/anything")
    allow = RepoAllowlist(["acme/*", "tools/widgets", " "])
    assert allow.allows("acme/widgets") and allow.allows("ACME/Gadgets")
    assert allow.allows("tools/widgets") and not allow.allows("tools/gadgets")
    assert not allow.allows("acmeco/widgets") and not allow.allows("evil/acme")
    with pytest.raises(RepoRefError, match="not in ALLOWED_REPOS"):
        allow.check("evil/widgets")
