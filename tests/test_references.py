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
from tests.helpers import REFUSED

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
