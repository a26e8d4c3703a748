"""The composition root: Settings in, store, runner, git hosts, sandboxes and the web app out.

This is the one place that knows every implementation; everything else sees protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from backspace import __version__
from backspace.config import Settings, SettingsError
from backspace.http.ratelimit import RateLimiter
from backspace.orchestrator.agent import AgentLimits, AnthropicModel, Model
from backspace.orchestrator.githosts.base import GitHost, RepoRef, RepoRefError
from backspace.orchestrator.githosts.github import GitHubHost
from backspace.orchestrator.githosts.local import LocalGitHost
from backspace.orchestrator.githosts.references import RepoAllowlist
from backspace.orchestrator.hub import EventHub
from backspace.orchestrator.pipeline import Pipeline, PipelineSettings
from backspace.orchestrator.protected_paths import ProtectedPaths
from backspace.orchestrator.publish import Identity, Policy
from backspace.orchestrator.redact import Redactor
from backspace.orchestrator.run import RunFailure
from backspace.orchestrator.runner import Runner, RunnerLimits
from backspace.orchestrator.sandboxes.base import SandboxProvider
from backspace.orchestrator.sandboxes.bwrap import exposed
from backspace.orchestrator.sandboxes.local import LocalLimits, LocalSandboxProvider, default_root
from backspace.orchestrator.store import Store
from backspace.runtime import tune_garbage_collector, watch_children_with_pidfds

log = logging.getLogger(__name__)

PROMPT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass
class Services:
    settings: Settings
    store: Store
    hub: EventHub
    runner: Runner
    sandboxes: SandboxProvider
    hosts: dict[str, GitHost]
    redactor: Redactor
    public_url: str
    _close_model: Callable[[], Awaitable[None]]

    async def aclose(self) -> None:
        """Stop the runner (grace period, then cancel), close the clients and the store."""
        await self.runner.shutdown()
        await self._close_model()
        close = getattr(self.sandboxes, "aclose", None)
        if close is not None:
            await close()
        self.store.close()

    def parse_repo(self, reference: str) -> RepoRef:
        """The one check every front end uses: a reference becomes a RepoRef or a RepoRefError."""
        value = reference.strip()
        if not value:
            raise RepoRefError("repo_url is empty: give a repository")
        if value.startswith("-"):
            raise RepoRefError("a repository reference cannot start with '-'")
        for host in self.hosts.values():
            ref = host.parse(value)
            if ref is not None:
                RepoAllowlist(self.settings.allowed_repo_patterns).check(ref.name)
                return ref
        raise RepoRefError(
            "not a repository this server knows: use owner/repo or a GitHub URL, or an "
            "absolute path or local:<name> below BACKSPACE_LOCAL_REPOS"
        )

    def check_prompt(self, prompt: str) -> None:
        """The one prompt check every front end uses: ValueError says what is wrong and the fix.

        Control characters (NUL, terminal escapes) are refused: they end up in a branch, a commit
        message and a terminal, and no person types them. Tabs and newlines are fine.
        """
        limit = self.settings.max_prompt_chars
        if len(prompt) > limit:
            raise ValueError(
                f"is {len(prompt)} characters long, more than the limit of {limit} characters "
                "(BACKSPACE_MAX_PROMPT_CHARS): shorten it"
            )
        if PROMPT_CONTROL.search(prompt):
            raise ValueError(
                "contains control characters (such as NUL or a terminal escape): remove them; "
                "tabs and newlines are fine"
            )

    def health(self, *, show_paths: bool = False) -> dict[str, Any]:
        """What is configured and usable; file paths only when `show_paths` (an API key): they
        tell a stranger where the database and the repositories are."""
        hide = _hide_paths(self._paths()) if not show_paths else str
        sandbox_ok, sandbox_message = self.sandboxes.check()
        settings = self.settings
        store_ok = self.store.ping()
        room, store_message = self.store.headroom()
        store_ok = store_ok and room
        hosts = {}
        for name, host in self.hosts.items():
            usable, message = host.check()
            hosts[name] = {"usable": usable, "message": hide(message)}
        ready = sandbox_ok and store_ok and settings.model_configured
        return {
            "status": "ok" if ready else "degraded",
            "version": __version__,
            "accepting_runs": self.runner.accepting,
            "model": {
                "configured": settings.model_configured,
                "name": settings.model,
                "base_url": _without_userinfo(
                    settings.anthropic_base_url or "https://api.anthropic.com"
                ),
                "message": "ready"
                if settings.model_configured
                else "not configured: set ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL)",
            },
            "sandbox": {
                "backend": self.sandboxes.name,
                "usable": sandbox_ok,
                "message": hide(sandbox_message),
                **_sandbox_limits(self.sandboxes),
            },
            "git_hosts": hosts,
            "store": {
                "ok": store_ok,
                **({"path": str(settings.db)} if show_paths else {}),
                "message": hide(store_message),
            },
            "runs": {
                "active": self.runner.active_count(),
                "queued": self.runner.queued_count(),
                "max_concurrent": settings.max_concurrent_runs,
            },
            "auth": settings.require_auth,
            "slack": {
                "configured": settings.slack_configured,
                "mode": "socket" if settings.slack_app_token else "http",
            },
        }

    def _paths(self) -> list[str]:
        """The server's own files and directories, as they may appear in a message."""
        paths: list[Path | None] = [
            self.settings.db,
            self.settings.local_repos,
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


def preload_model_sdk() -> None:
    """Import the anthropic SDK ahead of the first run, then keep the GC from walking it."""
    import gc

    import anthropic  # noqa: F401

    gc.freeze()


def public_url(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104
    return f"http://{host}:{settings.port}"


def check_outside_sandbox_view(settings: Settings) -> None:
    """Refuse to run when this server's own files lie where every local sandbox can read them."""
    if settings.sandbox_backend != "local":
        return
    cwd = Path.cwd()
    env_file = settings.model_config.get("env_file")
    paths = {"the working directory": cwd, "BACKSPACE_DB": settings.db}
    if isinstance(env_file, str) and (cwd / env_file).exists():
        paths[env_file] = cwd / env_file
    paths["BACKSPACE_SANDBOX_ROOT"] = settings.sandbox_root or default_root(settings.db)
    found = exposed(paths)
    if found:
        raise SettingsError(
            "; ".join(found) + ": every sandboxed command can read there. Move them (the "
            "working directory, .env, BACKSPACE_DB and BACKSPACE_SANDBOX_ROOT) outside /usr and "
            "the /etc files the sandbox sees (backspace/orchestrator/sandboxes/bwrap.py lists them)"
        )


def sandbox_provider(settings: Settings) -> SandboxProvider:
    """BACKSPACE_SANDBOX (default: daytona when DAYTONA_API_KEY is set, else local)."""
    if settings.sandbox_backend == "daytona":
        # The Daytona SDK takes about a second to import: only a server that uses it pays.
        from backspace.orchestrator.sandboxes.daytona import DaytonaOptions, DaytonaSandboxProvider

        key = settings.daytona_api_key.get_secret_value() if settings.daytona_api_key else ""
        run_minutes = math.ceil(settings.max_sandbox_duration / 60)
        return DaytonaSandboxProvider(
            DaytonaOptions(
                api_key=key,
                api_url=settings.daytona_api_url,
                target=settings.daytona_target,
                snapshot=settings.daytona_snapshot,
                instance=settings.instance_name,
                auto_stop_minutes=run_minutes + 15,  # a backstop: runs delete their own
                auto_delete_minutes=60,
                network_block_all=settings.daytona_network_block_all,
                create_timeout=settings.daytona_create_timeout,
            )
        )
    return LocalSandboxProvider(
        settings.sandbox_root or default_root(settings.db),
        LocalLimits(
            memory_mb=settings.sandbox_memory_mb,
            max_processes=settings.sandbox_max_processes,
            max_file_mb=settings.sandbox_max_file_mb,
            disk_mb=settings.sandbox_disk_mb,
            cpus=settings.sandbox_cpus,
        ),
        allow_unsandboxed=settings.allow_unsandboxed,
    )


def build_services(settings: Settings) -> Services:
    check_outside_sandbox_view(settings)
    redactor = Redactor(settings.secrets())
    max_bytes = int(settings.db_max_mb * 1024 * 1024) if settings.db_max_mb else None
    store = Store(
        settings.db, max_bytes=max_bytes, headroom_bytes=settings.db_headroom_mb * 1024 * 1024
    )
    hub = EventHub(store)
    url = public_url(settings)
    sandboxes = sandbox_provider(settings)
    hosts: dict[str, GitHost] = {
        "local": LocalGitHost(settings.local_repos, store, url),
        "github": GitHubHost(
            token=settings.github_token.get_secret_value() if settings.github_token else None,
            api_url=settings.github_api_url,
            web_host=settings.github_host,
            cache_root=settings.db.resolve().parent / "backspace-cache" / "github",
            redactor=redactor,
            fork_owner=settings.github_fork_owner,
        ),
    }

    shared_model: list[AnthropicModel] = []  # one client for all runs: it pools connections
    model_lock = threading.Lock()  # runs call the factory from worker threads (see Pipeline.run)

    def model_factory() -> Model:
        with model_lock:
            return shared_model[0] if shared_model else make_model()

    def make_model() -> Model:
        if not settings.model_configured:
            raise RunFailure(
                "model_not_configured",
                "No model is configured: set ANTHROPIC_API_KEY, or ANTHROPIC_BASE_URL for an "
                "Anthropic-compatible server.",
            )
        key = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None
        shared_model.append(
            AnthropicModel(
                name=settings.model,
                api_key=key,
                base_url=settings.anthropic_base_url,
                retries=settings.model_retries,
                retry_delay=settings.model_retry_delay,
                timeout=settings.model_timeout,
            )
        )
        return shared_model[0]

    async def close_model() -> None:
        for model in shared_model:
            await model.close()

    pipeline = Pipeline(
        sandboxes=sandboxes,
        hosts=hosts,
        model_factory=model_factory,
        settings=PipelineSettings(
            identity=Identity(settings.github_username, settings.github_email),
            limits=AgentLimits(
                max_turns=settings.max_turns,
                max_cost_usd=settings.max_cost_usd,
                max_tokens=settings.max_tokens,
                command_timeout=settings.command_timeout,
                max_output_chars=settings.max_output_chars,
            ),
            tool_mode=settings.tool_mode,
            test_command=settings.test_command,
            max_bundle_bytes=settings.max_bundle_mb * 1024 * 1024,
            policy=Policy(
                max_files=settings.max_diff_files,
                allow_workflow_changes=settings.allow_workflow_changes,
                max_file_bytes=settings.max_file_change_mb * 1024 * 1024,
                max_change_bytes=settings.max_change_mb * 1024 * 1024,
                protected=ProtectedPaths(settings.protected_path_patterns),
            ),
            draft=settings.draft_prs,
        ),
        redactor=redactor,
    )
    runner = Runner(
        store,
        hub,
        pipeline,
        redactor=redactor,
        limits=RunnerLimits(
            max_concurrent=settings.max_concurrent_runs,
            max_duration=settings.max_sandbox_duration,
            shutdown_grace=settings.shutdown_grace,
        ),
        public_url=url,
        janitor=sandboxes,
    )
    return Services(settings, store, hub, runner, sandboxes, hosts, redactor, url, close_model)


def create_app(settings: Settings) -> Starlette:
    from backspace.http.crosssite import CrossSiteCheck
    from backspace.http.hosts import HostCheck, allowed_hosts
    from backspace.http.routes import routes  # the web layer depends on this module, not back

    services = build_services(settings)
    slack = None
    if settings.slack_configured:
        from backspace.slackbot.app import SlackFrontEnd

        slack = SlackFrontEnd(services)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        usable, message = services.sandboxes.check()
        if not usable:
            log.error("the %s sandbox cannot be used: %s", services.sandboxes.name, message)
        await services.runner.start()
        janitor = asyncio.create_task(_janitor(services), name="sandbox-janitor")
        if slack is not None:
            await slack.start()
        watch_children_with_pidfds()
        tune_garbage_collector()
        log.info("backspace %s ready at %s", __version__, services.public_url)
        # The model SDK is not imported at start (it takes about a second): it is imported now,
        # in a worker thread so that the loop keeps serving, then frozen like the rest.
        warm = (
            asyncio.create_task(asyncio.to_thread(preload_model_sdk), name="preload-model-sdk")
            if settings.model_configured
            else None
        )
        try:
            yield
        finally:
            if warm is not None:
                with contextlib.suppress(Exception):
                    await warm
            janitor.cancel()
            await services.aclose()
            if slack is not None:
                await slack.aclose()

    app = Starlette(
        debug=False,
        routes=routes(),
        lifespan=lifespan,
        middleware=[
            # Outermost first: the Host is checked before the Origin is compared with it.
            Middleware(HostCheck, allowed=allowed_hosts(settings, services.public_url)),
            Middleware(CrossSiteCheck, public_url=services.public_url),
        ],
        exception_handlers={
            HTTPException: _json_http_error,
            ClientDisconnect: _client_gone,
            Exception: _json_internal_error,
        },
    )
    app.state.services = services
    app.state.rate_limiter = RateLimiter(settings.runs_per_minute, settings.runs_burst)
    app.state.slack = slack
    return app


async def _janitor(services: Services) -> None:
    """Every few minutes, delete sandboxes no live run owns (a crash never leaks them for long)."""
    while True:
        await asyncio.sleep(services.settings.janitor_interval)
        try:
            removed = await services.sandboxes.cleanup_orphans(services.runner.live_run_ids())
            if removed:
                log.info("the janitor deleted %d sandboxes no live run owns", removed)
        except Exception:
            log.exception("the sandbox janitor failed")


async def _json_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = {
        404: f"no such endpoint: {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }
    return JSONResponse(
        {"detail": detail.get(exc.status_code, exc.detail)},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client went away (or was cut off at its deadline) while sending: nobody to answer."""
    log.info("the client left before sending all of %s %s", request.method, request.url.path)
    return Response(status_code=400)


async def _json_internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        {"detail": "internal server error; the server log has the details"}, status_code=500
    )
