"""Where repositories come from and where branches and pull requests go: the `GitHost` protocol."""

from backspace.orchestrator.githosts.base import (
    BasePayload,
    GitHost,
    GitHostError,
    PullRequest,
    PullRequestDraft,
    RepoRef,
    RepoRefError,
    ResolvedRepo,
)

__all__ = [
    "BasePayload",
    "GitHost",
    "GitHostError",
    "PullRequest",
    "PullRequestDraft",
    "RepoRef",
    "RepoRefError",
    "ResolvedRepo",
]
