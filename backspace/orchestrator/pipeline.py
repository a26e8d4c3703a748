"""One run, stage by stage: sandbox, cloning, agent, validating, pushing, pr.

Each stage emits `progress`. A stage that cannot go on raises a BackspaceError (errors.py):
its own RunFailure, or whatever the sandbox, git host or model raised, as it was raised. The
runner turns it into the run's one `error` and its `complete`. The sandbox is deleted in a
shielded `finally`, whatever happens, cancellation included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backspace.orchestrator.agent import AgentLimits, AgentResult, Model, prompts
from backspace.orchestrator.egress.gate import Gate, Phase
from backspace.orchestrator.engines import DEFAULT_ENGINE, Engine, EngineJob, EngineRun
from backspace.orchestrator.engines import unknown_engine as unknown_engine
from backspace.orchestrator.engines.backspace_loop import BackspaceLoop
from backspace.orchestrator.environment.blocked import BlockedReporter
from backspace.orchestrator.environment.layer import Layer
from backspace.orchestrator.environment.policy import EnvironmentPolicy
from backspace.orchestrator.environment.receipt import Receipt, environment_section
from backspace.orchestrator.environment.setup import EnvironmentPlan, Prepared, Setup
from backspace.orchestrator.environment.verification import Verification
from backspace.orchestrator.errors import GitHostError, PolicyError, RunFailure
from backspace.orchestrator.events import EventType, RunStatus, Stage
from backspace.orchestrator.family import (
    BranchCommits,
    FamilyStart,
    branch_bundle,
    check_out,
    family_start,
    pr_diff,
)
from backspace.orchestrator.githosts.base import (
    BasePayload,
    GitHost,
    PullRequestDraft,
    PullRequestState,
    ResolvedRepo,
)
from backspace.orchestrator.githosts.base_payload import place
from backspace.orchestrator.publish import (
    Change,
    Identity,
    Policy,
    commit_in_sandbox,
    find_secrets,
    import_change,
    prepare_index,
)
from backspace.orchestrator.pull_request import (
    branch_name,
    commit_message,
    followup_comment,
    render_body,
    runs_row,
    title_for,
    with_run,
)
from backspace.orchestrator.redact import Redactor
from backspace.orchestrator.run import Outcome, RunContext
from backspace.orchestrator.sandboxes.base import Sandbox, SandboxProvider
from backspace.telemetry import Telemetry
from backspace.telemetry.tracing import Tracing, span

log = logging.getLogger(__name__)


def bundle_path(sandbox: Sandbox, run_id: str, kind: str) -> str:
    """Where a bundle lives inside the sandbox: in its tmpdir, which goes with it (unsandboxed,
    that is the run's own directory, not the host's /tmp); unique per run."""
    return f"{sandbox.tmpdir}/backspace-{run_id[:8]}-{kind}.bundle"


def payload_path(sandbox: Sandbox, run_id: str, kind: str) -> str:
    """Where the base payload (a tar) is uploaded in the sandbox, next to the bundles."""
    return f"{sandbox.tmpdir}/backspace-{run_id[:8]}-{kind}.tar"


@dataclass(frozen=True)
class PipelineSettings:
    identity: Identity
    limits: AgentLimits
    tool_mode: str = "builtin"
    environment: EnvironmentPolicy = field(default_factory=EnvironmentPolicy)
    max_bundle_bytes: int = 50 * 1024 * 1024
    policy: Policy = field(default_factory=Policy)
    draft: bool = True
    engine: str = DEFAULT_ENGINE  # BACKSPACE_ENGINE: when a request names none


class Pipeline:
    def __init__(
        self,
        *,
        sandboxes: SandboxProvider,
        hosts: Mapping[str, GitHost],
        model_factory: Callable[[], Model],
        settings: PipelineSettings,
        redactor: Redactor,
        engines: Mapping[str, Engine] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.sandboxes = sandboxes
        # Telemetry is optional: without it, no spans (tracing off) and no metrics.
        self.tracing = telemetry.tracing if telemetry is not None else Tracing()
        self.metrics = telemetry.metrics if telemetry is not None else None
        self.engines: Mapping[str, Engine] = engines or {
            DEFAULT_ENGINE: BackspaceLoop(settings.tool_mode)  # type: ignore[arg-type]
        }
        self.hosts = hosts
        self.model_factory = model_factory
        self.settings = settings
        self.redactor = redactor
        self.setup = Setup(sandboxes, settings.environment)
        self.verification = Verification(sandboxes, self.setup)

    async def run(self, ctx: RunContext) -> Outcome:
        # The run's trace: a root span from when it was queued, its stages as children.
        with self.tracing.run(ctx, ctx.request.engine or self.settings.engine):
            return await self._run(ctx)

    async def _run(self, ctx: RunContext) -> Outcome:
        host = self.hosts[ctx.request.repo.host]
        ctx.progress(Stage.SANDBOX, "Creating the sandbox")
        # Fails at once when no model is configured. On a worker thread: the first call imports
        # the model SDK (about a second), which must not stop the event loop.
        model = await asyncio.to_thread(self.model_factory)
        # The scratch directory holds the host-side repository and the change's bundle (the base
        # payload lives in the host's cache): made and removed on a worker thread, so a big one
        # never stops the event loop.
        scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="backspace-run-"))
        try:
            # The run's own credentials (a GitHub App's token for this repository), revoked
            # when the run ends however it ends; `held` ends the run's use of the cached base
            # payload: until then it is not evicted.
            async with host.run_access(ctx.request.repo):
                with contextlib.ExitStack() as held:
                    async with contextlib.AsyncExitStack() as sandboxes:
                        return await self._stages(ctx, host, model, scratch, sandboxes, held)
        finally:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, scratch, True))

    async def _stages(
        self,
        ctx: RunContext,
        host: GitHost,
        model: Model,
        scratch: Path,
        sandboxes: contextlib.AsyncExitStack,
        held: contextlib.ExitStack,
    ) -> Outcome:
        request = ctx.request
        # The repository is looked up before the sandbox exists (its file picks the sandbox's
        # environment), so a git host that fails here fails the `sandbox` stage.
        ctx.progress(Stage.SANDBOX, f"Looking up {request.repo.name}")
        repo = await host.resolve(request.repo, request.base_branch)
        family = await family_start(ctx, host, repo)
        head_repo = family.head_repo or repo  # where the agent starts: the base, or the branch
        base_repo = family.base_repo or repo  # its environment: always a commit of the base
        # The repository's .backspace.toml and its cache key are read on the host, from the base
        # commit, so that the sandbox starts from its cached environment at once.
        git_dir = await host.prepare(head_repo, scratch)
        env_dir = (
            git_dir if base_repo is head_repo else await host.prepare(base_repo, scratch / "env")
        )
        plan = await self.setup.plan(ctx, env_dir, base_repo)
        # A follow-up's branch travels as the base's payload plus a bundle of the commits since.
        branch_commits = (
            await branch_bundle(
                git_dir, base_repo.base_sha, head_repo.base_sha, scratch / "branch.bundle"
            )
            if family.continuing
            else None
        )
        payload_repo = base_repo if branch_commits else head_repo
        blocked = BlockedReporter(ctx)
        gate = Gate(blocked)
        # Started before the sandbox: an engine may need something bound into it (a gateway).
        engine = await self._engine(ctx, sandboxes)
        engine_name = ctx.request.engine or self.settings.engine
        backend = self.sandboxes.name
        with span("sandbox.create", {"backspace.sandbox.backend": backend}):
            began = time.monotonic()
            sandbox = await self.sandboxes.create(
                ctx.run_id, layer=plan.layer, gate=gate, **engine.sandbox_options
            )
            if self.metrics is not None:
                self.metrics.sandbox_created(backend, time.monotonic() - began)
        sandboxes.push_async_callback(_close, sandbox)

        ctx.progress(Stage.CLONING, f"Getting {request.repo.name} into the sandbox")
        where = (
            f"Branch {head_repo.base_branch} of pull request #{family.continuing.number} "
            f"at {head_repo.base_sha[:12]}"
            if family.continuing
            else f"Base: {repo.base_branch} at {repo.base_sha[:12]}"
        )
        ctx.emit(
            EventType.PROGRESS,
            {"stage": str(Stage.CLONING), "message": where, "percentage": Stage.CLONING.percentage},
        )
        with span("git.clone"):
            base = await host.base_payload(payload_repo, scratch)
            held.callback(base.release)
            ctx.emit(
                EventType.PROGRESS,
                {
                    "stage": str(Stage.CLONING),
                    "message": base.describe(),
                    "percentage": Stage.CLONING.percentage,
                },
            )
            # Setup runs on a commit of the base (reviewed content); a follow-up's branch head is
            # checked out over what it made (and at once when no setup or maintenance runs here).
            # Without a bundle (the branch's history does not reach the base here), the base is
            # checked out for setup when the payload's history has it.
            setup_runs = plan.repo.setup is not None and (
                plan.layer is None or plan.repo.maintenance is not None
            )
            setup_at = (
                base_repo.base_sha
                if family.continuing and not branch_commits and setup_runs
                else None
            )
            branch_now = (
                BranchCommits(branch_commits, bundle_path(sandbox, ctx.run_id, "branch"), head_repo)
                if branch_commits
                else None
            )
            start = await self._clone(
                ctx,
                base,
                sandbox,
                payload_path(sandbox, ctx.run_id, "base"),
                plan.layer,
                setup_at,
                branch_now if branch_now and not setup_runs else None,
            )
        with span("setup"):
            prepared = await self.setup.prepare(ctx, sandbox, plan, setup_at or start)
        if branch_now and setup_runs:
            start = await branch_now.bring(sandbox)
        elif setup_at and setup_at != start:
            await check_out(sandbox, base.branch, start)
        # backspace's index of the checkout, so the commit hashes only what the agent changed.
        index = await prepare_index(sandbox, start, bundle_path(sandbox, ctx.run_id, "out"))

        ctx.progress(Stage.AGENT, "The agent is working")
        await sandbox.open_network(Phase.AGENT, plan.network.agent)
        diff = await pr_diff(sandbox, family.diff_base) if family.continuing else None
        with span(
            "agent", {"gen_ai.operation.name": "invoke_agent", "backspace.engine": engine_name}
        ):
            result = await self._agent(
                ctx, model, sandbox, repo, plan, prepared, family, diff, engine
            )

        ctx.progress(Stage.VALIDATING, "Checking the change")
        # What people see (title, branch, body) never carries a secret, even one in the prompt.
        # Redacted before it is sanitised too: a sanitised secret might no longer match.
        shown_prompt = self.redactor.text(request.prompt)
        redact = self.redactor.text
        shown = replace(
            result,
            title=redact(result.title or ""),
            body=redact(result.body or ""),
            tests=redact(result.tests or ""),
            message=redact(result.message),
        )
        # The only host the agent's text may name in a link: the repository's own.
        own_host = urlsplit(repo.web_url).hostname if repo.web_url else None
        title = self.redactor.text(title_for(shown.title, shown_prompt, own_host))
        message = commit_message(title, ctx.run_id, request.co_author)
        out_bundle = bundle_path(sandbox, ctx.run_id, "out")
        change = await self._take_change(
            sandbox, git_dir, start, head_repo, scratch, message, out_bundle, prepared, index
        )
        if change is None:
            if result.outcome in ("turn_limit", "cost_limit"):
                raise RunFailure(
                    result.outcome,
                    f"The agent stopped: {result.message}, before it changed anything.",
                )
            return Outcome(RunStatus.NO_CHANGES, "The agent made no changes to the repository.")
        leaked = find_secrets(change.diff, self.redactor.values)
        if leaked:
            raise RunFailure(
                "secret_in_diff",
                "The change was not published: it contains " + "; ".join(sorted(set(leaked))) + ".",
            )
        # The agent's sandbox is done with: verification runs in another, on the published tree.
        await sandboxes.aclose()
        receipt = None
        if plan.verify:
            with span("verify"):
                receipt = await self.verification.run(
                    ctx,
                    plan=plan,
                    prepared=prepared,
                    base=base,
                    change_bundle=scratch / "out.bundle",
                    branch_bundle=branch_commits,
                    tree=change.tree,
                    gate=Gate(blocked),
                )
            ctx.emit(
                EventType.VERIFICATION,
                receipt.to_event(draft=self.settings.draft or not receipt.passed),
            )

        tests = (
            receipt.markdown(cost_usd=result.usage.cost_usd, keep_host=own_host)
            if receipt
            else None
        )
        row = runs_row(
            run_id=ctx.run_id,
            run_url=ctx.run_url,
            prompt=shown_prompt,
            verification=_verdict(receipt),
            cost_usd=result.usage.cost_usd,
            keep_host=own_host,
        )
        if family.continuing is not None:
            return await self._update(
                ctx, host, head_repo, git_dir, change, family.continuing, family.diff_base,
                title=title, shown=shown, shown_prompt=shown_prompt, tests=tests, row=row,
                own_host=own_host, receipt=receipt,
            )  # fmt: skip

        branch = branch_name(shown_prompt, ctx.run_id)
        ctx.progress(Stage.PUSHING, f"Pushing branch {branch}")
        with span("git.push"):
            await host.push(repo, git_dir, change.head_sha, branch)

        ctx.progress(Stage.PR, "Opening the pull request")
        draft = PullRequestDraft(
            run_id=ctx.run_id,
            title=title,
            body=self.redactor.text(
                render_body(
                    prompt=shown_prompt,
                    requester=request.requester,
                    result=shown,
                    change=change,
                    tests=tests,
                    environment=environment_section(plan, prepared, blocked.attempts, own_host),
                    run_url=ctx.run_url,
                    run_id=ctx.run_id,
                    keep_host=own_host,
                    runs_row=row,
                    notes=family.notes,
                    closes_issue=request.closes_issue,
                )
            ),
            branch=branch,
            head_sha=change.head_sha,
            files=change.files,
            additions=change.additions,
            deletions=change.deletions,
            diff=change.diff,
            draft=self.settings.draft
            or result.outcome != "finished"
            or (receipt is not None and not receipt.passed),
        )
        with span("pr.create"):
            pr = await host.open_pull_request(repo, draft)
        ctx.emit(
            EventType.PR_CREATED,
            _published(pr.url, pr.number, branch, repo.base_sha, title, change, draft=pr.draft),
        )
        verdict = ""
        if receipt is not None and not receipt.passed:
            verdict = " as a draft: verification failed"
        return Outcome(
            RunStatus.SUCCEEDED,
            f"Opened {pr.url}{verdict}",
            pr_url=pr.url,
            pr_number=pr.number,
            summary=_summary(title, shown.body),
        )

    async def _update(
        self,
        ctx: RunContext,
        host: GitHost,
        start_repo: ResolvedRepo,
        git_dir: Path,
        change: Change,
        pr: PullRequestState,
        diff_base: str | None,
        *,
        title: str,
        shown: AgentResult,
        shown_prompt: str,
        tests: str | None,
        row: str,
        own_host: str | None,
        receipt: Receipt | None,
    ) -> Outcome:
        """A follow-up's publication: a new commit on the family's branch (a fast-forward, never
        forced: if someone pushed meanwhile, the push is refused), then the same PR updated."""
        branch = start_repo.base_branch
        ctx.progress(Stage.PUSHING, f"Pushing a new commit to {branch}")
        try:
            with span("git.push"):
                await host.push(start_repo, git_dir, change.head_sha, branch)
        except GitHostError as exc:
            if exc.code != "push_rejected":
                raise
            raise GitHostError(
                "branch_moved",
                f"{branch} moved while this follow-up worked (someone pushed to it), and "
                f"backspace never force-pushes: send the follow-up again to build on it "
                f"({exc.message})",
                retryable=True,
            ) from exc
        ctx.progress(Stage.PR, f"Updating pull request #{pr.number}")
        comment = self.redactor.text(
            followup_comment(
                prompt=shown_prompt,
                requester=ctx.request.requester,
                result=shown,
                change=change,
                commit=change.head_sha,
                tests=tests,
                run_url=ctx.run_url,
                run_id=ctx.run_id,
                keep_host=own_host,
            )
        )
        with span("pr.update"):
            updated = await host.update_pull_request(
                start_repo, pr.number, body=with_run(pr.body, row), comment=comment
            )
        published = _published(
            updated.url, updated.number, branch, diff_base, title, change, draft=pr.draft
        )
        ctx.emit(EventType.PR_UPDATED, {**published, "commit": change.head_sha})
        verdict = ""
        if receipt is not None and not receipt.passed:
            verdict = " (verification failed: see the comment)"
        return Outcome(
            RunStatus.SUCCEEDED,
            f"Updated {updated.url} with {change.head_sha[:12]}{verdict}",
            pr_url=updated.url,
            pr_number=updated.number,
            summary=_summary(title, shown.body),
        )

    async def _clone(
        self,
        ctx: RunContext,
        base: BasePayload,
        sandbox: Sandbox,
        remote: str,
        layer: Layer | None,
        setup_at: str | None = None,
        branch: BranchCommits | None = None,
    ) -> str:
        """Check the real base commit out in the sandbox from its shallow payload; return it.

        A sandbox made from a cached environment already has a repository (of the commit setup
        ran on): the payload's pack goes into it, unless that commit is this base, and the base
        is checked out over it; the environment's untracked files stay. `setup_at` (a
        follow-up's environment commit, in the payload's history) is checked out instead, when
        the shallow history holds it: the caller checks the base out after setup. `branch` (a
        follow-up's commits since the base) is fetched and its head checked out instead; its
        head is returned."""
        layer_base = layer.manifest.base_sha if layer is not None else None
        if not await place(sandbox, base, remote, layer_base=layer_base):
            ctx.progress(
                Stage.CLONING,
                f"The cached environment already holds {base.sha[:12]}: nothing to send",
            )
        if branch is not None:
            return await branch.bring(sandbox)
        if setup_at and setup_at != base.sha and await _has_commit(sandbox, setup_at):
            await check_out(sandbox, base.branch, setup_at)
        else:
            await check_out(sandbox, base.branch, base.sha)
        return base.sha

    async def _agent(
        self,
        ctx: RunContext,
        model: Model,
        sandbox: Sandbox,
        repo: ResolvedRepo,
        plan: EnvironmentPlan,
        prepared: Prepared,
        family: FamilyStart,
        pr_diff: str | None,
        engine: EngineRun,
    ) -> AgentResult:
        limits = self._limits(ctx)
        environment = prompts.environment_note(
            setup=prepared.ran,
            cached=prepared.layer is not None and prepared.description.startswith("cached"),
            agent_hosts=list(plan.network.agent),
            verify=list(plan.verify),
        )
        context, tree = await _repository_context(sandbox)
        first = prompts.first_message(
            # A secret pasted into the request never reaches the model, and so the sandbox.
            self.redactor.text(ctx.request.prompt),
            repo=repo.ref.name,
            base_branch=repo.base_branch,
            context=context,
            tree=tree,
            request_context=ctx.request.context,
            earlier=family.earlier,
            pr_diff=pr_diff,
            branch=family.branch,
        )
        result = await engine.run(
            EngineJob(sandbox, model, first, limits, environment, ctx.inbox, ctx.emit)
        )
        if result.outcome == "refusal":
            raise RunFailure("model_refusal", result.message)
        if result.outcome in ("turn_limit", "cost_limit"):
            ctx.emit(
                EventType.PROGRESS,
                {
                    "stage": str(Stage.AGENT),
                    "message": f"Limit reached: {result.message}",
                    "percentage": 80,
                },
            )
        return result

    def _limits(self, ctx: RunContext) -> AgentLimits:
        return AgentLimits(**{**self.settings.limits.__dict__, "deadline": ctx.deadline})

    async def _engine(self, ctx: RunContext, cleanup: contextlib.AsyncExitStack) -> EngineRun:
        """The run's engine (its request's, else BACKSPACE_ENGINE), started for this run."""
        name = ctx.request.engine or self.settings.engine
        engine = self.engines.get(name)
        if engine is None:
            known = ", ".join(sorted(self.engines))
            raise RunFailure(
                "engine_unavailable",
                f"{unknown_engine(name)} (this server offers: {known})",
            )
        return await engine.start(ctx, self._limits(ctx), cleanup)

    async def _take_change(
        self,
        sandbox: Sandbox,
        git_dir: Path,
        start: str,
        repo: ResolvedRepo,
        scratch: Path,
        message: str,
        remote: str,
        prepared: Prepared,
        index: str | None = None,
    ) -> Change | None:
        identity = self.settings.identity
        author = await self.hosts[repo.ref.host].author()
        if author is not None:  # a GitHub App's bot user, unless GITHUB_USERNAME/EMAIL are set
            identity = Identity(*author)
        tree = await commit_in_sandbox(
            sandbox,
            start,
            identity,
            message,
            remote,
            exclude=prepared.environment_paths,
            index=index,
        )
        if tree is None:
            return None
        bundle = scratch / "out.bundle"
        await sandbox.download(remote, bundle, max_bytes=self.settings.max_bundle_bytes)
        change = await import_change(
            git_dir,
            bundle,
            base_sha=repo.base_sha,
            identity=identity,
            message=message,
            policy=self.settings.policy,
        )
        if change is not None and change.tree != tree:
            raise PolicyError(
                "bad_bundle",
                "the change brought out of the sandbox is not the tree committed there; "
                "nothing was published",
            )
        return change


async def _has_commit(sandbox: Sandbox, sha: str) -> bool:
    result = await sandbox.exec(
        f"git cat-file -e {shlex.quote(sha + '^{commit}')}", timeout=30, max_output=500
    )
    return result.exit_code == 0


def _published(
    url: str,
    number: int,
    branch: str,
    base_sha: str | None,
    title: str,
    change: Change,
    *,
    draft: bool,
) -> dict[str, Any]:
    """What `pr_created` and `pr_updated` say about the pull request and the change."""
    return {
        "pr_url": url,
        "pr_number": number,
        "branch": branch,
        "base_sha": base_sha,
        "title": title,
        "files_changed": len(change.files),
        "additions": change.additions,
        "deletions": change.deletions,
        "draft": draft,
    }


def _verdict(receipt: Receipt | None) -> str:
    if receipt is None:
        return "not verified"
    return "passed" if receipt.passed else "**failed**"


def _summary(title: str, body: str | None) -> str:
    """What later runs of the family are told this run did: its title and summary."""
    return f"{title}\n\n{(body or '').strip()}".strip()[:4000]


CONTEXT_SEPARATOR = "\x1e"  # ASCII record separator: cannot appear in a path git prints


async def _repository_context(sandbox: Sandbox) -> tuple[dict[str, str], str]:
    """AGENTS.md, CLAUDE.md, the README head and the tracked files, in one sandbox command."""
    sep = CONTEXT_SEPARATOR
    limit = prompts.CONTEXT_FILE_LIMIT + 1000
    context_files = " ".join(prompts.CONTEXT_FILES)
    readmes = " ".join(prompts.README_NAMES)
    script = (
        f'for f in {context_files}; do [ -f "$f" ] && printf \'{sep}%s{sep}\' "$f" && head -c {limit} -- "$f"; done; '
        f'for f in {readmes}; do [ -f "$f" ] && printf \'{sep}%s{sep}\' "$f" && head -c {limit} -- "$f" && break; done; '
        f"printf '{sep}{sep}'; git ls-files | head -n 300"
    )
    result = await sandbox.exec(script, timeout=30, max_output=6 * limit)
    parts = result.output.split(sep)
    context = {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2) if parts[i]}
    tree = parts[-1].strip() if len(parts) > 1 else ""
    return context, tree


async def _close(sandbox: Sandbox) -> None:
    await asyncio.shield(sandbox.close())
