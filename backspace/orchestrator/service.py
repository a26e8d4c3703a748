"""The one door of the orchestrator: what every front end (HTTP, Slack, the CLI) calls.

A front end turns what it was sent into `Service.admit(...)`, which checks the request (the
prompt, the repository and ALLOWED_REPOS, the git host, the model, the sandbox), records the run
and queues it, or raises one `Refusal`. The front end renders a refusal its own way (a JSON
problem, an ephemeral Slack reply, a CLI message and exit code); the orchestrator knows nothing
of HTTP statuses or Slack. Then the front end follows the run with `subscribe` and may `cancel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from backspace import __version__
from backspace.orchestrator.engines import DEFAULT_ENGINE, Engine
from backspace.orchestrator.errors import Kind as Kind
from backspace.orchestrator.errors import Reason as Reason
from backspace.orchestrator.errors import Refusal as Refusal
from backspace.orchestrator.events import Event
from backspace.orchestrator.gateway import ModelGateway
from backspace.orchestrator.githosts.base import GitHost, RepoRef, RepoRefError
from backspace.orchestrator.githosts.references import RepoAllowlist
from backspace.orchestrator.hub import EventHub
from backspace.orchestrator.inbox import Steer
from backspace.orchestrator.redact import Redactor
from backspace.orchestrator.run import RunRequest
from backspace.orchestrator.runner import NotAccepting, Runner
from backspace.orchestrator.sandboxes.base import SandboxProvider
from backspace.orchestrator.store import Run, RunStore, StoreError, StoreFull

log = logging.getLogger(__name__)
Gate = Callable[[], Awaitable[None] | None]  # a front end's last check: may ask the database


async def _passed(gate: Gate) -> None:
    """Run a front end's gate, awaiting it when it is a coroutine (the shared rate limit)."""
    checked = gate()
    if checked is not None:
        await checked


PROMPT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
CONTEXT_LIMIT = 20_000  # characters of a front end's context (an issue body) the agent is shown
FOLLOWUP_MODES = ("queue", "steer")


@dataclass(frozen=True)
class FollowUp:
    """What became of a follow-up: the run that carries it (a new one, or the running one it
    was steered into) and a sentence for the person who sent it."""

    run: Run
    steered: bool
    message: str


def _clean_context(context: str | None) -> str | None:
    """A front end's context without control characters, cut to CONTEXT_LIMIT."""
    if not context:
        return None
    text = PROMPT_CONTROL.sub("", context)
    return text if len(text) <= CONTEXT_LIMIT else text[:CONTEXT_LIMIT] + "\n[... cut ...]"


@dataclass(frozen=True)
class ServiceConfig:
    """The settings the door and the health report need (the rest stay with the parts)."""

    allowed_repos: list[str]
    max_prompt_chars: int
    model_configured: bool
    model: str
    model_base_url: str
    local_repos: Path | None = None
    janitor_interval: float = 300.0


