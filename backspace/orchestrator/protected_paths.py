"""The paths a published change may not touch: what CI runs with the repository's secrets.

A workflow, a composite action under `.github/actions/`, a Jenkinsfile: each is code that runs
with more power than the agent ever had in its sandbox, on the next push or pull request. So a
change to one is published only when the operator says so. All of `.github/` is protected
unless BACKSPACE_ALLOW_WORKFLOW_CHANGES=true; BACKSPACE_PROTECTED_PATHS lists more, as
gitignore-style globs.
"""

from __future__ import annotations

from collections.abc import Iterable

from pathspec import PathSpec

GITHUB_DIR = ".github"
# CI entry points of the common systems, and who must review what: none of them is ordinary code.
DEFAULT_PROTECTED: tuple[str, ...] = (
    ".gitlab-ci.yml",
    ".gitlab/**",
    ".circleci/**",
    "Jenkinsfile",
    ".travis.yml",
    "azure-pipelines.yml",
    ".azure-pipelines/**",
    "bitbucket-pipelines.yml",
    ".buildkite/**",
    ".drone.yml",
    ".woodpecker.yml",
    ".woodpecker/**",
    "CODEOWNERS",
)


def parse_patterns(value: str) -> tuple[str, ...]:
    """The globs of a comma-separated setting; ValueError says what is wrong with one."""
    patterns = tuple(p.strip() for p in value.split(",") if p.strip())
    for pattern in patterns:
        if pattern.startswith("!"):
            raise ValueError(
                f"{pattern!r}: a pattern cannot un-protect a path (no leading '!'); "
                "list only what to protect"
            )
    return patterns


def under_github(path: str) -> bool:
    """Whether the path is `.github` or inside it (any case: a checkout may not tell them apart)."""
    lowered = path.lower()
    return lowered == GITHUB_DIR or lowered.startswith(GITHUB_DIR + "/")


class ProtectedPaths:
    """Matches repository paths against gitignore-style globs, case-insensitively.

    A path also counts when a protected directory would be below it: a file or symbolic link
    named `.circleci` stands where `.circleci/**` protects.
    """

    def __init__(self, patterns: Iterable[str] = DEFAULT_PROTECTED) -> None:
        self.patterns = tuple(patterns)
        self._specs = [
            (pattern, PathSpec.from_lines("gitignore", [pattern.lower()]))
            for pattern in self.patterns
        ]

    def match(self, path: str) -> str | None:
        """The first pattern that protects `path`, or None."""
        lowered = path.lower()
        for pattern, spec in self._specs:
            if spec.match_file(lowered) or spec.match_file(lowered + "/x"):
                return pattern
        return None
