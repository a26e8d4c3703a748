"""Where a run starts within its family (a pull request's conversation), and how the sandbox
gets the family's branch.

A first run starts from the base. A follow-up, while its PR is open, starts from the head of
the PR's branch as it is now (a commit someone else pushed is built on); when the PR was merged
or closed, or its branch is gone, it starts from the current base and opens a new PR.

The sandbox receives a follow-up's branch as the family's base payload (usually cached: the
first run made it) plus a thin bundle of the commits since (`base..head`, made on the host).
The environment is set up on the base commit, reviewed content, before the branch's head is
checked out over it: an earlier run's change (to `.backspace.toml`, to a build script) never
runs in setup, which has the network.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

from backspace.orchestrator.agent import prompts
from backspace.orchestrator.errors import RunFailure
from backspace.orchestrator.events import Stage
from backspace.orchestrator.githosts.base import GitHost, PullRequestState, ResolvedRepo
from backspace.orchestrator.githosts.gitcmd import GitError, git
from backspace.orchestrator.run import EarlierRun, RunContext
from backspace.orchestrator.sandboxes.base import Sandbox

BRANCH_REF = "refs/heads/backspace-branch"  # the branch's head, in the host's repository and bundle


@dataclass
class FamilyStart:
    """Nothing special for a first run; for a follow-up, what the earlier runs did and, while
    their PR is open, the branch's head to build on."""

    earlier: list[EarlierRun] = field(default_factory=list)
    continuing: PullRequestState | None = None  # the open PR this run updates
    head_repo: ResolvedRepo | None = None  # the repository at the branch's head
    base_repo: ResolvedRepo | None = None  # the repository at the family's base (its environment)
    branch: str | None = None
    notes: list[str] = field(default_factory=list)  # said in a new PR's body (old PR merged...)

    @property
    def diff_base(self) -> str | None:
        """Where the PR's changes start, for the agent's view of them."""
        return self.base_repo.base_sha if self.base_repo else None


async def family_start(ctx: RunContext, host: GitHost, repo: ResolvedRepo) -> FamilyStart:
    """Where this run starts: see the module's docstring."""
    cont = ctx.continuation
    if cont is None:
        return FamilyStart()
    if not (cont.branch and cont.pr_number):
        return FamilyStart(earlier=cont.earlier)
    pr = await host.pull_request(repo, cont.pr_number)
    head = await host.branch_head(repo, cont.branch) if pr.state == "open" else None
    if head is None:
        why = f"was {pr.state}" if pr.state != "open" else f"has lost its branch {cont.branch}"
        note = (
            f"This continues pull request #{pr.number}, which {why}: backspace opened a new "
            f"branch and pull request from the current {repo.base_branch}."
        )
        ctx.progress(Stage.SANDBOX, f"Pull request #{pr.number} {why}: starting a new one")
        return FamilyStart(earlier=cont.earlier, notes=[note])
    ctx.progress(Stage.SANDBOX, f"Continuing pull request #{pr.number} on {cont.branch}")
    return FamilyStart(
        earlier=cont.earlier,
        continuing=pr,
        head_repo=replace(repo, base_sha=head, base_branch=cont.branch),
        base_repo=replace(repo, base_sha=cont.base_sha or repo.base_sha),
        branch=cont.branch,
    )


async def branch_bundle(git_dir: Path, base: str, head: str, dest: Path) -> Path | None:
    """A bundle of `base..head` made in the host's repository of the run; None when `head`
    does not descend from `base` there (history rewritten, or deeper than the shallow fetch)."""
    try:
        await git("merge-base", "--is-ancestor", base, head, git_dir=git_dir)
    except GitError:
        return None
    await git("update-ref", BRANCH_REF, head, git_dir=git_dir)
    await git("bundle", "create", "--quiet", str(dest), BRANCH_REF, f"^{base}", git_dir=git_dir)
    return dest


@dataclass(frozen=True)
class BranchCommits:
    """A follow-up's branch on its way into the sandbox: the bundle of its commits since the
    base, where it is uploaded, and the repository at the branch's head."""

    bundle: Path
    remote: str
    head_repo: ResolvedRepo

    async def bring(self, sandbox: Sandbox) -> str:
        """Fetch the commits into the sandbox's repository (which holds the base) and check
        the head out over the working tree (the environment's files stay); the head."""
        head, branch = self.head_repo.base_sha, self.head_repo.base_branch
        await sandbox.upload(self.bundle, self.remote)
        q = shlex.quote
        result = await sandbox.exec(
            f"git fetch --quiet --no-tags {q(self.remote)} {BRANCH_REF} && rm -f {q(self.remote)} "
            f"&& git -c core.hooksPath=/dev/null checkout --quiet --force -B {q(branch)} {q(head)} "
            f'&& test "$(git rev-parse HEAD)" = {q(head)}',
            timeout=600,
            max_output=4000,
        )
        if result.exit_code != 0:
            raise RunFailure(
                "clone_failed",
                f"the pull request's branch could not be checked out in the sandbox: "
                f"{result.output[-300:]}",
                retryable=True,
            )
        return head


async def check_out(sandbox: Sandbox, branch: str, sha: str) -> None:
    q = shlex.quote
    result = await sandbox.exec(
        f"git -c core.hooksPath=/dev/null checkout --quiet --force -B {q(branch)} {q(sha)}\n"
        + f'test "$(git rev-parse HEAD)" = {q(sha)}\n',
        timeout=600,
        max_output=4000,
    )
    if result.exit_code != 0:
        raise RunFailure(
            "clone_failed",
            f"the repository could not be checked out in the sandbox: {result.output[-300:]}",
            retryable=True,
        )


NO_DIFF = "BACKSPACE_NO_DIFF"


async def pr_diff(sandbox: Sandbox, diff_base: str | None) -> str:
    """The PR's changes so far, for a follow-up's agent: the diff from the family's base to the
    checkout (one sandbox command), when the history there reaches that far."""
    unavailable = "(not available: the branch's history here does not reach its base)"
    if not diff_base:
        return unavailable
    q = shlex.quote
    limit = prompts.PR_DIFF_LIMIT + 1000
    result = await sandbox.exec(
        f"if git cat-file -e {q(diff_base + '^{commit}')} 2>/dev/null; then "
        f"git -c core.hooksPath=/dev/null diff --no-color --no-ext-diff --stat --patch "
        f"{q(diff_base)} HEAD | head -c {limit}; else echo {NO_DIFF}; fi",
        timeout=60,
        max_output=limit + 1000,
    )
    return unavailable if result.output.strip() == NO_DIFF else result.output