@dataclass
class Service:
    config: ServiceConfig
    store: RunStore
    hub: EventHub
    runner: Runner
    sandboxes: SandboxProvider
    hosts: dict[str, GitHost]
    redactor: Redactor
    public_url: str
    close_model: Callable[[], Awaitable[None]]
    engines: Mapping[str, Engine] = field(default_factory=dict)  # name -> engine, for /health
    default_engine: str = DEFAULT_ENGINE
    # The model gateway, whose network entry (/gateway/<capability>) the HTTP app serves.
    gateway: ModelGateway | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list, init=False, repr=False)

    # --- the door --------------------------------------------------------------------------------
    async def admit(
        self,
        repo_url: str,
        prompt: str,
        *,
        base_branch: str | None = None,
        co_author: str | None = None,
        source: str = "api",
        requester: str | None = None,
        meta: dict[str, Any] | None = None,
        gate: Gate | None = None,
        context: str | None = None,
        closes_issue: int | None = None,
        engine: str | None = None,
    ) -> Run:
        """Check the request, then record and queue the run; a `Refusal` says why not.

        `gate` is a front end's own last check (the API's rate limit): it is called once every
        check here has passed, right before the run is recorded, so only a request that would
        start a run counts against it. What it raises passes through. `context` is text the
        agent sees beside the request (an issue's body); `closes_issue` goes into the PR body;
        `engine` picks the agent (None: the server's BACKSPACE_ENGINE).
        """
        self.check_prompt(prompt)
        try:
            ref = self.parse_repo(repo_url)
        except RepoRefError as exc:
            raise Refusal(Reason.REPOSITORY, str(exc), field="repo_url") from None
        request = RunRequest(
            repo_url=repo_url,
            repo=ref,
            prompt=prompt,
            base_branch=base_branch,
            co_author=co_author,
            source=source,
            requester=requester,
            # The engine is remembered with the run: the family's follow-ups keep it.
            meta={**(meta or {}), **({"engine": engine} if engine else {})},
            context=_clean_context(context),
            closes_issue=closes_issue,
            engine=engine,
        )
        return await self._submit(request, gate)

    async def follow_up(
        self,
        run_id: str,
        prompt: str,
        *,
        mode: str = "queue",
        source: str = "api",
        requester: str | None = None,
        co_author: str | None = None,
        meta: dict[str, Any] | None = None,
        gate: Gate | None = None,
        context: str | None = None,
    ) -> FollowUp:
        """Continue the family of `run_id` (any run of it): a new run on the same branch and PR,
        queued behind the family's running run; or, with `mode="steer"`, the words delivered to
        that run's agent at its next turn. A steer with no agent listening is queued instead.
        """
        if mode not in FOLLOWUP_MODES:
            raise Refusal(
                Reason.MODE,
                f'mode is {mode!r}: use "queue" (a new run after the current one) or '
                '"steer" (into the running run)',
                field="mode",
            )
        self.check_prompt(prompt)
        parent = await self.store.get_run(run_id)
        if parent is None:
            raise Refusal(Reason.UNKNOWN_RUN, f"there is no run {run_id}", subject=run_id)
        family_id = parent.family_id or parent.id
        context = _clean_context(context)
        if mode == "steer":
            if gate is not None:
                await _passed(gate)
            steered = await self.runner.steer(
                family_id, Steer(prompt=prompt, requester=requester, source=source, context=context)
            )
            if steered is not None:
                run = await self.store.get_run(steered)
                if run is not None:
                    return FollowUp(run, True, "delivered to the running run's agent")
            gate = None  # already counted
        latest = await self.store.family_runs(family_id)
        newest = latest[-1] if latest else parent
        try:
            ref = self.parse_repo(parent.repo_url)
        except RepoRefError as exc:
            raise Refusal(Reason.REPOSITORY, str(exc), field="repo_url") from None
        request = RunRequest(
            repo_url=parent.repo_url,
            repo=ref,
            prompt=prompt,
            base_branch=parent.base_branch,
            co_author=co_author,
            source=source,
            requester=requester,
            meta={
                **(meta or {}),
                **({"engine": parent.meta["engine"]} if parent.meta.get("engine") else {}),
            },
            context=context,
            parent_id=newest.id,
            family_id=family_id,
            engine=parent.meta.get("engine"),
        )
        run = await self._submit(request, gate)
        executing = await self.runner.executing_in_family(family_id)
        if executing is not None and executing != run.id:
            note = f"queued behind run {executing}, which is still working on this pull request"
            self.runner.note_queued_followup(executing, run, request)
        elif mode == "steer":
            note = "no run of this pull request was working, so it starts as a new run"
        else:
            note = "started as a new run on the same pull request"
        return FollowUp(run, False, note)

    async def _submit(self, request: RunRequest, gate: Gate | None) -> Run:
        """The checks every run shares (host, model, sandbox, the front end's gate), then the
        runner; one `Refusal` for whatever stops it."""
        ref = request.repo
        usable, message = self.hosts[ref.host].check()
        if not usable:
            raise Refusal(Reason.GIT_HOST, message, subject=ref.name)
        if not self.config.model_configured:
            raise Refusal(
                Reason.MODEL,
                "no model is configured: set ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL)",
            )
        usable, message = self.sandboxes.check()
        if not usable:
            raise Refusal(Reason.SANDBOX, message, subject=self.sandboxes.name)
        if gate is not None:
            await _passed(gate)
        try:
            return await self.runner.submit(request)
        except NotAccepting as exc:
            raise Refusal(Reason.SHUTTING_DOWN, str(exc), retry_after=5) from None
        except StoreFull as exc:
            raise Refusal(Reason.STORE_FULL, str(exc), retry_after=60) from None
        except StoreError as exc:
            raise Refusal(Reason.STORE_FAILING, str(exc)) from None

    def parse_repo(self, reference: str) -> RepoRef:
        """A reference becomes a RepoRef of a host this server knows and ALLOWED_REPOS allows,
        or a RepoRefError that says why not (Slack's command parser asks this too)."""
        value = reference.strip()
        if not value:
            raise RepoRefError("repo_url is empty: give a repository")
        if value.startswith("-"):
            raise RepoRefError("a repository reference cannot start with '-'")
        for host in self.hosts.values():
            ref = host.parse(value)
            if ref is not None:
                RepoAllowlist(self.config.allowed_repos).check(ref.name)
                return ref
        raise RepoRefError(
            "not a repository this server knows: use owner/repo or a GitHub URL, or an "
            "absolute path or local:<name> below BACKSPACE_LOCAL_REPOS"
        )

    def check_prompt(self, prompt: str) -> None:
        """A `Refusal` (field "prompt") for a prompt too long or with control characters.

        Control characters (NUL, terminal escapes) are refused: they end up in a branch, a commit
        message and a terminal, and no person types them. Tabs and newlines are fine.
        """
        limit = self.config.max_prompt_chars
        if len(prompt) > limit:
            raise Refusal(
                Reason.PROMPT,
                f"is {len(prompt)} characters long, more than the limit of {limit} characters "
                "(BACKSPACE_MAX_PROMPT_CHARS): shorten it",
                field="prompt",
            )
        if PROMPT_CONTROL.search(prompt):
            raise Refusal(
                Reason.PROMPT,
                "contains control characters (such as NUL or a terminal escape): remove them; "
                "tabs and newlines are fine",
                field="prompt",
            )

    # --- runs ------------------------------------------------------------------------------------
    async def get_run(self, run_id: str) -> Run | None:
        return await self.store.get_run(run_id)

    async def family(self, run_id: str) -> list[Run]:
        """Every run of `run_id`'s family (its PR's conversation), oldest first."""
        run = await self.store.get_run(run_id)
        if run is None:
            return []
        return await self.store.family_runs(run.family_id or run.id) or [run]

    async def run_for_pull_request(self, pr_url: str) -> Run | None:
        """The newest run of the family that owns the pull request at `pr_url`."""
        run = await self.store.run_for_pull_request(pr_url)
        if run is None:
            return None
        family = await self.store.family_runs(run.family_id or run.id)
        return family[-1] if family else run

    async def list_runs(self, limit: int = 50, before: str | None = None) -> list[Run]:
        return await self.store.list_runs(limit, before=before)

    def subscribe(self, run_id: str, after: int = 0) -> AsyncIterator[Event]:
        """The run's events with seq > after: the past from the store, then live ones."""
        return self.hub.subscribe(run_id, after)

    async def cancel(self, run_id: str) -> bool:
        """Cancel a queued or running run; False when it is not live (unknown or finished)."""
        return await self.runner.cancel(run_id)

    def run_url(self, run_id: str) -> str:
        return f"{self.public_url}/api/runs/{run_id}"

    # --- life cycle ------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Recover what a previous process left, and sweep orphaned sandboxes from now on."""
        usable, message = self.sandboxes.check()
        if not usable:
            log.error("the %s sandbox cannot be used: %s", self.sandboxes.name, message)
        await self.store.open()
        await self.runner.start()
        self._tasks.append(asyncio.create_task(self._janitor(), name="sandbox-janitor"))
        for host in self.hosts.values():  # a GitHub App signs in once, so /health can say so
            probe = getattr(host, "probe", None)
            if probe is not None and getattr(host, "mode", "") == "app":
                self._tasks.append(asyncio.create_task(_probe(host.name, probe), name="probe"))

    def preload_model_sdk(self) -> None:
        """Import the model SDK ahead of the first run, in a worker thread (it takes about a
        second) so that the loop keeps serving; then keep the GC from walking it."""
        if self.config.model_configured:
            work = asyncio.to_thread(_import_model_sdk)
            self._tasks.append(asyncio.create_task(work, name="preload-model-sdk"))

    async def aclose(self) -> None:
        """Stop the runner (grace period, then cancel), close the clients and the store."""
        for task in self._tasks:
            if task.get_name() in ("sandbox-janitor", "probe"):
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        await self.runner.shutdown()
        await self.close_model()
        close = getattr(self.sandboxes, "aclose", None)
        if close is not None:
            await close()
        for host in self.hosts.values():
            close_host = getattr(host, "aclose", None)
            if close_host is not None:
                await close_host()
        await self.store.aclose()

    async def _janitor(self) -> None:
        """Every few minutes, delete sandboxes no live run owns (a crash never leaks them)."""
        while True:
            await asyncio.sleep(self.config.janitor_interval)
            try:
                removed = await self.sandboxes.cleanup_orphans(await self.runner.live_run_ids())
                if removed:
                    log.info("the janitor deleted %d sandboxes no live run owns", removed)
            except Exception:
                log.exception("the sandbox janitor failed")

    # --- health ----------------------------------------------------------------------------------
    async def health(self, *, show_paths: bool = False) -> dict[str, Any]:
        """What is configured and usable; file paths only when `show_paths`: they tell a
        stranger where the database and the repositories are."""
        hide = _hide_paths(self._paths()) if not show_paths else str
        config = self.config
        sandbox_ok, sandbox_message = self.sandboxes.check()
        store_ok = await self.store.ping()
        try:
            counts = await self.runner.counts()
        except StoreError:
            counts = {"queued": -1, "running": -1}
        room, store_message = self.store.headroom()
        store_ok = store_ok and room
        hosts = {}
        for name, host in self.hosts.items():
            usable, message = host.check()
            hosts[name] = {"usable": usable, "message": hide(message)}
            mode = getattr(host, "mode", None)
            if mode is not None:  # GitHub: "token" or "app" (a GitHub App, a token per run)
                hosts[name]["mode"] = mode
        ready = sandbox_ok and store_ok and config.model_configured
        return {
            "status": "ok" if ready else "degraded",
            "version": __version__,
            "accepting_runs": self.runner.accepting,
            "model": {
                "configured": config.model_configured,
                "name": config.model,
                "base_url": _without_userinfo(config.model_base_url),
                "message": "ready"
                if config.model_configured
                else "not configured: set ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL)",
            },
            "sandbox": {
                "backend": self.sandboxes.name,
                "usable": sandbox_ok,
                "message": hide(sandbox_message),
                **_sandbox_limits(self.sandboxes),
            },
            "git_hosts": hosts,
            "engines": self.engine_report(),
            "store": {
                "ok": store_ok,
                "kind": self.store.kind,
                # Where it is (a path; a host and database): for a caller with the key only.
                **(
                    {"path": str(getattr(self.store, "path", self.store.describe()))}
                    if show_paths
                    else {}
                ),
                "message": hide(store_message),
            },
            "runs": {
                "active": self.runner.active_count(),
                "queued": counts["queued"],
                "running": counts["running"],
                "max_concurrent": self.runner.limits.max_concurrent,
                # This process's name as a worker (its host and pid): for a caller with the key.
                **({"worker": self.runner.worker} if show_paths else {}),
            },
        }

    def engine_report(self) -> dict[str, Any]:
        """Which engine runs by default, and whether each can run here (Claude Code: whether
        its package is installed, and its version)."""
        report: dict[str, Any] = {"default": self.default_engine}
        for name, engine in self.engines.items():
            usable, message = engine.check()
            report[name] = {"usable": usable, "message": message}
            version = getattr(getattr(engine, "cli", None), "version", None)
            if version is not None:
                report[name]["version"] = version
        return report

    def _paths(self) -> list[str]:
        """The server's own files and directories, as they may appear in a message."""
        paths: list[Path | None] = [
            getattr(self.store, "path", None),
            self.config.local_repos,
            getattr(self.sandboxes, "root", None),
        ]
        names = {str(p) for p in paths if p} | {str(p.resolve()) for p in paths if p}
        return sorted((n for n in names if len(n) > 1), key=len, reverse=True)  # never "/"


def _hide_paths(paths: list[str]) -> Callable[[str], str]:
    def hide(message: str) -> str:
        for path in paths:
            message = message.replace(path, "(a path; ask with the API key)")
        return message

    return hide


def _sandbox_limits(provider: SandboxProvider) -> dict[str, Any]:
    """The limits a local sandbox enforces and the ones degraded here (a remote one has none)."""
    report = getattr(provider, "limits_report", None)
    return {"limits": report()} if report is not None else {}


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def _import_model_sdk() -> None:
    import gc

    import anthropic  # noqa: F401

    gc.freeze()


async def _probe(name: str, probe: Callable[[], Awaitable[tuple[bool, str]]]) -> None:
    """A git host's start-up sign-in (a GitHub App's `GET /app`): logged, and kept for /health."""
    ok, message = await probe()
    if ok:
        log.info("git host %s: %s", name, message)
    else:
        log.error("git host %s cannot authenticate: %s", name, message)
