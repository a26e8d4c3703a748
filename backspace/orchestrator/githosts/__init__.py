"""Where repositories come from and where branches and pull requests go: the `GitHost` protocol."""

from backspace.orchestrator.githosts.base import (
    BaseBundle,
    GitHost,
    GitHostError,
    PullRequest,
    PullRequestDraft,
    RepoRef,
    RepoRefError,
    ResolvedRepo,
)

__all__ = [
    "BaseBundle",
    "GitHost",
    "GitHostError",
    "PullRequest",
    "PullRequestDraft",
    "RepoRef",
    "RepoRefError",
    "ResolvedRepo",
]
